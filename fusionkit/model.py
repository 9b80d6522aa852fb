"""``MultimodalModel(projectors, fusion, head)`` (MultiBench's pattern, TorchMultimodal's
interface): per-modality projectors -> one fusion method -> a task head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusionkit.fusion import build_fusion
from fusionkit.fusion.base import Fusion, Tensor, get


class Projector(nn.Module):
    """LayerNorm + Linear + GELU + dropout on the last dim; works on (B, D) and (B, L, D)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TargetScale(nn.Module):
    """A regression head's last step: the network predicts the target standardised, this maps it
    back to the target's units (``z * std + mean``). ``mean`` / ``std`` are buffers (saved with
    the weights) that :func:`fusionkit.train.train` sets from the training split's targets."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("std", torch.ones(1))

    def fit(self, targets: Tensor) -> None:
        """Set ``mean`` / ``std`` from the training targets (``std`` 1 for a constant target)."""
        std = targets.float().std(unbiased=False)
        self.mean.fill_(float(targets.float().mean()))
        self.std.fill_(float(std) if float(std) > 0 else 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * self.std + self.mean


@dataclass
class ModelOutput:
    logits: Tensor
    weights: dict[str, Tensor] | None


class MultimodalModel(nn.Module):
    def __init__(self, projectors: dict[str, nn.Module], fusion: Fusion, head: nn.Module):
        super().__init__()
        self.projectors = nn.ModuleDict(dict(sorted(projectors.items())))
        self.fusion = fusion
        self.head = head

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> ModelOutput:
        projected = {m: self.projectors[m](features[m]) for m in self.projectors}
        out = self.fusion(projected, mask)
        return ModelOutput(logits=self.head(out.fused), weights=out.weights)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def regression(self) -> bool:
        """Whether the head predicts one number in the target's units (:class:`TargetScale`)."""
        return isinstance(self.head, TargetScale)


def build_model(
    method: str,
    in_dims: dict[str, int],
    num_classes: int,
    hidden: int = 128,
    dropout: float = 0.1,
    fusion_kwargs: dict | None = None,
    **fusion_hparams,
) -> MultimodalModel:
    """Projectors to ``hidden`` dims, the named fusion method, and a 2-layer MLP head (or none when
    the method already outputs logits, as late fusion does). The method's hyper-parameters come
    as keywords or in ``fusion_kwargs`` (the way to pass the ones named like the model's own,
    e.g. a fusion method's ``hidden``). ``num_classes`` 0: a regression target - one output,
    standardised inside and mapped back to the target's units by :class:`TargetScale`."""
    fusion_hparams = {**fusion_hparams, **(fusion_kwargs or {})}
    projectors = {m: Projector(d, hidden, dropout) for m, d in in_dims.items()}
    regression = num_classes == 0
    num_classes = num_classes or 1

    cls = get(method)
    if cls.outputs_logits:
        fusion_hparams.setdefault("num_classes", num_classes)
    fusion = build_fusion(method, {m: hidden for m in in_dims}, **fusion_hparams)
    if fusion.outputs_logits:
        head: nn.Module = nn.Identity()
    else:
        head = nn.Sequential(
            nn.Linear(fusion.out_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    return MultimodalModel(projectors, fusion, TargetScale(head) if regression else head)


def modality_mask(batch: int, present: dict[str, bool], device: torch.device | None = None) -> dict[str, Tensor]:
    """A mask dict with every sample's modality present (1) or missing (0)."""
    return {m: torch.full((batch,), 1.0 if p else 0.0, device=device) for m, p in present.items()}
