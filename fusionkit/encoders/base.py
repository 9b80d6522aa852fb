"""The interface every encoder implements, and what they share.

An :class:`Encoder` is an ``nn.Module`` that serves two uses with the same object:

* **frozen feature extraction** (``fusionkit.features.extract_features``): ``load`` decodes one record
  in a DataLoader worker, ``collate`` stacks a batch, ``forward`` returns the features; the cache is
  keyed by ``identity()``;
* **fine-tuning inside a model**: ``unfreeze(last_n_blocks)`` then use ``forward`` on collated batches.

``forward(batch)`` returns ``{"pooled": (B, D), "grid": (B, L, D)}`` and, when some grid positions are
padding (text tokens, audio frames), ``"grid_mask": (B, L)`` with 1 for real positions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionkit.data.base import DatasetError

OUTPUTS = ("pooled", "grid")


class EncoderUnavailableError(RuntimeError):
    """The encoder's weights (or its library) cannot be found offline; the message says how to get them."""


class InputError(DatasetError):
    """One record's input cannot be used (corrupt, empty, unsupported). ``path`` is the file (or None
    for text) and ``reason`` says what is wrong; the extraction loop adds the record id."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None, record_id: str | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.record_id = record_id
        where = []
        if self.path:
            where.append(self.path)
        if record_id is not None:
            where.append(f"record {record_id!r}")
        super().__init__(f"{' '.join(where) + ': ' if where else ''}{reason}")

    def with_record(self, record_id: str) -> InputError:
        return InputError(self.reason, self.path, record_id)


# ------------------------------------------------------------------------------------- hashing
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so rebuilding an encoder is cheap."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def files_sha256(paths: Sequence[str | os.PathLike]) -> str:
    """One hash over several weight files (sharded checkpoints), order-independent by name."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda x: Path(x).name):
        h.update(Path(p).name.encode() + b"\0" + file_sha256(p).encode() + b"\0")
    return h.hexdigest()


def state_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def seeded(seed: int):
    """Context manager: torch's global RNG forked and seeded (random init reproducible, caller's RNG untouched)."""
    ctx = torch.random.fork_rng(devices=[])

    class _Seeded:
        def __enter__(self):
            ctx.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Seeded()


# ------------------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """Base class. Subclasses set ``kind``, ``name``, ``_dims``, ``_weights_id`` and implement
    ``load`` / ``collate`` / ``forward``; ``_block_prefixes`` (input to output) enables partial unfreezing."""

    kind: str = ""
    name: str = ""
    #: per-device defaults for extract_features, measured (see benchmarks/README.md)
    perf: dict[str, dict[str, Any]] = {
        "cpu": {"batch_size": 16, "channels_last": False, "num_workers": "auto"},
        "cuda": {"batch_size": 64, "channels_last": False, "num_workers": "auto"},
    }
    #: unit for progress bars
    unit: str = "it"
    #: ``build_encoder``'s arguments ({"kind", "name", "kwargs"}); set by ``build_encoder``
    build_spec: dict[str, Any] | None = None
    #: whether the encoder is fitted on the training split before it encodes (the tabular one:
    #: ``fit_dataset(dataset, modality)``, ``fitted()`` its JSON state, ``load_fitted(state)``)
    needs_fit: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._dims: dict[str, int] = {}
        self._weights_id: str = "none"
        self._block_prefixes: list[list[str]] = []
        self._frozen_prefixes: list[str] | None = None  # None: everything trainable; [""]: all frozen
        self._clean_versions: int | None = None

    # ---------------------------------------------------------------- description / cache key
    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def preprocessing(self) -> dict[str, Any]:
        """Everything that changes the input the network sees (sizes, normalisation, sample rate...)."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What the feature cache is keyed by: name, weights identity, preprocessing, outputs.

        The weights identity is the sha256 of the weight file(s) (or ``random:<seed>``); once the
        weights have been changed in place (fine-tuning, ``load_state_dict``) it becomes the sha256 of
        the current state dict, so features of a fine-tuned encoder never hit a stale cache entry."""
        weights = self._weights_id
        if self._weights_modified():
            weights = "state:" + state_sha256(self)
        return {
            "kind": self.kind,
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "weights": weights,
            "preprocessing": self.preprocessing(),
            "outputs": self.dims,
        }

    def matches(self, recorded: dict[str, Any]) -> bool:
        """Whether ``recorded`` (an identity written when features were cached) is this encoder's:
        same weights and preprocessing, so features it makes now are comparable to the cache."""
        return json.dumps(self.identity(), sort_keys=True, default=str) == json.dumps(
            recorded, sort_keys=True, default=str
        )

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _versions(self) -> int:
        # inference tensors (made under torch.inference_mode) cannot change outside it: count 0
        return sum(0 if t.is_inference() else t._version for t in list(self.parameters()) + list(self.buffers()))

    def _mark_clean(self) -> None:
        self._clean_versions = self._versions()

    def _finish_init(self) -> None:
        """End of every constructor: eval mode (an encoder is built for extraction; a model that
        fine-tunes it calls ``.train()``) and the reference weights recorded, so later in-place
        changes (optimiser steps, ``load_state_dict``) show up in ``identity()``."""
        self.eval()
        self._mark_clean()

    def _weights_modified(self) -> bool:
        return self._clean_versions is not None and self._versions() != self._clean_versions

    def _apply(self, fn, recurse=True):  # .to(device / memory format) replaces tensors: stay clean
        was_clean = self._clean_versions is not None and not self._weights_modified()
        out = super()._apply(fn, recurse)
        if was_clean:
            self._mark_clean()
        return out

    # ---------------------------------------------------------------- data path
    def load(self, value: Any, root: str | os.PathLike | None = None) -> Any:
        """Decode one record (a path relative to ``root`` for image/audio, the text for text).
        Runs in DataLoader workers. Raises :class:`InputError` for bad input."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """Stack loaded items into a batch for ``forward`` (also runs in workers)."""
        return torch.stack(items)

    def before_workers(self) -> None:
        """Called before DataLoader workers are forked (import what ``load``/``collate`` need)."""

    def preprocess(self, batch: Any) -> Any:
        """On-device input transform applied inside ``forward`` (image normalisation); identity here."""
        return batch

    def length_hint(self, value: Any) -> int | None:
        """Cheap size estimate from the record value; extraction groups similar sizes (text)."""
        return None

    def batch_to(self, batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=non_blocking)
        if isinstance(batch, dict):
            return {k: self.batch_to(v, device, non_blocking) for k, v in batch.items()}
        return batch

    @property
    def is_fitted(self) -> bool:
        """Whether the encoder can encode: always, unless it ``needs_fit`` and was not fitted yet."""
        return not self.needs_fit

    def fitted(self) -> dict[str, Any] | None:
        """What the encoder learnt from the training split (JSON-able; saved with the features), or None."""
        return None

    def split_notes(self, values: list[Any]) -> dict[str, Any]:
        """Facts about encoding one split's records worth recording in the cache's sidecar (e.g.
        categories the training split lacked); ``{}`` by default."""
        return {}

    def batch_info(self, batch: Any) -> dict[str, Any]:
        """Per-item facts the extraction records (e.g. ``{"truncated": BoolTensor (B,)}``)."""
        return {}

    def encode(self, values: Sequence[Any], root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """Convenience: load + collate + forward a few records in this process."""
        batch = self.collate([self.load(v, root) for v in values])
        device = next(iter(self.parameters()), torch.empty(0)).device
        with torch.inference_mode():
            return self(self.batch_to(batch, device))

    def inference_module(self) -> Encoder:
        """The module ``extract_features`` runs: ``self``, or a faster copy with the same outputs
        (within float rounding) for frozen inference, e.g. BatchNorm folded into convolutions."""
        return self

    # ---------------------------------------------------------------- fine-tuning
    def freeze(self) -> Encoder:
        """No gradients anywhere; stays in eval mode (BatchNorm statistics and dropout fixed) even
        when a parent model calls ``.train()``."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen_prefixes = [""]
        self.train(self.training)
        return self

    def unfreeze(self, last_n_blocks: int | None = None) -> Encoder:
        """Make the whole encoder trainable (``None``) or only its last ``n`` blocks (the rest frozen
        and kept in eval mode). Block boundaries: ``self.block_names()``."""
        if last_n_blocks is None:
            for p in self.parameters():
                p.requires_grad_(True)
            self._frozen_prefixes = None
            self.train(self.training)
            return self
        blocks = self._block_prefixes
        if not blocks:
            raise ValueError(f"encoder {self.name!r} has no learnable blocks to unfreeze")
        if not 0 <= last_n_blocks <= len(blocks):
            raise ValueError(f"last_n_blocks={last_n_blocks}: {self.name!r} has {len(blocks)} blocks")
        trainable = [p for grp in blocks[len(blocks) - last_n_blocks :] for p in grp]
        frozen = [p for grp in blocks[: len(blocks) - last_n_blocks] for p in grp]
        for name, p in self.named_parameters():
            p.requires_grad_(_matches(name, trainable) and not _matches(name, frozen))
        # parameters outside every block stay frozen under a partial unfreeze
        self._frozen_prefixes = frozen
        self.train(self.training)
        return self

    def block_names(self) -> list[list[str]]:
        return [list(b) for b in self._block_prefixes]

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if mode and self._frozen_prefixes is not None:
            if "" in self._frozen_prefixes:
                return super().train(False)
            for name, mod in self.named_modules():
                if name and _matches(name, self._frozen_prefixes):
                    mod.train(False)
        return self


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def as_path(value: Any, root: str | os.PathLike | None) -> Path:
    p = Path(value)
    return p if root is None or p.is_absolute() else Path(root) / p
