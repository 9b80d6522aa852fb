"""The per-method search: equal budget, validation only, the same seed the same choices."""

import pandas as pd
import pytest
import torch

from fusionkit import compare
from fusionkit.grid import SerialExecutor, search
from fusionkit.train import SplitData, TrainConfig
from tests.synthetic import label_problem

CFG = TrainConfig(epochs=4, batch_size=32, patience=3)
METHODS = ["concat", "lmf", "unimodal:audio"]


@pytest.fixture(scope="module")
def data():
    return label_problem(n=150, seed=3)


def _search(data, seed=0, **kw):
    with SerialExecutor(show_progress=False) as ex:
        return search(METHODS, {"main": (data, 6)}, CFG, executor=ex, hidden=16, dropout=0.1, trials=3, seed=seed, **kw)


def test_every_method_gets_the_same_number_of_trials_and_trial_0_is_its_defaults(data):
    res = _search(data)
    assert res.trials.groupby("method").size().to_dict() == {m: 3 for m in METHODS}
    first = res.trials[res.trials.trial == 0].set_index("method")
    assert (first["config.lr"] == CFG.lr).all() and (first["config.hidden"] == 16).all()
    assert first.loc["lmf", "config.fusion.rank"] == 4  # lmf's registered default
    later = res.trials[res.trials.trial > 0]
    assert later["config.lr"].nunique() > 1  # the sampler proposes other configurations
    for m in METHODS:  # the chosen trial is the best on validation (ties: the earliest)
        t = res.trials[res.trials.method == m]
        best = t[t.is_best].iloc[0]
        assert best.val_accuracy == t.val_accuracy.max()
        assert best.trial == t[t.val_accuracy == t.val_accuracy.max()].trial.min()
        assert res.best[m]["lr"] == best["config.lr"]


def test_the_same_seed_chooses_the_same_configurations_and_another_seed_others(data):
    a, b, c = _search(data, seed=0), _search(data, seed=0), _search(data, seed=1)
    cols = [x for x in a.trials.columns if x.startswith("config.") or x == "val_accuracy"]
    pd.testing.assert_frame_equal(a.trials[cols], b.trials[cols])
    assert a.best == b.best
    assert not a.trials[cols].equals(c.trials[cols])


def test_permuting_the_test_labels_changes_no_choice_of_the_search(data):
    t = data["test"]
    perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(0))
    shuffled = {**data, "test": SplitData(t.features, t.labels[perm], t.ids, t.mask)}
    a, b = _search(data), _search(shuffled)
    assert a.best == b.best
    assert a.trials.val_accuracy.tolist() == b.trials.val_accuracy.tolist()
    assert a.trials.test_accuracy.tolist() != b.trials.test_accuracy.tolist()


def test_a_failing_trial_is_named_with_its_configuration_and_the_grid_goes_on(data):
    # lmf needs rank >= 1: every lmf trial fails, the other methods complete
    c = compare.run(["concat", "lmf"], data, CFG, 6, seeds=[0, 1], hidden=16, search_trials=2,
                    search_space={"fusion.rank": [0]}, unimodal=False, show_progress=False)  # fmt: skip
    assert set(c.runs.method) == {"concat"}  # the tuned comparison has no lmf
    assert set(c.untuned_runs.method) == {"concat", "lmf"}  # its defaults (rank 4) train
    assert "lmf" in c.failed
    assert "lmf/seed0 [search]" in c.failed["lmf"] and '"fusion.rank": 0' in c.failed["lmf"]
    assert "rank" in c.failed["lmf"].split(":", 1)[1]
    assert "concat" in c.search.best


def test_the_tuned_comparison_retrains_the_chosen_configuration_with_every_seed(data):
    c = compare.run(["concat", "lmf"], data, CFG, 6, seeds=[0, 1, 2], hidden=16, search_trials=3, show_progress=False)
    assert c.tuned and set(c.runs.method) == set(c.untuned_runs.method)
    for m in c.runs.method.unique():
        runs = c.runs[c.runs.method == m]
        assert sorted(runs.seed) == [0, 1, 2]
        assert set(runs.config) == {compare.json.dumps(c.configs[m], sort_keys=True)}
        # the first seed's tuned run is the chosen search trial itself (trained once)
        trial = c.search.trials[(c.search.trials.method == m) & c.search.trials.is_best].iloc[0]
        assert runs[runs.seed == 0].val_accuracy.iloc[0] == trial.val_accuracy
    side = c.rankings()
    assert {"untuned_rank", "tuned_rank", "gain", "config"} <= set(side.columns)
    assert len(side) == c.runs.method.nunique()
    assert c.summary.is_best.sum() == 1


def test_bad_search_settings_are_clear_errors(data):
    with pytest.raises(ValueError, match="search_metric 'test_accuracy'"):
        _search(data, metric="test_accuracy")
    with pytest.raises(KeyError, match="unknown fusion method 'nope'"):
        compare.run(["nope"], data, CFG, 6, seeds=[0], search_trials=2, show_progress=False)
    with pytest.raises(ValueError, match="search_trials is 0"):
        compare.run(["concat"], data, CFG, 6, seeds=[0], search_space={"lr": 0.01}, show_progress=False)


def test_the_untuned_grid_on_fewer_seeds_is_the_same_trainings_and_the_tuned_one_keeps_every_seed(data):
    full = compare.run(["concat"], data, CFG, 6, seeds=[0, 1, 2], hidden=16, search_trials=2, unimodal=False,
                       show_progress=False)  # fmt: skip
    part = compare.run(["concat"], data, CFG, 6, seeds=[0, 1, 2], hidden=16, search_trials=2, untuned_seeds=2, unimodal=False,
                       show_progress=False)  # fmt: skip
    assert sorted(part.untuned_runs.seed) == [0, 1]
    assert part.untuned_summary.n_seeds.tolist() == [2]
    cols = ["seed", "val_accuracy", "test_accuracy"]
    pd.testing.assert_frame_equal(part.untuned_runs[cols], full.untuned_runs[full.untuned_runs.seed < 2][cols])
    # the search (its trial 0 is the untuned seed 0) and the tuned comparison on every seed are unchanged
    assert part.search.best == full.search.best
    pd.testing.assert_frame_equal(part.runs[cols], full.runs[cols])
    with pytest.raises(ValueError, match="untuned_seeds=4"):
        compare.run(["concat"], data, CFG, 6, seeds=[0, 1, 2], search_trials=2, untuned_seeds=4, show_progress=False)
    with pytest.raises(ValueError, match="untuned_seeds is set but search_trials is 0"):
        compare.run(["concat"], data, CFG, 6, seeds=[0, 1, 2], untuned_seeds=2, show_progress=False)


def test_the_memo_serves_a_job_again_only_on_the_same_data(data, monkeypatch):
    """An executor remembers finished jobs; a later plan that gives *other* data under the same
    name (another target, other features) must train again, not get the first data's result."""
    from fusionkit.grid import TrainJob, executors

    calls = []
    attempts = executors._attempts
    monkeypatch.setattr(executors, "_attempts", lambda job, *a: calls.append(job.name) or attempts(job, *a))
    other = label_problem(n=150, seed=9)
    job = TrainJob("concat", 0, {"hidden": 16}, CFG)
    with SerialExecutor(show_progress=False) as ex:
        (first,) = ex.run([job], {"main": (data, 6)})
        (same,) = ex.run([TrainJob("concat", 0, {"hidden": 16}, CFG)], {"main": (data, 6)})
        assert calls == ["concat/seed0"] and same.row == first.row, "the same job on the same data: from the memo"
        (changed,) = ex.run([job], {"main": (other, 6)})
        assert calls == ["concat/seed0"] * 2
    (fresh,) = SerialExecutor(show_progress=False).run([job], {"main": (other, 6)})
    assert changed.row["val_accuracy"] == fresh.row["val_accuracy"] != first.row["val_accuracy"]
    relabelled = {k: SplitData(v.features, v.labels.flip(0), v.ids, v.mask) for k, v in data.items()}
    assert executors.data_fingerprint(data, 6) != executors.data_fingerprint(relabelled, 6)
    assert executors.data_fingerprint(data, 6) != executors.data_fingerprint(data, 7)
    assert executors.data_fingerprint(data, 6) == executors.data_fingerprint(dict(data), 6)
