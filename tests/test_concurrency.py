"""Several processes sharing the feature cache and dataset folders (real processes, real locks):
what two of them need is computed once, entries that differ are computed side by side, and nothing
another process is writing is removed or read half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from fusionkit.data.base import load_dataset
from fusionkit.features import _write_skipped, cache_path, extract_features, extractions, load_cached, read_feature_set
from tests.test_features import count_forward, make_dataset, tiny_image_encoder

REPO = Path(__file__).resolve().parents[1]
KW = {"split": "train", "chunk_size": 4, "batch_size": 2, "num_workers": 0, "progress": False}

#: a process extracting the tiny image encoder's features of a dataset; every forward pass appends
#: a line to ``forwards`` (shared by the processes); it starts when ``go`` exists, and with
#: ``hold`` it stops at its first forward pass (entry lock held) until ``hold`` is removed
WORKER = """
import json, os, sys, time
from pathlib import Path
import torch
from fusionkit.data.base import load_dataset
from fusionkit.features import extract_features
from tests.test_features import tiny_image_encoder

root, cache, forwards, go, hold, output = sys.argv[1:7]
torch.set_num_threads(1)
ds = load_dataset(root)
enc = tiny_image_encoder()
def hook(module, args):
    with open(forwards, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if hold != "-":
        Path(hold + ".reached").touch()
        while Path(hold).exists():
            time.sleep(0.02)
    time.sleep(0.05)  # a slow encoder: the other process certainly arrives while this one computes
enc.register_forward_pre_hook(hook)
Path(go + f".ready-{os.getpid()}").touch()
while not Path(go).exists():
    time.sleep(0.01)
fs = extract_features(ds, "image", enc, cache_dir=cache, output=output, split="train", chunk_size=4,
                      batch_size=2, num_workers=0, progress=False)
print(json.dumps({"pid": os.getpid(), "path": str(fs.path), "ids": fs.ids, "values": fs.values.flatten().tolist()}))
"""


def _start(ds_root: Path, cache: Path, tmp: Path, *, hold: Path | None = None, output: str = "pooled"):
    args = [str(ds_root), str(cache), str(tmp / "forwards"), str(tmp / "go"), str(hold or "-"), output]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _wait_for(cond, timeout: float = 60, what: str = "") -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


def _forwards(tmp: Path) -> list[str]:
    f = tmp / "forwards"
    return f.read_text().split() if f.exists() else []


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "ds", n=12)


def test_two_processes_needing_the_same_entry_compute_it_once(ds, tmp_path):
    cache = tmp_path / "cache"
    procs = [_start(ds.root, cache, tmp_path) for _ in range(2)]
    _wait_for(lambda: len(list(tmp_path.glob("go.ready-*"))) == 2, what="both workers ready")
    (tmp_path / "go").touch()  # both ask for the entry at the same moment
    (a, err_a), (b, err_b) = (_finish(p) for p in procs)

    forwards = _forwards(tmp_path)
    assert len(forwards) == 6, "12 records in batches of 2: one extraction's forward passes, not two"
    assert len(set(forwards)) == 1  # all by one process
    waiter = b if forwards[0] == str(a["pid"]) else a
    assert "waiting for another process" in (err_b if waiter is b else err_a)
    assert a["path"] == b["path"] and a["ids"] == b["ids"] == [s.id for s in ds.split("train")]
    assert a["values"] == b["values"]  # the waiter read the computing process's result
    fs = read_feature_set(a["path"])  # sound: size and sha256 check out against the sidecar
    assert fs.values.flatten().tolist() == a["values"]
    log = extractions(cache)
    assert [(r["entry"], r["records_computed"], r["pid"]) for r in log] == [
        (Path(a["path"]).relative_to(cache).with_suffix("").as_posix(), 12, int(forwards[0]))
    ]


def test_different_entries_are_computed_side_by_side(ds, tmp_path, monkeypatch):
    """Process A holds entry X (pooled) while it computes it; this process computes entry Y (grid)
    meanwhile, then asks for X, waits for A and reads A's result without a forward pass."""
    cache = tmp_path / "cache"
    hold = tmp_path / "hold"
    hold.touch()
    (tmp_path / "go").touch()
    a = _start(ds.root, cache, tmp_path, hold=hold, output="pooled")
    try:
        _wait_for(lambda: Path(str(hold) + ".reached").exists(), what="A inside its computation")
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            enc = tiny_image_encoder()
            calls = count_forward(enc, monkeypatch)
            grid = extract_features(ds, "image", enc, cache_dir=cache, output="grid", **KW)  # Y: not blocked by X
            assert len(calls) == 6 and grid.values.shape[:1] == (12,)
            assert a.poll() is None, "A still holds X"
            x_path = cache_path(ds, enc, "train", "pooled", cache)
            assert not x_path.exists()

            got: dict = {}
            t = threading.Thread(
                target=lambda: got.update(fs=extract_features(ds, "image", enc, cache_dir=cache, **KW))
            )
            t.start()
            time.sleep(1.0)
            assert t.is_alive(), "X is A's to compute: this process waits for it"
            hold.unlink()  # let A finish
            t.join(timeout=120)
            assert not t.is_alive()
        finally:
            torch.set_num_threads(before)
        a_out, _ = _finish(a)
    finally:
        if a.poll() is None:
            a.kill()
    assert len(calls) == 6, "X was read, not computed again"
    assert got["fs"].values.flatten().tolist() == a_out["values"]
    assert sorted(r["entry"].rsplit("/", 1)[1] for r in extractions(cache)) == ["train-grid", "train-pooled"]


HOLDER = """
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_an_entry_being_written_is_neither_removed_nor_read(ds, tmp_path):
    """Another process holds the entry's lock and has renamed its values file into place, the
    sidecar not yet: a reader neither deletes that file (it would take the writer's work) nor
    uses it; ``extract_features`` waits for the writer, ``load_cached`` says "not cached"."""
    cache = tmp_path / "cache"
    enc = tiny_image_encoder()
    path = cache_path(ds, enc, "train", "pooled", cache)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"values of a write in progress")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path.with_suffix(".lock"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    done = threading.Event()
    # the writer dies without finishing: the waiter, now holding the lock, removes its file and rebuilds
    with pytest.warns(RuntimeWarning, match="unusable, rebuilding"):
        try:
            assert holder.stdout.readline().strip() == "held"
            assert load_cached(ds, "image", enc, split="train", cache_dir=cache) is None
            assert path.read_bytes() == b"values of a write in progress"
            t = threading.Thread(target=lambda: (extract_features(ds, "image", enc, cache_dir=cache, **KW), done.set()))
            t.start()
            time.sleep(0.8)
            assert not done.is_set() and path.read_bytes() == b"values of a write in progress"
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        t.join(timeout=120)
    assert done.is_set() and read_feature_set(path).ids == [s.id for s in ds.split("train")]


UPDATER = """
import sys
from pathlib import Path
from fusionkit.features import _write_skipped
path, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for k in range(n):
    _write_skipped(path, f"{me}-{k}", {f"r{k}": {"file": None, "reason": "test"}})
"""


def test_skipped_json_keeps_every_process_update(tmp_path):
    """``skipped.json`` is shared by the entries of one encoder folder: read, changed and replaced
    under its lock, no update of a concurrent process is lost."""
    path = tmp_path / "skipped.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", UPDATER, str(path), me, "40"], cwd=REPO, stderr=subprocess.PIPE)
        for me in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    assert sorted(json.loads(path.read_text())) == sorted(f"{me}-{k}" for me in "ab" for k in range(40))
    _write_skipped(path, "a-0", {})  # an empty split is removed from the file
    assert "a-0" not in json.loads(path.read_text())


GENERATE = """
import json, os, sys, time
from pathlib import Path
from fusionkit.data import shapes

root, count, go = sys.argv[1:4]
real = shapes._write_all
def counted(out, params, progress):
    with open(count, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)  # the other process certainly arrives while this one writes
    real(out, params, progress)
shapes._write_all = counted
Path(go + f".ready-{os.getpid()}").touch()
while not Path(go).exists():
    time.sleep(0.01)
ds = shapes.generate(root, n=24, seed=3, image_size=48, progress=False)
print(json.dumps({"hash": ds.manifest_hash(), "n": len(ds)}))
"""


def test_two_processes_preparing_one_dataset_folder_write_it_once(tmp_path):
    root = tmp_path / "shapes"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GENERATE, str(root), str(tmp_path / "count"), str(tmp_path / "go")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    _wait_for(lambda: len(list(tmp_path.glob("go.ready-*"))) == 2, what="both ready")
    (tmp_path / "go").touch()
    outs = [_finish(p) for p in procs]
    assert len((tmp_path / "count").read_text().split()) == 1, "generated once; the second process reused it"
    assert outs[0][0] == outs[1][0] == {"hash": load_dataset(root).manifest_hash(), "n": 24}
    assert any("waiting for another process" in err and "dataset folder" in err for _, err in outs)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_the_lock_of_a_dead_holder_is_free(tmp_path):
    """flock: the kernel releases a lock when its holder dies, even by kill -9 (no stale locks)."""
    from fusionkit.locks import LockBusy, file_lock

    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockBusy, match="thing x is in use by another process"), file_lock(lock, "thing x", wait=False):
        pass
    holder.kill()
    holder.wait(timeout=30)
    with file_lock(lock, "thing x", wait=False):
        assert os.path.exists(lock)
