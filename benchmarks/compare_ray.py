"""The fusion comparison on Ray Tune against the serial loop, and what tuning changes.

Three measurements, each selectable, on a feature index written by 02 (``--features-index``):

* ``grid``: the comparison as 03 runs it without search (every method + the unimodal baselines,
  ``--seeds`` seeds, the notebook's default settings) through the serial loop and through a local
  Ray on this machine's cores (wall time including Ray's start-up, which is also reported on its
  own); the per-seed metrics must be identical. Target: Ray >= 1.7x faster on 2 cores.
* ``search``: the same with a ``--trials``-trials search per method on Ray: wall time, trainings.
* ``rankings``: the tuned and the untuned ranking with 95% CIs (from ``search``'s run, or run here)
  and whether tuning changes which method wins (chosen on validation).

    python benchmarks/compare_ray.py --features-index reports/latest/features.json \\
        [--measure grid,search,rankings] [--trials 20] [--epochs 40] [--out benchmarks/results/compare_ray.json]

The grid's serial and Ray runs alternate ``--rounds`` times (the machine is shared: interference
only slows a run down, so the best of each is compared; every run is kept in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

import fusionkit.fusion as fusion
from fusionkit import compare
from fusionkit.grid import RayExecutor, SerialExecutor
from fusionkit.index import FeatureIndex
from fusionkit.train import TrainConfig

DETERMINISTIC = ["method", "seed", "config", "val_accuracy", "best_epoch", "epochs_run", "params", "test_accuracy"]


def _identical(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    key = ["method", "seed"]
    a, b = (
        a[DETERMINISTIC].sort_values(key).reset_index(drop=True),
        b[DETERMINISTIC].sort_values(key).reset_index(drop=True),
    )
    return a.equals(b)


def _winner(summary: pd.DataFrame) -> str:
    return compare.best_method(summary)


def _ranking(summary: pd.DataFrame) -> list[dict]:
    cols = ["method", "test_accuracy_mean", "test_accuracy_ci95", "val_accuracy_mean", "is_best"]
    return summary[cols].round(4).to_dict("records")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features-index", required=True)
    p.add_argument("--target", default="label")
    p.add_argument("--measure", default="grid,search,rankings")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/compare_ray.json")
    args = p.parse_args()
    measure = set(args.measure.split(","))

    index = FeatureIndex.read(args.features_index)
    splits, class_names = index.splits(target=args.target)
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience)
    methods = fusion.available()
    seeds = range(args.seeds)
    out: dict = {
        "features_index": str(args.features_index),
        "dataset": index.dataset,
        "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "methods": len(methods),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "load_before": os.getloadavg(),
    }
    kw = dict(seeds=seeds, show_progress=False)
    if "grid" in measure:
        runs = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            serial = compare.run(
                methods, splits, cfg, len(class_names), executor=SerialExecutor(show_progress=False), **kw
            )
            t_serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            ex = RayExecutor(show_progress=False)
            try:
                on_ray = compare.run(methods, splits, cfg, len(class_names), executor=ex, **kw)
            finally:
                ex.close()
            t_ray = time.perf_counter() - t0
            runs.append({"round": r, "serial_s": round(t_serial, 2), "ray_s": round(t_ray, 2),
                         "ray_startup_s": round(ex.startup_s, 2), "trainings": len(serial.runs),
                         "identical": _identical(serial.runs, on_ray.runs), "load": os.getloadavg()})  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
        best_serial, best_ray = min(x["serial_s"] for x in runs), min(x["ray_s"] for x in runs)
        out["grid"] = {"runs": runs, "serial_s": best_serial, "ray_s": best_ray,
                       "speedup": round(best_serial / best_ray, 3), "target_speedup": 1.7,
                       "identical": all(x["identical"] for x in runs)}  # fmt: skip
    if "search" in measure or "rankings" in measure:
        t0 = time.perf_counter()
        ex = RayExecutor(show_progress=False)
        try:
            tuned = compare.run(methods, splits, cfg, len(class_names), executor=ex, search_trials=args.trials, **kw)
        finally:
            ex.close()
        wall = time.perf_counter() - t0
        out["search"] = {"trials_per_method": args.trials, "wall_s": round(wall, 1), "ray_startup_s": round(ex.startup_s, 2),
                         "trainings_asked": len(tuned.untuned_runs) + len(tuned.search.trials) + len(tuned.runs),
                         "failed": tuned.failed}  # fmt: skip
        out["rankings"] = {
            "untuned": _ranking(tuned.untuned_summary),
            "tuned": _ranking(tuned.summary),
            "untuned_winner": _winner(tuned.untuned_summary),
            "tuned_winner": _winner(tuned.summary),
            "tuning_changes_the_winner": _winner(tuned.untuned_summary) != _winner(tuned.summary),
            "chosen_configs": tuned.configs,
            "side_by_side": tuned.rankings().round(4).to_dict("records"),
        }
        print(tuned.rankings().round(4).to_string(), flush=True)
    out["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k in ("grid", "search")}, indent=1, default=str))


if __name__ == "__main__":
    main()
