"""The training loop for models on cached features: AdamW (or SGD), weight decay, dropout,
class weights, modality dropout, early stopping on validation accuracy, best state restored."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionkit.model import MultimodalModel
from fusionkit.progress import progress
from fusionkit.runtime import tune_allocator

Tensor = torch.Tensor


@dataclass
class SplitData:
    """Features of one split: ``{modality: (N, D) or (N, L, D)}``, integer labels, sample ids, and
    optional per-modality presence masks ``{modality: (N,)}`` (1 = present)."""

    features: dict[str, Tensor]
    labels: Tensor
    ids: list[str]
    mask: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, modalities: list[str]) -> SplitData:
        missing = [m for m in modalities if m not in self.features]
        if missing:
            raise KeyError(f"modalities {missing} not in features {sorted(self.features)}")
        mask = None if self.mask is None else {m: self.mask[m] for m in modalities if m in self.mask}
        return SplitData({m: self.features[m] for m in modalities}, self.labels, self.ids, mask)

    def check(self, name: str = "data") -> None:
        """Fail loudly on NaN/inf features or a modality missing from every sample."""
        for m, x in self.features.items():
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero().flatten()[:5].tolist()
                raise ValueError(f"{name}: modality {m!r} has NaN/inf features (samples {[self.ids[i] for i in bad]})")
            if self.mask is not None and m in self.mask and float(self.mask[m].sum()) == 0:
                raise ValueError(f"{name}: modality {m!r} is missing from every sample")


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    patience: int = 8  # epochs without validation improvement before stopping
    class_weights: bool = False  # inverse-frequency class weights in the loss
    modality_dropout: float = 0.0  # probability of dropping each modality per training sample
    grad_clip: float = 5.0
    seed: int = 0
    #: CPU threads while training (None: torch's default). Small models on cached features run
    #: fastest on one thread; with more threads than free cores, OpenMP's spinning threads slow
    #: training down tens of times when anything else runs on the machine (measured here).
    num_threads: int | None = 1

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer {self.optimizer!r}; expected 'adamw' or 'sgd'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("modality_dropout must be in [0, 1)")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = float("nan")
    train_time_s: float = 0.0
    epochs_run: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.1):
    """Linear warm-up over the first ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(round(warmup_frac * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Temporarily run torch's CPU ops on ``n`` threads (no-op for None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def _batch(data: SplitData, idx: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    feats = {m: x[idx] for m, x in data.features.items()}
    mask = None if data.mask is None else {m: v[idx] for m, v in data.mask.items()}
    return feats, mask


def _modality_dropout(
    mask: dict[str, Tensor] | None, modalities: list[str], n: int, p: float, gen: torch.Generator
) -> dict[str, Tensor] | None:
    """Drop each present modality of each sample with probability ``p``; a sample that would lose
    all of its modalities keeps one of its present ones, chosen at random."""
    if p <= 0:
        return mask
    base = torch.stack([mask[m] if mask is not None and m in mask else torch.ones(n) for m in modalities], 1)
    keep = (torch.rand(n, len(modalities), generator=gen) >= p).float() * base
    emptied = (keep.sum(1) == 0) & (base.sum(1) > 0)
    if emptied.any():
        # one random present modality per emptied sample: argmax of random scores over present ones
        scores = torch.rand(int(emptied.sum()), len(modalities), generator=gen) * base[emptied] + base[emptied]
        keep[emptied.nonzero().flatten(), scores.argmax(1)] = 1.0
    return {m: keep[:, i] for i, m in enumerate(modalities)}


@torch.inference_mode()
def predict(
    model: MultimodalModel, data: SplitData, mask: dict[str, Tensor] | None = None, batch_size: int = 512
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Logits (N, C) and per-sample modality weights (or None) for a whole split."""
    model.eval()
    mask = mask if mask is not None else data.mask
    logits, weights = [], []
    n = len(data)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        feats, _ = _batch(data, idx)
        mk = None if mask is None else {m: v[idx] for m, v in mask.items()}
        out = model(feats, mk)
        logits.append(out.logits.float())
        if out.weights is not None:
            weights.append({m: w.float() for m, w in out.weights.items()})
    w = {m: torch.cat([b[m] for b in weights]) for m in weights[0]} if weights else None
    return torch.cat(logits), w


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def train(
    model: MultimodalModel,
    train_data: SplitData,
    val_data: SplitData,
    cfg: TrainConfig,
    log_fn=None,
    show_progress: bool = False,
) -> TrainResult:
    """Train with early stopping on validation accuracy; the best state is restored at the end."""
    tune_allocator()  # fusionkit.runtime: no page faults for every batch-sized tensor
    with cpu_threads(cfg.num_threads):
        return _train(model, train_data, val_data, cfg, log_fn, show_progress)


def _train(
    model: MultimodalModel,
    train_data: SplitData,
    val_data: SplitData,
    cfg: TrainConfig,
    log_fn=None,
    show_progress: bool = False,
) -> TrainResult:
    """Train with early stopping on validation accuracy; the best state is restored at the end."""
    cfg.validate()
    train_data.check("train")
    val_data.check("val")
    gen = seed_everything(cfg.seed)
    num_classes = int(max(train_data.labels.max(), val_data.labels.max())) + 1
    weight = None
    if cfg.class_weights:
        counts = torch.bincount(train_data.labels, minlength=num_classes).float()
        weight = counts.sum() / (num_classes * counts.clamp(min=1))
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    sched = warmup_cosine(opt, total_steps=cfg.epochs * steps_per_epoch, warmup_frac=0.1)
    modalities = sorted(train_data.features)
    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    best_loss = float("inf")
    bad_epochs = 0
    t0 = time.perf_counter()
    bar = progress(range(cfg.epochs), enabled=show_progress, desc="epochs", leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train_data), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            feats, mask = _batch(train_data, idx)
            mask = _modality_dropout(mask, modalities, len(idx), cfg.modality_dropout, gen)
            out = model(feats, mask)
            loss = loss_fn(out.logits, train_data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.logits.argmax(1) == train_data.labels[idx]).sum())
            total += len(idx)
        val_logits, _ = predict(model, val_data)
        val_loss = float(nn.functional.cross_entropy(val_logits, val_data.labels))
        val_acc = accuracy(val_logits, val_data.labels)
        rec = {
            "epoch": epoch,
            "train_loss": loss_sum / total,
            "train_acc": correct / total,
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        result.history.append(rec)
        if log_fn is not None:
            log_fn(rec)
        improved = (
            val_acc > result.best_val_acc
            or (val_acc == result.best_val_acc and val_loss < best_loss)
            or result.best_epoch < 0
        )
        if improved:
            result.best_val_acc, best_loss, result.best_epoch = val_acc, val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    result.epochs_run = len(result.history)
    result.train_time_s = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    return result
