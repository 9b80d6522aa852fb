"""A tiny regression problem for the loop's tests: dropout (torch's global RNG), shuffling with
the loop's generator, gradient clipping and a schedule, so that exact resume has to restore all
of them. Importable by a subprocess (the kill -9 test)."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

from fusionkit.training import Step, TrainResult, fit, warmup_cosine

EPOCHS, BATCH = 6, 16
FIXED = [0.1, 0.7, 0.3, 0.7, 0.2, 0.1]  # "val_fixed": a metric whose best epoch (1) is known


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(96, generator=g)
    return x[:64], y[:64], x[64:], y[64:]


def run(checkpoint=None, resume=False, *, epochs=EPOCHS, patience=10, mode="min", monitor="val_mse", seed=0,
        die_after=None, kill_after=None, log=None, snapshots=None) -> tuple[nn.Module, TrainResult]:  # fmt: skip
    """Train from the same initial state every time. ``die_after`` / ``kill_after``: raise
    KeyboardInterrupt / SIGKILL the process once that epoch's record is logged. ``snapshots``:
    a list the model's state after each epoch's training is appended to."""
    xt, yt, xv, yv = data()
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = warmup_cosine(opt, epochs * (len(xt) // BATCH), 3)

    def batches(gen):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(perm), BATCH):
            yield perm[s : s + BATCH]

    def step(idx, gen):
        err = model(xt[idx]).squeeze(1) - yt[idx]
        return Step(err.pow(2).mean(), len(idx), sums={"train_abs": float(err.detach().abs().sum())})

    def evaluate():
        if snapshots is not None:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            mse = float((model(xv).squeeze(1) - yv).pow(2).mean())
        return {
            "val_mse": mse,
            "val_fixed": FIXED[sched.last_epoch // (len(xt) // BATCH) - 1],
            "lr": sched.get_last_lr()[0],
        }

    def log_fn(rec):
        if log is not None:
            log.append(rec)
        if rec["epoch"] == die_after:
            raise KeyboardInterrupt
        if rec["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    res = fit(model, opt, sched, batches, step, evaluate, epochs=epochs, seed=seed, monitor=monitor, mode=mode,
              patience=patience, grad_clip=1.0, checkpoint=checkpoint, resume=resume, log_fn=log_fn)  # fmt: skip
    return model, res


if __name__ == "__main__":  # python -m tests.training.problem CHECKPOINT KILL_AFTER
    import sys

    run(sys.argv[1], kill_after=int(sys.argv[2]))
