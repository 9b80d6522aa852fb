"""A tiny trained run and its exported bundle, shared by the export / predict / serve / ONNX tests
(``exported_run`` in tests/conftest.py builds it once per session)."""

import json

import torch

from fusionkit.bundle import ClassifierSpec, save_classifier
from fusionkit.data import shapes
from fusionkit.export import export_run
from fusionkit.index import FeatureIndex
from fusionkit.model import build_model
from fusionkit.predict import Predictor
from fusionkit.train import TrainConfig, predict, train

ENCODERS = {"image": "efficientnet_lite0", "text": "minilm", "audio": "logmel"}
OPTIONS = {"image": {"weights": None, "image_size": 64}}  # a random-init encoder: its weights travel inside


def train_model(splits, num_classes, method="gmu", seed=0):
    in_dims = {m: int(x.shape[-1]) for m, x in splits["train"].features.items()}
    torch.manual_seed(seed)
    model = build_model(method, in_dims, num_classes, hidden=16)
    train(model, splits["train"], splits["val"], TrainConfig(epochs=3, seed=seed))
    return model.eval(), in_dims


def exported_run(tmp):
    """A tiny run folder (shapes, three modalities, a trained gmu classifier), its exported
    bundle, and what the model gives on the cached test features."""
    ds = shapes.generate(tmp / "shapes", n=24, image_size=32, progress=False)
    run_dir = tmp / "run"
    run_dir.mkdir()
    index = FeatureIndex.build(ds, ENCODERS, tmp / "cache", ["pooled"], path=run_dir / "features.json",
                               progress=False, options=OPTIONS)  # fmt: skip
    splits, names = index.splits(target="label")
    model, in_dims = train_model(splits, len(names))
    spec = ClassifierSpec(fusion="gmu", in_dims=in_dims, num_classes=len(names), class_names=names, target="label",
                          hidden=16)  # fmt: skip
    save_classifier(run_dir / "model.safetensors", model, spec)
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"kind": "summary", "run": "05_evaluate", "data": {"test_accuracy": 0.5}}) + "\n"
    )
    out = export_run(run_dir, tmp / "bundle").parent
    logits, weights = predict(model, splits["test"])
    return {"ds": ds, "tmp": tmp, "run": run_dir, "bundle": out, "names": names, "model": model,
            "test": splits["test"], "probs": torch.softmax(logits, 1), "weights": weights, "index": index,
            "predictor": Predictor.load(out, device="cpu")}  # fmt: skip
