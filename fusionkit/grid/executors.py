"""Where the comparison's trainings run: :class:`SerialExecutor` (one after another in this
process) or :class:`RayExecutor` (each training a Ray Tune trial with its own resources, on a
local Ray started on this machine's cores or on a cluster). Both run :func:`run_job`, retry a job
that raises up to ``max_failures`` times, and give one :class:`JobOutcome` per job in the jobs'
order: a job that still fails has ``error`` set (its configuration named) and the rest of the
grid goes on. Both remember finished jobs by :attr:`TrainJob.key`, so a training asked for twice
(the defaults' search trial and the untuned grid's first seed) runs once.

Work comes as a *plan* (:data:`Plan`): a generator that yields batches of jobs and is sent each
batch's outcomes, so a batch can depend on the one before (the search's rounds). On Ray a whole
plan is one Tune run (the workers start once).

``ray_address``: empty (and no ``RAY_ADDRESS``) starts a local Ray on the cores this process may
use; ``auto`` joins the cluster this machine is part of; ``host:port`` or ``ray://host:port``
joins that cluster (checked within :data:`CONNECT_TIMEOUT_S` seconds: one line naming the address
when nothing answers there). The datasets reach the workers once per executor through Ray's
object store, not once per trial."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from fusionkit.grid.jobs import JobOutcome, TrainJob, run_job
from fusionkit.progress import progress
from fusionkit.runtime import available_cpus
from fusionkit.train import SplitData

CONNECT_TIMEOUT_S = 10.0
#: what ``datasets`` maps a name to: the splits and the number of classes
Datasets = dict[str, tuple[dict[str, SplitData], int]]
#: a plan: a generator that yields batches of jobs, is sent each batch's outcomes (in the batch's
#: order) and returns its result
Plan = Generator[list[TrainJob], list[JobOutcome], Any]


class Executor(Protocol):
    cpus_per_trial: int
    memo: Memo

    def run(self, jobs: list[TrainJob], datasets: Datasets, desc: str = "trainings") -> list[JobOutcome]: ...

    def run_plan(self, plan: Plan, datasets: Datasets, desc: str = "trainings") -> Any: ...

    def close(self) -> None: ...


def single(jobs: list[TrainJob]) -> Plan:
    """The plan of one batch; returns its outcomes."""
    return (yield jobs)


def describe_error(job: TrainJob, exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return f"{job.name} [{job.tag}] with {json.dumps(job.config, sort_keys=True)}: {text.strip()}"


class Memo:
    """Finished jobs by key; a job that needs weights is only served by an outcome that has them."""

    def __init__(self) -> None:
        self._done: dict[str, JobOutcome] = {}

    def get(self, job: TrainJob) -> JobOutcome | None:
        hit = self._done.get(job.key)
        if hit is None or not hit.ok or (job.keep and hit.state is None):
            return None
        return JobOutcome(job, row=dict(hit.row), history=hit.history, state=hit.state, node_id=hit.node_id)

    def put(self, outcome: JobOutcome) -> None:
        if outcome.ok:
            self._done[outcome.job.key] = outcome

    def forget_weights(self, keep: Callable[[TrainJob], bool]) -> None:
        """Drop the kept weights of finished jobs ``keep`` says no to (frees memory)."""
        for out in self._done.values():
            if out.state is not None and not keep(out.job):
                out.state = None


class _Batch:
    """One batch of a plan: the outcomes the memo already has, and one job per key to train."""

    def __init__(self, jobs: list[TrainJob], memo: Memo, datasets: Datasets) -> None:
        for j in jobs:
            if j.data not in datasets:
                raise KeyError(f"job {j.name} trains on dataset {j.data!r}; given: {sorted(datasets)}")
        self.jobs, self.memo = jobs, memo
        self.outcomes: list[JobOutcome | None] = [memo.get(j) for j in jobs]
        self.todo: dict[str, TrainJob] = {}
        for j, o in zip(jobs, self.outcomes):
            if o is None:
                self.todo.setdefault(j.key, j)
        self.done: dict[str, JobOutcome] = {}

    def finish(self, out: JobOutcome) -> None:
        self.memo.put(out)
        self.done[out.job.key] = out

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.todo)

    def result(self) -> list[JobOutcome]:
        res = []
        for j, o in zip(self.jobs, self.outcomes):
            if o is None:
                d = self.done[j.key]
                o = d if d.job is j else JobOutcome(j, row=d.row, history=d.history, state=d.state, error=d.error,
                                                    node_id=d.node_id, attempts=d.attempts)  # fmt: skip
            res.append(o)
        return res


class _Base:
    def __init__(self, max_failures: int = 2, cpus_per_trial: int = 1, show_progress: bool = True) -> None:
        if max_failures < 0:
            raise ValueError("max_failures must be >= 0")
        if cpus_per_trial < 1:
            raise ValueError("cpus_per_trial must be >= 1")
        self.max_failures, self.cpus_per_trial, self.show_progress = max_failures, cpus_per_trial, show_progress
        self.memo = Memo()

    def prepare(self, jobs: Iterable[TrainJob]) -> list[TrainJob]:
        """The jobs with the thread count their resources give (part of their configuration)."""
        return [j if j.cfg.num_threads == self.cpus_per_trial else replace(j, cfg=replace(j.cfg, num_threads=self.cpus_per_trial))
                for j in jobs]  # fmt: skip

    def run(self, jobs: list[TrainJob], datasets: Datasets, desc: str = "trainings") -> list[JobOutcome]:
        """Train ``jobs``; one outcome per job, in their order."""
        return self.run_plan(single(list(jobs)), datasets, desc)

    def run_plan(self, plan: Plan, datasets: Datasets, desc: str = "trainings") -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attempts(job: TrainJob, splits, num_classes: int, tries: int) -> JobOutcome:
    """``run_job`` up to ``tries`` times; the last error is recorded with the job's configuration."""
    error = ""
    for attempt in range(1, tries + 1):
        try:
            out = run_job(job, splits, num_classes)
            out.attempts = attempt
            return out
        except Exception as e:  # noqa: BLE001 - recorded with the job's configuration, the grid goes on
            error = describe_error(job, e)
    return JobOutcome(job, error=error, attempts=tries)


class SerialExecutor(_Base):
    """Every job in this process, one after another."""

    def run_plan(self, plan: Plan, datasets: Datasets, desc: str = "trainings") -> Any:
        outcomes = None
        while True:
            try:
                jobs = plan.send(outcomes)
            except StopIteration as stop:
                return stop.value
            batch = _Batch(self.prepare(jobs), self.memo, datasets)
            for job in progress(list(batch.todo.values()), enabled=self.show_progress and bool(batch.todo), desc=desc):
                splits, num_classes = datasets[job.data]
                batch.finish(_attempts(job, splits, num_classes, self.max_failures + 1))
            outcomes = batch.result()


class RayExecutor(_Base):
    """Every job a Ray Tune trial with ``cpus_per_trial`` CPUs (and ``gpus_per_trial``, a
    fraction allowed, where the cluster has GPUs). A whole plan is one Tune run: a Tune
    ``Searcher`` hands out each batch's jobs and waits for the batch before asking the plan for
    the next, so the workers start once per plan. A job that raises is retried in its trial
    (``max_failures`` times); a trial lost with its worker or node is retried by Tune
    (``FailureConfig(max_failures)``). Tune's files and the kept weights (safetensors) go under
    ``storage_path``: on a cluster it must be a folder every node sees."""

    def __init__(
        self,
        address: str = "",
        *,
        max_failures: int = 2,
        cpus_per_trial: int = 1,
        gpus_per_trial: float = 0.0,
        storage_path: str | os.PathLike | None = None,
        num_cpus: int | None = None,
        show_progress: bool = True,
    ) -> None:
        super().__init__(max_failures, cpus_per_trial, show_progress)
        self.address = resolve_address(address)
        self.gpus_per_trial = float(gpus_per_trial)
        self._tmp = None
        if storage_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fusionkit-tune-")
            storage_path = self._tmp.name
        self.storage_path = str(Path(storage_path).resolve())
        self._refs: dict[str, tuple[int, Any]] = {}
        self._started = False
        self.startup_s = self._connect(num_cpus)

    def _connect(self, num_cpus: int | None) -> float:
        t0 = time.perf_counter()
        ray = import_ray()
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no console tables from Tune
        if not ray.is_initialized():
            if self.address:
                check_reachable(self.address)
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            else:
                # "local": a Ray of its own, even where another one runs on this machine (without
                # an address, ray.init joins the latest cluster started here, and then refuses num_cpus)
                ray.init(address="local", num_cpus=num_cpus or available_cpus(), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)  # fmt: skip
            self._started = True
        return time.perf_counter() - t0

    def _ref(self, name: str, value) -> Any:
        import ray

        held = self._refs.get(name)
        if held is None or held[0] != id(value[0]):
            held = (id(value[0]), ray.put(value))
            self._refs[name] = held
        return held[1]

    def run_plan(self, plan: Plan, datasets: Datasets, desc: str = "trainings") -> Any:
        from ray import tune

        weights = Path(self.storage_path) / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        bar = progress(total=0, enabled=self.show_progress, desc=desc)
        searcher = _plan_searcher()(plan, self, datasets, bar)
        if searcher.finished:  # every job was already done (or the plan had none)
            bar.close()
            return searcher.result()
        refs = {name: self._ref(name, value) for name, value in datasets.items()}
        resources: dict[str, float] = {"cpu": self.cpus_per_trial}
        if self.gpus_per_trial > 0:
            resources["gpu"] = self.gpus_per_trial
        # Tune lets a custom searcher keep only one trial pending by default, which starts the
        # trials (and the workers of a cluster's other nodes) one at a time
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(4, int(ray_cpus()))))
        trainable = tune.with_parameters(_trial, refs=refs, weights=str(weights), tries=self.max_failures + 1)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(storage_path=self.storage_path, name=f"grid-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=self.max_failures)),
        )  # fmt: skip
        quiet = [logging.getLogger(n) for n in ("ray.tune", "ray.air", "ray.train")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:  # a lost trial's traceback: its error is recorded in the outcome instead
            lg.setLevel(logging.CRITICAL)
        try:
            tuner.fit()
        finally:
            bar.close()
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
        if not searcher.finished:
            raise RuntimeError(f"Ray Tune stopped before every training finished (its files: {self.storage_path})")
        return searcher.result()

    def close(self) -> None:
        self._refs.clear()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _trial_name(trial) -> str:
    job = trial.config.get("job", {})
    return (
        f"{trial.trial_id}_{str(job.get('method', '')).replace(':', '-')}_s{job.get('seed', '')}_{job.get('tag', '')}"
    )


_SEARCHER: list[type] = []


def _plan_searcher() -> type:
    """:class:`_PlanSearcher` is a Tune ``Searcher``; it is defined on first use so that importing
    fusionkit does not import Ray."""
    if _SEARCHER:
        return _SEARCHER[0]
    from ray.tune.search import Searcher

    class _PlanSearcher(Searcher):
        """Tune's side of a plan: suggests the current batch's jobs one per trial, answers
        "wait" (None) while the batch runs, and asks the plan for the next batch once every job
        of this one has finished, sending the outcomes in the batch's order (whatever order the
        trials ended in): the plan sees the same outcomes as on the serial path."""

        def __init__(self, plan: Plan, owner: RayExecutor, datasets: Datasets, bar) -> None:
            super().__init__(metric="val_accuracy", mode="max")
            self.plan, self.owner, self.datasets, self.bar = plan, owner, datasets, bar
            self.queue: list[TrainJob] = []
            self.pending: dict[str, TrainJob] = {}
            self.batch: _Batch | None = None
            self.finished, self.value, self.error = False, None, None
            self._advance(None)

        def __getstate__(self) -> dict:
            # Tune pickles its searcher to resume an interrupted experiment; a plan (a running
            # generator) cannot be resumed that way, so only the plain fields go
            return {
                k: v
                for k, v in self.__dict__.items()
                if k not in ("plan", "owner", "datasets", "bar", "batch", "queue", "pending")
            }

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass  # see __getstate__: a plan is not resumable from Tune's files

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            raise RuntimeError("a fusionkit comparison cannot be resumed from Ray Tune's files; run it again")

        def result(self) -> Any:
            if self.error is not None:
                raise self.error
            return self.value

        def _advance(self, outcomes) -> None:
            while True:
                try:
                    jobs = self.plan.send(outcomes)
                    self.batch = _Batch(self.owner.prepare(jobs), self.owner.memo, self.datasets)
                except StopIteration as stop:
                    self.finished, self.value = True, stop.value
                    return
                except Exception as e:  # noqa: BLE001 - raised again by run_plan, in the driver's frame
                    self.finished, self.error = True, e
                    return
                if self.batch.todo:
                    self.queue = list(self.batch.todo.values())
                    self.bar.total = (self.bar.total or 0) + len(self.queue)
                    self.bar.refresh()
                    return
                outcomes = self.batch.result()

        def suggest(self, trial_id: str):
            if self.finished:
                return self.FINISHED
            if not self.queue:
                return None
            job = self.queue.pop(0)
            self.pending[trial_id] = job
            return {"job": job.to_dict()}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            job = self.pending.pop(trial_id, None)
            if job is None or self.batch is None:
                return
            self.bar.update(1)
            tries = self.owner.max_failures + 1
            if error or not result or "row_json" not in result:
                lost = f"the trial was lost (its Ray worker or node died) {tries} times"
                out = JobOutcome(job, error=describe_error(job, lost), attempts=tries)
            elif result.get("error"):
                out = JobOutcome(job, error=result["error"], attempts=int(result.get("attempts", tries)))
            else:
                state = None
                if result.get("weights"):
                    from safetensors.torch import load_file

                    path = Path(result["weights"])
                    state = load_file(str(path))
                    path.unlink(missing_ok=True)
                out = JobOutcome(job, row=json.loads(result["row_json"]), history=json.loads(result["history_json"]),
                                 state=state, node_id=str(result.get("node_id", "")),
                                 attempts=int(result.get("attempts", 1)))  # fmt: skip
            self.batch.finish(out)
            if self.batch.complete:
                self._advance(self.batch.result())

    _SEARCHER.append(_PlanSearcher)
    return _PlanSearcher


def _trial(config: dict, refs: dict[str, Any], weights: str, tries: int) -> None:
    """One Ray Tune trial: the job's training on its dataset from the object store; the kept
    weights written under ``weights`` (safetensors, temporary name then rename) for the driver."""
    import ray
    from ray import tune

    job = TrainJob.from_dict(config["job"])
    splits, num_classes = ray.get(refs[job.data])
    res = _attempts(job, splits, num_classes, tries)
    node = ray.get_runtime_context().get_node_id()
    if not res.ok:
        tune.report(
            {"row_json": "", "error": res.error, "attempts": res.attempts, "node_id": node, "val_accuracy": 0.0}
        )
        return
    path = ""
    if res.state is not None:
        from safetensors.torch import save_file

        final = Path(weights) / f"{hashlib.sha1(job.key.encode()).hexdigest()}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = final.with_name(final.name + ".tmp")
        save_file(res.state, str(tmp))
        os.replace(tmp, final)
        path = str(final)
    tune.report({"row_json": json.dumps(res.row), "history_json": json.dumps(res.history), "weights": path,
                 "node_id": node, "attempts": res.attempts, "val_accuracy": _tune_score(res.row)})  # fmt: skip


def _tune_score(row: dict) -> float:
    """What Tune's own bookkeeping maximises (the plan, not Tune, chooses): the validation
    accuracy, or for a regression target minus the validation MSE."""
    return float(row["val_accuracy"]) if "val_accuracy" in row else -float(row["val_mse"])


def ray_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def import_ray():
    try:
        import ray
    except ImportError as e:  # a user's own environment without Ray
        raise ImportError(
            "the comparison runs on Ray, which is not installed in this environment: "
            "pip install 'ray[tune]' (fusionkit pins the version it is tested with in pyproject.toml), "
            "or run it without Ray with executor='serial'"
        ) from e
    return ray


def resolve_address(address: str | None) -> str:
    """The cluster to join: the parameter, else ``$RAY_ADDRESS``, else "" (a local Ray)."""
    return (address or "").strip() or os.environ.get("RAY_ADDRESS", "").strip()


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with one line naming ``address`` when nothing listens there (``ray.init`` itself
    waits minutes). ``auto`` is left to Ray, which fails at once when no cluster runs here."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address {address!r}: expected '', 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"ray_address {address!r}: no Ray cluster reachable there ({e})") from None


def executor(kind: str = "ray", ray_address: str = "", *, storage_path: str | os.PathLike | None = None,
             run_dir: str | os.PathLike | None = None, **kwargs) -> SerialExecutor | RayExecutor:  # fmt: skip
    """``kind`` "ray" (the default: local Ray, or the cluster at ``ray_address``) or "serial".
    Ray Tune's files go to ``storage_path``; unset, a temporary folder for a local Ray and
    ``<run_dir>/ray`` on a cluster (where every node must see it)."""
    if kind == "serial":
        kwargs.pop("gpus_per_trial", None)
        kwargs.pop("num_cpus", None)
        return SerialExecutor(**kwargs)
    if kind == "ray":
        if not storage_path and run_dir is not None and resolve_address(ray_address):
            storage_path = Path(run_dir) / "ray"
        return RayExecutor(ray_address, storage_path=storage_path or None, **kwargs)
    raise ValueError(f"executor {kind!r}: expected 'ray' or 'serial'")
