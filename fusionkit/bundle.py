"""Model bundles: every trained model fusionkit writes, and reads back, in one format.

A bundle is two files side by side: ``NAME.safetensors`` (the weights; safetensors, never a
pickle) and ``NAME.json`` (what rebuilds the model, and how it was trained)::

    {"format": "fusionkit.model", "version": 1, "fusionkit_version": "0.1.0", "kind": "classifier",
     ...the kind's own fields...}

``kind`` says which model it is: ``classifier`` (04's fusion model, :class:`ClassifierSpec`),
``captioner``, ``vqa``, ``dual_encoder``, ``matcher``, ``ridge`` (the tasks' models; their fields
are written by each task's ``fusionkit.tasks.<task>.task``). Both files are written atomically (temporary
file, then rename), the weights first, so a reader never sees a description of weights that are
not there yet.

Bundles written before the format was versioned (no ``format`` key: run folders of earlier
fusionkits) have the same fields and still load. A bundle of a newer version than this fusionkit
knows is refused with a message that says so. Later work extends this one format (trained
encoders, fitted preprocessing, export) by adding fields and raising ``VERSION``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusionkit import __version__
from fusionkit.data.base import DatasetError, atomic_write_text
from fusionkit.data.readers import read_json
from fusionkit.model import MultimodalModel, build_model

FORMAT = "fusionkit.model"
VERSION = 1


class BundleError(DatasetError):
    """A bundle that cannot be read or does not fit its model: the message names the file."""


def json_default(v: Any) -> Any:
    """JSON for what model descriptions hold besides JSON types: paths, tensors, numpy scalars."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def meta_path(weights: str | os.PathLike) -> Path:
    """Where the description of the weights file ``weights`` lives."""
    return Path(weights).with_suffix(".json")


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write tensors as safetensors, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or corrupted file names itself."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable safetensors file ({e})") from e


def save(
    path: str | os.PathLike, model: torch.nn.Module | Mapping[str, torch.Tensor], kind: str, meta: Mapping[str, Any]
) -> Path:
    """Write ``model``'s weights (a module, or the tensors of a model that is not one) to ``path``
    (``.safetensors``) and its description next to it."""
    path = Path(path)
    save_tensors(path, model.state_dict() if isinstance(model, torch.nn.Module) else model)
    doc = {"format": FORMAT, "version": VERSION, "fusionkit_version": __version__, "kind": kind, **dict(meta)}
    atomic_write_text(meta_path(path), json.dumps(doc, indent=1, ensure_ascii=False, default=json_default) + "\n")
    return path


def read_meta(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The description of the bundle whose weights are ``path``, checked: both files present, the
    format and version known, and (when given) the ``kind``."""
    path = Path(path)
    mp = meta_path(path)
    if not path.is_file() or not mp.is_file():
        raise BundleError(f"model {path} (+ {mp.name}) not found; train it first (04_train)")
    doc = read_json(mp, error=BundleError)
    if not isinstance(doc, dict):
        raise BundleError(f"{mp}: expected a JSON object describing a model")
    if "format" in doc:  # versioned bundle; without the key: an earlier fusionkit's, same fields
        if doc["format"] != FORMAT:
            raise BundleError(f"{mp}: format {doc['format']!r} is not a fusionkit model bundle ({FORMAT!r})")
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise BundleError(
                f"{mp}: made by a newer fusionkit ({doc.get('fusionkit_version', '?')}, bundle version {version}; "
                f"this fusionkit {__version__} reads up to version {VERSION}); upgrade fusionkit"
            )
        if kind is not None and doc.get("kind") != kind:
            raise BundleError(f"{mp}: a {doc.get('kind')!r} model, expected a {kind!r} model")
    return doc


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load the weights of ``path`` into ``model`` (strictly) and put it in eval mode."""
    try:
        model.load_state_dict(load_tensors(path))
    except RuntimeError as e:
        raise BundleError(f"{path}: does not fit the model its .json describes ({e})") from e
    model.eval()
    return model


# ---------------------------------------------------------------------------- 04's fusion model
@dataclass
class ClassifierSpec:
    """What rebuilds 04's fusion classifier, and what it was trained on and reached."""

    fusion: str
    in_dims: dict[str, int]
    num_classes: int
    class_names: list[str]
    target: str
    hidden: int = 128
    dropout: float = 0.1
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainResult.as_dict()
    config: dict[str, Any] = field(default_factory=dict)  # the notebook's parameters

    def build(self) -> MultimodalModel:
        return build_model(self.fusion, self.in_dims, self.num_classes, hidden=self.hidden, dropout=self.dropout,
                           fusion_kwargs=self.fusion_kwargs)  # fmt: skip


def save_classifier(path: str | os.PathLike, model: torch.nn.Module, spec: ClassifierSpec) -> Path:
    return save(path, model, "classifier", asdict(spec))


def load_classifier(path: str | os.PathLike) -> tuple[MultimodalModel, ClassifierSpec]:
    """Rebuild 04's model from its bundle; (model in eval mode, its spec)."""
    doc = read_meta(path, kind="classifier")
    try:
        spec = ClassifierSpec(
            fusion=doc["fusion"], in_dims={k: int(v) for k, v in doc["in_dims"].items()},
            num_classes=int(doc["num_classes"]), class_names=list(doc["class_names"]), target=doc["target"],
            hidden=int(doc.get("hidden", 128)), dropout=float(doc.get("dropout", 0.1)),
            fusion_kwargs=dict(doc.get("fusion_kwargs") or {}), train=dict(doc.get("train") or {}),
            config=dict(doc.get("config") or {}),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{meta_path(path)}: missing or malformed field {e}") from e
    return load_weights(spec.build(), path), spec
