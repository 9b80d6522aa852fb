import numpy as np
import pytest
from scipy import stats

from fusionkit.compare import ci95, compare, summarize
from fusionkit.train import TrainConfig
from tests.synthetic import label_problem


@pytest.fixture(scope="module")
def results():
    data = label_problem(n=240, seed=1)
    cfg = TrainConfig(epochs=12, batch_size=32, patience=5)
    return compare(["concat", "weighted"], data, cfg, num_classes=6, seeds=[0, 1, 2], hidden=32, show_progress=False)


def test_every_method_and_seed_with_unimodal_baselines(results):
    assert sorted(results.method.unique()) == ["concat", "unimodal:audio", "unimodal:image", "weighted"]
    assert len(results) == 4 * 3
    for col in ("test_accuracy", "test_macro_f1", "params", "train_time_s", "infer_samples_per_s"):
        assert results[col].notna().all()


def test_unimodal_baselines_stay_at_their_ceilings_and_fusion_beats_them(results):
    mean = results.groupby("method").test_accuracy.mean()
    assert mean["unimodal:image"] <= 1 / 3 + 0.08
    assert mean["unimodal:audio"] <= 1 / 2 + 0.08
    assert mean["concat"] > 0.9 and mean["weighted"] > 0.9


def test_summary_statistics(results):
    s = summarize(results).set_index("method")
    for m, g in results.groupby("method"):
        v = g.test_accuracy.to_numpy()
        assert s.loc[m, "test_accuracy_mean"] == pytest.approx(v.mean())
        half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
        assert s.loc[m, "test_accuracy_ci95"] == pytest.approx(half)
    best = s[s.is_best].index[0]
    assert best in ("concat", "weighted")
    assert s.loc["unimodal:image", "worse_than_best"]  # significantly worse (paired t-test)
    assert np.isnan(s.loc[best, "p_vs_best"])
    assert set(s.kind) == {"unimodal", "fusion"}


def test_ci95():
    assert np.isnan(ci95(np.array([0.5])))
    assert ci95(np.array([0.5, 0.5, 0.5])) == 0.0


def test_per_run_logger_logs_each_training_and_the_first_seeds_models_are_kept(tmp_path):
    import json

    from fusionkit.compare import PerRunLogger, best_method, run
    from fusionkit.train import accuracy, predict

    data = label_problem(n=120, seed=2)
    cfg = TrainConfig(epochs=3, batch_size=32, patience=5)
    runs = PerRunLogger(tmp_path, "03_fusion_comparison", {"lr": 0.1}, group="g", mode="disabled")
    comparison = run(["concat"], data, cfg, num_classes=6, seeds=[1, 2], hidden=16, on_result=runs, show_progress=False)
    res = comparison.runs
    assert sorted(comparison.models) == ["concat", "unimodal:audio", "unimodal:image"]
    for method, model in comparison.models.items():  # the kept model is the first seed's trained one
        sub = {k: v.select([method.split(":")[1]]) for k, v in data.items()} if ":" in method else data
        row = res[(res.method == method) & (res.seed == 1)].iloc[0]
        assert accuracy(predict(model, sub["test"])[0], sub["test"].labels) == pytest.approx(row.test_accuracy)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summaries = {r["run"]: r["data"] for r in recs if r["kind"] == "summary"}
    assert set(summaries) == {f"{m}/seed{s}" for m in res.method.unique() for s in (1, 2)}
    assert summaries["concat/seed2"]["test_accuracy"] == pytest.approx(
        float(res[(res.method == "concat") & (res.seed == 2)].test_accuracy.iloc[0])
    )
    configs = [r["data"] for r in recs if r["kind"] == "config" and r["run"] == "concat/seed1"]
    assert configs == [{"lr": 0.1, "method": "concat", "seed": 1}]
    epochs = [r for r in recs if r["kind"] == "metrics" and r["run"] == "concat/seed1"]
    assert [r["i"] for r in epochs] == list(range(len(epochs))) and epochs
    assert best_method(summarize(res)) in ("concat", "unimodal:audio", "unimodal:image")


def test_the_best_method_is_chosen_on_validation_not_on_test():
    import pandas as pd

    rows = []
    for m, val, test in (("a", 0.9, 0.6), ("b", 0.8, 0.95), ("unimodal:x", 0.7, 0.99)):
        for seed in range(3):
            rows.append({"method": m, "seed": seed, "val_accuracy": val, "test_accuracy": test + 0.01 * seed,
                         "params": 1, "train_time_s": 0.0, "infer_samples_per_s": 1.0})  # fmt: skip
    s = summarize(pd.DataFrame(rows)).set_index("method")
    assert s.is_best["a"] and not s.is_best["b"]  # b wins on test, a on validation
    assert s.loc["a", "val_accuracy_mean"] == pytest.approx(0.9)


def test_permuting_the_test_labels_changes_no_selection():
    """Test labels are touched only for reporting: shuffled, every test number moves and no choice does."""
    import torch

    from fusionkit.headline import Headline
    from fusionkit.train import SplitData

    data = label_problem(n=200, seed=4)
    t = data["test"]
    g = torch.Generator().manual_seed(0)
    shuffled = {**data, "test": SplitData(t.features, t.labels[torch.randperm(len(t), generator=g)], t.ids, t.mask)}
    cfg = TrainConfig(epochs=6, batch_size=32, patience=3)
    out = []
    for d in (data, shuffled):
        res = compare(
            ["concat", "weighted", "late"], d, cfg, num_classes=6, seeds=[0, 1], hidden=16, show_progress=False
        )
        out.append((res, summarize(res)))
    (ra, sa), (rb, sb) = out
    assert ra.val_accuracy.tolist() == rb.val_accuracy.tolist() and ra.best_epoch.tolist() == rb.best_epoch.tolist()
    assert not np.allclose(ra.test_accuracy, rb.test_accuracy)  # the test scores did move
    assert sa[sa.is_best].method.tolist() == sb[sb.is_best].method.tolist()
    ha, hb = (Headline.from_comparison(s, n_methods=3, n_seeds=2) for s in (sa, sb))
    assert (ha.best_fusion_method, ha.best_unimodal) == (hb.best_fusion_method, hb.best_unimodal)


@pytest.fixture(scope="module")
def by_fold():
    from fusionkit.compare import across_folds
    from fusionkit.data.groups import loso_folds
    from fusionkit.index import fold_splits
    from tests.synthetic import grouped_problem

    pool, groups = grouped_problem(n_groups=3, per_group=40, seed=0)
    folds = fold_splits(pool, groups, loso_folds(groups), 6)
    anchors = {"audio_lr": {f: (s, "audio") for f, (s, _) in folds.items()}}
    cfg = TrainConfig(epochs=4, batch_size=32, patience=5)
    res = across_folds(["concat", "late"], folds, cfg, seeds=[0], hidden=16, dropout_methods=["concat"],
                       anchors=anchors, show_progress=False)  # fmt: skip
    return folds, pool, groups, res


def test_loso_folds_hold_out_each_group_once_for_test(by_fold):
    folds, pool, groups, _ = by_fold
    group_of = dict(zip(pool.ids, groups, strict=True))
    tested = []
    for splits, _ in folds.values():
        seen = {sp: {group_of[i] for i in d.ids} for sp, d in splits.items()}
        assert all(len(seen[sp]) >= 1 for sp in ("train", "val", "test"))
        assert (
            not (seen["train"] & seen["val"])
            and not (seen["train"] & seen["test"])
            and not (seen["val"] & seen["test"])
        )
        assert sum(len(d) for d in splits.values()) == len(pool)  # every sample in one split of every fold
        tested += sorted(seen["test"])
    assert sorted(tested) == ["g0", "g1", "g2"]


def test_fold_comparison_rows_gains_and_choices(by_fold):
    folds, _, _, res = by_fold
    methods = set(res.summary["method"])
    assert methods == {"concat", "late", "unimodal:audio", "unimodal:image", "concat+modality_dropout",
                       "late_calibrated", "baseline:audio_lr"}  # fmt: skip
    assert (
        len(res.runs[res.runs.method == "concat"]) == 3 and len(res.runs[res.runs.method == "baseline:audio_lr"]) == 3
    )
    per = res.per_fold
    for f in res.folds:  # the gain is over the single modality best on the fold's validation group
        sub = per[per.fold == f].set_index("method")
        uni = sub[sub.kind == "unimodal"]["val_accuracy_mean"].idxmax()
        assert (sub["best_unimodal"] == uni).all()
        assert sub.loc["concat", "gain"] == pytest.approx(
            sub.loc["concat", "test_accuracy_mean"] - sub.loc[uni, "test_accuracy_mean"]
        )
    s = res.summary.set_index("method")
    g = per[per.method == "late"]["gain"].to_numpy()
    assert s.loc["late", "gain_mean"] == pytest.approx(g.mean()) and s.loc["late", "gain_ci95"] == pytest.approx(
        ci95(g)
    )
    assert s.loc["late", "p_gain"] == pytest.approx(stats.ttest_1samp(g, 0.0, alternative="greater").pvalue)
    fusion = s[s.kind == "fusion"]
    assert s.index[s.is_best].tolist() == [fusion["val_accuracy_mean"].idxmax()]  # chosen on validation
    assert res.headline()["loso_best_method"] == s.index[s.is_best][0] and res.headline()["loso_folds"] == 3
    assert res.table().shape == (len(methods), 3)
