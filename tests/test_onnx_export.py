"""fusionkit export --format onnx: the fusion model + head and the image encoder as ONNX graphs,
run by onnxruntime and agreeing with PyTorch on real inputs; the missing-modality mask is an input
of the graph; every registered fusion method exports; a graph that does not export or does not
agree is refused with nothing left behind."""

import json

import numpy as np
import onnx
import pytest
import torch

from fusionkit import cli, onnx_export
from fusionkit.bundle import ClassifierSpec
from fusionkit.export import export_run
from fusionkit.fusion.base import available
from fusionkit.model import build_model
from fusionkit.onnx_export import OnnxExportError, OnnxModel, export_fusion
from fusionkit.train import SplitData, predict


@pytest.fixture(scope="module")
def onnx_bundle(exported_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "bundle"
    assert cli.main(["export", str(exported_run["run"]), "--out", str(out), "--format", "onnx"]) == 0
    return out


def test_the_graphs_take_features_and_the_missing_modality_mask(onnx_bundle):
    meta = json.loads((onnx_bundle / "onnx.json").read_text())
    graph = onnx.load(str(onnx_bundle / "model.onnx"))
    onnx.checker.check_model(graph)
    names = [i.name for i in graph.graph.input]
    assert names == ["audio", "image", "text", "audio_mask", "image_mask", "text_mask"]
    assert [o.name for o in graph.graph.output] == ["logits", "probabilities", "weights"] == meta["model"]["outputs"]
    assert meta["model"]["check"]["cases"] == ["all present", "audio missing", "image missing", "text missing"]
    assert meta["model"]["check"]["max_abs_diff"] <= 1e-4 and meta["encoders"]["image"]["check"]["max_abs_diff"] <= 1e-4
    assert sorted(meta["not_exported"]) == ["audio", "text"]  # not image encoders: listed with the reason
    assert (onnx_bundle / "model.json").is_file() and (onnx_bundle / "image.onnx").is_file()


def test_onnxruntime_agrees_with_pytorch_on_the_test_split(exported_run, onnx_bundle):
    test, runtime = exported_run["test"], OnnxModel.load(onnx_bundle)
    got = runtime.predict({m: x.numpy() for m, x in test.features.items()})
    assert np.abs(got["probabilities"] - exported_run["probs"].numpy()).max() <= 1e-4
    w = np.stack([exported_run["weights"][m].reshape(len(test), -1).mean(1).numpy() for m in ("audio", "image", "text")], 1)  # fmt: skip
    assert np.abs(got["weights"] - w).max() <= 1e-4
    # a modality left out goes through the graph's mask, as the PyTorch model's mask
    gone = runtime.predict({m: x.numpy() for m, x in test.features.items() if m != "audio"})
    mask = {m: torch.ones(len(test)) for m in test.features}
    mask["audio"] = torch.zeros(len(test))
    feats = dict(test.features, audio=torch.zeros_like(test.features["audio"]))
    logits, _ = predict(exported_run["model"], SplitData(feats, test.labels, test.ids), mask=mask)
    assert np.abs(gone["probabilities"] - torch.softmax(logits, 1).numpy()).max() <= 1e-4
    assert np.abs(gone["probabilities"] - got["probabilities"]).max() > 1e-6  # the mask changed something
    with pytest.raises(ValueError, match="non-finite"):
        runtime.predict({m: np.full_like(x.numpy(), np.nan) for m, x in test.features.items()})


def test_the_image_graph_gives_the_encoders_features_on_real_images(exported_run, onnx_bundle):
    enc = exported_run["predictor"].encoders["image"]
    ds = exported_run["ds"]
    pixels = enc.collate([enc.load(s.modalities["image"], ds.root) for s in ds.split("test")])
    with torch.inference_mode():
        want = enc(pixels)["pooled"].numpy()
    got = OnnxModel.load(onnx_bundle).encode_image("image", pixels.numpy())
    assert got.shape == want.shape and np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    # and they are the features the model was trained on (the cache)
    assert np.abs(got - exported_run["test"].features["image"].numpy()).max() <= 1e-4


def _split(dims, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SplitData({m: torch.randn(n, d, generator=g) for m, d in dims.items()}, torch.zeros(n, dtype=torch.long),
                     [f"s{i}" for i in range(n)])  # fmt: skip


@pytest.mark.slow  # ~4 s an export on 2 cores; the run's own export (gmu, image encoder) is above
@pytest.mark.parametrize(("method", "num_classes"), [*((m, 3) for m in available()), ("gmu", 0)])
def test_every_fusion_method_exports(method, num_classes, tmp_path):
    dims = {"audio": 6, "image": 8, "text": 5}
    torch.manual_seed(0)
    model = build_model(method, dims, num_classes, hidden=8).eval()
    spec = ClassifierSpec(fusion=method, in_dims=dims, num_classes=num_classes,
                          class_names=["a", "b", "c"][:num_classes], target="y", hidden=8)  # fmt: skip
    entry = export_fusion(model, spec, _split(dims), tmp_path / "model.onnx")
    assert entry["check"]["max_abs_diff"] <= onnx_export.TOLERANCE
    # a mixed mask per row, another batch size than the one exported with
    data = _split(dims, n=7, seed=1)
    mask = {m: torch.tensor([1.0, 0, 1, 1, 0, 1, 0]).roll(i) for i, m in enumerate(sorted(dims))}
    feats = {m: torch.where(mask[m][:, None] > 0, x, torch.zeros_like(x)) for m, x in data.features.items()}
    got = OnnxModel(tmp_path, {"model": entry}).predict({m: x.numpy() for m, x in feats.items()}, {m: v.numpy() for m, v in mask.items()})  # fmt: skip
    with torch.inference_mode():
        logits = model(feats, mask).logits
    if num_classes:
        assert np.abs(got["probabilities"] - torch.softmax(logits, 1).numpy()).max() <= 1e-4
    else:
        assert got["prediction"].shape == (7,) and np.abs(got["prediction"] - logits[:, 0].numpy()).max() <= 1e-4


def test_an_export_that_fails_or_disagrees_is_refused_and_leaves_nothing(exported_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(onnx_export.NOT_EXPORTABLE, "gmu", "a reason it does not")
    out = tmp_path / "refused"
    assert cli.main(["export", str(exported_run["run"]), "--out", str(out), "--format", "onnx"]) == 2
    assert "fusion method 'gmu': not exported to ONNX (a reason it does not)" in capsys.readouterr().err
    assert not any(out.iterdir())  # no bundle, no graph, no temporary folder
    monkeypatch.delitem(onnx_export.NOT_EXPORTABLE, "gmu")
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # any difference is too large
    with pytest.raises(OnnxExportError, match="onnxruntime differs from PyTorch"):
        export_run(exported_run["run"], out, fmt="onnx")
    assert not any(out.iterdir())
