"""The one training loop: the record, early stopping on a named metric with the best state back,
no monitor, determinism, the opt-in checkpoint and exact resume (after an exception, after
kill -9, after early stopping)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training import problem

ROOT = Path(__file__).resolve().parents[2]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_record_log_and_best_state_of_the_named_metric():
    logged, snaps = [], []
    model, res = problem.run(log=logged, snapshots=snaps, monitor="val_fixed", mode="max")
    assert list(res.history[0]) == ["epoch", "train_loss", "train_abs", "val_mse", "val_fixed", "lr"]
    assert logged == res.history and [h["epoch"] for h in res.history] == list(range(problem.EPOCHS))
    assert res.monitor == "val_fixed" and res.best_value == 0.7 and res.best_epoch == 1  # the tie at 3 is no gain
    _, by_mse = problem.run()
    mses = [h["val_mse"] for h in by_mse.history]
    assert by_mse.best_value == min(mses) and by_mse.best_epoch == mses.index(min(mses))  # mode="min"
    best = snaps[1]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())  # the best epoch's state, not the last
    assert not model.training and res.epochs_run == problem.EPOCHS and res.train_time_s > 0


def test_mode_max_and_patience_stop_early():
    _, res = problem.run(mode="max", patience=2)  # "the worst mse": improves rarely, stops early
    mses = [h["val_mse"] for h in res.history]
    assert res.best_value == max(mses) and res.best_epoch == mses.index(max(mses))
    assert res.epochs_run < problem.EPOCHS and res.epochs_run - 1 - res.best_epoch == 2


def test_without_a_monitor_every_epoch_runs_and_the_last_state_stays():
    snaps = []
    model, res = problem.run(monitor=None, patience=1, snapshots=snaps)
    assert res.epochs_run == problem.EPOCHS and res.best_epoch == problem.EPOCHS - 1 and math.isnan(res.best_value)
    assert res.monitor == "" and all(torch.equal(v, snaps[-1][k]) for k, v in model.state_dict().items())


def test_a_missing_monitor_is_named():
    with pytest.raises(
        KeyError, match=r"no 'val_acc' to monitor \(got \['epoch', 'lr', 'train_abs', 'train_loss', 'val_fixed'"
    ):
        problem.run(monitor="val_acc")


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, ra = problem.run()
    b, rb = problem.run()
    _, rc = problem.run(seed=1)
    assert ra.history == rb.history and same_state(a, b)
    assert rc.history != ra.history  # the seed reaches the shuffles and the dropout


def test_no_checkpoint_file_unless_a_path_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problem.run(epochs=2)
    assert not list(tmp_path.rglob("*"))
    problem.run(tmp_path / "sub" / "ck.pt", epochs=2)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ck.pt", "sub"]  # no temp file left
    state = torch.load(tmp_path / "sub" / "ck.pt", weights_only=True)  # plain data: loads without unpickling
    assert state["epoch"] == 1 and len(state["history"]) == 2


def test_resume_after_an_exception_ends_where_an_uninterrupted_run_ends(tmp_path):
    full, full_res = problem.run()
    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        problem.run(ck, die_after=2)
    model, res = problem.run(ck, resume=True)
    assert res.history == full_res.history and res.best_epoch == full_res.best_epoch and same_state(model, full)
    fresh, fresh_res = problem.run(ck)  # resume=False ignores the file: a fresh run
    assert fresh_res.history == full_res.history


def test_resume_after_kill_9_ends_where_an_uninterrupted_run_ends(tmp_path):
    full, full_res = problem.run()
    ck = tmp_path / "ck.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tests.training.problem", str(ck), "1"], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert torch.load(ck, weights_only=True)["epoch"] == 1 and not list(tmp_path.glob(".ck.pt.tmp*"))
    model, res = problem.run(ck, resume=True)
    assert res.history == full_res.history and same_state(model, full)


def test_resume_of_a_run_that_stopped_early_is_finished(tmp_path):
    ck = tmp_path / "ck.pt"
    first, res = problem.run(ck, mode="max", patience=2)
    assert res.epochs_run < problem.EPOCHS
    logged = []
    again, res2 = problem.run(ck, resume=True, mode="max", patience=2, log=logged)
    assert not logged and res2.history == res.history and res2.best_epoch == res.best_epoch
    assert same_state(again, first)
