"""Image / text / audio / tabular encoders behind one registry.

    enc = build_encoder("image")                          # EfficientNet-Lite0, ImageNet weights
    enc = build_encoder("image", "resnet50")              # torchvision weights from the local torch cache
    enc = build_encoder("image", "color_histogram")       # RGB colour histogram, no network
    enc = build_encoder("image", "resnet18", weights=None, seed=0)   # random init, explicitly
    enc = build_encoder("text", "hf:bert-base-uncased")   # any HF encoder available offline
    enc = build_encoder("audio", "mfcc", seconds=2.0)
    enc = build_encoder("tabular")                        # standardised numbers, one-hot categories

Every encoder works offline: weights ship in pinned packages (EfficientNet-Lite0, MiniLM) or are
read from local caches; when they are missing an :class:`EncoderUnavailableError` says how to get
them. See :class:`fusionkit.encoders.base.Encoder` for the interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fusionkit.encoders.base import Encoder, EncoderUnavailableError, InputError

DEFAULTS = {"image": "efficientnet_lite0", "text": "minilm", "audio": "logmel", "tabular": "onehot"}


def _image(name: str) -> Callable[..., Encoder]:
    def build(**kw: Any) -> Encoder:
        from fusionkit.encoders import image

        if name == "efficientnet_lite0":
            return image.EfficientNetLite0(**kw)
        if name == "color_histogram":
            return image.ColorHistogram(**kw)
        return image.TorchvisionImage(name, **kw)

    return build


def _text_minilm(**kw: Any) -> Encoder:
    from fusionkit.encoders.text import MiniLM

    return MiniLM(**kw)


def _tabular(**kw: Any) -> Encoder:
    from fusionkit.encoders.tabular import TabularEncoder

    return TabularEncoder(**kw)


def _audio(name: str) -> Callable[..., Encoder]:
    def build(**kw: Any) -> Encoder:
        from fusionkit.encoders import audio

        return {"logmel": audio.LogMel, "mfcc": audio.MFCC, "audio_cnn": audio.AudioCNN}[name](**kw)

    return build


_REGISTRY: dict[str, dict[str, Callable[..., Encoder]]] = {
    "image": {
        n: _image(n)
        for n in (
            "efficientnet_lite0",
            "color_histogram",
            "resnet18",
            "resnet50",
            "inception_v3",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            "vit_b_16",
        )
    },
    "text": {"minilm": _text_minilm},
    "audio": {n: _audio(n) for n in ("logmel", "mfcc", "audio_cnn")},
    "tabular": {"onehot": _tabular},
}


def register_encoder(kind: str, name: str, factory: Callable[..., Encoder]) -> None:
    """Add an encoder: ``factory(**kw)`` returns an :class:`Encoder` of ``kind``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown encoder kind {kind!r}; expected one of {sorted(_REGISTRY)}")
    _REGISTRY[kind][name] = factory


def available_encoders() -> dict[str, list[str]]:
    """Registered encoder names per kind (text also takes ``hf:<name or path>``)."""
    out = {k: sorted(v) for k, v in _REGISTRY.items()}
    out["text"].append("hf:<name or local path>")
    return out


def build_encoder(kind: str, name: str | None = None, **kw: Any) -> Encoder:
    """Build an encoder by kind and name (``None``: ``DEFAULTS[kind]``); keyword arguments go to its
    constructor (``weights=None`` for a random init, ``seed``, ``max_length``, ``seconds``...)."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown encoder kind {kind!r}; expected one of {sorted(_REGISTRY)}")
    name = name or DEFAULTS[kind]
    if kind == "text" and name.startswith("hf:"):
        from fusionkit.encoders.text import HFTextEncoder

        enc = HFTextEncoder(name[3:], **kw)
    else:
        try:
            factory = _REGISTRY[kind][name]
        except KeyError:
            raise ValueError(
                f"unknown {kind} encoder {name!r}; available: {', '.join(available_encoders()[kind])}"
            ) from None
        enc = factory(**kw)
    # how to build it again (recorded next to cached features, e.g. to fine-tune the same encoder)
    enc.build_spec = {"kind": kind, "name": name, "kwargs": dict(kw)}
    return enc


__all__ = [
    "DEFAULTS",
    "Encoder",
    "EncoderUnavailableError",
    "InputError",
    "available_encoders",
    "build_encoder",
    "register_encoder",
]
