"""Training a caption decoder on cached features (teacher forcing, label smoothing, early stopping on
validation CIDEr or loss, on :func:`fusionkit.training.fit`) and scoring it."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from fusionkit.tasks.captioning.data import CaptionSplit
from fusionkit.tasks.captioning.decoders import CaptionDecoder
from fusionkit.tasks.captioning.metrics import caption_metrics
from fusionkit.tasks.captioning.search import predict_captions
from fusionkit.tasks.captioning.tokenizer import CaptionTokenizer
from fusionkit.training import Step, TrainResult, adamw, fit, warmup_cosine

Tensor = torch.Tensor


@dataclass
class CaptionTrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05  # share of all steps spent on the linear warm-up
    label_smoothing: float = 0.1
    grad_clip: float = 2.0
    patience: int = 5  # epochs without improvement of `monitor` before stopping
    monitor: str = "cider"  # "cider" (greedy validation CIDEr-D, higher is better) or "loss"
    val_max_images: int | None = 300  # decode at most this many validation images per epoch
    seed: int = 0

    def validate(self) -> None:
        if self.monitor not in ("cider", "loss"):
            raise ValueError(f"monitor={self.monitor!r}; expected 'cider' or 'loss'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup_frac < 1:
            raise ValueError("label_smoothing and warmup_frac must be in [0, 1)")


def batch_loss(model: CaptionDecoder, grid, pooled, tokens, smoothing: float) -> tuple[Tensor, Tensor]:
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    out = model(grid, inp, pooled)
    ce = F.cross_entropy(
        out.logits.reshape(-1, out.logits.shape[-1]).float(),
        tgt.reshape(-1),
        ignore_index=model.pad_id,
        label_smoothing=smoothing,
    )
    return ce, model.regularizer(out, tgt != model.pad_id)


@torch.inference_mode()
def caption_loss(model: CaptionDecoder, split: CaptionSplit, batch_size: int = 256) -> float:
    """Teacher-forced cross-entropy (no smoothing) per token over every caption of ``split``."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(split.tokens), batch_size):
        tok = split.tokens[s : s + batch_size].to(dev)
        rows = split.caption_image[s : s + batch_size]
        g = split.grid[rows].to(dev)
        p = None if split.pooled is None else split.pooled[rows].to(dev)
        out = model(g, tok[:, :-1], p)
        tgt = tok[:, 1:]
        n = int((tgt != model.pad_id).sum())
        total += float(
            F.cross_entropy(
                out.logits.reshape(-1, out.logits.shape[-1]).float(),
                tgt.reshape(-1),
                ignore_index=model.pad_id,
                reduction="sum",
            )
        )
        count += n
    model.train(was)
    return total / max(count, 1)


def train_captioner(
    model: CaptionDecoder,
    train: CaptionSplit,
    val: CaptionSplit | None,
    tokenizer: CaptionTokenizer,
    cfg: CaptionTrainConfig | None = None,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Teacher forcing over every (image, caption) pair of ``train`` each epoch; validation loss
    and (``monitor="cider"``) greedy CIDEr-D on up to ``val_max_images`` validation images after
    each epoch; early stopping on ``monitor``; the best state is restored. Without ``val`` the
    model trains for ``epochs`` and keeps its last state. The result's ``monitor`` is the
    config's name of the metric (``"cider"`` / ``"loss"``, watched as ``val_cider`` / ``val_loss``).

    ``checkpoint``: a file the full training state is written to after every epoch
    (:class:`~fusionkit.training.TrainCheckpoint`); ``resume=True`` continues from it, to
    the same result as an uninterrupted run."""
    cfg = cfg or CaptionTrainConfig()
    cfg.validate()
    dev = next(model.parameters()).device
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train.tokens) / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))
    val_sub = val
    if val is not None and cfg.val_max_images and len(val) > cfg.val_max_images:
        val_sub = val.subset(torch.arange(cfg.val_max_images))

    def batches(gen: torch.Generator):
        perm = torch.randperm(len(train.tokens), generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            yield perm[s : s + cfg.batch_size]

    def step(idx: Tensor, gen: torch.Generator) -> Step:
        tok = train.tokens[idx]
        tok = tok[:, : int((tok != model.pad_id).sum(1).max())].to(dev)  # trim the batch's padding
        rows = train.caption_image[idx]
        g = train.grid[rows].to(dev)
        p = None if train.pooled is None else train.pooled[rows].to(dev)
        ce, reg = batch_loss(model, g, p, tok, cfg.label_smoothing)
        return Step(ce + reg, len(idx), logged=ce.detach())

    def evaluate() -> dict[str, float]:
        rec: dict[str, float] = {"lr": sched.get_last_lr()[0]}
        if val is not None:
            rec["val_loss"] = caption_loss(model, val)
            if cfg.monitor == "cider":
                preds = predict_captions(model, tokenizer, val_sub)
                rec["val_cider"] = caption_metrics(
                    val_sub.reference_dict(), preds, metrics=("CIDEr",), tokenize="simple"
                )["CIDEr"]
        return rec

    monitor = None if val is None else f"val_{cfg.monitor}"
    res = fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed, monitor=monitor,
              mode="max" if cfg.monitor == "cider" else "min", patience=cfg.patience, grad_clip=cfg.grad_clip,
              checkpoint=checkpoint, resume=resume, log_fn=log_fn, show_progress=show_progress,
              desc="caption epochs")  # fmt: skip
    res.monitor = cfg.monitor
    return res


def evaluate_captioner(
    model: CaptionDecoder,
    tokenizer: CaptionTokenizer,
    split: CaptionSplit,
    *,
    per_image: bool = False,
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE"),
    **generate_kw: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics, predictions) on ``split``: decode (keywords to :func:`generate`) and score with
    :func:`~fusionkit.tasks.captioning.metrics.caption_metrics`."""
    preds = predict_captions(model, tokenizer, split, **generate_kw)
    return caption_metrics(split.reference_dict(), preds, metrics=metrics, per_image=per_image), preds
