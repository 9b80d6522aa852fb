"""Where the comparison's trainings run: :class:`SerialExecutor` (one after another in this
process) or :class:`RayExecutor` (each training a Ray Tune trial with its own resources, on a
local Ray started on this machine's cores or on a cluster). Both run :func:`run_job`, retry a job
that raises up to ``max_failures`` times, and give one :class:`JobOutcome` per job in the jobs'
order: a job that still fails has ``error`` set (its configuration named) and the rest of the
grid goes on. Both remember finished jobs by :attr:`TrainJob.key`, so a training asked for twice
(the defaults' search trial and the untuned grid's first seed) runs once.

Work comes as a *plan* (:data:`Plan`): a generator that yields batches of jobs and is sent each
batch's outcomes, so a batch can depend on the one before (the search's rounds). On Ray every
plan an executor runs goes through one Tune run, started with its first plan and ended by
:meth:`RayExecutor.close`: the Tune trainables (their processes, torch and fusionkit imported)
start once per executor, not once per plan (~9 s each on 2 cores: a notebook runs six plans).

``ray_address``: empty (and no ``RAY_ADDRESS``) starts a local Ray on the cores this process may
use; ``auto`` joins the cluster this machine is part of; ``host:port`` or ``ray://host:port``
joins that cluster (checked within :data:`CONNECT_TIMEOUT_S` seconds: one line naming the address
when nothing answers there). Each dataset reaches the workers once through Ray's object store,
not once per trial."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch

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


def data_fingerprint(splits: dict[str, SplitData], num_classes: int) -> str:
    """A digest of what a job trains and is scored on: every split's ids, features, labels and
    masks, and the number of classes (blake2b over the tensors' bytes: 15 ms here for splits of the
    default benchmark's size, 1,200 samples of 1,792 features)."""
    h = hashlib.blake2b(f"classes={num_classes}".encode(), digest_size=16)
    for name in sorted(splits):
        sd = splits[name]
        h.update(f"|{name}|".encode() + "\n".join(sd.ids).encode())
        tensors = {"labels": sd.labels, **{f"f:{m}": t for m, t in sd.features.items()},
                   **{f"m:{m}": t for m, t in (sd.mask or {}).items()}}  # fmt: skip
        for key in sorted(tensors):
            t = tensors[key].detach().cpu().contiguous()
            h.update(f"|{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()


class Memo:
    """Finished jobs by key and by the data they trained on (:func:`data_fingerprint`: the same job
    on other data under the same name trains again); a job that needs weights is only served by
    an outcome that has them."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], JobOutcome] = {}

    def get(self, job: TrainJob, data: str) -> JobOutcome | None:
        hit = self._done.get((job.key, data))
        if hit is None or not hit.ok or (job.keep and hit.state is None):
            return None
        return JobOutcome(
            job, row=dict(hit.row), history=hit.history, state=hit.state, node_id=hit.node_id, pid=hit.pid
        )

    def put(self, outcome: JobOutcome, data: str) -> None:
        if outcome.ok:
            self._done[(outcome.job.key, data)] = outcome

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
        self.data = {name: data_fingerprint(*datasets[name]) for name in {j.data for j in jobs}}
        self.outcomes: list[JobOutcome | None] = [memo.get(j, self.data[j.data]) for j in jobs]
        self.todo: dict[str, TrainJob] = {}
        for j, o in zip(jobs, self.outcomes):
            if o is None:
                self.todo.setdefault(j.key, j)
        self.done: dict[str, JobOutcome] = {}

    def finish(self, out: JobOutcome) -> None:
        self.memo.put(out, self.data[out.job.data])
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
                                                    node_id=d.node_id, attempts=d.attempts, pid=d.pid)  # fmt: skip
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
            out.attempts, out.pid = attempt, os.getpid()
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
    fraction allowed, where the cluster has GPUs). One Tune run serves every plan of the
    executor: it starts (in a background thread) with the first plan and ends with
    :meth:`close`, so its trainables start once and are reused by every plan after. A Tune
    ``Searcher`` hands out the current batch's jobs, longest first by what the same method took
    before (the batch's last trainings then do not keep one CPU busy while the others wait), and
    asks the plan for the next batch once every job of this one has finished. A job that raises
    is retried in its trial (``max_failures`` times); a trial lost with its worker or node is
    retried by Tune (``FailureConfig(max_failures)``). Tune's files and the kept weights
    (safetensors) go under ``storage_path``: on a cluster it must be a folder every node sees."""

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
        #: dataset name -> (the value put, its key in the registry, its object ref)
        self._refs: dict[str, tuple[Any, str, Any]] = {}
        self._session: _TuneSession | None = None
        #: method -> what its latest training took (s): the order a batch's jobs are handed out in
        self.took: dict[str, float] = {}
        self._started = False
        self.startup_s = self._connect(num_cpus)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # started now, so that its process is up before the first plan needs it; on this process's
        # node (a cluster's other nodes may go away mid-grid, and every trial needs it)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._registry = ray.remote(num_cpus=0)(_Registry).options(scheduling_strategy=here).remote()

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

    def _keys(self, datasets: Datasets) -> dict[str, str]:
        """Each dataset's key in the session's registry, put into the object store once (again
        only when the name is given another value)."""
        import ray

        keys = {}
        for name, value in datasets.items():
            held = self._refs.get(name)
            # the same splits (callers build a new (splits, num_classes) tuple for every plan)
            if held is None or held[0][0] is not value[0] or held[0][1] != value[1]:
                if held is not None:
                    self._registry.drop.remote(held[1])
                key = f"{name}-{uuid.uuid4().hex[:8]}"
                ref = ray.put(value)
                self._registry.put.remote(key, [ref])  # the ref in a list: passed as a ref, not its value
                held = (value, key, ref)
                self._refs[name] = held
            keys[name] = held[1]
        return keys

    def run_plan(self, plan: Plan, datasets: Datasets, desc: str = "trainings") -> Any:
        bar = progress(total=0, enabled=self.show_progress, desc=desc)
        run = _PlanRun(plan, self, datasets, bar)
        try:
            if run.finished:  # every job was already done (or the plan had none)
                return run.result()
            if self._session is None:
                self._session = _TuneSession(self)
            session = self._session
            run.keys = self._keys(datasets)
            session.submit(run)
            try:
                while not run.done.wait(0.2):
                    if not session.alive:
                        raise RuntimeError(
                            f"Ray Tune stopped before every training finished ({session.error or 'no error given'}; "
                            f"its files: {self.storage_path})"
                        )
            finally:
                session.detach(run)
            return run.result()
        finally:
            bar.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
        self._refs.clear()
        self._registry = None
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _PlanRun:
    """One plan on Ray: its current batch, the batch's jobs not yet handed out (``queue``) and
    those running (``pending``, by trial id); ``done`` is set once the plan has returned (or
    raised)."""

    def __init__(self, plan: Plan, owner: RayExecutor, datasets: Datasets, bar) -> None:
        self.plan, self.owner, self.datasets, self.bar = plan, owner, datasets, bar
        self.queue: list[TrainJob] = []
        self.pending: dict[str, TrainJob] = {}
        self.batch: _Batch | None = None
        self.keys: dict[str, str] = {}
        self.finished, self.value, self.error = False, None, None
        self.done = threading.Event()
        self.advance(None)

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def advance(self, outcomes) -> None:
        while True:
            try:
                jobs = self.plan.send(outcomes)
                self.batch = _Batch(self.owner.prepare(jobs), self.owner.memo, self.datasets)
            except StopIteration as stop:
                self.finished, self.value = True, stop.value
                self.done.set()
                return
            except Exception as e:  # noqa: BLE001 - raised again by run_plan, in the driver's frame
                self.finished, self.error = True, e
                self.done.set()
                return
            if self.batch.todo:
                took = self.owner.took
                # longest first (what the method's last training took; unknown first, in order)
                self.queue = sorted(self.batch.todo.values(), key=lambda j: -took.get(j.method, float("inf")))
                self.bar.total = (self.bar.total or 0) + len(self.queue)
                self.bar.refresh()
                return
            outcomes = self.batch.result()

    def next_job(self, trial_id: str) -> dict | None:
        if not self.queue:
            return None
        job = self.queue.pop(0)
        self.pending[trial_id] = job
        return {"job": job.to_dict(), "data_key": self.keys[job.data]}

    def complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        job = self.pending.pop(trial_id, None)
        if job is None or self.batch is None or self.finished:
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
                             attempts=int(result.get("attempts", 1)), pid=int(result.get("pid", 0)))  # fmt: skip
            self.owner.took[job.method] = float(out.row.get("train_time_s", 0.0))
        self.batch.finish(out)
        if self.batch.complete:
            self.advance(self.batch.result())


class _TuneSession:
    """The executor's one Tune run, in a background thread: its searcher serves the plan
    :meth:`submit` hands it (one at a time) and tells Tune it is finished after :meth:`stop`.
    Each trial looks its dataset's object ref up in the executor's :class:`_Registry`."""

    def __init__(self, owner: RayExecutor) -> None:
        from ray import tune

        self.owner = owner
        self.lock = threading.Lock()
        self.run: _PlanRun | None = None
        self.stopping = False
        self.error: BaseException | None = None
        weights = Path(owner.storage_path) / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        resources: dict[str, float] = {"cpu": owner.cpus_per_trial}
        if owner.gpus_per_trial > 0:
            resources["gpu"] = owner.gpus_per_trial
        # Tune lets a custom searcher keep only one trial pending by default, which starts the
        # trials (and the workers of a cluster's other nodes) one at a time
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(4, int(ray_cpus()))))
        trainable = tune.with_parameters(_trial, registry=owner._registry, weights=str(weights),
                                         tries=owner.max_failures + 1)  # fmt: skip
        self.tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            tune_config=tune.TuneConfig(search_alg=_plan_searcher()(self), num_samples=-1, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(storage_path=owner.storage_path, name=f"grid-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=owner.max_failures)),
        )  # fmt: skip
        self.quiet = [logging.getLogger(n) for n in ("ray.tune", "ray.air", "ray.train")]
        self.levels = [lg.level for lg in self.quiet]
        for lg in self.quiet:  # a lost trial's traceback: its error is recorded in the outcome instead
            lg.setLevel(logging.CRITICAL)
        self.thread = threading.Thread(target=self._fit, name="fusionkit-tune", daemon=True)
        self.thread.start()

    def _fit(self) -> None:
        _keep_trainables()
        _SESSION_THREAD.active = True  # the Tune controller made in this thread keeps its trainables
        try:
            self.tuner.fit()
        except BaseException as e:  # noqa: BLE001 - run_plan reports it
            self.error = e

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, run: _PlanRun) -> None:
        with self.lock:
            self.run = run

    def detach(self, run: _PlanRun) -> None:
        """``run`` no longer gets trials (finished, failed or interrupted); trials of it still
        running end unheard."""
        with self.lock:
            if self.run is run:
                self.run = None

    def suggest(self, trial_id: str) -> dict | None | object:
        """The next job's trial config, None (wait) or :data:`_STOP` (the executor closed)."""
        with self.lock:
            if self.stopping:
                return _STOP
            return None if self.run is None else self.run.next_job(trial_id)

    def complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        with self.lock:
            run = self.run
            if run is None:
                return
            try:
                run.complete(trial_id, result, error)
            except Exception as e:  # noqa: BLE001 - the plan's caller gets it, Tune's loop goes on
                run.finished, run.error = True, e
                run.done.set()

    def stop(self, timeout: float = 60.0) -> None:
        with self.lock:
            self.stopping, self.run = True, None
        self.thread.join(timeout)
        for lg, level in zip(self.quiet, self.levels):
            lg.setLevel(level)


_STOP = object()
_SESSION_THREAD = threading.local()


def _keep_trainables() -> None:
    """Make the Tune controllers of session threads keep their idle trainables until the run ends.

    Tune caches a finished trial's actor for the next trial only while some trial waits for one,
    and stops the rest: at every batch boundary (the search's rounds) and every pause between
    plans, all but one trainable were stopped, and starting one again costs ~6-9 s of a core
    (Ray, Tune and torch imported anew) - on 2 cores the comparison ran on one worker most of the
    time. Tune has no option for this, so the controller's actor cache class is replaced by one
    that, in a :class:`_TuneSession`'s thread, caches every idle trainable and evicts only when
    the run ends (``force_all``); in any other thread it is Tune's own. Ray is pinned
    (pyproject.toml): the names used here are those of that version."""
    from ray.tune.execution import tune_controller

    base = tune_controller._ObjectCache
    if getattr(base, "fusionkit_keeps", False):
        return

    class _KeepingCache(base):
        fusionkit_keeps = True

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._keep = bool(getattr(_SESSION_THREAD, "active", False))

        def cache_object(self, key, obj) -> bool:
            if not self._keep:
                return super().cache_object(key, obj)
            self._cached_objects[key].append(obj)
            self._num_cached_objects += 1
            return True

        def flush_cached_objects(self, force_all: bool = False):
            if self._keep and not force_all:
                return
            yield from super().flush_cached_objects(force_all=force_all)

    tune_controller._ObjectCache = _KeepingCache


class _Registry:
    """Dataset key -> ``[object ref]``: a Ray actor (no CPU) the trials look their dataset up in.
    A lookup waits for the key's ``put`` (the driver's call and a trial's need not arrive in
    the order they were made)."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self.refs: dict[str, list] = {}
        self.ready: dict[str, Any] = {}

    def _ready(self, key: str):
        return self.ready.setdefault(key, self._asyncio.Event())

    async def put(self, key: str, ref: list) -> None:
        self.refs[key] = ref
        self._ready(key).set()

    async def get(self, key: str) -> list:
        await self._ready(key).wait()
        return self.refs[key]

    async def drop(self, key: str) -> None:
        self.refs.pop(key, None)
        self.ready.pop(key, None)


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
        """Tune's side of a :class:`_TuneSession`: suggests the current plan's jobs one per
        trial, answers "wait" (None) while a batch runs or no plan is given, and sends each
        batch's outcomes to the plan in the batch's order (whatever order the trials ended in):
        the plan sees the same outcomes as on the serial path."""

        def __init__(self, session: _TuneSession) -> None:
            super().__init__(metric="val_accuracy", mode="max")
            self.session = session

        def __getstate__(self) -> dict:
            # Tune pickles its searcher to resume an interrupted experiment; a plan (a running
            # generator) cannot be resumed that way, so only the plain fields go
            return {k: v for k, v in self.__dict__.items() if k != "session"}

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass  # see __getstate__: a plan is not resumable from Tune's files

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            raise RuntimeError("a fusionkit comparison cannot be resumed from Ray Tune's files; run it again")

        def suggest(self, trial_id: str):
            out = self.session.suggest(trial_id)
            return self.FINISHED if out is _STOP else out

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.session.complete(trial_id, result, error)

    _SEARCHER.append(_PlanSearcher)
    return _PlanSearcher


def _trial(config: dict, registry: Any, weights: str, tries: int) -> None:
    """One Ray Tune trial: the job's training on its dataset from the object store (its ref
    from the session's registry); the kept weights written under ``weights`` (safetensors,
    temporary name then rename) for the driver."""
    import ray
    from ray import tune

    job = TrainJob.from_dict(config["job"])
    (ref,) = ray.get(registry.get.remote(config["data_key"]))
    splits, num_classes = ray.get(ref)
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
                 "node_id": node, "pid": res.pid, "attempts": res.attempts,
                 "val_accuracy": _tune_score(res.row)})  # fmt: skip


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
