"""The one training loop: epochs of optimizer steps over the task's batches, an evaluation after
each epoch, early stopping on a named metric with the best state restored, an opt-in per-epoch
checkpoint with exact resume, a progress bar and an optional log callback.

The task code supplies the model, the optimizer and schedule, the batches of an epoch (drawn
with the loop's seeded generator), the loss of a batch and the epoch's evaluation; the loop does
the rest, in this order, every epoch:

1. ``model.train()``; for each batch of ``batches(gen)``: ``step(batch, gen)`` (the forward pass
   and the loss), ``zero_grad``, ``backward``, gradient clipping, optimizer step, schedule step,
   ``after_step()``;
2. ``model.eval()``; the record ``{"epoch", "train_loss", <train sums>, **evaluate()}``;
3. history, early stopping on ``record[monitor]``, checkpoint, ``log_fn(record)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from fusionkit.progress import progress
from fusionkit.training.checkpoint import TrainCheckpoint
from fusionkit.training.early_stopping import EarlyStopping
from fusionkit.training.result import TrainResult
from fusionkit.training.seeding import seed_everything

Tensor = torch.Tensor
B = TypeVar("B")


@dataclass
class Step:
    """What the task's ``step`` returns for one batch.

    ``loss``: the tensor to backpropagate. ``n``: the items the batch holds (the epoch's
    ``train_loss`` and sums are per item). ``logged``: what ``train_loss`` averages when it is
    not ``loss`` itself (e.g. the cross-entropy without a regulariser). ``sums``: further
    per-batch totals reported per item, e.g. ``{"train_acc": number correct}``."""

    loss: Tensor
    n: int
    logged: Tensor | float | None = None
    sums: Mapping[str, float] = field(default_factory=dict)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Callable[[torch.Generator], Iterable[B]],
    step: Callable[[B, torch.Generator], Step],
    evaluate: Callable[[], dict[str, float]] | None = None,
    *,
    epochs: int,
    seed: int,
    monitor: str | None = None,
    mode: str = "max",
    patience: int = 1,
    tiebreak: str | None = None,
    grad_clip: float | None = None,
    after_step: Callable[[], None] | None = None,
    trainable_state: Callable[[], dict[str, Tensor]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    desc: str = "epochs",
) -> TrainResult:
    """Train ``model`` for up to ``epochs`` epochs (see the module docstring for the order).

    ``seed``: :func:`seed_everything` first thing, which also makes the generator handed to
    ``batches`` and ``step``. ``evaluate()``: the rest of the epoch's record (validation
    metrics, anything else worth logging); it runs with the model in eval mode. ``monitor``: the
    record's key early stopping watches, ``mode`` ``"max"`` or ``"min"``, stopping after
    ``patience`` epochs without improvement; ``tiebreak``: a key whose lower value wins a tie of
    ``monitor``. The best epoch's state comes back at the end; without ``monitor`` every epoch
    runs and the last state stays. ``grad_clip``: the gradient norm over the optimizer's
    parameters (None or 0: no clipping). ``trainable_state()``: the state that trains (copied
    for the best epoch and checkpointed; default ``model.state_dict()``). ``checkpoint``: a
    file the full training state is written to after every epoch (nothing written without it);
    ``resume=True`` continues from it to the same end as an uninterrupted run. The model is
    left in eval mode."""
    gen = seed_everything(seed)
    state = trainable_state or model.state_dict
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stopper = EarlyStopping(patience, mode)
    ckpt = TrainCheckpoint(checkpoint)
    result = TrainResult(monitor=monitor or "")
    start, result.history = ckpt.restore(model, optimizer, scheduler, stopper, gen, epochs) if resume else (0, [])
    t0 = time.perf_counter()
    for epoch in progress(range(start, epochs), enabled=show_progress, desc=desc, leave=False):
        model.train()
        loss_sum, n_sum = 0.0, 0
        sums: dict[str, float] = {}
        for batch in batches(gen):
            out = step(batch, gen)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            loss_sum += float(out.loss.detach() if out.logged is None else out.logged) * out.n
            n_sum += out.n
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0) + v
        model.eval()
        rec: dict[str, float] = {"epoch": epoch, "train_loss": loss_sum / max(n_sum, 1)}
        rec.update({k: v / max(n_sum, 1) for k, v in sums.items()})
        rec.update(evaluate() if evaluate is not None else {})
        if monitor is not None and monitor not in rec:
            raise KeyError(f"the epoch's record has no {monitor!r} to monitor (got {sorted(rec)})")
        result.history.append(rec)
        stop = monitor is not None and stopper.step(
            float(rec[monitor]), state, epoch, None if tiebreak is None else float(rec[tiebreak])
        )
        if ckpt.path is not None:
            ckpt.save(epoch, stop, state(), optimizer, scheduler, stopper, gen, result.history)
        if log_fn is not None:
            log_fn(rec)
        if stop:
            break
    result.epochs_run = len(result.history)
    result.train_time_s = time.perf_counter() - t0
    if monitor is not None and stopper.best_state is not None:
        model.load_state_dict({**model.state_dict(), **stopper.best_state})
        result.best_epoch, result.best_value = stopper.best_epoch, float(stopper.best)
    else:
        result.best_epoch = result.epochs_run - 1
    model.eval()
    return result
