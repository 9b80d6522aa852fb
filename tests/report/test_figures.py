"""fusionkit.report.figures: each figure draws what it is given (panels, bars, lines, labels)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fusionkit import workbook as wb  # noqa: E402
from fusionkit.compare import summarize  # noqa: E402
from fusionkit.data import shapes  # noqa: E402
from fusionkit.report import figures  # noqa: E402
from fusionkit.train import SplitData  # noqa: E402


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("fig") / "shapes", n=24, image_size=32, progress=False)


def test_class_balance_has_one_panel_per_target_with_every_count(ds):
    balance = wb.balance_table(ds)
    fig = figures.plot_class_balance(balance)
    axes = [a for a in fig.axes if a.get_title().startswith("class balance")]
    assert sorted(a.get_title() for a in axes) == sorted(
        f"class balance: {t}" for t, classes in ds.targets.items() if classes
    )  # not a regression target
    first = axes[0].get_title().removeprefix("class balance: ")
    heights = sorted(p.get_height() for p in axes[0].patches if p.get_height() > 0)
    want = balance[balance.target == first]["count"]
    assert heights == sorted(want.tolist())


def test_examples_show_the_images_with_their_captions(ds):
    caps = wb.captions_by_sample(ds)
    fig = figures.plot_examples(ds, n=4, seed=0, captions=caps)
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 4
    for ax in shown:
        sid = ax.get_title().splitlines()[0]
        assert caps[sid][0][:20] in ax.get_title()


def test_projection_comparison_history_confusion_ablation_curves_weights():
    g = torch.Generator().manual_seed(0)
    data = SplitData({"a": torch.randn(30, 5, generator=g), "b": torch.randn(30, 3, generator=g)},
                     torch.arange(30) % 3, [str(i) for i in range(30)])  # fmt: skip
    fig = figures.plot_projection(data, ["x", "y", "z"])
    assert [a.get_title() for a in fig.axes[:2]] == ["a: PCA of features", "b: PCA of features"]

    rows = [{"method": m, "seed": s, "test_accuracy": acc + 0.01 * s, "val_accuracy": acc, "params": p, "train_time_s": 0.1,
             "infer_samples_per_s": 1.0} for m, acc, p in (("concat", 0.9, 100), ("unimodal:a", 0.5, 50))
            for s in range(3)]  # fmt: skip
    results = pd.DataFrame(rows)
    fig = figures.plot_comparison(results, summarize(results), ceilings={"a": 0.5, "fused": 1.0})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["concat", "unimodal:a"]
    assert {t.get_text() for t in fig.axes[0].texts} == {"a", "fused"}

    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "train_acc": 0.1 * e,
                "val_acc": 0.09 * e} for e in range(4)]  # fmt: skip
    fig = figures.plot_history(history)
    assert [a.get_title() for a in fig.axes] == ["loss", "accuracy"]
    assert len(fig.axes[0].lines) == 2

    cm = np.array([[3, 1], [0, 4]])
    fig = figures.plot_confusion(cm, ["no", "yes"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "0", "4"]
    # many classes (VQA-RAD's answers): the most frequent true classes, the rest pooled, counts kept
    rng = np.random.default_rng(0)
    big = rng.integers(0, 3, (40, 40))
    big[7] += 50  # the most frequent true class
    fig = figures.plot_confusion(big, [f"c{i}" for i in range(40)], max_classes=5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 6 and labels[-1] == "other" and "c7" in labels
    cells = [int(t.get_text()) for t in fig.axes[0].texts]
    assert len(cells) == 36 and sum(cells) == int(big.sum())
    r = labels.index("c7")  # its row and column hold what c7 has, the rest went to "other"
    assert sum(cells[6 * r : 6 * r + 6]) == int(big[7].sum()) and sum(cells[r::6]) == int(big[:, 7].sum())
    assert fig.get_size_inches()[0] < 8 and "of 40 classes" in fig.axes[0].get_title()

    fig = figures.plot_ablation([{"condition": "all", "accuracy": 0.9}, {"condition": "drop a", "accuracy": 0.4}])
    assert [t.get_text().strip() for t in fig.axes[0].texts] == ["0.900", "0.400"]

    curves = pd.DataFrame({"method": ["m"] * 4, "modality": ["a"] * 2 + ["b"] * 2,
                           "corruption": ["noise"] * 2 + ["blur"] * 2, "level": [0, 1] * 2,
                           "accuracy": [0.9, 0.5, 0.9, 0.7]})  # fmt: skip
    fig = figures.plot_curves(curves)
    assert sorted(a.get_title() for a in fig.axes if a.get_title()) == ["a: noise", "b: blur"]

    weights = pd.DataFrame({"method": ["m"] * 4, "class": ["x", "x", "y", "y"], "modality": ["a", "b"] * 2,
                            "weight": [0.7, 0.3, 0.2, 0.8]})  # fmt: skip
    fig = figures.plot_weights(weights)
    assert fig.axes[0].get_title() == "m: per-sample modality weights by class"


def test_examples_name_an_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch):
    from PIL import Image

    from fusionkit.data.base import DatasetError, Sample, load_dataset, write_dataset

    samples = []
    for i in range(3):
        Image.new("RGB", (16, 16) if i else (64, 64), (60 * i, 20, 20)).save(tmp_path / f"im{i}.png")
        samples.append(Sample(f"s{i}", "train", {"image": f"im{i}.png", "text": f"photo {i}"}, {"y": i % 2}))
    ds = load_dataset(write_dataset(tmp_path / "ds", "imgs", {"image": "image", "text": "text"}, {"y": ["a", "b"]},
                                    samples, media_root=tmp_path))  # fmt: skip
    fig = figures.plot_examples(ds, n=3)
    assert sorted(a.get_title().split("\n")[0] for a in fig.axes if a.get_title()) == ["s0", "s1", "s2"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # im0: 4,096 pixels, over twice the limit
    with pytest.raises(DatasetError, match=r"im0\.png \(id 's0'\): refused as a possible decompression bomb"):
        figures.plot_examples(ds, n=3)


def test_interactions_stack_each_pairs_components_and_show_the_evidence():
    table = pd.DataFrame({"pair": ["a+b", "a+c"], "a": ["a", "a"], "b": ["b", "c"], "h_y": [1.0, 1.0],
                          "i_ab": [0.9, 0.6], "i_ab_sd": [0.05, 0.0], "redundancy": [0.5, 0.0],
                          "unique_a": [0.0, 0.6], "unique_b": [0.2, 0.0], "synergy_late": [0.1, 0.0],
                          "synergy_beyond_late": [0.1, 0.0]})  # fmt: skip
    evidence = pd.DataFrame({"modalities": ["a+b+c"] * 2, "model": ["unimodal", "late"], "method": ["a", "late"],
                             "test_accuracy": [0.7, 0.8], "test_accuracy_sd": [0.01, float("nan")]})  # fmt: skip
    fig = figures.plot_interactions(table, evidence)
    bars, ev = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["a+b", "a+c"]
    widths = sorted(round(p.get_width(), 3) for p in bars.patches if p.get_width() > 0)
    assert widths == [0.1, 0.1, 0.2, 0.5, 0.6]
    labels = bars.get_legend_handles_labels()[1]
    assert labels[0] == "redundancy R" and "synergy beyond late fusion" in labels
    assert [t.get_text() for t in ev.get_yticklabels()] == ["a", "late on a+b+c"]
    assert sorted(p.get_width() for p in ev.patches) == [0.7, 0.8]
    assert len(figures.plot_interactions(table).axes) == 1


def test_forest_plot_has_one_row_per_method_best_first_with_ceilings():
    rows = [{"method": m, "seed": s, "test_accuracy": acc + 0.01 * s, "val_accuracy": acc, "params": 10,
             "train_time_s": 0.1, "infer_samples_per_s": 1.0}
            for m, acc in (("concat", 0.9), ("late", 0.7), ("unimodal:a", 0.5)) for s in range(3)]  # fmt: skip
    summary = summarize(pd.DataFrame(rows))
    fig = figures.plot_forest(summary, {"fused": 1.0, "a": 0.5})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["concat", "late", "uni:a"]
    assert [t.get_fontweight() for t in ax.get_yticklabels()][0] == "bold"  # the best on validation
    assert sorted(t.get_text() for t in ax.texts) == ["a", "fused"]
    ceilings = [line for line in ax.lines if line.get_color() == "grey"]  # the ceilings drawn across the axes
    assert sorted(line.get_xdata()[0] for line in ceilings) == [0.5, 1.0]
    assert [line.get_linestyle() for line in sorted(ceilings, key=lambda c: c.get_xdata()[0])] == [":", "-"]


def test_a_regression_targets_figures_are_in_its_metric():
    f = figures
    fig = f.plot_predicted_vs_true(np.array([1.0, 2.0, 2.5]), torch.tensor([1.1, 1.9, 3.0]), "score")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "true score" and ax.get_ylabel() == "predicted score" and len(ax.collections) == 1
    rows = [
        {"condition": "all", "mse": 0.1, "mae": 0.2, "r2": 0.8},
        {"condition": "drop a", "mse": 0.9, "mae": 0.7, "r2": -0.1},
    ]
    assert "R^2" in f.plot_ablation(rows).axes[0].get_title()
    hist = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.0, "val_mse": 0.5} for e in range(3)]
    assert "MSE" in f.plot_history(hist).axes[1].get_title()
    data = SplitData({"a": torch.randn(20, 4)}, torch.linspace(0, 1, 20), [str(i) for i in range(20)])
    assert len(f.plot_projection(data, []).axes) >= 1  # coloured by value, no class names needed
