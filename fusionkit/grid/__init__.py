"""The grid of trainings behind the fusion comparison (docs/architecture.md, "The grid").

* ``jobs.py``: :class:`TrainJob` - one training (method, seed, configuration, the training
  settings with their thread count) - and :func:`run_job`, the one function every training of
  the comparison runs, in this process or on a Ray worker.
* ``space.py``: the shared search dimensions and each method's search space with a user's overrides.
* ``executors.py``: :class:`SerialExecutor` (this process) and :class:`RayExecutor` (Ray Tune, a
  local Ray or a cluster); :func:`executor` picks one from the notebook's parameters.
* ``search.py``: the per-method Optuna search with an equal budget, selected on validation.
"""

from fusionkit.grid.executors import Executor, RayExecutor, SerialExecutor, executor
from fusionkit.grid.jobs import JobOutcome, TrainJob, run_job, run_one
from fusionkit.grid.search import SearchResult, search
from fusionkit.grid.space import SHARED, default_config, method_space

__all__ = [
    "SHARED",
    "Executor",
    "JobOutcome",
    "RayExecutor",
    "SearchResult",
    "SerialExecutor",
    "TrainJob",
    "default_config",
    "executor",
    "method_space",
    "run_job",
    "run_one",
    "search",
]
