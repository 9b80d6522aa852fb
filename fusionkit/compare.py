"""Fusion-method comparison: every method x several seeds under one training budget, unimodal
baselines alongside, optionally each tuned with the same search budget (``fusionkit.grid``), mean
and 95% confidence intervals, and a paired test against the best; the best is chosen on
validation. The trainings run on an executor: this process or Ray (``fusionkit.grid.executors``).

On a regression target (``num_classes`` 0, float labels) the runs carry ``test_mse``,
``test_mae``, ``test_r2`` and ``val_mse``: the comparison reports and tests ``test_mse`` and
selects on ``val_mse``, lower being better (:func:`metrics_of`; the direction of every metric is
:func:`fusionkit.evaluate.higher_is_better`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fusionkit import tracking
from fusionkit.evaluate import higher_is_better
from fusionkit.fusion import get
from fusionkit.grid.executors import Executor, SerialExecutor
from fusionkit.grid.jobs import FUSION_PREFIX, UNIMODAL_PREFIX, TrainJob, in_dims_of
from fusionkit.grid.search import SearchResult, search_plan
from fusionkit.grid.space import check_overrides, default_config
from fusionkit.train import SplitData, TrainConfig

SELECTION = "val_accuracy"
#: a regression target's: what is reported and tested, what selects
REGRESSION_METRIC, REGRESSION_SELECTION = "test_mse", "val_mse"


def metrics_of(results: pd.DataFrame) -> tuple[str, str]:
    """(the test metric a comparison reports and tests, the validation metric it selects on) for
    its runs or summary: ``test_mse`` / ``val_mse`` for a regression target, else
    ``test_accuracy`` / ``val_accuracy``."""
    cols = set(results.columns)
    if REGRESSION_SELECTION in cols or f"{REGRESSION_SELECTION}_mean" in cols:
        return REGRESSION_METRIC, REGRESSION_SELECTION
    return "test_accuracy", SELECTION


def _methods(methods: Iterable[str], data: dict[str, SplitData], unimodal: bool) -> list[str]:
    methods = list(methods)
    for m in methods:
        get(m)  # unknown names fail here with the list of valid ones
    if unimodal:
        methods = [f"{UNIMODAL_PREFIX}{m}" for m in sorted(data["train"].features)] + methods
    return methods


def _grid_plan(methods, configs, seeds, cfg, keep_seed, tag, on_result, in_dims, num_classes):
    """One batch: every method x seed at ``configs``; returns (runs, models, failed)."""
    jobs = [TrainJob(m, s, configs[m], cfg, keep=(s == keep_seed), tag=tag) for m in methods for s in seeds]
    outcomes = yield jobs
    rows, models, errors = [], {}, {}
    for out in outcomes:
        if not out.ok:
            errors.setdefault(out.job.method, out.error)
            continue
        model = out.model(in_dims, num_classes) if out.state is not None else None
        rows.append(out.row)
        if model is not None:
            models[out.job.method] = model
        if on_result is not None:
            on_result(out.row, model, out.train_result(), tag)
    ok = {r["method"] for r in rows}
    failed = {m: errors[m] for m in methods if m not in ok}
    return pd.DataFrame(rows), models, failed


def compare(
    methods: Iterable[str], data: dict[str, SplitData], cfg: TrainConfig, num_classes: int, **options: Any
) -> pd.DataFrame:
    """One row per (method, seed), each method at its default configuration (no search):
    :func:`run` without a search, its runs table. ``options``: those of :func:`run` (``seeds``,
    ``unimodal``, ``hidden``, ``dropout``, ``executor``, ``on_result``, ``show_progress``)."""
    search = sorted(k for k in options if k.startswith("search_"))
    if search:
        raise TypeError(f"compare() runs no search; got {search}: call run() for a search")
    return run(methods, data, cfg, num_classes, **options).runs


@dataclass
class Comparison:
    """What 03 reports. ``runs`` / ``summary``: the comparison (each method at its chosen
    configuration: tuned when ``search_trials`` > 0, else its defaults); ``untuned_runs`` /
    ``untuned_summary``: every method at its defaults (the same tables when nothing was
    searched); ``configs``: method -> the configuration it was reported with; ``models``: the
    first seed's model of each method (for the robustness and interpretability studies);
    ``search``: the trials and choices (None without search); ``failed``: method -> error."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    untuned_runs: pd.DataFrame
    untuned_summary: pd.DataFrame
    configs: dict[str, dict[str, Any]]
    models: dict[str, Any]
    search: SearchResult | None = None
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def tuned(self) -> bool:
        return self.search is not None

    def rankings(self, metric: str | None = None) -> pd.DataFrame:
        """The untuned and the tuned ranking side by side: mean +- 95% CI of ``metric`` (default:
        :func:`metrics_of`), rank (1 = best by mean test score, for reading; the best method
        itself is chosen on validation), the validation score, and the chosen configuration."""
        metric = metric or metrics_of(self.untuned_summary)[0]
        return side_by_side(self.untuned_summary, self.summary if self.tuned else None, self.configs, metric)


def side_by_side(
    untuned: pd.DataFrame, tuned: pd.DataFrame | None, configs: dict[str, dict], metric: str
) -> pd.DataFrame:
    select = metrics_of(untuned)[1]
    low_first = not higher_is_better(metric)
    cols = [f"{metric}_mean", f"{metric}_ci95", f"{select}_mean", "is_best"]
    out = untuned.set_index("method")[cols].add_prefix("untuned_")
    out["untuned_rank"] = out[f"untuned_{metric}_mean"].rank(ascending=low_first, method="min").astype(int)
    if tuned is not None:
        t = tuned.set_index("method")[cols].add_prefix("tuned_")
        t["tuned_rank"] = t[f"tuned_{metric}_mean"].rank(ascending=low_first, method="min").astype(int)
        out = out.join(t, how="outer")
        out["gain"] = out[f"tuned_{metric}_mean"] - out[f"untuned_{metric}_mean"]
    out["config"] = [json.dumps(configs.get(m, {}), sort_keys=True) for m in out.index]
    order = f"tuned_{metric}_mean" if tuned is not None else f"untuned_{metric}_mean"
    return out.sort_values(order, ascending=low_first).reset_index()


def run(
    methods: Iterable[str],
    data: dict[str, SplitData],
    cfg: TrainConfig,
    num_classes: int,
    *,
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    unimodal: bool = True,
    hidden: int = 128,
    dropout: float = 0.1,
    search_trials: int = 0,
    search_metric: str | None = None,
    search_space: dict[str, Any] | None = None,
    untuned_seeds: int = 0,
    executor: Executor | None = None,
    on_result: Callable[..., None] | None = None,
    show_progress: bool = True,
) -> Comparison:
    """The comparison: every method (and each modality alone, ``unimodal``) x ``seeds`` at its
    default configuration; with ``search_trials`` > 0 also each method's search with that many
    trials (``fusionkit.grid.search``: validation only, the same budget for every method) and its
    chosen configuration retrained with every seed - the comparison reported. Trainings run on
    ``executor`` (default: this process). ``on_result(row, model, train_result, tag)`` is called
    for each finished per-seed training (``tag`` "grid" or "tuned"; ``model`` is the trained model
    for the first seed, else None). ``num_classes`` 0: a regression target (float labels; the
    search then minimises ``val_mse`` unless ``search_metric`` says otherwise). ``untuned_seeds``
    (with a search): the untuned grid - the ranking shown beside the tuned one - on the first that
    many seeds only (0: every seed); the first seed stays in it, and is the search's trial 0."""

    seeds = list(seeds)
    if not 0 <= untuned_seeds <= len(seeds):
        raise ValueError(f"untuned_seeds={untuned_seeds}: expected 0 (every seed) to {len(seeds)} (the seeds given)")
    if untuned_seeds and search_trials <= 0:
        raise ValueError(
            "untuned_seeds is set but search_trials is 0: without a search the untuned grid is the comparison, "
            "trained on every seed"
        )
    own_metric = REGRESSION_SELECTION if data["train"].regression else SELECTION
    search_metric = search_metric or own_metric
    if search_trials > 0 and search_metric != own_metric:
        kind = "a regression target" if data["train"].regression else "a class target"
        raise ValueError(f"search_metric {search_metric!r}: {kind} is searched on {own_metric!r} (validation)")
    methods = _methods(methods, data, unimodal)
    if search_space and search_trials > 0:
        check_overrides(methods, search_space)
    elif search_space:
        raise ValueError("search_space is set but search_trials is 0: nothing would be searched")
    own = executor is None
    executor = executor or SerialExecutor(show_progress=show_progress)
    try:
        plan = _plan(methods, data, cfg, num_classes, seeds, hidden, dropout, search_trials, search_metric,
                     search_space, executor.memo, on_result, seeds[: untuned_seeds or len(seeds)])  # fmt: skip
        return executor.run_plan(plan, {"main": (data, num_classes)}, desc="comparison")
    finally:
        if own:
            executor.close()


def _plan(methods, data, cfg, num_classes, seeds, hidden, dropout, search_trials, search_metric, search_space, memo,
          on_result, untuned_seeds):  # fmt: skip
    """The whole comparison as one plan: the untuned grid (on ``untuned_seeds``), the search
    rounds, the tuned grid (on ``seeds``)."""

    in_dims = in_dims_of(data)
    defaults = {m: default_config(m, cfg, hidden, dropout) for m in methods}
    runs, models, failed = yield from _grid_plan(methods, defaults, untuned_seeds, cfg, seeds[0], "grid", on_result,
                                                 in_dims, num_classes)  # fmt: skip
    untuned = summarize(runs) if len(runs) else runs
    if search_trials <= 0:
        return Comparison(runs, untuned, runs, untuned, defaults, models, None, failed)
    found = yield from search_plan([m for m in methods if m not in failed], cfg, hidden=hidden, dropout=dropout,
                                   trials=search_trials, seed=seeds[0], metric=search_metric, overrides=search_space,
                                   memo=memo)  # fmt: skip
    tuned_methods = [m for m in methods if m in found.best]
    t_runs, t_models, t_failed = yield from _grid_plan(tuned_methods, found.best, seeds, cfg, seeds[0], "tuned",
                                                       on_result, in_dims, num_classes)  # fmt: skip
    failed = {**failed, **found.failed, **t_failed}
    return Comparison(t_runs, summarize(t_runs), runs, untuned, found.best, t_models, found, failed)


class PerRunLogger:
    """``on_result`` for :func:`run`: each per-seed training becomes a W&B run of its own
    (grouped with the pipeline run, named ``method/seedN`` - ``method/seedN/tuned`` for the
    tuned configuration's retrainings; its per-epoch history and its row logged)."""

    def __init__(self, run_dir, step: str, params: dict[str, Any], *, group: str, mode: str | None) -> None:
        self.run_dir, self.step, self.params = run_dir, step, dict(params)
        self.group, self.mode = group, mode

    def __call__(self, row: dict[str, Any], model, result, tag: str = "grid") -> None:
        run_params = {**self.params, "method": row["method"], "seed": row["seed"]}
        name = f"{row['method']}/seed{row['seed']}" + ("" if tag == "grid" else f"/{tag}")
        if tag != "grid":
            run_params["config"] = row.get("config", "")
        with tracking.start(self.run_dir, self.step, run_params, group=self.group, mode=self.mode, name=name) as t:
            for rec in result.history:
                t.log(rec, step=rec["epoch"])
            t.summary(row)


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


def chosen_config(method: str, comparison_csv: str | Path) -> dict[str, Any]:
    """The configuration 03 reported ``method`` with (its tuned one when 03 searched), from the
    summary's ``config`` column; empty when the table has none (an earlier fusionkit)."""
    path = Path(comparison_csv)
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    rows = df[df["method"] == method]
    if "config" not in df.columns or rows.empty or not isinstance(rows["config"].iloc[0], str):
        return {}
    return json.loads(rows["config"].iloc[0])


@dataclass
class MethodConfig:
    """The settings a method is trained with: the shared ones and the method's own
    (``fusion_kwargs``), from a configuration dict (``fusionkit.grid.jobs``)."""

    lr: float
    weight_decay: float
    hidden: int
    dropout: float
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, method: str, comparison_csv: str | Path | None, **defaults) -> MethodConfig:
        """``defaults`` (lr, weight_decay, hidden, dropout) overridden by the configuration 03
        reported ``method`` with (:func:`chosen_config`) when ``comparison_csv`` is given."""
        config = {**defaults, **(chosen_config(method, comparison_csv) if comparison_csv else {})}
        own = {k[len(FUSION_PREFIX) :]: v for k, v in config.items() if k.startswith(FUSION_PREFIX)}
        return cls(
            float(config["lr"]), float(config["weight_decay"]), int(config["hidden"]), float(config["dropout"]), own
        )


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95% t confidence interval of the mean."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def paired_p(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided") -> float:
    """The paired t-test's p-value over seeds of ``a`` against ``b`` (``alternative``
    "greater": that ``a`` is higher - better for accuracy; "less" for a metric where lower is
    better, e.g. MSE); 1.0 when the two are equal on every seed."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.allclose(a - b, 0):
        return 1.0
    return float(stats.ttest_rel(a, b, alternative=alternative).pvalue)


def summarize(
    results: pd.DataFrame, metric: str | None = None, alpha: float = 0.05, select: str | None = None
) -> pd.DataFrame:
    """Per method: mean and 95% CI of the test metrics, the mean of the validation metric
    ``select``, parameters, time; a paired t-test over seeds of ``metric`` against the best fusion
    method (``p_vs_best``; ``worse_than_best`` when p < alpha and the method's mean is worse).
    ``metric`` / ``select`` default to :func:`metrics_of` the results (a regression target:
    ``test_mse`` / ``val_mse``).

    The best fusion method (``is_best``) is the one with the best mean ``select`` (the highest, or
    the lowest for a metric where lower is better, e.g. ``val_mse``): it is chosen on the
    validation split, never on the test split it is then scored on (ties: the first in the
    results' order). Rows are sorted best first by ``metric``."""
    default_metric, default_select = metrics_of(results)
    metric, select = metric or default_metric, select or default_select
    higher = higher_is_better(select)
    metrics = [c for c in results.columns if c.startswith("test_")]
    g = results.groupby("method", sort=False)
    out = pd.DataFrame({"n_seeds": g.size()})
    for c in metrics:
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_ci95"] = g[c].apply(lambda s: ci95(s.to_numpy()))
    out[f"{select}_mean"] = g[select].mean()
    out["params"] = g["params"].first()
    if "config" in results.columns:
        out["config"] = g["config"].first()
    out["train_time_s"] = g["train_time_s"].mean()
    out["infer_samples_per_s"] = g["infer_samples_per_s"].mean()
    out["kind"] = ["unimodal" if m.startswith(UNIMODAL_PREFIX) else "fusion" for m in out.index]
    fusion = out[out["kind"] == "fusion"]
    pool = (fusion if len(fusion) else out)[f"{select}_mean"]
    best = pool.idxmax() if higher else pool.idxmin()
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
        p = paired_p(a, b, alternative="two-sided")
        pvals.append(p)
        worse.append(bool(p < alpha and (a.mean() > b.mean()) == higher_is_better(metric)))
    out["p_vs_best"] = pvals
    out["worse_than_best"] = worse
    out["is_best"] = out.index == best
    return out.sort_values(f"{metric}_mean", ascending=not higher_is_better(metric)).reset_index()


# --- the comparison on several targets (the interaction types of fusionkit.data.shapes) -------

LATE = "late"


@dataclass
class TargetComparison:
    """The comparison on several targets of one dataset (03's interaction-type study): every
    method at its defaults x seeds on each target. ``runs``: one row per (target, method, seed);
    ``summary``: one row per (target, method) - :func:`summarize`'s columns (the best chosen on
    validation, per target) and, where ``late`` and the unimodal baselines ran, the one-sided
    paired t-tests over seeds ``p_vs_late`` / ``p_vs_unimodal`` (that the method beats late
    fusion / the single modality best on validation) with ``no_better_than_late`` /
    ``no_better_than_unimodal`` where p >= ``alpha``; ``failed``: (target, method) -> error."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(self.summary["target"]))

    def table(self, metric: str | None = None) -> pd.DataFrame:
        """Methods x targets: the mean of ``metric`` (default: :func:`metrics_of`; rows in the
        order of the mean over targets, best first)."""
        metric = metric or metrics_of(self.summary)[0]
        t = self.summary.pivot(index="method", columns="target", values=f"{metric}_mean")[self.targets]
        return t.loc[t.mean(axis=1).sort_values(ascending=not higher_is_better(metric)).index]

    def verdicts(self, ceilings: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
        """One row per target: the best method (on validation) with its test mean +- CI, late
        fusion's and the best single modality's test means, the ceilings (``ceilings``: target ->
        {"fused": .., "late": .., "<modality>": .., other keys ignored}, e.g. the dataset's
        documented ones; ``ceiling_unimodal`` is the best single modality's), and the methods no
        better than late fusion / than the best single modality."""
        rows = []
        for t in self.targets:
            sub = self.summary[self.summary.target == t].set_index("method")
            metric, select = metrics_of(sub.dropna(axis=1, how="all"))
            name = metric[len("test_") :]
            fusion = sub[sub.kind == "fusion"]
            best = str(fusion.index[fusion["is_best"]][0]) if fusion["is_best"].any() else None
            uni = sub[sub.kind == "unimodal"].sort_values(
                f"{select}_mean", ascending=not higher_is_better(select), kind="stable"
            )
            c = dict((ceilings or {}).get(t, {}))
            row: dict[str, Any] = {
                "target": t,
                "best_method": best,
                f"best_{name}": None if best is None else float(sub.loc[best, f"{metric}_mean"]),
                f"best_{name}_ci95": None if best is None else float(sub.loc[best, f"{metric}_ci95"]),
                f"late_{name}": float(sub.loc[LATE, f"{metric}_mean"]) if LATE in sub.index else None,
                "best_unimodal": str(uni.index[0]) if len(uni) else None,
                f"best_unimodal_{name}": float(uni[f"{metric}_mean"].iloc[0]) if len(uni) else None,
                "ceiling_fused": c.get("fused"),
                "ceiling_late": c.get("late"),
                "ceiling_unimodal": max((c[m] for m in _modalities(sub.index) if m in c), default=None),
            }
            for col, name in (("no_better_than_late", "late"), ("no_better_than_unimodal", "unimodal")):
                if col in fusion:
                    row[f"no_better_than_{name}"] = ", ".join(m for m in fusion.index if bool(fusion.loc[m, col]))
            rows.append(row)
        return pd.DataFrame(rows)


def _modalities(methods: Iterable[str]) -> list[str]:
    """The modalities of the unimodal baselines among ``methods``."""
    return [m[len(UNIMODAL_PREFIX) :] for m in methods if m.startswith(UNIMODAL_PREFIX)]


def across_targets(
    methods: Iterable[str],
    data: Mapping[str, tuple[dict[str, SplitData], int]],
    cfg: TrainConfig,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    unimodal: bool = True,
    hidden: int = 128,
    dropout: float = 0.1,
    alpha: float = 0.05,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> TargetComparison:
    """Every method (and each modality alone) x ``seeds`` at its defaults on each target of
    ``data`` (target -> (splits, number of classes)), all the trainings in one batch on
    ``executor`` (default: this process)."""
    seeds = list(seeds)
    if not data:
        raise ValueError("across_targets needs at least one target")
    first = next(iter(data.values()))[0]
    methods = _methods(methods, first, unimodal)
    own = executor is None
    executor = executor or SerialExecutor(show_progress=show_progress)
    try:
        plan = _targets_plan(methods, data, cfg, seeds, hidden, dropout, alpha)
        return executor.run_plan(plan, dict(data), desc="comparison by target")
    finally:
        if own:
            executor.close()


def _targets_plan(methods, data, cfg, seeds, hidden, dropout, alpha):
    configs = {m: default_config(m, cfg, hidden, dropout) for m in methods}
    jobs = [TrainJob(m, s, configs[m], cfg, data=t, tag=f"target:{t}") for t in data for m in methods for s in seeds]
    outcomes = yield jobs
    rows, failed = [], {}
    for out in outcomes:
        if out.ok:
            rows.append({"target": out.job.data, **out.row})
        else:
            failed.setdefault((out.job.data, out.job.method), out.error or "failed")
    runs = pd.DataFrame(rows)
    parts = []
    for t in data:
        # a regression target's runs lack the accuracies and a class target's the MSE: drop them
        r = runs[runs.target == t].drop(columns="target").dropna(axis=1, how="all") if len(runs) else runs
        if not len(r):
            continue
        part = summarize(r, alpha=alpha)
        _against(part, r, alpha)
        part.insert(0, "target", t)
        parts.append(part)
    summary = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return TargetComparison(runs, summary, failed, alpha)


def _against(summary: pd.DataFrame, runs: pd.DataFrame, alpha: float, metric: str | None = None) -> None:
    """Add the one-sided paired tests against late fusion and the best single modality (on
    validation) to one target's ``summary``, in place (``metric``: default :func:`metrics_of`;
    "better" in its direction)."""
    default_metric, select = metrics_of(runs)
    metric = metric or default_metric
    better = "greater" if higher_is_better(metric) else "less"
    by_seed = {m: g.set_index("seed")[metric] for m, g in runs.groupby("method")}
    uni = summary[summary.kind == "unimodal"].sort_values(
        f"{select}_mean", ascending=not higher_is_better(select), kind="stable"
    )
    refs = {"late": LATE if LATE in by_seed else None, "unimodal": str(uni["method"].iloc[0]) if len(uni) else None}
    for name, ref in refs.items():
        if ref is None:
            continue
        ps = []
        for m in summary["method"]:
            if m == ref or m not in by_seed:
                ps.append(float("nan"))
                continue
            common = by_seed[ref].index.intersection(by_seed[m].index)
            if len(common) < 2:
                ps.append(float("nan"))
                continue
            ps.append(paired_p(by_seed[m].loc[common], by_seed[ref].loc[common], alternative=better))
        summary[f"p_vs_{name}"] = ps
        summary[f"no_better_than_{name}"] = [
            bool(k == "fusion" and m != ref and not (p < alpha))
            for m, k, p in zip(summary["method"], summary["kind"], ps)
        ]


# --- the comparison once per fold of the leave-one-group-out protocol (fusionkit.data.groups) -

CALIBRATED = "late_calibrated"
DROPOUT_SUFFIX = "+modality_dropout"
ANCHOR_PREFIX = "baseline:"


@dataclass
class FoldComparison:
    """The comparison once per fold (leave one group - speaker, patient, site - out; the next
    group validates). ``runs``: one row per (fold, method, seed) - the fusion methods and the
    single modalities, the robust options (``<method>+modality_dropout``, ``late_calibrated``:
    late fusion of the single-modality models with weights chosen on the fold's validation
    group) and the linear anchors (``baseline:<name>``, one row per fold); ``per_fold``: one row
    per (fold, method) - the seed-mean (and CI over seeds) of the test accuracy, the seed-mean
    validation accuracy, ``best_unimodal`` (the single modality best on the fold's validation
    group) and ``gain`` (the test accuracy minus that modality's); ``summary``: one row per method - the
    mean over folds of each fold's seed-mean test accuracy with its 95% CI over folds, the mean
    validation accuracy, and the gain over the fold's best single modality (mean, CI, one-sided
    paired t-test over folds ``p_gain``: that the method is better); ``is_best``: the fusion
    method with the highest mean validation accuracy over folds (never test)."""

    runs: pd.DataFrame
    per_fold: pd.DataFrame
    summary: pd.DataFrame
    failed: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def folds(self) -> list[str]:
        return list(dict.fromkeys(self.per_fold["fold"]))

    def table(self, metric: str = "test_accuracy") -> pd.DataFrame:
        """Methods x folds: the seed-mean of ``metric`` (rows in the summary's order)."""
        t = self.per_fold.pivot(index="method", columns="fold", values=f"{metric}_mean")[self.folds]
        return t.loc[[m for m in self.summary["method"] if m in t.index]]

    def headline(self) -> dict[str, Any]:
        """What 03 logs as its summary about the protocol: the best fusion method (on
        validation) with its accuracy, CI and gain over the best single modality."""
        s = self.summary.set_index("method")
        best = str(s.index[s["is_best"]][0]) if s["is_best"].any() else None
        uni = s[s.kind == "unimodal"].sort_values(f"{SELECTION}_mean", ascending=False, kind="stable")
        out: dict[str, Any] = {"loso_folds": len(self.folds)}
        if best is not None:
            out.update({"loso_best_method": best, "loso_best_accuracy": float(s.loc[best, "test_accuracy_mean"]),
                        "loso_best_accuracy_ci95": float(s.loc[best, "test_accuracy_ci95"]),
                        "loso_best_gain": float(s.loc[best, "gain_mean"]),
                        "loso_best_gain_ci95": float(s.loc[best, "gain_ci95"]),
                        "loso_best_p_gain": float(s.loc[best, "p_gain"])})  # fmt: skip
        if len(uni):
            out["loso_best_unimodal"] = str(uni.index[0])
            out["loso_best_unimodal_accuracy"] = float(uni["test_accuracy_mean"].iloc[0])
        return out


def across_folds(
    methods: Iterable[str],
    folds: Mapping[str, tuple[dict[str, SplitData], int]],
    cfg: TrainConfig,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    hidden: int = 128,
    dropout: float = 0.1,
    dropout_methods: Iterable[str] = ("concat", "gmu"),
    modality_dropout: float = 0.3,
    calibrated: bool = True,
    anchors: Mapping[str, Mapping[str, tuple[dict[str, SplitData], str]]] | None = None,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> FoldComparison:
    """Every method and each modality alone x ``seeds`` at its defaults on each fold of ``folds``
    (fold -> (splits, number of classes), e.g. :meth:`fusionkit.index.FeatureIndex.by_fold`), all
    the trainings in one batch on ``executor``; ``dropout_methods`` also trained with
    ``modality_dropout`` (0 skips them); ``calibrated``: late fusion with validation-chosen
    weights of each seed's single-modality models; ``anchors``: name -> fold -> (splits, modality)
    for :func:`fusionkit.baseline.logistic_regression` (e.g. ``{"audio_mfcc_lr": ...}`` on the
    ``mfcc`` encoder's features)."""
    from dataclasses import replace

    seeds = list(seeds)
    if not folds:
        raise ValueError("across_folds needs at least one fold")
    first = next(iter(folds.values()))[0]
    methods = _methods(methods, first, True)
    robust = [m for m in dropout_methods] if modality_dropout > 0 and modality_dropout != cfg.modality_dropout else []
    for m in robust:
        get(m)
    own = executor is None
    executor = executor or SerialExecutor(show_progress=show_progress)
    try:
        plan = _folds_plan(methods, robust, replace(cfg, modality_dropout=modality_dropout) if robust else cfg, folds,
                           cfg, seeds, hidden, dropout, calibrated)  # fmt: skip
        runs, failed = executor.run_plan(plan, dict(folds), desc="comparison by fold")
    finally:
        if own:
            executor.close()
    rows = []
    for name, by_fold in (anchors or {}).items():
        from fusionkit.baseline import logistic_regression

        for fold, (splits, modality) in by_fold.items():
            r = logistic_regression(splits, modality)
            rows.append({"fold": fold, "method": f"{ANCHOR_PREFIX}{name}", "seed": seeds[0],
                         "test_accuracy": r["test_accuracy"], "val_accuracy": r["val_accuracy"],
                         "config": json.dumps({"C": r["C"]})})  # fmt: skip
    if rows:
        runs = pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)
    per_fold, summary = _fold_summaries(runs, list(folds))
    return FoldComparison(runs, per_fold, summary, failed)


def _folds_plan(methods, robust, robust_cfg, folds, cfg, seeds, hidden, dropout, calibrated):
    from fusionkit.baseline import calibrated_late
    from fusionkit.train import predict

    configs = {m: default_config(m, cfg, hidden, dropout) for m in set(methods) | set(robust)}
    jobs = [TrainJob(m, s, configs[m], cfg, data=f, keep=calibrated and m.startswith(UNIMODAL_PREFIX), tag=f"fold:{f}")
            for f in folds for m in methods for s in seeds]  # fmt: skip
    jobs += [TrainJob(m, s, configs[m], robust_cfg, data=f, tag=f"fold:{f}{DROPOUT_SUFFIX}")
             for f in folds for m in robust for s in seeds]  # fmt: skip
    outcomes = yield jobs
    rows, failed, uni = [], {}, {}
    for out in outcomes:
        j = out.job
        name = j.method + (DROPOUT_SUFFIX if j.tag.endswith(DROPOUT_SUFFIX) else "")
        if not out.ok:
            failed.setdefault((j.data, name), out.error or "failed")
            continue
        rows.append({"fold": j.data, **out.row, "method": name})
        if out.state is not None:
            splits, n_classes = folds[j.data]
            model = out.model(in_dims_of(splits), n_classes)
            mod = j.method[len(UNIMODAL_PREFIX) :]
            uni.setdefault((j.data, j.seed), {})[mod] = {
                sp: predict(model, splits[sp].select([mod]))[0].float().log_softmax(dim=1) for sp in ("val", "test")
            }
    n_mods = len(next(iter(folds.values()))[0]["train"].features)
    for (fold, seed), lp in uni.items():
        if len(lp) < n_mods:
            continue  # a single-modality model failed: no calibrated late fusion for this seed
        splits = folds[fold][0]
        r = calibrated_late(lp, {sp: splits[sp].labels for sp in ("val", "test")})
        rows.append({"fold": fold, "method": CALIBRATED, "seed": seed, "test_accuracy": r["test_accuracy"],
                     "val_accuracy": r["val_accuracy"], "config": r["weights"]})  # fmt: skip
    return pd.DataFrame(rows), failed


def _kind(method: str) -> str:
    if method.startswith(UNIMODAL_PREFIX):
        return "unimodal"
    return "baseline" if method.startswith(ANCHOR_PREFIX) else "fusion"


def _fold_summaries(runs: pd.DataFrame, folds: list[str], metric: str = "test_accuracy"):
    """(per_fold, summary) of :class:`FoldComparison` from its runs."""
    g = runs.groupby(["fold", "method"], sort=False)
    per = g.agg(**{f"{metric}_mean": (metric, "mean"), f"{SELECTION}_mean": (SELECTION, "mean"),
                   "n_seeds": (metric, "size")}).reset_index()  # fmt: skip
    per[f"{metric}_ci95"] = g[metric].apply(lambda s: ci95(s.to_numpy())).to_numpy()
    per["kind"] = [_kind(m) for m in per["method"]]
    best_uni = {}
    for f in folds:
        u = per[(per.fold == f) & (per.kind == "unimodal")].sort_values(
            f"{SELECTION}_mean", ascending=False, kind="stable"
        )
        if len(u):
            best_uni[f] = (str(u["method"].iloc[0]), float(u[f"{metric}_mean"].iloc[0]))
    per["best_unimodal"] = [best_uni.get(f, (None, np.nan))[0] for f in per["fold"]]
    per["gain"] = [a - best_uni.get(f, (None, np.nan))[1] for f, a in zip(per["fold"], per[f"{metric}_mean"])]
    rows = []
    for m, sub in per.groupby("method", sort=False):
        sub = sub.set_index("fold").reindex([f for f in folds if f in set(sub["fold"])])
        acc, gain = sub[f"{metric}_mean"].to_numpy(), sub["gain"].to_numpy()
        ok = ~np.isnan(gain)
        p = float("nan")
        if ok.sum() >= 2 and not np.allclose(gain[ok], 0):
            p = float(stats.ttest_1samp(gain[ok], 0.0, alternative="greater").pvalue)
        rows.append({"method": m, "kind": _kind(m), "n_folds": len(sub), f"{metric}_mean": float(acc.mean()),
                     f"{metric}_ci95": ci95(acc), f"{metric}_min": float(acc.min()),
                     f"{SELECTION}_mean": float(sub[f"{SELECTION}_mean"].mean()),
                     "gain_mean": float(gain[ok].mean()) if ok.any() else float("nan"),
                     "gain_ci95": ci95(gain[ok]), "p_gain": p})  # fmt: skip
    summary = pd.DataFrame(rows)
    fusion = summary[summary.kind == "fusion"]
    best = fusion[f"{SELECTION}_mean"].idxmax() if len(fusion) else None
    summary["is_best"] = summary.index == best
    return per, summary.sort_values(f"{metric}_mean", ascending=False, kind="stable").reset_index(drop=True)
