"""The per-method search with an equal budget.

Every method (the unimodal baselines too) gets the same number of trials, ``trials``, each
trained with the same settings (epochs, patience, seed) on the train split and scored on the
validation split only (``metric``: ``val_accuracy``, maximised, or for a regression target
``val_mse``, minimised). Trial 0 of every method
is its default configuration (so a tuned method never ranks below itself untuned on validation)
unless the user's ``search_space`` overrides exclude it; the others come from Optuna's TPE sampler, seeded per method from ``seed`` and the method's name.

The search runs in rounds: round ``r`` asks every method's study for its ``r``-th configuration,
trains them all at once on the executor (the methods' trials run in parallel, on Ray across the
cluster), then tells each study its result in method order. A study only ever sees its own
results in a fixed order, so the same seed chooses the same configurations however the trials
were scheduled (``tests/grid/test_search.py``). The best trial of a method is the one with the
best validation score (ties: the earliest, so the defaults win a tie). A trial that fails
is recorded with its error; a method whose every trial fails is reported in ``failed``."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fusionkit.fusion.space import Choice, Float, Int
from fusionkit.grid.executors import Datasets, Executor, Memo, Plan
from fusionkit.grid.jobs import JobOutcome, TrainJob
from fusionkit.grid.space import contains, default_config, method_space, searched
from fusionkit.train import TrainConfig

METRICS = {"val_accuracy": "maximize", "val_mse": "minimize"}


@dataclass
class SearchResult:
    """``trials``: one row per (method, trial) - the configuration's keys as columns, the
    validation score, the test metrics (recorded, never used to choose), ``error``; ``best``:
    method -> the chosen configuration; ``failed``: method -> the error of its last trial."""

    trials: pd.DataFrame
    best: dict[str, dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)
    metric: str = "val_accuracy"
    outcomes: dict[str, JobOutcome] = field(default_factory=dict)  # method -> its best trial's outcome

    def chosen(self) -> pd.DataFrame:
        """One row per method: the chosen configuration, its trial and validation score."""
        rows = []
        for method, config in self.best.items():
            t = self.trials[(self.trials.method == method) & (self.trials.is_best)]
            rows.append({"method": method, "trial": int(t.trial.iloc[0]), self.metric: float(t[self.metric].iloc[0]),
                         "config": json.dumps(config, sort_keys=True), **config})  # fmt: skip
        return pd.DataFrame(rows)


def _distribution(dim):
    import optuna

    if isinstance(dim, Float):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Int):
        return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Choice):
        return optuna.distributions.CategoricalDistribution(list(dim.values))
    raise TypeError(f"not a search dimension: {dim!r}")


def _better(value: float, than: float, metric: str) -> bool:
    """Whether ``value`` of ``metric`` is strictly better than ``than`` (in ``METRICS``' direction)."""
    return value > than if METRICS[metric] == "maximize" else value < than


def method_seed(seed: int, method: str) -> int:
    """The sampler's seed for one method: stable across runs and machines (not Python's hash)."""
    return (int(seed) * 1_000_003 + zlib.crc32(method.encode())) % (2**31)


def search(
    methods: list[str],
    datasets: Datasets,
    cfg: TrainConfig,
    *,
    executor: Executor,
    **kwargs,
) -> SearchResult:
    """Search every method (see the module and :func:`search_plan` for the options) on
    ``executor``; returns the trials and the choices."""
    return executor.run_plan(search_plan(methods, cfg, memo=executor.memo, **kwargs), datasets, desc="search")


def search_plan(
    methods: list[str],
    cfg: TrainConfig,
    *,
    hidden: int,
    dropout: float,
    trials: int,
    seed: int = 0,
    metric: str = "val_accuracy",
    overrides: dict[str, Any] | None = None,
    data: str = "main",
    memo: Memo | None = None,
) -> Plan:
    """The search as a plan (``fusionkit.grid.executors``): one batch per round, every method's
    trial of that round in it; returns the :class:`SearchResult`. ``memo``: the executor's, whose
    weights of trials that are no longer a method's best are dropped as the search goes."""
    import optuna
    from optuna.trial import TrialState

    if metric not in METRICS:
        raise ValueError(f"search_metric {metric!r}: expected one of {sorted(METRICS)} (validation metrics only)")
    if trials < 1:
        raise ValueError("search needs at least 1 trial per method")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = {m: method_space(m, overrides) for m in methods}
    studies = {}
    for m in methods:
        sampler = optuna.samplers.TPESampler(seed=method_seed(seed, m), n_startup_trials=min(10, max(1, trials // 2)))
        studies[m] = optuna.create_study(direction=METRICS[metric], sampler=sampler)
    records: list[dict[str, Any]] = []
    best: dict[str, tuple[float, int, dict, JobOutcome]] = {}
    errors: dict[str, str] = {}
    for r in range(trials):
        asked, jobs = {}, []
        for m in methods:
            space = spaces[m]
            fixed = {k: v for k, v in space.items() if k not in searched(space)}
            defaults = {**default_config(m, cfg, hidden, dropout), **fixed}
            if r == 0 and contains({k: space[k] for k in (overrides or {}) if k in space}, defaults):
                config = defaults
                asked[m] = None
            else:
                trial = studies[m].ask({k: _distribution(d) for k, d in searched(space).items()})
                config = {**defaults, **trial.params}
                asked[m] = trial
            jobs.append(TrainJob(m, seed, config, cfg, data=data, keep=True, tag="search"))
        outcomes = yield jobs
        for m, job, out in zip(methods, jobs, outcomes):
            value = float(out.row[metric]) if out.ok else float("nan")
            trial = asked[m]
            dists = {k: _distribution(d) for k, d in searched(spaces[m]).items()}
            if trial is not None:
                if out.ok:
                    studies[m].tell(trial, value)
                else:
                    studies[m].tell(trial, state=TrialState.FAIL)
            elif out.ok and contains(spaces[m], job.config):
                params = {k: job.config[k] for k in dists}
                studies[m].add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
            if not out.ok:
                errors[m] = out.error or "failed"
            records.append({"method": m, "trial": r, **{f"config.{k}": v for k, v in job.config.items()},
                            metric: value, **{k: v for k, v in (out.row or {}).items() if k.startswith("test_")},
                            "error": out.error or ""})  # fmt: skip
            if out.ok and (m not in best or _better(value, best[m][0], metric)):  # ties: the earlier trial stays
                best[m] = (value, r, job.config, out)
        # weights of trials that are no longer the best are not needed any more
        if memo is not None:
            keep_keys = {b[3].job.key for b in best.values()}
            memo.forget_weights(lambda j, keys=keep_keys: j.tag != "search" or j.key in keys)
    table = pd.DataFrame(records)
    table["is_best"] = [m in best and t == best[m][1] for m, t in zip(table.method, table.trial)]
    failed = {m: errors[m] for m in methods if m not in best}
    return SearchResult(table, {m: dict(b[2]) for m, b in best.items()}, failed, metric,
                        {m: b[3] for m, b in best.items()})  # fmt: skip
