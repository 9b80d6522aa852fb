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
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"chain failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return tmp / "reports" / "runs" / "smoke-test", proc
