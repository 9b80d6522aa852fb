"""The comparison on several targets (03's interaction-type study): one batch of trainings,
per-target summaries, the paired tests against late fusion and the best single modality, the
verdicts and the heatmap."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from fusionkit.compare import across_targets
from fusionkit.report.figures import plot_targets
from fusionkit.train import TrainConfig
from tests.synthetic import interaction_problem


@pytest.fixture(scope="module")
def by_target():
    xor = interaction_problem("synergy", n=240, seed=1, noise=0.3)  # first: bit a, second: bit b; a XOR b
    same = interaction_problem("redundant", n=240, seed=1, noise=0.3)  # the bit a in both
    data = {"xor": (xor, 2), "redundant": (same, 2)}
    cfg = TrainConfig(epochs=40, batch_size=32, patience=40, num_threads=1)
    return across_targets(["late", "concat"], data, cfg, seeds=range(3), hidden=32, show_progress=False)


def test_every_target_method_and_seed_is_trained_and_summarized(by_target):
    assert by_target.targets == ["xor", "redundant"]
    assert len(by_target.runs) == 2 * 4 * 3  # targets x (2 methods + 2 single modalities) x seeds
    assert set(by_target.runs.target) == {"xor", "redundant"}
    for t in by_target.targets:
        sub = by_target.summary[by_target.summary.target == t]
        assert sub["is_best"].sum() == 1 and set(sub.method) == {"late", "concat", "unimodal:first", "unimodal:second"}


def test_late_fusion_cannot_represent_xor_and_the_verdicts_say_so(by_target):
    table = by_target.table()
    # an additive decision function gets at most 3 of XOR's 4 cells right (fusion/concat.py)
    assert table.loc["late", "xor"] < 0.8 < 0.9 < table.loc["concat", "xor"]
    assert table.loc["late", "redundant"] > 0.9 and table.loc["concat", "redundant"] > 0.9
    s = by_target.summary.set_index(["target", "method"])
    assert not s.loc[("xor", "concat"), "no_better_than_late"] and s.loc[("xor", "concat"), "p_vs_late"] < 0.05
    assert s.loc[("redundant", "concat"), "no_better_than_unimodal"]  # either modality alone has it all
    ceilings = {"xor": {"chance": 0.5, "fused": 1.0, "late": 0.5, "first": 0.5, "second": 0.4, "first+second": 1.0}}
    v = by_target.verdicts(ceilings).set_index("target")  # the best single modality's: not a pair's, not chance
    assert v.loc["xor", "best_method"] == "concat" and v.loc["xor", "ceiling_unimodal"] == 0.5
    assert (
        "concat" not in v.loc["xor", "no_better_than_late"]
        and "concat" in v.loc["redundant", "no_better_than_unimodal"]
    )
    assert pd.isna(v.loc["redundant", "ceiling_fused"])  # no ceilings given for it


def test_the_heatmap_has_a_cell_per_method_and_target_and_frames_each_best(by_target):
    fig = plot_targets(by_target.summary, {"xor": {"fused": 1.0, "first": 0.5, "second": 0.4, "first+second": 1.0}})
    ax = fig.axes[0]
    assert len(ax.texts) == 4 * 2
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["xor", "redundant"]
    assert "fused 1.00" in ax.get_xticklabels()[0].get_text() and "1 mod. 0.50" in ax.get_xticklabels()[0].get_text()
    assert len(ax.patches) == 2  # one framed best per target
    rows = [t.get_text() for t in ax.get_yticklabels()]
    text = {(rows[int(t.get_position()[1])], int(t.get_position()[0])): t for t in ax.texts}
    s = by_target.summary.set_index(["target", "method"])
    for j, target in enumerate(["xor", "redundant"]):
        for m in ("concat", "late"):
            grey = text[(m, j)].get_color() == "#bbbbbb"
            assert grey == bool(s.loc[(target, m), "no_better_than_late"]), (target, m)
    assert text[("concat", 1)].get_color() == "#bbbbbb" and text[("concat", 0)].get_color() != "#bbbbbb"


def test_no_targets_is_an_error():
    with pytest.raises(ValueError, match="at least one target"):
        across_targets(["late"], {}, TrainConfig(epochs=1))
