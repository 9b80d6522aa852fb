"""Transfer learning for the three tasks: frozen features or fine-tuning the last blocks of the
image (and, for retrieval and VQA, the text) encoder, with torchvision transforms v2
augmentation of the training images whenever the image encoder is trained.

Frozen (``image_blocks=0, text_blocks=0``)
    The task models train on cached features: seconds.

Fine-tuned (:func:`finetune_on_images`, one loop for every task)
    ``encoder.unfreeze(n)`` makes the last ``n`` blocks trainable (the rest stays frozen and in
    eval mode, so no autograd graph is built through it). The task model starts from the one
    trained on frozen features (linear probe, then fine-tuning). Each step takes ``batch_size``
    distinct training images and runs the encoder once per image; the task's ``batch_loss``
    turns their features into a loss (retrieval: one random caption per image, symmetric
    InfoNCE; captioning: every caption of each image, teacher forcing; VQA: every question of
    each image). The images are decoded once (shorter side to the encoder's resize size, centre
    square) and kept as uint8; each step draws a fresh augmented view of each image
    (:func:`image_augmentation`: random resized crop, flip, rotation, colour jitter) at the
    encoder's crop size. Validation re-encodes the validation images after every epoch with the
    encoder's own deterministic preprocessing (resize + centre crop) and asks the task for its
    metric. Two learning rates (AdamW): ``lr`` for the task model, ``encoder_lr`` for the encoder
    blocks; warm-up + cosine; early stopping on the task's validation metric with the best state
    of the model *and* the encoders restored.

Resume
    With ``checkpoint=path`` the full training state (model, encoders' trainable blocks,
    optimizer, schedule, early-stopping state, RNG states, history) is written atomically after
    every epoch; ``resume=True`` continues from it and ends exactly where an uninterrupted run
    ends.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusionkit.encoders.image import decode_image_tensor, resize_crop
from fusionkit.progress import progress
from fusionkit.tasks import captioning as C
from fusionkit.tasks.captioning.metrics import caption_metrics
from fusionkit.tasks.captioning.training import batch_loss as caption_batch_loss
from fusionkit.tasks.retrieval.dual_encoder import DualEncoder, info_nce
from fusionkit.tasks.retrieval.ranking import _positives_table, recall_at_k
from fusionkit.training import Step, TrainResult, adamw, fit, warmup_cosine

Tensor = torch.Tensor

__all__ = ["FinetuneConfig", "decode_for_training", "encode_image_features", "encode_images",
           "encode_texts", "finetune_captioner", "finetune_dual_encoder", "finetune_on_images",
           "image_augmentation"]  # fmt: skip


def image_augmentation(
    crop_size: int,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    rotation: float = 10.0,
    flip: float = 0.5,
    jitter: float = 0.2,
):
    """torchvision transforms v2 pipeline on one uint8 ``(3, H, W)`` image -> ``(3, crop, crop)``
    uint8: random resized crop (``scale`` of the area, aspect 3/4..4/3), horizontal flip,
    rotation up to ``rotation`` degrees, brightness / contrast / saturation jitter."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(flip),
            v2.RandomRotation(rotation),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
        ]
    )


def decode_for_training(encoder, paths: Sequence[str | os.PathLike], show_progress: bool = False) -> Tensor:
    """Decode images once for fine-tuning: ``(N, 3, R, R)`` uint8, shorter side to the encoder's
    resize size ``R`` and a centre square (augmentation then crops from it; the centre
    ``crop_size`` square of it is exactly the encoder's own preprocessing)."""

    r = int(encoder.resize_size)
    out = torch.empty(len(paths), 3, r, r, dtype=torch.uint8)
    for i, p in enumerate(progress(paths, enabled=show_progress, desc="decode images", leave=False)):
        out[i] = resize_crop(decode_image_tensor(p, r), r, r, encoder.interpolation)
    return out


def _center(images: Tensor, crop: int) -> Tensor:
    h, w = images.shape[-2:]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return images[..., top : top + crop, left : left + crop]


def encode_image_features(encoder, images: Tensor, batch_size: int = 32) -> dict[str, Tensor]:
    """``{"pooled": (N, D), "grid": (N, L, D)}`` of decoded uint8 images with the encoder's
    deterministic preprocessing (eval mode; the encoder's mode is restored)."""
    was = encoder.training
    encoder.eval()
    crop = int(encoder.crop_size)
    parts: dict[str, list[Tensor]] = {}
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            out = encoder(_center(images[s : s + batch_size], crop))
            for k in ("pooled", "grid"):
                if k in out:
                    parts.setdefault(k, []).append(out[k].float())
    encoder.train(was)
    return {k: torch.cat(v) for k, v in parts.items()}


def encode_images(encoder, images: Tensor, batch_size: int = 32) -> Tensor:
    """Pooled features of decoded uint8 images with the encoder's deterministic preprocessing."""
    return encode_image_features(encoder, images, batch_size)["pooled"]


def encode_texts(encoder, texts: Sequence[str], batch_size: int = 128) -> Tensor:
    """Pooled features of ``texts`` (the text encoder's tokenizer and pooling)."""
    was = encoder.training
    encoder.eval()
    with torch.inference_mode():
        out = torch.cat(
            [
                encoder(encoder.collate(list(texts[s : s + batch_size])))["pooled"].float()
                for s in range(0, len(texts), batch_size)
            ]
        )
    encoder.train(was)
    return out


@dataclass
class FinetuneConfig:
    """Defaults measured on flickr8k-800 retrieval (600 training images; the task model starts
    from the one trained on frozen features, hence the low learning rate of the model)."""

    image_blocks: int = 1  # last blocks of the image encoder trained (0: frozen)
    text_blocks: int = 0  # last blocks (transformer layers) of the text encoder trained (0: frozen)
    augment: bool = True  # torchvision v2 augmentation of the training images (when image_blocks > 0)
    epochs: int = 6
    batch_size: int = 64  # distinct images per step
    lr: float = 1e-4  # the task model (heads, decoder, classifier)
    encoder_lr: float = 3e-5  # unfrozen encoder blocks
    weight_decay: float = 1e-2
    warmup_frac: float = 0.1
    grad_clip: float = 5.0
    patience: int = 3
    seed: int = 0


class _Tower(nn.Module):
    """Task model + encoders in one module, so state dicts and early stopping cover all of them."""

    def __init__(self, model: nn.Module, image_encoder, text_encoder):
        super().__init__()
        self.model = model
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder if text_encoder is not None else nn.Identity()


def trainable_state(m: nn.Module) -> dict[str, Tensor]:
    """Parameters that train, plus every buffer (BatchNorm running statistics of the trained blocks)."""
    params = dict(m.named_parameters())
    return {k: v.detach().clone() for k, v in m.state_dict().items() if k not in params or params[k].requires_grad}


BatchLoss = Callable[[dict[str, Tensor], Tensor, torch.Generator], tuple[Tensor, int]]
Validate = Callable[[dict[str, Tensor]], dict[str, float]]


def finetune_on_images(
    model: nn.Module,
    image_encoder,
    train_images: Tensor,
    val_images: Tensor,
    batch_loss: BatchLoss,
    validate: Validate,
    cfg: FinetuneConfig,
    *,
    monitor: str,
    train_rows: Tensor | None = None,
    text_encoder=None,
    min_batch: int = 1,
    after_step: Callable[[], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    desc: str = "fine-tune epochs",
) -> TrainResult:
    """The fine-tuning set-up every task uses (see the module docstring): the encoders' blocks
    unfrozen, two learning rates, augmented batches of training images; the epochs are
    :func:`fusionkit.training.fit`'s, with early stopping on ``monitor`` and only the trainable
    part of model and encoders copied for the best epoch and the checkpoint.

    ``train_images`` / ``val_images``: uint8 from :func:`decode_for_training`. ``train_rows``:
    the training images that have targets (default: all). ``batch_loss(features, rows, gen)``:
    the encoder's outputs (``pooled``, ``grid``) for the images ``rows`` -> ``(loss, number of
    items)``; it may run ``text_encoder`` itself. ``validate(features)``: the validation images'
    features -> a record with ``monitor`` (maximised). ``text_encoder``: trained too when
    ``cfg.text_blocks > 0``. ``after_step``: called after every optimizer step (e.g. clamping a
    temperature). The encoders are changed in place; the best state of model and encoders is
    restored at the end and everything is left in eval mode."""
    if train_images.dtype != torch.uint8 or val_images.dtype != torch.uint8:
        raise TypeError("images must be uint8 tensors from decode_for_training")
    if cfg.text_blocks and text_encoder is None:
        raise ValueError("text_blocks > 0 needs a text_encoder")
    image_encoder.freeze()
    if cfg.image_blocks:
        image_encoder.unfreeze(cfg.image_blocks)
    if text_encoder is not None:
        text_encoder.freeze()
        if cfg.text_blocks:
            text_encoder.unfreeze(cfg.text_blocks)
    tower = _Tower(model, image_encoder, text_encoder)
    enc_params = [p for p in image_encoder.parameters() if p.requires_grad]
    if text_encoder is not None:
        enc_params += [p for p in text_encoder.parameters() if p.requires_grad]
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.encoder_lr})
    opt = adamw(groups, weight_decay=cfg.weight_decay)
    rows_all = torch.arange(len(train_images)) if train_rows is None else torch.as_tensor(train_rows).long()
    if not len(rows_all):
        raise ValueError("no training images to fine-tune on")
    steps = cfg.epochs * math.ceil(len(rows_all) / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))
    augment = image_augmentation(int(image_encoder.crop_size)) if (cfg.augment and cfg.image_blocks) else None
    crop = int(image_encoder.crop_size)

    def batches(gen: torch.Generator):
        perm = rows_all[torch.randperm(len(rows_all), generator=gen)]
        for s in range(0, len(perm), cfg.batch_size):
            rows = perm[s : s + cfg.batch_size]
            if len(rows) < min_batch:
                continue
            imgs = train_images[rows]
            x = torch.stack([augment(im) for im in imgs]) if augment is not None else _center(imgs, crop)
            yield x, rows

    def step(batch: tuple[Tensor, Tensor], gen: torch.Generator) -> Step:
        x, rows = batch
        loss, n = batch_loss(image_encoder(x), rows, gen)
        return Step(loss, n)

    def evaluate() -> dict[str, float]:
        vfeats = encode_image_features(image_encoder, val_images)
        with torch.inference_mode():
            val = validate(vfeats)
        return {"lr": sched.get_last_lr()[0], **val}

    return fit(tower, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed, monitor=monitor,
               patience=cfg.patience, grad_clip=cfg.grad_clip, after_step=after_step,
               trainable_state=lambda: trainable_state(tower), checkpoint=checkpoint, resume=resume,
               log_fn=log_fn, show_progress=show_progress, desc=desc)  # fmt: skip


# ------------------------------------------------------------------------------ retrieval
def finetune_dual_encoder(
    dual: DualEncoder,
    image_encoder,
    train_images: Tensor,
    train_texts: Sequence[str] | Tensor,
    train_text_to_image: Tensor,
    val_images: Tensor,
    val_texts: Sequence[str] | Tensor,
    val_text_to_image: Tensor,
    cfg: FinetuneConfig | None = None,
    *,
    text_encoder=None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Train ``dual`` end to end with the last ``cfg.image_blocks`` blocks of ``image_encoder``
    (and ``cfg.text_blocks`` of ``text_encoder``) unfrozen. Each step: ``batch_size`` distinct
    training images, each with one of its captions drawn at random (so no two pairs of a batch
    share an image), symmetric InfoNCE; early stopping on validation RSUM.

    ``*_images``: uint8 from :func:`decode_for_training`. ``*_texts``: caption strings (needed
    when the text encoder trains) or their cached features ``(M, D)`` (frozen text side).
    ``*_text_to_image``: the image row of each caption. The encoders are changed in place (their
    best state restored at the end)."""
    cfg = cfg or FinetuneConfig()
    text_trains = cfg.text_blocks > 0
    if text_trains and (text_encoder is None or isinstance(train_texts, Tensor) or isinstance(val_texts, Tensor)):
        raise ValueError("text_blocks > 0 needs a text_encoder and the caption strings (not cached features)")
    if not text_trains and not (isinstance(train_texts, Tensor) and isinstance(val_texts, Tensor)):
        raise ValueError("with a frozen text encoder pass the cached caption features (tensors)")
    t2i = torch.as_tensor(train_text_to_image, dtype=torch.long)
    pos = _positives_table(t2i, len(train_images))  # (N, P) captions of each image, -1 padded
    n_pos = (pos >= 0).sum(1)
    if int(n_pos.min()) < 1:
        raise ValueError("every training image needs at least one caption")

    def batch_loss(feats, rows, gen):
        caps = pos[rows, (torch.rand(len(rows), generator=gen) * n_pos[rows]).long()]
        if text_trains:
            txt = text_encoder(text_encoder.collate([train_texts[int(c)] for c in caps]))["pooled"]
        else:
            txt = train_texts[caps]
        ie, te = dual(feats["pooled"], txt)
        return info_nce(ie, te, dual.scale()), len(rows)

    def validate(feats):
        vt = encode_texts(text_encoder, val_texts) if text_trains else val_texts
        m = recall_at_k((dual.encode_image(feats["pooled"]), dual.encode_text(vt)), val_text_to_image)
        return {"temperature": float(1 / dual.scale()), **{f"val_{k}": v for k, v in m.items()}}

    return finetune_on_images(
        dual, image_encoder, train_images, val_images, batch_loss, validate, cfg, monitor="val_rsum",
        text_encoder=text_encoder, min_batch=2, after_step=dual.clamp_, checkpoint=checkpoint, resume=resume,
        log_fn=log_fn, show_progress=show_progress,
    )  # fmt: skip


# ------------------------------------------------------------------------------ captioning
def finetune_captioner(
    model,
    image_encoder,
    train,
    train_images: Tensor,
    val,
    val_images: Tensor,
    tokenizer,
    cfg: FinetuneConfig | None = None,
    *,
    label_smoothing: float = 0.1,
    val_max_images: int | None = 300,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Fine-tune a caption decoder together with the last ``cfg.image_blocks`` blocks of
    ``image_encoder``. ``train`` / ``val``: :class:`~fusionkit.tasks.captioning.CaptionSplit`
    (their captions and references; their cached features are not used), ``*_images``: the
    uint8 images of their rows. Each step: ``batch_size`` images, each with all its captions
    (teacher forcing, label smoothing); early stopping on the greedy CIDEr-D of up to
    ``val_max_images`` validation images."""
    cfg = cfg or FinetuneConfig()
    if cfg.text_blocks:
        raise ValueError("captioning has no text encoder to fine-tune (the decoder reads word pieces)")
    if len(train_images) != len(train) or len(val_images) != len(val):
        raise ValueError("train_images / val_images must hold one image per row of train / val")
    use_pooled = train.pooled is not None
    by_image: list[list[int]] = [[] for _ in range(len(train))]
    for c, i in enumerate(train.caption_image.tolist()):
        by_image[i].append(c)
    rows_with_caps = torch.as_tensor([i for i, b in enumerate(by_image) if b], dtype=torch.long)
    n_val = min(len(val), val_max_images or len(val))
    val_sub = val.subset(torch.arange(n_val))

    def batch_loss(feats, rows, gen):
        caps = torch.as_tensor([c for r in rows.tolist() for c in by_image[r]], dtype=torch.long)
        local = torch.as_tensor([j for j, r in enumerate(rows.tolist()) for _ in by_image[r]], dtype=torch.long)
        tok = train.tokens[caps]
        tok = tok[:, : int((tok != model.pad_id).sum(1).max())]
        # index_select: its backward is deterministic, advanced indexing's (repeated rows) is not on 2+ threads
        grid, pooled = (
            feats["grid"].index_select(0, local),
            feats["pooled"].index_select(0, local) if use_pooled else None,
        )
        ce, reg = caption_batch_loss(model, grid, pooled, tok, label_smoothing)
        return ce + reg, len(caps)

    def validate(feats):
        split = C.CaptionSplit(val_sub.image_ids, feats["grid"][:n_val], feats["pooled"][:n_val] if use_pooled else None,
                               val_sub.references, val_sub.tokens, val_sub.caption_image)  # fmt: skip
        preds = C.predict_captions(model, tokenizer, split)
        cider = caption_metrics(split.reference_dict(), preds, metrics=("CIDEr",), tokenize="simple")["CIDEr"]
        return {"val_cider": float(cider)}

    return finetune_on_images(
        model, image_encoder, train_images, val_images[:n_val], batch_loss, validate, cfg, monitor="val_cider",
        train_rows=rows_with_caps, checkpoint=checkpoint, resume=resume, log_fn=log_fn, show_progress=show_progress,
        desc="caption fine-tune epochs",
    )  # fmt: skip
