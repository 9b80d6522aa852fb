"""One training of the comparison: :class:`TrainJob` says what to train, :func:`run_job` trains
it - the same function in this process (``SerialExecutor``) and on a Ray worker
(``RayExecutor``), so both paths give the same numbers for the same job.

A job's configuration is a flat dict: the shared keys ``lr``, ``weight_decay``, ``hidden``,
``dropout`` and the fusion method's own hyper-parameters as ``fusion.<name>``
(``fusionkit.grid.space``). Its :class:`~fusionkit.train.TrainConfig` carries the rest of the
training settings, the seed and the thread count: a job is fully described by its fields, and
:attr:`TrainJob.key` names it (two jobs with the same key train the same model)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from fusionkit.evaluate import target_metrics
from fusionkit.model import MultimodalModel, build_model
from fusionkit.train import SplitData, TrainConfig, TrainResult, predict, seed_everything, train

UNIMODAL_PREFIX = "unimodal:"
FUSION_PREFIX = "fusion."
#: configuration keys that are not the fusion method's own
MODEL_KEYS = ("hidden", "dropout")
TRAIN_KEYS = ("lr", "weight_decay")


@dataclass(frozen=True)
class TrainJob:
    """``method`` (a fusion method or ``unimodal:<modality>``), ``seed``, ``config`` (see the
    module), ``cfg`` (the other training settings; its seed is replaced by ``seed``), ``data``
    (which of the executor's datasets it trains on), ``keep`` (return the trained weights) and
    ``tag`` (what the job is for: ``grid``, ``search``, ``tuned``, ...; not part of the key)."""

    method: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    cfg: TrainConfig = field(default_factory=TrainConfig)
    data: str = "main"
    keep: bool = False
    tag: str = "grid"

    @property
    def key(self) -> str:
        return json.dumps(
            {"method": self.method, "seed": self.seed, "config": self.config, "cfg": asdict(self.train_config()),
             "data": self.data},
            sort_keys=True, default=str,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a Ray Tune trial's config carries); :meth:`from_dict` reads it back."""
        return {**asdict(self), "cfg": asdict(self.cfg)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        return cls(**{**d, "cfg": TrainConfig(**d["cfg"])})

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.seed}"

    def train_config(self) -> TrainConfig:
        over = {k: self.config[k] for k in TRAIN_KEYS if k in self.config}
        return replace(self.cfg, seed=self.seed, **over)

    def fusion_kwargs(self) -> dict[str, Any]:
        return {k[len(FUSION_PREFIX) :]: v for k, v in self.config.items() if k.startswith(FUSION_PREFIX)}

    def build(self, in_dims: dict[str, int], num_classes: int) -> MultimodalModel:
        """The job's model, freshly initialised from its seed (weights: :meth:`JobOutcome.model`)."""
        fusion_name, in_dims = self._inputs(in_dims)
        seed_everything(self.seed)
        return build_model(fusion_name, in_dims, num_classes, hidden=int(self.config.get("hidden", 128)),
                           dropout=float(self.config.get("dropout", 0.1)), fusion_kwargs=self.fusion_kwargs())  # fmt: skip

    def _inputs(self, in_dims: dict[str, int]) -> tuple[str, dict[str, int]]:
        if self.method.startswith(UNIMODAL_PREFIX):
            mod = self.method[len(UNIMODAL_PREFIX) :]
            return "concat", {mod: in_dims[mod]}
        return self.method, in_dims

    def splits(self, data: dict[str, SplitData]) -> dict[str, SplitData]:
        if self.method.startswith(UNIMODAL_PREFIX):
            mod = self.method[len(UNIMODAL_PREFIX) :]
            return {k: v.select([mod]) for k, v in data.items()}
        return data


@dataclass
class JobOutcome:
    """What one job gave: the comparison's row (None when it failed), the per-epoch history, the
    trained weights (``keep``), the error after the last attempt, the Ray node and the process
    (``pid``) it ran in."""

    job: TrainJob
    row: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    state: dict[str, torch.Tensor] | None = None
    error: str | None = None
    node_id: str = ""
    attempts: int = 1
    pid: int = 0

    @property
    def ok(self) -> bool:
        return self.row is not None

    def model(self, in_dims: dict[str, int], num_classes: int) -> MultimodalModel:
        """The trained model, rebuilt from the kept weights."""
        if self.state is None:
            raise ValueError(f"{self.job.name}: the job did not keep its weights (TrainJob.keep)")
        model = self.job.build(in_dims, num_classes)
        model.load_state_dict(self.state)
        return model.eval()

    def train_result(self) -> TrainResult:
        row = self.row or {}
        regression = "val_mse" in row
        return TrainResult(history=self.history, monitor="val_mse" if regression else "val_acc",
                           best_epoch=int(row.get("best_epoch", -1)),
                           best_value=float(row.get("val_mse" if regression else "val_accuracy", float("nan"))),
                           epochs_run=int(row.get("epochs_run", 0)), train_time_s=float(row.get("train_time_s", 0.0)))  # fmt: skip


def in_dims_of(data: dict[str, SplitData]) -> dict[str, int]:
    return {m: int(x.shape[-1]) for m, x in data["train"].features.items()}


def run_job(job: TrainJob, data: dict[str, SplitData], num_classes: int) -> JobOutcome:
    """Train ``job`` on ``data`` (train / val / test splits) and score it on test; raises what
    the training raises (the executors retry and record it). ``num_classes`` 0: a regression
    target (float labels); the row then has ``test_mse`` / ``test_mae`` / ``test_r2`` and
    ``val_mse`` (what selection uses) instead of the accuracies and ``val_accuracy``."""
    model, row, res = _train(job, data, num_classes)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()} if job.keep else None
    return JobOutcome(job, row=row, history=res.history, state=state)


def run_one(
    method: str,
    data: dict[str, SplitData],
    cfg: TrainConfig,
    num_classes: int,
    hidden: int = 128,
    dropout: float = 0.1,
    fusion_kwargs: dict[str, Any] | None = None,
    log_fn: Callable[[dict], None] | None = None,
) -> tuple[MultimodalModel, dict[str, Any], TrainResult]:
    """Train one method (or ``unimodal:<modality>``) with ``cfg.seed`` in this process; returns
    (model, row, TrainResult)."""
    config = {
        "hidden": hidden,
        "dropout": dropout,
        **{f"{FUSION_PREFIX}{k}": v for k, v in (fusion_kwargs or {}).items()},
    }
    return _train(TrainJob(method, cfg.seed, config, cfg), data, num_classes, log_fn)


def _train(job: TrainJob, data: dict[str, SplitData], num_classes: int, log_fn=None):
    data = job.splits(data)
    regression = data["train"].regression
    if regression != (num_classes == 0):
        raise ValueError(
            f"{job.name}: num_classes={num_classes} but the labels are "
            f"{'regression targets (floats; num_classes must be 0)' if regression else 'class indices'}"
        )
    cfg = job.train_config()
    model = job.build(in_dims_of(data), num_classes)
    res = train(model, data["train"], data["val"], cfg, log_fn=log_fn)
    t0 = time.perf_counter()
    logits, _ = predict(model, data["test"])
    infer_s = time.perf_counter() - t0
    test = target_metrics(logits, data["test"].labels, num_classes)
    row = {
        "method": job.method,
        "seed": job.seed,
        **{f"test_{k}": v for k, v in test.items()},
        ("val_mse" if regression else "val_accuracy"): res.best_value,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "params": model.num_parameters(),
        "train_time_s": res.train_time_s,
        "infer_samples_per_s": len(data["test"]) / max(infer_s, 1e-9),
        "config": json.dumps(job.config, sort_keys=True),
    }
    return model, row, res
