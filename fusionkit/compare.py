"""Fusion-method comparison: every method x several seeds under one training budget, unimodal
baselines alongside, mean and 95% confidence intervals, and a paired test against the best."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fusionkit import tracking
from fusionkit.evaluate import classification_metrics
from fusionkit.fusion import get
from fusionkit.model import build_model
from fusionkit.progress import progress
from fusionkit.train import SplitData, TrainConfig, predict, seed_everything, train

UNIMODAL_PREFIX = "unimodal:"


def run_one(
    method: str,
    data: dict[str, SplitData],
    cfg: TrainConfig,
    num_classes: int,
    hidden: int = 128,
    dropout: float = 0.1,
    fusion_kwargs: dict[str, Any] | None = None,
    log_fn: Callable[[dict], None] | None = None,
):
    """Train one method (or ``unimodal:<modality>``) with ``cfg.seed``; returns (model, row, TrainResult)."""
    if method.startswith(UNIMODAL_PREFIX):
        mod = method[len(UNIMODAL_PREFIX) :]
        data = {k: v.select([mod]) for k, v in data.items()}
        fusion_name = "concat"
    else:
        fusion_name = method
    in_dims = {m: int(x.shape[-1]) for m, x in data["train"].features.items()}
    seed_everything(cfg.seed)
    model = build_model(fusion_name, in_dims, num_classes, hidden=hidden, dropout=dropout, **(fusion_kwargs or {}))
    res = train(model, data["train"], data["val"], cfg, log_fn=log_fn)
    t0 = time.perf_counter()
    logits, _ = predict(model, data["test"])
    infer_s = time.perf_counter() - t0
    test = classification_metrics(logits, data["test"].labels, num_classes)
    row = {
        "method": method,
        "seed": cfg.seed,
        **{f"test_{k}": v for k, v in test.items()},
        "val_accuracy": res.best_val_acc,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "params": model.num_parameters(),
        "train_time_s": res.train_time_s,
        "infer_samples_per_s": len(data["test"]) / max(infer_s, 1e-9),
    }
    return model, row, res


def compare(
    methods: Iterable[str],
    data: dict[str, SplitData],
    cfg: TrainConfig,
    num_classes: int,
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    unimodal: bool = True,
    hidden: int = 128,
    dropout: float = 0.1,
    on_result: Callable[[dict, Any, Any], None] | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """One row per (method, seed). ``on_result(row, model, train_result)`` is called after each run
    (logging, keeping models)."""
    methods = list(methods)
    if unimodal:
        methods = [f"{UNIMODAL_PREFIX}{m}" for m in sorted(data["train"].features)] + methods
    seeds = list(seeds)
    rows = []
    jobs = [(m, s) for m in methods for s in seeds]
    for method, seed in progress(jobs, enabled=show_progress, desc="method x seed"):
        model, row, res = run_one(method, data, replace(cfg, seed=seed), num_classes, hidden, dropout)
        rows.append(row)
        if on_result is not None:
            on_result(row, model, res)
    return pd.DataFrame(rows)


class PerRunLogger:
    """``on_result`` for :func:`compare`: each (method, seed) training becomes a W&B run of its
    own (grouped with the pipeline run, named ``method/seedN``; its per-epoch history and its row
    logged), and the models trained with ``keep_seed`` are kept in :attr:`models` (method ->
    model) for the robustness and interpretability studies."""

    def __init__(
        self, run_dir, step: str, params: dict[str, Any], *, group: str, mode: str | None, keep_seed: int
    ) -> None:
        self.run_dir, self.step, self.params = run_dir, step, dict(params)
        self.group, self.mode, self.keep_seed = group, mode, keep_seed
        self.models: dict[str, Any] = {}

    def __call__(self, row: dict[str, Any], model, result) -> None:
        run_params = {**self.params, "method": row["method"], "seed": row["seed"]}
        name = f"{row['method']}/seed{row['seed']}"
        with tracking.start(self.run_dir, self.step, run_params, group=self.group, mode=self.mode, name=name) as t:
            for rec in result.history:
                t.log(rec, step=rec["epoch"])
            t.summary(row)
        if row["seed"] == self.keep_seed:
            self.models[row["method"]] = model


def best_method(summary: pd.DataFrame) -> str:
    """The method :func:`summarize` marked best."""
    best = summary[summary.is_best]
    if best.empty:
        raise ValueError("the comparison summary marks no method as best (is_best)")
    return str(best.iloc[0]["method"])


def choose_method(method: str, comparison_csv: str | Path) -> str:
    """``method`` itself, or for "best" the best fusion method of 03's summary table."""
    if method != "best":
        get(method)  # unknown names fail here with the list of valid ones
        return method
    path = Path(comparison_csv)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: method='best' needs 03_fusion_comparison's summary (or name a method)"
        )
    df = pd.read_csv(path)
    best = df[df["is_best"]]
    if best.empty:
        raise ValueError(f"{path}: no row has is_best = True")
    return str(best.iloc[0]["method"])


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95% t confidence interval of the mean."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def summarize(
    results: pd.DataFrame, metric: str = "test_accuracy", alpha: float = 0.05, select: str = "val_accuracy"
) -> pd.DataFrame:
    """Per method: mean and 95% CI of the test metrics, the mean of the validation metric
    ``select``, parameters, time; a paired t-test over seeds of ``metric`` against the best fusion
    method (``p_vs_best``; ``worse_than_best`` when p < alpha).

    The best fusion method (``is_best``) is the one with the highest mean ``select``: it is chosen
    on the validation split, never on the test split it is then scored on (ties: the first in the
    results' order)."""
    metrics = [c for c in results.columns if c.startswith("test_")]
    g = results.groupby("method", sort=False)
    out = pd.DataFrame({"n_seeds": g.size()})
    for c in metrics:
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_ci95"] = g[c].apply(lambda s: ci95(s.to_numpy()))
    out[f"{select}_mean"] = g[select].mean()
    out["params"] = g["params"].first()
    out["train_time_s"] = g["train_time_s"].mean()
    out["infer_samples_per_s"] = g["infer_samples_per_s"].mean()
    out["kind"] = ["unimodal" if m.startswith(UNIMODAL_PREFIX) else "fusion" for m in out.index]
    fusion = out[out["kind"] == "fusion"]
    best = (fusion if len(fusion) else out)[f"{select}_mean"].idxmax()
    best_vals = results[results["method"] == best].set_index("seed")[metric]
    pvals, worse = [], []
    for m in out.index:
        vals = results[results["method"] == m].set_index("seed")[metric]
        common = best_vals.index.intersection(vals.index)
        if m == best or len(common) < 2:
            pvals.append(float("nan"))
            worse.append(False)
            continue
        a, b = best_vals.loc[common].to_numpy(), vals.loc[common].to_numpy()
        if np.allclose(a - b, 0):
            p = 1.0
        else:
            p = float(stats.ttest_rel(a, b).pvalue)
        pvals.append(p)
        worse.append(bool(p < alpha and a.mean() > b.mean()))
    out["p_vs_best"] = pvals
    out["worse_than_best"] = worse
    out["is_best"] = out.index == best
    return out.sort_values(f"{metric}_mean", ascending=False).reset_index()
