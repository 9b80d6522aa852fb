"""The CUDA paths: every fusion method, the task models, feature extraction (bf16 autocast) and a
bundle's predictions on a GPU, each against the same thing on the CPU. Skipped without CUDA (CI
has none); run on a lent GPU machine with ``pytest tests/test_cuda.py`` (benchmarks/README.md)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fusionkit import fusion
from fusionkit.bundle import ClassifierSpec, save_classifier
from fusionkit.data import shapes
from fusionkit.export import export_run
from fusionkit.features import extract_features
from fusionkit.index import FeatureIndex
from fusionkit.model import build_model
from fusionkit.predict import Predictor, read_inputs
from fusionkit.tasks.captioning.decoders import DecoderSpec, LSTMAttentionCaptioner, TransformerCaptioner
from fusionkit.tasks.captioning.search import generate
from fusionkit.tasks.vqa.model import VQANet
from fusionkit.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
ENCODERS = {"image": "efficientnet_lite0", "audio": "logmel"}
OPTIONS = {"image": {"weights": None, "image_size": 64}}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 on the GPU as on the CPU: no TF32 in matmuls or convolutions for these comparisons."""
    was = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was


def _inputs(n=6, dims=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = dims or {"image": 12, "text": 10, "audio": 8}
    x = {m: torch.randn(n, d, generator=g) for m, d in dims.items()}
    mask = {m: torch.ones(n) for m in dims}
    mask["audio"][::2] = 0.0  # half the rows without audio: the missing-modality path
    return x, mask


def _on(d, dev):
    return {k: v.to(dev) for k, v in d.items()}


@pytest.mark.parametrize("method", fusion.available())
def test_every_fusion_method_gives_on_cuda_what_it_gives_on_the_cpu(method):
    x, mask = _inputs()
    torch.manual_seed(0)
    model = build_model(method, {m: v.shape[1] for m, v in x.items()}, num_classes=3, hidden=16).eval()
    want = model(x, mask)
    gpu = build_model(method, {m: v.shape[1] for m, v in x.items()}, num_classes=3, hidden=16)
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.to(CUDA).eval()
    got = gpu(_on(x, CUDA), _on(mask, CUDA))
    assert got.logits.device.type == "cuda"
    torch.testing.assert_close(got.logits.cpu(), want.logits, atol=1e-4, rtol=1e-4)
    if want.weights is not None:
        for m, w in want.weights.items():
            torch.testing.assert_close(got.weights[m].cpu(), w, atol=1e-4, rtol=1e-4)
    # a training step runs on the device (no tensor made on the CPU inside the method)
    gpu.train()
    loss = torch.nn.functional.cross_entropy(gpu(_on(x, CUDA), _on(mask, CUDA)).logits, torch.tensor([0, 1, 2] * 2, device=CUDA))  # fmt: skip
    loss.backward()
    grads = [p.grad for p in gpu.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)


def _caption_spec(feat=8, pooled=6):
    return DecoderSpec(20, feat, max_len=10, pad_id=0, bos_id=1, eos_id=2, pooled_dim=pooled)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_captioners_decode_the_same_captions_on_cuda(kind):
    torch.manual_seed(0)
    hp = {"d_model": 32, "dropout": 0.0} | ({"att_dim": 16} if kind == "lstm" else {})
    cls = TransformerCaptioner if kind == "transformer" else LSTMAttentionCaptioner
    cpu = cls(_caption_spec(), **hp).eval()
    gpu = cls(_caption_spec(), **hp)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to(CUDA).eval()
    g, p = torch.randn(5, 9, 8), torch.randn(5, 6)
    for method in ("greedy", "beam"):
        want, got = generate(cpu, g, p, method=method), generate(gpu, g, p, method=method)
        assert got.tokens == want.tokens
        torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(want.scores), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["concat", "cross_attention"])
def test_the_vqa_net_answers_the_same_on_cuda(method):
    torch.manual_seed(0)
    kw = {"n_regions": 4, "hidden": 16, "heads": 2, "dropout": 0.0}
    cpu = VQANet(method, 12, 10, 7, **kw).eval()
    gpu = VQANet(method, 12, 10, 7, **kw)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to(CUDA).eval()
    img, q = torch.randn(6, 4, 12), torch.randn(6, 10)
    with torch.inference_mode():
        want, got = cpu(img, q), gpu(img.to(CUDA), q.to(CUDA))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def shapes_ds(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("cuda") / "shapes", n=24, image_size=32, progress=False)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_extraction_on_cuda_is_the_cpus_within_bf16_and_cached_apart(shapes_ds, modality, tmp_path):
    kw = OPTIONS.get(modality, {})
    from fusionkit.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(modality, ENCODERS[modality], **kw)
    cpu = extract_features(shapes_ds, modality, enc, split="train", cache_dir=tmp_path, device="cpu", progress=False)
    gpu = extract_features(shapes_ds, modality, enc, split="train", cache_dir=tmp_path, device="cuda", progress=False)
    assert gpu.ids == cpu.ids and gpu.values.shape == cpu.values.shape
    assert gpu.path != cpu.path and gpu.path.parent.name.endswith("-bf16")  # bf16 features never served as fp32
    cos = torch.nn.functional.cosine_similarity(gpu.values.float(), cpu.values.float(), dim=1)
    assert cos.min() > 0.99, f"{modality}: cosine(cuda bf16, cpu fp32) min {cos.min():.4f}"
    again = extract_features(shapes_ds, modality, enc, split="train", cache_dir=tmp_path, device="cuda", progress=False)
    assert torch.equal(again.values, gpu.values)  # served from the bf16 entry


def test_a_bundle_predicts_on_cuda_what_it_predicts_on_the_cpu(shapes_ds, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    index = FeatureIndex.build(shapes_ds, ENCODERS, tmp_path / "cache", ["pooled"], path=run_dir / "features.json",
                               progress=False, options=OPTIONS)  # fmt: skip
    splits, names = index.splits(target="label")
    in_dims = {m: int(x.shape[-1]) for m, x in splits["train"].features.items()}
    torch.manual_seed(0)
    model = build_model("gmu", in_dims, len(names), hidden=16)
    train(model, splits["train"], splits["val"], TrainConfig(epochs=3, seed=0))
    spec = ClassifierSpec(fusion="gmu", in_dims=in_dims, num_classes=len(names), class_names=names, target="label",
                          hidden=16)  # fmt: skip
    save_classifier(run_dir / "model.safetensors", model.eval(), spec)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "summary", "run": "05_evaluate", "data": {}}) + "\n")
    out = export_run(run_dir, tmp_path / "bundle").parent
    manifest = shapes_ds.root / "cuda.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "audio"])
        w.writeheader()
        w.writerows({"id": s.id, "image": s.modalities["image"], "audio": s.modalities["audio"]} for s in shapes_ds.samples)  # fmt: skip
    results = {}
    for dev in ("cpu", "cuda"):
        p = Predictor.load(out, device=dev)
        assert p.device.type == dev
        res = p.predict(read_inputs(manifest, p))
        results[dev] = torch.tensor([[r["probabilities"][c] for c in names] for r in res.records])
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu.shape == cpu.shape == (len(shapes_ds.samples), len(names))
    diff = (gpu - cpu).abs().max().item()
    assert diff < 0.02, f"probabilities on cuda (bf16 encoders) differ from the cpu's by {diff:.4f}"
    top2 = cpu.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * diff  # rows whose decision bf16 cannot flip
    assert clear.any()
    assert torch.equal(gpu.argmax(1)[clear], cpu.argmax(1)[clear])
