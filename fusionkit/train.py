"""Classification and regression on cached features: the splits (:class:`SplitData`), the
settings (:class:`TrainConfig`) and :func:`train`, which runs :func:`fusionkit.training.fit` with
AdamW (or SGD), weight decay, class weights, modality dropout and early stopping on validation
accuracy (ties broken by the lower validation loss), the best state restored; :func:`predict` for
a whole split.

A regression target (float labels, ``SplitData.regression``; a model built with
``num_classes=0``) trains on the targets standardised with the training split's mean and
standard deviation (MSE loss in those units; the model's :class:`~fusionkit.model.TargetScale`
holds them and its outputs are in the target's own units), early stopping on the validation MSE
(lower is better)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
from torch import nn

from fusionkit.fusion import values_checked
from fusionkit.model import MultimodalModel
from fusionkit.progress import progress
from fusionkit.runtime import tune_allocator
from fusionkit.training import Step, TrainResult, adamw, cpu_threads, fit, seed_everything, warmup_cosine

Tensor = torch.Tensor

__all__ = [
    "Restarts",
    "SplitData",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "cpu_threads",
    "predict",
    "seed_everything",
    "train",
    "train_restarts",
]


@dataclass
class SplitData:
    """Features of one split: ``{modality: (N, D) or (N, L, D)}``, labels (integer class indices,
    or a regression target's numbers as floats), sample ids, and optional per-modality presence
    masks ``{modality: (N,)}`` (1 = present)."""

    features: dict[str, Tensor]
    labels: Tensor
    ids: list[str]
    mask: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def regression(self) -> bool:
        """Whether the labels are a regression target's numbers (float) rather than class indices."""
        return bool(self.labels.is_floating_point())

    def select(self, modalities: list[str]) -> SplitData:
        missing = [m for m in modalities if m not in self.features]
        if missing:
            raise KeyError(f"modalities {missing} not in features {sorted(self.features)}")
        mask = None if self.mask is None else {m: self.mask[m] for m in modalities if m in self.mask}
        return SplitData({m: self.features[m] for m in modalities}, self.labels, self.ids, mask)

    def take(self, rows: list[int] | Tensor) -> SplitData:
        """The samples at ``rows`` (in that order)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        mask = None if self.mask is None else {m: v[idx] for m, v in self.mask.items()}
        feats = {m: x[idx] for m, x in self.features.items()}
        return SplitData(feats, self.labels[idx], [self.ids[i] for i in idx.tolist()], mask)

    @staticmethod
    def concat(parts: list[SplitData]) -> SplitData:
        """The samples of ``parts`` one after another (the same modalities in each)."""
        mods = sorted(parts[0].features)
        feats = {m: torch.cat([p.features[m] for p in parts]) for m in mods}
        masks = None
        if any(p.mask is not None for p in parts):
            masks = {m: torch.cat([p.mask[m] if p.mask and m in p.mask else torch.ones(len(p)) for p in parts])
                     for m in mods}  # fmt: skip
        return SplitData(feats, torch.cat([p.labels for p in parts]), [i for p in parts for i in p.ids], masks)

    def check(self, name: str = "data") -> None:
        """Fail loudly on NaN/inf features or a modality missing from every sample."""
        for m, x in self.features.items():
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero().flatten()[:5].tolist()
                raise ValueError(f"{name}: modality {m!r} has NaN/inf features (samples {[self.ids[i] for i in bad]})")
            if self.mask is not None and m in self.mask and float(self.mask[m].sum()) == 0:
                raise ValueError(f"{name}: modality {m!r} is missing from every sample")
        if self.regression and not torch.isfinite(self.labels).all():
            bad = (~torch.isfinite(self.labels)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name}: NaN/inf regression targets (samples {[self.ids[i] for i in bad]})")


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


def _train_regression(model: MultimodalModel, train_data: SplitData, val_data: SplitData, cfg: TrainConfig, opt,
                      sched, batches, modalities, log_fn, show_progress, checkpoint, resume) -> TrainResult:  # fmt: skip
    """:func:`train`'s regression branch: MSE on the standardised target, early stopping on the
    validation MSE in the target's units (lower is better)."""
    if not model.regression:
        raise ValueError("regression targets (float labels) need a model built with num_classes=0 (a regression head)")
    if float(train_data.labels.std(unbiased=False)) == 0:
        raise ValueError(f"train: the regression target is constant ({float(train_data.labels[0])}) on every sample")
    scale = model.head
    scale.fit(train_data.labels)
    std = float(scale.std)

    def step(idx: Tensor, gen: torch.Generator) -> Step:
        feats, mask = _batch(train_data, idx)
        mask = _modality_dropout(mask, modalities, len(idx), cfg.modality_dropout, gen)
        out = model(feats, mask)
        return Step(nn.functional.mse_loss(out.logits[:, 0] / std, train_data.labels[idx] / std), len(idx))

    def evaluate() -> dict[str, float]:
        pred, _ = predict(model, val_data)
        err = pred[:, 0] - val_data.labels
        mse = float((err**2).mean())
        return {"val_loss": mse / std**2, "val_mse": mse}

    with values_checked(False):  # both splits were checked whole (train)
        return fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed, monitor="val_mse",
                   mode="min", patience=cfg.patience, grad_clip=cfg.grad_clip, checkpoint=checkpoint, resume=resume,
                   log_fn=log_fn, show_progress=show_progress)  # fmt: skip


def train(
    model: MultimodalModel,
    train_data: SplitData,
    val_data: SplitData,
    cfg: TrainConfig,
    log_fn=None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train with early stopping on validation accuracy (``monitor="val_acc"``, ties broken by
    the lower ``val_loss``; a regression target: on ``val_mse``, lower is better); the best state
    is restored at the end. ``checkpoint`` / ``resume``: the loop's opt-in per-epoch checkpoint
    (:func:`fusionkit.training.fit`)."""
    tune_allocator()  # fusionkit.runtime: no page faults for every batch-sized tensor
    with cpu_threads(cfg.num_threads):
        cfg.validate()
        train_data.check("train")
        val_data.check("val")
        if train_data.regression != val_data.regression:
            raise ValueError("train and val labels differ in kind (one regression, one classes)")
        if not train_data.regression and model.regression:
            raise ValueError("a regression model (num_classes=0) needs regression targets (float labels)")
        if cfg.class_weights and train_data.regression:
            raise ValueError("class_weights: a regression target has no classes")
        num_classes = 1 if train_data.regression else int(max(train_data.labels.max(), val_data.labels.max())) + 1
        weight = None
        if cfg.class_weights:
            counts = torch.bincount(train_data.labels, minlength=num_classes).float()
            weight = counts.sum() / (num_classes * counts.clamp(min=1))
        loss_fn = nn.CrossEntropyLoss(weight=weight)
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = cfg.epochs * math.ceil(len(train_data) / cfg.batch_size)
        sched = warmup_cosine(opt, total, max(1, round(0.1 * total)), peak_in_warmup=True)
        modalities = sorted(train_data.features)

        def batches(gen: torch.Generator):
            perm = torch.randperm(len(train_data), generator=gen)
            for start in range(0, len(perm), cfg.batch_size):
                yield perm[start : start + cfg.batch_size]

        if train_data.regression:
            return _train_regression(model, train_data, val_data, cfg, opt, sched, batches, modalities, log_fn,
                                     show_progress, checkpoint, resume)  # fmt: skip

        def step(idx: Tensor, gen: torch.Generator) -> Step:
            feats, mask = _batch(train_data, idx)
            mask = _modality_dropout(mask, modalities, len(idx), cfg.modality_dropout, gen)
            out = model(feats, mask)
            labels = train_data.labels[idx]
            correct = int((out.logits.argmax(1) == labels).sum())
            return Step(loss_fn(out.logits, labels), len(idx), sums={"train_acc": correct})

        def evaluate() -> dict[str, float]:
            val_logits, _ = predict(model, val_data)
            val_loss = float(nn.functional.cross_entropy(val_logits, val_data.labels))
            return {"val_loss": val_loss, "val_acc": accuracy(val_logits, val_data.labels)}

        with values_checked(False):  # both splits were checked whole above (SplitData.check)
            return fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed,
                       monitor="val_acc", mode="max", patience=cfg.patience, tiebreak="val_loss",
                       grad_clip=cfg.grad_clip, checkpoint=checkpoint, resume=resume, log_fn=log_fn,
                       show_progress=show_progress)  # fmt: skip


@dataclass
class Restarts:
    """:func:`train_restarts`' outcome: the kept model (the best on validation), its training, its
    seed, and one row per restart (seed, best validation value, best epoch, epochs run, kept)."""

    model: MultimodalModel
    result: TrainResult
    seed: int
    table: list[dict]


def train_restarts(
    build,
    train_data: SplitData,
    val_data: SplitData,
    cfg: TrainConfig,
    seeds,
    log_fn=None,
    show_progress: bool = False,
) -> Restarts:
    """Train ``build()``'s model once per seed of ``seeds`` (``cfg`` with that seed; the model built
    after seeding) and keep the one best on validation (the highest accuracy, or for a regression
    target the lowest MSE; ties: the earliest seed). A model that has to find a cross-modal rule
    does so from some initialisations and not from others; restarts chosen on validation make the
    trained model not hang on one draw, and test is still scored once, on the kept model.
    ``log_fn`` gets the kept training's epochs, after the choice."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("train_restarts needs at least one seed")
    best: tuple[MultimodalModel, TrainResult, int] | None = None
    rows = []
    for s in progress(seeds, enabled=show_progress and len(seeds) > 1, desc="restarts"):
        seed_everything(s)
        model = build()
        res = train(model, train_data, val_data, replace(cfg, seed=s), show_progress=show_progress and len(seeds) == 1)
        rows.append(
            {"seed": s, res.monitor: res.best_value, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run}
        )
        lower = res.monitor == "val_mse"
        if best is None or (res.best_value < best[1].best_value if lower else res.best_value > best[1].best_value):
            best = (model, res, s)
    model, res, seed = best
    for row in rows:
        row["kept"] = row["seed"] == seed
    if log_fn is not None:
        for rec in res.history:
            log_fn(rec)
    return Restarts(model, res, seed, rows)
