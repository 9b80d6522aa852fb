"""Two notebook chains sharing the CPU, the dataset folder and the feature cache, against one alone.

Tried as a new user would: ``fusionkit run --profile smoke`` once alone, then twice started at the
same moment with the same ``dataset_dir`` and ``cache_dir`` and separate report folders (each phase
on fresh data and cache folders, so the features are computed). Measures the wall times and their
ratio (target: two at once <= 2.5x one alone, with their 03s overlapping in time), each notebook's
start, end and duration (from the runner's own lines, timestamped as they arrive, and ``run.json``),
whether the 03s overlapped, whether the chains' numbers are identical (``tests/notebooks/pinned.py``:
every table, task summary and headline, timings left out) and equal to the pinned smoke numbers, and
how many times each feature cache entry was computed (the cache's ``extractions.jsonl``). The chains
run with the environment this script has: ``fusionkit run`` itself sets ``OMP_WAIT_POLICY=PASSIVE``
and ``OMP_NUM_THREADS`` unless they are set (``--env`` adds variables, e.g. to try another policy).
Writes JSON to ``--out`` and prints a summary.

    python benchmarks/concurrent_chains.py [--profile smoke] [--out benchmarks/results/concurrent_chains.json]
    python benchmarks/concurrent_chains.py --env OMP_WAIT_POLICY=ACTIVE --out /tmp/active.json   # spinning threads
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.notebooks.pinned, and this checkout's fusionkit

from fusionkit.features import extractions  # noqa: E402
from fusionkit.runtime import available_cpus  # noqa: E402
from tests.notebooks import pinned  # noqa: E402

EVENT = re.compile(r"^\[fusionkit\] (\d\d_[a-z_]+): (running|done in ([0-9.]+) s)")
TARGET = 2.5


def _chain_cmd(profile: str, run_id: str, reports: Path, data: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "fusionkit.cli", "run", "--profile", profile, "--run-id", run_id,
        "--reports-dir", str(reports), "--no-progress",  # cell output streamed: it says when a lock is waited for
        "-p", f"common.dataset_dir={data}", "-p", f"common.cache_dir={cache}",
    ]  # fmt: skip


def run_phase(names: list[str], work: Path, profile: str, env: dict[str, str], timeout: float) -> dict:
    """Start one chain per name at the same moment on ``work``'s fresh data and cache folders."""
    data, cache = work / "data", work / "cache"
    procs, logs, tails, readers = {}, {}, {}, []
    t0 = time.monotonic()
    for name in names:
        cmd = _chain_cmd(profile, name, work / f"reports-{name}", data, cache)
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, bufsize=1)  # fmt: skip
        logs[name], tails[name] = [], collections.deque(maxlen=60)

        def read(name=name):
            for line in procs[name].stdout:
                line = line.rstrip("\n")
                tails[name].append(line)
                if EVENT.match(line) or "waiting for another process" in line:
                    logs[name].append((round(time.monotonic() - t0, 2), line))

        readers.append(threading.Thread(target=read, daemon=True))
        readers[-1].start()
    ends = {}
    for name, p in procs.items():
        try:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            raise SystemExit(f"chain {name} ran past --timeout {timeout:.0f} s") from None
        ends[name] = round(time.monotonic() - t0, 2)
    for r in readers:
        r.join(timeout=10)
    chains = {}
    for name, p in procs.items():
        run_dir = work / f"reports-{name}" / "runs" / name
        if p.returncode != 0:
            tail = "\n".join(tails[name])
            raise SystemExit(f"chain {name} failed (exit {p.returncode}):\n{tail}")
        state = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        notebooks: dict[str, dict] = {}
        for ts, line in logs[name]:
            m = EVENT.match(line)
            if m:
                nb = notebooks.setdefault(m.group(1), {})
                nb["start_s" if m.group(2) == "running" else "end_s"] = ts
        for nb, info in notebooks.items():
            info["seconds"] = state["notebooks"][nb].get("seconds")  # the runner's own measurement
        chains[name] = {
            "wall_s": ends[name],
            "status": state["status"],
            "notebooks": notebooks,
            "waited_for": [
                {"at_s": ts, "what": _waited_for(line)}
                for ts, line in logs[name]
                if "waiting for another process" in line
            ],
            "run_dir": str(run_dir),
        }
    computed = collections.Counter(r["entry"] for r in extractions(cache))
    return {
        "wall_s": max(ends.values()),
        "chains": chains,
        "feature_entries": len(computed),
        "feature_computations": sum(computed.values()),
        "computed_more_than_once": {k: n for k, n in computed.items() if n > 1},
        "extractions": extractions(cache),
    }


def _waited_for(line: str) -> str:
    """What a ``[fusionkit] waiting for another process to finish with X (lock ...)`` line names."""
    return line.split("finish with ", 1)[-1].split(" (lock ")[0]


def _overlap(a: dict, b: dict) -> float:
    if not all(k in x for x in (a, b) for k in ("start_s", "end_s")):
        return 0.0
    return round(max(0.0, min(a["end_s"], b["end_s"]) - max(a["start_s"], b["start_s"])), 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", help="the chains' profile (default: smoke)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (run folders, caches)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/concurrent_chains.json"))
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this checkout

    work = args.work or Path(tempfile.mkdtemp(prefix="fk-concurrent-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = dt.datetime.now().isoformat(timespec="seconds")
    try:
        print(f"[bench] one {args.profile} chain alone ...", flush=True)
        alone = run_phase(["alone"], work / "alone", args.profile, env, args.timeout)
        print(f"[bench] alone: {alone['wall_s']:.1f} s; two chains at once ...", flush=True)
        two = run_phase(["a", "b"], work / "two", args.profile, env, args.timeout)
        print(f"[bench] two at once: {two['wall_s']:.1f} s", flush=True)
        nums = {k: pinned.numbers(c["run_dir"]) for k, c in [("alone", alone["chains"]["alone"]),
                                                             ("a", two["chains"]["a"]), ("b", two["chains"]["b"])]}  # fmt: skip
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    want = json.loads(pinned.PIN.read_text(encoding="utf-8"))
    pin_cpus = want.pop("cpus")
    a03 = two["chains"]["a"]["notebooks"].get("03_fusion_comparison", {})
    b03 = two["chains"]["b"]["notebooks"].get("03_fusion_comparison", {})
    ratio = round(two["wall_s"] / alone["wall_s"], 3)
    report = {
        "benchmark": "concurrent_chains",
        "profile": args.profile,
        "started": started,
        "machine": {
            "cpu_count": os.cpu_count(),
            "available_cpus": available_cpus(),
            "python": platform.python_version(),
            "load_avg_start": [round(x, 2) for x in load_start],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "env": {k: env.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")} | {"extra": args.env},
        "alone": alone,
        "two": two,
        "ratio": ratio,
        "target_ratio": TARGET,
        "met": ratio <= TARGET and _overlap(a03, b03) > 0,
        "overlap_03_s": _overlap(a03, b03),
        "metrics": {
            "a_vs_b_differences": pinned.differences(nums["a"], nums["b"], tol=0.0),
            "alone_vs_a_differences": pinned.differences(nums["a"], nums["alone"], tol=0.0),
            "pinned_differences": {k: pinned.differences(v, want) for k, v in nums.items()}
            if available_cpus() == pin_cpus
            else f"not compared: the pin was made on {pin_cpus} CPUs, this process has {available_cpus()}",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)

    print(f"\n{'notebook':<24} {'alone s':>8} {'a s':>8} {'b s':>8}   a start-end      b start-end")
    for nb in alone["chains"]["alone"]["notebooks"]:
        one = alone["chains"]["alone"]["notebooks"][nb]
        a, b = two["chains"]["a"]["notebooks"].get(nb, {}), two["chains"]["b"]["notebooks"].get(nb, {})
        span = lambda x: f"{x.get('start_s', 0):6.1f}-{x.get('end_s', 0):6.1f}"  # noqa: E731
        print(f"{nb:<24} {one.get('seconds', 0):>8.1f} {a.get('seconds', 0):>8.1f} {b.get('seconds', 0):>8.1f}"
              f"   {span(a)}  {span(b)}")  # fmt: skip
    m = report["metrics"]
    pins = m["pinned_differences"]
    pin_note = {k: len(v) for k, v in pins.items()} if isinstance(pins, dict) else pins
    waits = ", ".join(f"{k} {len(c['waited_for'])}" for k, c in two["chains"].items())
    print(
        f"\nalone {alone['wall_s']:.1f} s, two at once {two['wall_s']:.1f} s: ratio {ratio:.2f} (target <= {TARGET}), "
        f"03s overlapping {report['overlap_03_s']:.1f} s\n"
        f"numbers: a vs b {len(m['a_vs_b_differences'])} differences, a vs alone {len(m['alone_vs_a_differences'])}, "
        f"vs the pin {pin_note}\n"
        f"features, two at once: {two['feature_entries']} entries, {two['feature_computations']} computations "
        f"(more than once: {two['computed_more_than_once'] or 'none'}); lock waits: "
        f"{waits}\n"
        f"load average {report['machine']['load_avg_start'][0]:.2f} at the start, "
        f"{report['machine']['load_avg_end'][0]:.2f} at the end; written to {args.out}"
    )
    return report


if __name__ == "__main__":
    main()
