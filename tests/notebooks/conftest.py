"""The smoke chain, run once per session for every test that reads its run folder (the chain's
own checks, the report in a real browser)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    cmd = [
        sys.executable,
        "-m",
        "fusionkit.cli",
        "run",
        "--profile",
        "smoke",
        "--run-id",
        "smoke-test",
        "--reports-dir",
        str(tmp / "reports"),
        "--no-progress",
        "-p",
        f"common.dataset_dir={tmp / 'shapes'}",
        "-p",
        f"common.cache_dir={tmp / 'features'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)  # a hang guard
    assert proc.returncode == 0, f"chain failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return tmp / "reports" / "runs" / "smoke-test", proc


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory):
    """The chain on a regression target with a tabular modality: the regression profile at its
    smallest (60 scenes of 32 px with the record, two methods x two seeds of a few epochs, serial,
    one noise level, no modality-dropout study)."""
    tmp = tmp_path_factory.mktemp("regression_chain")
    overrides = {
        "common.dataset_dir": tmp / "shapes",
        "common.cache_dir": tmp / "features",
        "01.n_scenes": 60,
        "01.image_size": 32,
        "03.methods": "late,gmu",
        "03.n_seeds": 2,
        "03.epochs": 6,
        "03.executor": "serial",
        "03.robustness_levels": 1,
        "03.dropout_study": 0,
        "04.epochs": 6,
    }
    cmd = [sys.executable, "-m", "fusionkit.cli", "run", "--profile", "regression", "--run-id", "regression-test",
           "--reports-dir", str(tmp / "reports"), "--no-progress"]  # fmt: skip
    for k, v in overrides.items():
        cmd += ["-p", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)  # a hang guard
    assert proc.returncode == 0, f"chain failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return tmp / "reports" / "runs" / "regression-test", tmp / "shapes"
