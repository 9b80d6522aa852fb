import numpy as np
import pandas as pd
import pytest
import torch

from fusionkit import interpret, robustness
from fusionkit.data.base import Sample, load_dataset, write_dataset
from fusionkit.model import build_model
from fusionkit.train import SplitData, TrainConfig, train


class BagOfWords(torch.nn.Module):
    """A frozen stand-in text encoder: counts of the words 'red' and 'blue' (2-d)."""

    def load(self, value, root=None):
        return value

    def collate(self, items):
        return items

    def forward(self, batch):
        return {
            "pooled": torch.tensor(
                [[t.split().count("red"), t.split().count("blue")] for t in batch], dtype=torch.float
            )
        }


@pytest.fixture
def text_problem(tmp_path):
    rng = np.random.default_rng(0)
    samples, labels = [], []
    for i in range(240):
        y = int(rng.integers(0, 2))
        words = ["red" if y else "blue"] * 6 + ["shape"] * 6
        rng.shuffle(words)
        split = "train" if i < 160 else ("val" if i < 200 else "test")
        samples.append(Sample(f"s{i}", split, {"text": " ".join(words)}, {"y": y}))
        labels.append(y)
    write_dataset(tmp_path, "toy", {"text": "text"}, {"y": ["blue", "red"]}, samples)
    ds = load_dataset(tmp_path)
    enc = BagOfWords()
    out = {}
    for split in ("train", "val", "test"):
        ss = ds.split(split)
        feats = enc([s.modalities["text"] for s in ss])["pooled"]
        noise = torch.randn(len(ss), 4, generator=torch.Generator().manual_seed(1))
        out[split] = SplitData(
            {"text": feats, "other": noise}, torch.tensor([s.targets["y"] for s in ss]), [s.id for s in ss]
        )
    return ds, out, enc


def _models(data):
    models = {}
    for method in ("late", "weighted"):
        torch.manual_seed(0)
        m = build_model(method, {"text": 2, "other": 4}, 2, hidden=16)
        train(m, data["train"], data["val"], TrainConfig(epochs=15, batch_size=32))
        models[method] = m
    return models


def test_noise_curves_and_summary(text_problem):
    ds, data, enc = text_problem
    models = _models(data)
    curves = robustness.noise_curves(models, data["test"], ds, {"text": enc}, levels=[0.5, 1.0], show_progress=False)
    assert set(curves.corruption) == {"word_dropout", "typos"}
    clean = curves[curves.level == 0.0]
    assert (clean.accuracy > 0.95).all()
    gone = curves[(curves.corruption == "word_dropout") & (curves.level == 1.0)]
    assert (gone.accuracy < 0.75).all()  # every word dropped: the text carries nothing any more
    summ = robustness.robustness_summary(curves)
    row = summ[(summ.method == "weighted") & (summ.corruption == "typos")].iloc[0]
    g = curves[(curves.method == "weighted") & (curves.corruption == "typos")].sort_values("level")
    expected = np.trapezoid(g.accuracy, g.level) / 1.0
    assert row.relative_robustness == pytest.approx(expected)
    late = summ[summ.method == "late"]
    assert np.allclose(late.effective_robustness, 0.0)


def test_missing_modality_and_drop_importance(text_problem):
    ds, data, _ = text_problem
    models = _models(data)
    miss = robustness.missing_modality(models, data["test"])
    acc = miss.set_index(["method", "dropped"]).accuracy
    assert acc[("weighted", "none")] > 0.95 and acc[("weighted", "text")] < 0.75
    imp = interpret.drop_importance(models, data["test"]).set_index(["method", "modality"]).importance
    assert imp[("weighted", "text")] > 0.2 > abs(imp[("weighted", "other")])
    w = interpret.weight_samples(models, data["test"], ["blue", "red"])
    assert set(w.method) == {"late", "weighted"}
    agree = interpret.weights_vs_importance(w, interpret.drop_importance(models, data["test"]))
    assert (agree[agree.method == "weighted"].most_needed == "text").all()


def test_known_information_check(text_problem):
    _, data, _ = text_problem
    labels = {s: d.labels for s, d in data.items()}
    out = interpret.known_information_check(
        ["weighted"], data, {"y": labels}, {"y": ["text"]}, TrainConfig(epochs=15, batch_size=32), hidden=16
    )
    assert len(out) == 1
    r = out.iloc[0]
    assert r.top_weighted == "text" and bool(r.points_to_informative)
    assert r.weight_text > r.weight_other


def test_corrupt_dispatch():
    rng = np.random.default_rng(0)
    img = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    out = robustness._corrupt(img, lambda a, lv, r: a // 2, 0.5, rng)
    assert out.shape == img.shape and out.dtype == torch.uint8 and int(out.max()) == 100
    with pytest.raises(TypeError):
        robustness._corrupt(pd.DataFrame(), lambda a, lv, r: a, 0.5, rng)


def test_known_information_check_skips_fixed_equal_weights(text_problem):
    _, data, _ = text_problem
    labels = {s: d.labels for s, d in data.items()}
    out = interpret.known_information_check(
        ["late"], data, {"y": labels}, {"y": ["text"]}, TrainConfig(epochs=2, batch_size=32), hidden=8
    )
    assert out.empty  # late fusion averages with equal weights: nothing to interpret


def test_known_information_check_leaves_out_vacuous_and_repeated_targets(text_problem):
    """A target every modality informs cannot fail the check, and one whose labels repeat an
    earlier target's would train the same models again (the shapes' redundant is has_red)."""
    _, data, _ = text_problem
    labels = {s: d.labels for s, d in data.items()}
    flipped = {s: 1 - y for s, y in labels.items()}
    informative = {"y": ["text"], "again": ["text"], "all": ["other", "text"], "other": ["text"]}
    out = interpret.known_information_check(
        ["weighted"], data, {"y": labels, "again": labels, "all": flipped, "other": flipped}, informative,
        TrainConfig(epochs=2, batch_size=32), hidden=8,
    )  # fmt: skip
    assert out.target.tolist() == ["y", "other"]


def test_encode_corrupted_runs_like_extraction_and_ignores_the_batch_size(tmp_path):
    """An image encoder: level 0 gives the cached features (the encoder's inference module,
    within float rounding), and the per-sample seeding makes any batch size give the same noise."""
    from PIL import Image

    from fusionkit.encoders import build_encoder
    from fusionkit.features import extract_features

    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        samples.append(Sample(f"im{i}", "test", {"image": f"im{i}.png"}, {"y": i % 2}))
    ds = load_dataset(write_dataset(tmp_path / "ds", "imgs", {"image": "image"}, {"y": ["a", "b"]}, samples,
                                    media_root=tmp_path))  # fmt: skip
    enc = build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0)
    cached = extract_features(ds, "image", enc, split="test", cache_dir=tmp_path / "cache", progress=False).values
    ss = ds.split("test")
    clean = robustness.encode_corrupted(enc, ds, ss, "image", "gaussian_noise", 0.0)
    assert clean.shape == cached.shape
    assert torch.allclose(clean, cached.float(), rtol=1e-4, atol=1e-4 * float(cached.abs().max()))
    noisy = robustness.encode_corrupted(enc, ds, ss, "image", "gaussian_noise", 0.5, batch_size=3)
    assert not torch.allclose(noisy, clean, rtol=1e-3, atol=1e-3 * float(cached.abs().max()))
    again = robustness.encode_corrupted(enc, ds, ss, "image", "gaussian_noise", 0.5, batch_size=4)
    assert torch.allclose(noisy, again, rtol=1e-4, atol=1e-4 * float(cached.abs().max()))


def test_encode_corrupted_names_the_file_and_the_sample_of_an_image_it_cannot_decode(tmp_path, monkeypatch):
    from PIL import Image

    from fusionkit.encoders import build_encoder
    from fusionkit.encoders.base import InputError

    samples = []
    for i in range(3):
        Image.new("RGB", (40 + 20 * i, 48 + 20 * i), (50 * i, 10, 10)).save(tmp_path / f"im{i}.png")
        samples.append(Sample(f"im{i}", "test", {"image": f"im{i}.png"}, {"y": i % 2}))
    ds = load_dataset(write_dataset(tmp_path / "ds", "imgs", {"image": "image"}, {"y": ["a", "b"]}, samples,
                                    media_root=tmp_path))  # fmt: skip
    enc = build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # only im2 (80 x 88) is over it
    with pytest.raises(InputError, match=r"im2\.png record 'im2': decompression bomb refused") as e:
        robustness.encode_corrupted(enc, ds, ds.split("test"), "image", "gaussian_noise", 0.5)
    assert e.value.record_id == "im2"


def test_modality_dropout_study_retrains_with_dropout_next_to_the_reference():
    from tests.synthetic import label_problem

    data = label_problem(n=160, seed=3)
    cfg = TrainConfig(epochs=4, batch_size=32, patience=5, seed=0)
    ref = build_model("concat", {m: int(x.shape[-1]) for m, x in data["train"].features.items()}, 6, hidden=16)
    train(ref, data["train"], data["val"], cfg)
    study = robustness.modality_dropout_study("concat", data, cfg, 6, rate=0.5, reference=ref, hidden=16)
    assert set(study.method) == {"concat (p=0.5)", "concat"}
    assert set(study.dropped) == {"none", "audio", "image"}
    ref_rows = study[study.method == "concat"].set_index("dropped").accuracy
    again = robustness.missing_modality({"concat": ref}, data["test"]).set_index("dropped").accuracy
    assert ref_rows.to_dict() == again.to_dict()  # the reference is scored as it is, not retrained
    first = study[study.method == "concat (p=0.5)"].set_index("dropped").accuracy
    second = robustness.modality_dropout_study("concat", data, cfg, 6, rate=0.5, reference=ref, hidden=16)
    assert second[second.method == "concat (p=0.5)"].set_index("dropped").accuracy.to_dict() == first.to_dict()


def test_on_a_regression_target_the_studies_report_r2():
    """Each modality carries half of the target (R^2 0.4 alone, 0.8 both). Late fusion averages
    its per-modality predictions over the present ones, so trained on both its heads predict
    h_image = 2u + c, h_audio = 2v - c (in units of y / 2); with the image masked it predicts
    2v - c, whose error v - u - e - c has the target's whole variance: R^2 <= 0, an importance
    of about 0.8 each. The curves' summary is in R^2 too."""
    from fusionkit.grid.jobs import run_one
    from tests.synthetic import regression_problem

    data = regression_problem(n=300, seed=6)
    model, _, _ = run_one("late", data, TrainConfig(epochs=20, batch_size=64), 0, hidden=32)
    missing = robustness.missing_modality({"late": model}, data["test"]).set_index("dropped")
    assert "r2" in missing and "accuracy" not in missing
    assert missing.loc["none", "r2"] == pytest.approx(0.8, abs=0.08)
    assert missing.loc["image", "r2"] < 0.1 and missing.loc["audio", "r2"] < 0.1
    imp = interpret.drop_importance({"late": model}, data["test"]).set_index("modality")["importance"]
    assert imp["image"] == pytest.approx(0.8, abs=0.15) and imp["audio"] == pytest.approx(0.8, abs=0.15)
    curves = pd.DataFrame(
        [{"method": m, "modality": "image", "corruption": "noise", "level": lv, "r2": r2 - lv * drop}
         for m, r2, drop in (("late", 0.8, 0.4), ("concat", 0.8, 0.2)) for lv in (0.0, 0.5, 1.0)]
    )  # fmt: skip
    s = robustness.robustness_summary(curves).set_index("method")
    assert s.loc["concat", "clean_r2"] == pytest.approx(0.8) and s.loc["late", "worst_r2"] == pytest.approx(0.4)
    assert s.loc["concat", "effective_robustness"] == pytest.approx(0.1)  # 0.7 - 0.6
    weights = interpret.weight_samples({"late": model}, data["test"], [])
    assert set(weights["class"]) <= {f"q{k}" for k in range(1, 6)}
