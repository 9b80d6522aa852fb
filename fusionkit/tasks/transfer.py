"""Transfer learning for the retrieval dual encoder: frozen features or fine-tuning the last
blocks of the image and/or text encoder, with torchvision transforms v2 augmentation on the
training images whenever the image encoder is trained.

Frozen (``image_blocks=0, text_blocks=0``)
    :func:`fusionkit.tasks.retrieval.train_dual_encoder` on cached features: seconds.

Fine-tuned (:func:`finetune_dual_encoder`)
    ``encoder.unfreeze(n)`` makes the last ``n`` blocks trainable (the rest stays frozen and in
    eval mode, so no autograd graph is built through it). Each step takes ``batch_size`` distinct
    training images, each with one of its captions drawn at random, so no two pairs of a batch
    share an image; symmetric InfoNCE. The images are decoded once (shorter side to the encoder's
    resize size, centre square) and kept as uint8; each step draws a fresh augmented view of each
    image (:func:`image_augmentation`: random resized crop, flip, rotation, colour jitter) at the
    encoder's crop size. Validation uses the encoder's own deterministic preprocessing (resize +
    centre crop). Two learning rates (AdamW): ``lr`` for the heads, ``encoder_lr`` for the
    encoder blocks; warm-up + cosine; early stopping on validation RSUM with the best state of
    heads *and* encoders restored.

Resume
    With ``checkpoint=path`` the full training state (model, encoders' trainable blocks,
    optimizer, schedule, early-stopping state, RNG states, history) is written atomically after
    every epoch; ``resume=True`` continues from it and ends exactly where an uninterrupted run
    ends.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusionkit.progress import progress
from fusionkit.tasks._common import EarlyStopping, TrainCheckpoint, end_epoch, warmup_cosine
from fusionkit.tasks.retrieval import (
    DualEncoder,
    RetrievalTrainResult,
    _positives_table,
    info_nce,
    recall_at_k,
)

Tensor = torch.Tensor

__all__ = ["FinetuneConfig", "decode_for_training", "encode_images", "encode_texts", "finetune_dual_encoder",
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
    import numpy as np

    from fusionkit.encoders.image import decode_image, resize_crop

    r = int(encoder.resize_size)
    out = torch.empty(len(paths), 3, r, r, dtype=torch.uint8)
    for i, p in enumerate(progress(paths, enabled=show_progress, desc="decode images", leave=False)):
        img = resize_crop(decode_image(p, r), r, r, encoder.interpolation)
        out[i] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return out


def _center(images: Tensor, crop: int) -> Tensor:
    h, w = images.shape[-2:]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return images[..., top : top + crop, left : left + crop]


def encode_images(encoder, images: Tensor, batch_size: int = 32) -> Tensor:
    """Pooled features of decoded uint8 images with the encoder's deterministic preprocessing."""
    was = encoder.training
    encoder.eval()
    crop = int(encoder.crop_size)
    with torch.inference_mode():
        out = torch.cat(
            [
                encoder(_center(images[s : s + batch_size], crop))["pooled"].float()
                for s in range(0, len(images), batch_size)
            ]
        )
    encoder.train(was)
    return out


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
    """Defaults measured on flickr8k-800 (600 training images; the heads start from the
    frozen-feature dual encoder, hence the low head learning rate)."""

    image_blocks: int = 1  # last blocks of the image encoder trained (0: frozen)
    text_blocks: int = 0  # last blocks (transformer layers) of the text encoder trained (0: frozen)
    augment: bool = True  # torchvision v2 augmentation of the training images (when image_blocks > 0)
    epochs: int = 6
    batch_size: int = 64  # distinct images per step, each with one random caption
    lr: float = 1e-4  # projection heads
    encoder_lr: float = 3e-5  # unfrozen encoder blocks
    weight_decay: float = 1e-2
    warmup_frac: float = 0.1
    grad_clip: float = 5.0
    patience: int = 3
    seed: int = 0


class _Tower(nn.Module):
    """Heads + encoders in one module, so state dicts and early stopping cover all of them."""

    def __init__(self, dual: DualEncoder, image_encoder, text_encoder):
        super().__init__()
        self.dual = dual
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder if text_encoder is not None else nn.Identity()


def _trainable_state(m: nn.Module) -> dict[str, Tensor]:
    """Parameters that train, plus every buffer (BatchNorm running statistics of the trained blocks)."""
    params = dict(m.named_parameters())
    return {k: v.detach().clone() for k, v in m.state_dict().items() if k not in params or params[k].requires_grad}


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
) -> RetrievalTrainResult:
    """Train ``dual`` end to end with the last ``cfg.image_blocks`` blocks of ``image_encoder``
    (and ``cfg.text_blocks`` of ``text_encoder``) unfrozen; see the module docstring.

    ``*_images``: uint8 from :func:`decode_for_training`. ``*_texts``: caption strings (needed
    when the text encoder trains) or their cached features ``(M, D)`` (frozen text side).
    ``*_text_to_image``: the image row of each caption. The encoders are changed in place (their
    best state restored at the end)."""
    cfg = cfg or FinetuneConfig()
    from fusionkit.train import seed_everything

    text_trains = cfg.text_blocks > 0
    if text_trains and (text_encoder is None or isinstance(train_texts, Tensor) or isinstance(val_texts, Tensor)):
        raise ValueError("text_blocks > 0 needs a text_encoder and the caption strings (not cached features)")
    if not text_trains and not (isinstance(train_texts, Tensor) and isinstance(val_texts, Tensor)):
        raise ValueError("with a frozen text encoder pass the cached caption features (tensors)")
    if train_images.dtype != torch.uint8 or val_images.dtype != torch.uint8:
        raise TypeError("images must be uint8 tensors from decode_for_training")
    gen = seed_everything(cfg.seed)
    image_encoder.freeze()
    if cfg.image_blocks:
        image_encoder.unfreeze(cfg.image_blocks)
    if text_encoder is not None:
        text_encoder.freeze()
        if text_trains:
            text_encoder.unfreeze(cfg.text_blocks)
    tower = _Tower(dual, image_encoder, text_encoder)
    enc_params = [p for p in image_encoder.parameters() if p.requires_grad]
    if text_encoder is not None:
        enc_params += [p for p in text_encoder.parameters() if p.requires_grad]
    head_params = [p for p in dual.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    n_img = len(train_images)
    steps_per_epoch = math.ceil(n_img / cfg.batch_size)
    steps = cfg.epochs * steps_per_epoch
    sched = warmup_cosine(opt, int(cfg.warmup_frac * steps), steps)
    stopper = EarlyStopping(cfg.patience, "max")
    result = RetrievalTrainResult()
    augment = image_augmentation(int(image_encoder.crop_size)) if (cfg.augment and cfg.image_blocks) else None
    crop = int(image_encoder.crop_size)
    t2i = torch.as_tensor(train_text_to_image, dtype=torch.long)
    pos = _positives_table(t2i, n_img)  # (N, P) captions of each image, -1 padded
    n_pos = (pos >= 0).sum(1)
    if int(n_pos.min()) < 1:
        raise ValueError("every training image needs at least one caption")
    ckpt = TrainCheckpoint(checkpoint)
    start, result.history = ckpt.restore(tower, opt, sched, stopper, gen, cfg.epochs) if resume else (0, [])
    t0 = time.perf_counter()
    epochs = range(start, cfg.epochs)
    for epoch in progress(epochs, enabled=show_progress, desc="fine-tune epochs", leave=False):
        tower.train()
        perm = torch.randperm(n_img, generator=gen)
        loss_sum, n_sum = 0.0, 0
        for s in range(0, n_img, cfg.batch_size):
            rows = perm[s : s + cfg.batch_size]
            if len(rows) < 2:
                continue
            pick = (torch.rand(len(rows), generator=gen) * n_pos[rows]).long()
            caps = pos[rows, pick]
            imgs = train_images[rows]
            x = torch.stack([augment(im) for im in imgs]) if augment is not None else _center(imgs, crop)
            img_feat = image_encoder(x)["pooled"]
            if text_trains:
                txt_feat = text_encoder(text_encoder.collate([train_texts[int(c)] for c in caps]))["pooled"]
            else:
                txt_feat = train_texts[caps]
            ie, te = dual(img_feat, txt_feat)
            loss = info_nce(ie, te, dual.scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            sched.step()
            dual.clamp_()
            loss_sum += loss.item() * len(rows)
            n_sum += len(rows)
        vi = encode_images(image_encoder, val_images)
        vt = encode_texts(text_encoder, val_texts) if text_trains else val_texts
        dual.eval()
        with torch.inference_mode():
            m = recall_at_k((dual.encode_image(vi), dual.encode_text(vt)), val_text_to_image)
        rec = {"epoch": epoch, "train_loss": loss_sum / max(n_sum, 1), "temperature": float(1 / dual.scale().detach())}
        rec.update({f"val_{k}": v for k, v in m.items()})
        if end_epoch(
            rec, result.history, epoch, rec["val_rsum"], _StateView(tower), stopper, ckpt, opt, sched, gen, log_fn
        ):
            break
    result.epochs_run = len(result.history)
    result.train_time_s = time.perf_counter() - t0
    if stopper.best_state is not None:
        tower.load_state_dict({**tower.state_dict(), **stopper.best_state})
    result.best_epoch, result.best_rsum = stopper.best_epoch, float(stopper.best)
    tower.eval()
    return result


class _StateView:
    """What :class:`EarlyStopping` copies: only the trainable part of the tower (the frozen
    encoder blocks never change, so copying them every epoch would only cost memory)."""

    def __init__(self, tower: nn.Module):
        self.tower = tower

    def state_dict(self) -> dict[str, Tensor]:
        return _trainable_state(self.tower)
