"""Training: the one loop every model of fusionkit trains with (classification on cached
features, captioning, VQA, retrieval, fine-tuning), and its parts.

- :func:`fit` / :class:`Step` (``loop``): epochs, early stopping, best state, checkpoint, resume;
- :func:`adamw` (``optim``): AdamW with its fused kernel;
- :func:`warmup_cosine` (``schedule``): the learning-rate schedule;
- :class:`EarlyStopping` (``early_stopping``), :class:`TrainCheckpoint` (``checkpoint``);
- :class:`TrainResult` (``result``): what a run returns;
- :func:`seed_everything`, :func:`cpu_threads` (``seeding``)."""

from fusionkit.training.checkpoint import TrainCheckpoint
from fusionkit.training.early_stopping import EarlyStopping
from fusionkit.training.loop import Step, fit
from fusionkit.training.optim import adamw
from fusionkit.training.result import TrainResult
from fusionkit.training.schedule import warmup_cosine
from fusionkit.training.seeding import cpu_threads, seed_everything

__all__ = ["EarlyStopping", "Step", "TrainCheckpoint", "TrainResult", "adamw", "cpu_threads", "fit",
           "seed_everything", "warmup_cosine"]  # fmt: skip
