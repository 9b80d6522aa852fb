"""One interface for every fusion method (docs/architecture.md, "The core model").

``Fusion.forward(features, mask=None) -> FusionOutput``

* ``features``: ``{modality name: Tensor}``; a tensor is ``(B, D_m)`` (a pooled vector) or
  ``(B, L_m, D_m)`` (a sequence of regions / tokens / frames). Methods that need sequences treat a
  pooled vector as a sequence of length 1; methods that need vectors mean-pool sequences.
* ``mask``: ``{modality name: Tensor (B,)}``, ``mask[m][i] == 0`` means modality ``m`` is missing
  for sample ``i``. Every method must give an output for such a sample that does not depend on
  the missing modality's features.
* Modalities are always processed in sorted name order, so the order of the dict never matters.
* ``FusionOutput.fused`` is ``(B, out_dim)``; ``FusionOutput.weights`` maps modality name to a
  ``(B,)`` tensor of per-sample modality weights (summing to 1 over modalities) for methods that
  have them, else ``None``.

Methods are registered with :func:`register` and built by name with :func:`build_fusion`. A
method declares the dimensions its own hyper-parameters are searched over in ``search_space``
(``fusionkit.fusion.space``; read with :func:`search_space`).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fusionkit.fusion.space import Dimension

Tensor = torch.Tensor

#: whether :meth:`Fusion.check_inputs` also checks the values (NaN / inf) - see :func:`values_checked`
_CHECK_VALUES = contextvars.ContextVar("fusionkit_check_values", default=True)


@contextlib.contextmanager
def values_checked(enabled: bool) -> Iterator[None]:
    """Inside ``with values_checked(False)``, :meth:`Fusion.check_inputs` leaves out its per-batch
    NaN / inf check (names, shapes and masks are still checked). For a training loop whose splits
    were checked whole before it started (``SplitData.check``): the check then adds nothing but a
    few ops to every forward pass."""
    token = _CHECK_VALUES.set(enabled)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)


@dataclass
class FusionOutput:
    fused: Tensor
    weights: dict[str, Tensor] | None = None


class Fusion(nn.Module):
    """Base class. Subclasses take ``in_dims: dict[str, int]`` (modality -> feature dim) first and
    keyword hyper-parameters after it, and set ``self.out_dim``.

    ``outputs_logits``: True for methods whose fused output already is class logits (late fusion
    averages per-modality classifiers); the model then uses no extra head."""

    outputs_logits: bool = False
    #: True when the method is defined for any number of modalities (False: pairs only).
    n_ary: bool = True
    #: True when the method uses the elements of a ``(B, L, D)`` sequence (attention over tokens,
    #: feature-wise modulation of a grid); False when it mean-pools sequences first.
    uses_sequences: bool = False
    #: ``{hyper-parameter: Float | Int | Choice}`` (``fusion/space.py``): the method's own
    #: dimensions of the per-method search; the shared ones are ``fusionkit.grid.space.SHARED``.
    search_space: ClassVar[dict[str, Dimension]] = {}

    def __init__(self, in_dims: dict[str, int]):
        super().__init__()
        if len(in_dims) < 1:
            raise ValueError("a fusion method needs at least one modality")
        self.in_dims = dict(sorted(in_dims.items()))
        self.modalities = list(self.in_dims)
        self.out_dim: int = 0

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        raise NotImplementedError

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # helpers shared by the methods -------------------------------------------------------------
    def check_inputs(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """Validate names, dims and values; return a full mask of ones where none was given."""
        missing = set(self.modalities) - set(features)
        extra = set(features) - set(self.modalities)
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__} was built for modalities {self.modalities}; got {sorted(features)}"
            )
        batch = None
        for m in self.modalities:
            x = features[m]
            if x.dim() not in (2, 3) or x.shape[-1] != self.in_dims[m]:
                raise ValueError(
                    f"{type(self).__name__}: modality {m!r} expected shape (B, {self.in_dims[m]}) or "
                    f"(B, L, {self.in_dims[m]}), got {tuple(x.shape)}"
                )
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"{type(self).__name__}: batch sizes differ across modalities")
            # a data-dependent check: left out of an exported graph (torch.export, the ONNX export),
            # whose caller checks its inputs (fusionkit.onnx_export), and of a training on checked
            # splits (values_checked)
            if _CHECK_VALUES.get() and not torch.compiler.is_exporting() and not torch.isfinite(x).all():
                raise ValueError(
                    f"{type(self).__name__}: modality {m!r} has non-finite (NaN/inf) features; "
                    "fill missing modalities with zeros and mark them in `mask` instead"
                )
        ref = features[self.modalities[0]]
        full = {}
        for m in self.modalities:
            mk = None if mask is None else mask.get(m)
            if mk is None:
                full[m] = torch.ones(batch, device=ref.device, dtype=ref.dtype)
                continue
            if mk.shape != (batch,):
                raise ValueError(
                    f"{type(self).__name__}: mask for modality {m!r} must have shape ({batch},), got {tuple(mk.shape)}"
                )
            full[m] = mk.to(device=ref.device, dtype=ref.dtype)
        return full


_REGISTRY: dict[str, type[Fusion]] = {}


def register(name: str) -> Callable[[type[Fusion]], type[Fusion]]:
    def deco(cls: type[Fusion]) -> type[Fusion]:
        if name in _REGISTRY:
            raise ValueError(f"fusion method {name!r} registered twice")
        unknown = set(cls.search_space) - set(_init_hyperparameters(cls))
        if unknown:
            raise ValueError(f"fusion method {name!r}: search_space names {sorted(unknown)}, not hyper-parameters")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def named(methods: list[str] | str) -> list[str]:
    """The methods a parameter names: ``["all"]`` (or ``"all"``) is every registered one; a
    comma-separated string or a list is taken as given (blanks dropped)."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m).strip() for m in methods]
    names = [m for m in names if m]
    return available() if names == ["all"] else names


def hyperparameters(name: str) -> dict[str, object]:
    """The keyword hyper-parameters of a method and their defaults."""
    return _init_hyperparameters(get(name))


def search_space(name: str) -> dict[str, Dimension]:
    """The dimensions a method's own hyper-parameters are searched over (empty: none)."""
    return dict(get(name).search_space)


def _init_hyperparameters(cls: type[Fusion]) -> dict[str, object]:
    sig = inspect.signature(cls.__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "in_dims") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def get(name: str) -> type[Fusion]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown fusion method {name!r}; valid: {', '.join(available())}")
    return _REGISTRY[name]


def build_fusion(name: str, in_dims: dict[str, int], **hparams) -> Fusion:
    """Build a registered method by name; unknown hyper-parameters are an error that lists the
    valid ones."""
    cls = get(name)
    valid = hyperparameters(name)
    unknown = set(hparams) - set(valid)
    if unknown:
        raise TypeError(f"fusion method {name!r}: unknown hyper-parameter(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(in_dims, **hparams)
