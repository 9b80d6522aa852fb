"""The CLIP-style dual encoder: projection heads, symmetric InfoNCE with a learnable temperature,
training on :func:`fusionkit.training.fit` with early stopping on validation RSUM."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.tasks.retrieval.data import RetrievalSplit
from fusionkit.tasks.retrieval.ranking import recall_at_k
from fusionkit.training import Step, TrainResult, adamw, fit, warmup_cosine

Tensor = torch.Tensor


TEXT_HEADS = ("project", "identity")


def _head(in_dim: int, out_dim: int, hidden: int | None, dropout: float, input_dropout: float = 0.0) -> nn.Module:
    pre: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    if not hidden:
        return nn.Sequential(*pre, nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        *pre,
        nn.LayerNorm(in_dim),
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_dim),
    )


class DualEncoder(nn.Module):
    """Projection heads for image and text features onto one L2-normalised space, and a
    learnable temperature (``logit_scale``, CLIP's parametrisation).

    ``hidden``: width of the heads' hidden layer (``None``/0: linear heads). ``input_dropout``:
    dropout on the input features of both heads (feature-level augmentation; on a few hundred
    training images it is what keeps InfoNCE from overfitting in a couple of epochs).
    ``text_head="identity"``: the text features are used as they are (L2-normalised) and only
    the image head learns, mapping images into the text encoder's space (``embed_dim`` becomes
    the text dimension) - the locked-tower recipe of LiT, here with the text tower locked."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int = 256,
        hidden: int | None = 512,
        dropout: float = 0.1,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
        input_dropout: float = 0.0,
        text_head: str = "project",
    ):
        super().__init__()
        if text_head not in TEXT_HEADS:
            raise ValueError(f"text_head={text_head!r}; expected one of {TEXT_HEADS}")
        if not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"input_dropout={input_dropout!r}; expected a value in [0, 1)")
        if text_head == "identity":
            embed_dim = text_dim
        self.image_head = _head(image_dim, embed_dim, hidden, dropout, input_dropout)
        self.text_head = (
            nn.Identity() if text_head == "identity" else _head(text_dim, embed_dim, hidden, dropout, input_dropout)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)
        self.embed_dim = embed_dim

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(0.0, self.max_log_scale).exp()

    def clamp_(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.max_log_scale)

    def encode_image(self, x: Tensor) -> Tensor:
        return F.normalize(self.image_head(x.mean(1) if x.dim() == 3 else x), dim=-1)

    def encode_text(self, x: Tensor) -> Tensor:
        return F.normalize(self.text_head(x.mean(1) if x.dim() == 3 else x), dim=-1)

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(image), self.encode_text(text)


def info_nce(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, image_rows: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE: ``(CE(s I T^T, diag) + CE(s T I^T, diag)) / 2``. With ``image_rows``
    (the image of each pair), other pairs of the same image are left out of the negatives."""
    logits = logit_scale * image_emb @ text_emb.T
    target = torch.arange(len(logits), device=logits.device)
    if image_rows is not None:
        same = image_rows[:, None] == image_rows[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -math.inf)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.inference_mode()
def encode_split(model: DualEncoder, split: RetrievalSplit, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(image embeddings, text embeddings) of a split."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    img = torch.cat(
        [
            model.encode_image(split.image[s : s + batch_size].to(dev)).cpu()
            for s in range(0, split.n_images, batch_size)
        ]
    )
    txt = torch.cat(
        [model.encode_text(split.text[s : s + batch_size].to(dev)).cpu() for s in range(0, split.n_texts, batch_size)]
    )
    model.train(was)
    return img, txt


@dataclass
class RetrievalTrainConfig:
    epochs: int = 100
    batch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    grad_clip: float = 5.0
    patience: int = 8  # epochs without a better validation RSUM before stopping
    chunk_size: int | None = 2048  # block size of the validation rank computation
    seed: int = 0


def train_dual_encoder(
    model: DualEncoder,
    train: RetrievalSplit,
    val: RetrievalSplit | None,
    cfg: RetrievalTrainConfig | None = None,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Every (image, caption) pair once per epoch, shuffled; symmetric InfoNCE; validation RSUM
    after each epoch, early stopping on it, best state restored (no ``val``: last state).
    ``checkpoint`` / ``resume``: as in :func:`fusionkit.tasks.captioning.train_captioner`."""
    cfg = cfg or RetrievalTrainConfig()
    dev = next(model.parameters()).device
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(train.n_texts / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))

    def batches(gen: torch.Generator):
        perm = torch.randperm(train.n_texts, generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if len(idx) >= 2:  # InfoNCE needs a negative
                yield idx

    def step(idx: Tensor, gen: torch.Generator) -> Step:
        rows = train.text_to_image[idx]
        img, txt = model(train.image[rows].to(dev), train.text[idx].to(dev))
        return Step(info_nce(img, txt, model.scale(), rows.to(dev)), len(idx))

    def evaluate() -> dict[str, float]:
        rec = {"temperature": float(1 / model.scale().detach())}
        if val is not None:
            ie, te = encode_split(model, val)
            m = recall_at_k((ie, te), val.text_to_image, chunk_size=cfg.chunk_size)
            rec.update({f"val_{k}": v for k, v in m.items()})
        return rec

    return fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed,
               monitor=None if val is None else "val_rsum", patience=cfg.patience, grad_clip=cfg.grad_clip,
               after_step=model.clamp_, checkpoint=checkpoint, resume=resume, log_fn=log_fn,
               show_progress=show_progress, desc="dual encoder epochs")  # fmt: skip
