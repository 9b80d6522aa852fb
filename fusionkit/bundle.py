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
knows is refused with a message that says so.

Version 2 adds what a classifier bundle needs to run on new raw files without its run folder
(``fusionkit export RUN``, :mod:`fusionkit.export`; read by :mod:`fusionkit.predict`):
``encoders`` (per modality: the encoder's registry name, options, identity, fitted state such as
tabular statistics, and where its weights are - :data:`WEIGHTS`), ``dataset`` (what it was
trained on) and ``metrics`` (what it reached). Encoder weights that travel inside the bundle are
in ``encoders.safetensors`` beside the model (one prefix per modality) or, for a Hugging Face text
encoder, a copy of its folder under ``encoders/<modality>/``. An encoder that was fine-tuned with
the model (a task's transfer learning) is described as the pretrained encoder it started from, plus
``finetuned`` (which blocks trained, the sha256 of the resulting state): its trained blocks are in
``finetuned_encoders.safetensors`` and are laid over it once it is rebuilt and checked
(:func:`add_finetuned_blocks`, :func:`load_encoder`). Version-1 bundles still load; they
only lack what prediction on raw files needs. A task model exported the same way
(``fusionkit export RUN --task captioning|vqa|retrieval``, :mod:`fusionkit.tasks.bundles`) has the
same ``encoders``, ``dataset`` and ``metrics`` (read by :func:`load_encoder_entries`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusionkit import __version__
from fusionkit.data.base import DatasetError, atomic_write_text
from fusionkit.data.readers import read_json
from fusionkit.encoders import Encoder, EncoderUnavailableError, build_encoder
from fusionkit.encoders.base import state_sha256
from fusionkit.encoders.text import HFTextEncoder
from fusionkit.model import MultimodalModel, build_model

FORMAT = "fusionkit.model"
VERSION = 2
#: where an exported encoder's weights are: ``none`` (it has no learned weights: log-mel, MFCC,
#: tabular), ``machine`` (pretrained weights this machine must have: a pinned package, the torch or
#: Hugging Face cache), ``bundle`` (its state dict in ``encoders.safetensors``), ``folder`` (a copy of
#: a Hugging Face model folder in ``encoders/<modality>/``)
WEIGHTS = ("none", "machine", "bundle", "folder")
ENCODER_WEIGHTS = "encoders.safetensors"
#: a fine-tuned encoder's trained blocks (and buffers), laid over the encoder its entry rebuilds
#: (one prefix per modality; the entry's ``finetuned`` holds the hash of the state they give)
FINETUNED_WEIGHTS = "finetuned_encoders.safetensors"


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


def weights_file(path: str | os.PathLike) -> Path:
    """A bundle's weights file: ``path`` itself, or ``model.safetensors`` in it when it is a folder."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


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
    #: version 2 (``fusionkit export``): modality -> how to rebuild its encoder (module docstring)
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: version 2: what it was trained on (name, manifest hash, target kind, the dataset's targets)
    dataset: dict[str, Any] = field(default_factory=dict)
    #: version 2: what it reached (04's and 05's summaries)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        """Whether it predicts a number (``num_classes`` 0; the scaling is in its weights)."""
        return self.num_classes == 0

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
            config=dict(doc.get("config") or {}), encoders={k: dict(v) for k, v in (doc.get("encoders") or {}).items()},
            dataset=dict(doc.get("dataset") or {}), metrics=dict(doc.get("metrics") or {}),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{meta_path(path)}: missing or malformed field {e}") from e
    return load_weights(spec.build(), path), spec


# ---------------------------------------------------------------------------- encoders in bundles
def weights_mode(encoder: Encoder, standalone: bool = False) -> str:
    """Where an exported encoder's weights go (:data:`WEIGHTS`): nowhere when it has none; its
    pretrained files stay on the machine unless ``standalone``; anything else (a random init, a
    trained or fine-tuned encoder) travels inside the bundle."""
    if not encoder.state_dict():
        return "none"
    if pretrained(encoder.identity()) and not standalone:
        return "machine"
    return "folder" if isinstance(encoder, HFTextEncoder) else "bundle"


def pretrained(identity: Mapping[str, Any]) -> bool:
    """Whether an encoder identity names pretrained weights (files with a sha256, found on a machine)."""
    weights = str(identity.get("weights"))
    return weights.startswith("sha256:") or ":sha256:" in weights


def encoder_entry(encoder: Encoder | None, kind: str, name: str, options: Mapping[str, Any], fitted: Any,
                  output: str, mode: str, identity: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The ``encoders`` entry of one modality (module docstring). ``encoder`` None: a pretrained one
    whose weights stay on the machine (``mode`` ``machine``), described by its recorded ``identity``
    without building it (load_encoder checks it against this machine's)."""
    if encoder is None and mode != "machine":
        raise ValueError(f"encoder {name!r}: weights {mode!r} need the encoder itself")
    entry = {"kind": kind, "encoder": name, "options": dict(options),
             "identity": dict(identity) if encoder is None else encoder.identity(), "fitted": fitted,
             "output": output, "weights": mode}  # fmt: skip
    if mode == "bundle":
        entry["state_sha256"] = state_sha256(encoder)
    return entry


def save_encoders(folder: str | os.PathLike, encoders: Mapping[str, Encoder], entries: Mapping[str, dict]) -> None:
    """Write the weights of the encoders whose entry says ``bundle`` or ``folder`` into ``folder``."""
    folder = Path(folder)
    tensors = {}
    for m, enc in encoders.items():
        if entries[m]["weights"] == "bundle":
            tensors.update({f"{m}.{k}": v for k, v in enc.state_dict().items()})
        elif entries[m]["weights"] == "folder":
            src = Path(enc.folder)
            dst = folder / "encoders" / m
            has_st = any(src.glob("*.safetensors"))
            for f in sorted(src.rglob("*")):
                rel = f.relative_to(src)
                if f.is_dir() or rel.parts[0].startswith(".") or rel.parts[0] in ("onnx", "openvino"):
                    continue
                if has_st and f.suffix in (".bin", ".h5", ".msgpack", ".onnx", ".ot"):
                    continue
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / rel)
    if tensors:
        save_tensors(folder / ENCODER_WEIGHTS, tensors)


def add_finetuned_blocks(folder: str | os.PathLike, entries: dict[str, dict[str, Any]],
                         encoders: Mapping[str, Encoder], blocks: Mapping[str, Mapping[str, torch.Tensor]],
                         trained: Mapping[str, Any]) -> None:  # fmt: skip
    """Lay each modality's fine-tuned ``blocks`` (a state dict of its trained parameters and
    buffers) over its encoder in ``encoders``, record it in the modality's entry (``trained``: which
    blocks, the state's sha256) and write the blocks to ``folder/finetuned_encoders.safetensors``.
    Call it after :func:`save_encoders`: the entries describe the encoders they started from."""
    tensors = {}
    for m, state in blocks.items():
        enc = encoders[m]
        missing, unexpected = _overlay(enc, state)
        if unexpected or not state:
            raise ValueError(f"modality {m!r}: fine-tuned blocks that are not the encoder's: {sorted(unexpected)[:5]}")
        entries[m]["finetuned"] = {**dict(trained), "tensors": len(state), "state_sha256": state_sha256(enc)}
        tensors.update({f"{m}.{k}": v.detach().contiguous() for k, v in state.items()})
    if tensors:
        save_tensors(Path(folder) / FINETUNED_WEIGHTS, tensors)


def _overlay(enc: Encoder, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    with torch.no_grad():
        res = enc.load_state_dict(dict(state), strict=False)
    return list(res.missing_keys), list(res.unexpected_keys)


def _build(entry: dict[str, Any], **extra: Any) -> Encoder:
    return build_encoder(entry["kind"], entry["encoder"], **{**dict(entry.get("options") or {}), **extra})


def load_encoder(folder: str | os.PathLike, modality: str, entry: dict[str, Any],
                 tensors: Mapping[str, torch.Tensor] | None = None) -> Encoder:  # fmt: skip
    """Rebuild one modality's encoder from its bundle entry, checked to be the one that made the
    training features (weights and preprocessing); BundleError naming the bundle otherwise."""
    folder = Path(folder)
    where = f"{folder / 'model.json'}: encoder {entry.get('encoder')!r} of modality {modality!r}"
    mode = entry.get("weights", "machine")
    if mode not in WEIGHTS:
        raise BundleError(f"{where}: weights {mode!r}; expected one of {WEIGHTS}")
    try:
        if mode == "folder":
            src = folder / "encoders" / modality
            if not src.is_dir():
                raise BundleError(f"{where}: its files {src} are missing from the bundle; export it again")
            enc: Encoder = HFTextEncoder(str(src), name=entry["encoder"], **dict(entry.get("options") or {}))
        elif mode == "bundle":
            prefix = f"{modality}."
            state = {k[len(prefix) :]: v for k, v in (tensors or {}).items() if k.startswith(prefix)}
            if not state:
                raise BundleError(f"{where}: its weights are not in {folder / ENCODER_WEIGHTS}; export it again")
            try:
                enc = _build(entry, weights=None)  # no pretrained files needed: the weights follow
            except TypeError:
                enc = _build(entry)
            try:
                enc.load_state_dict(state)
            except RuntimeError as e:
                raise BundleError(f"{where}: the weights in the bundle do not fit it ({e})") from e
            if state_sha256(enc) != entry.get("state_sha256"):
                raise BundleError(f"{where}: its weights in {folder / ENCODER_WEIGHTS} are corrupted (hash differs)")
            enc._weights_id = str(entry["identity"]["weights"])
            enc._mark_clean()
        else:
            enc = _build(entry)
    except EncoderUnavailableError as e:
        raise BundleError(
            f"{where}: its weights are neither inside the bundle nor on this machine ({e}); export the bundle with "
            "--standalone to carry them"
        ) from e
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"{where}: cannot be rebuilt ({e})") from e
    if entry.get("fitted") is not None:
        try:
            enc.load_fitted(entry["fitted"])
        except (ValueError, AttributeError) as e:
            raise BundleError(f"{where}: fitted state refused ({e})") from e
    mine, recorded = enc.identity(), dict(entry.get("identity") or {})
    for key in ("weights", "preprocessing", "outputs"):
        a, b = (json.dumps(x.get(key), sort_keys=True, default=str) for x in (mine, recorded))
        if a != b:
            raise BundleError(
                f"{where}: its {key} on this machine differ from the encoder the model was trained with "
                f"({a[:120]} vs {b[:120]}); install the same weights or export the bundle with --standalone"
            )
    if entry.get("finetuned"):
        _load_finetuned(folder, modality, entry, enc, where)
    return enc.eval()


def _load_finetuned(folder: Path, modality: str, entry: dict[str, Any], enc: Encoder, where: str) -> None:
    """Lay the fine-tuned blocks of ``modality`` over its rebuilt (and checked) pretrained encoder."""
    path = folder / FINETUNED_WEIGHTS
    if not path.is_file():
        raise BundleError(f"{where}: fine-tuned, but its trained blocks ({path}) are missing; export it again")
    prefix = f"{modality}."
    state = {k[len(prefix) :]: v for k, v in load_tensors(path).items() if k.startswith(prefix)}
    if not state:
        raise BundleError(f"{where}: fine-tuned, but {path} holds no blocks for it; export it again")
    try:
        _, unexpected = _overlay(enc, state)
    except RuntimeError as e:
        raise BundleError(f"{where}: the fine-tuned blocks in {path} do not fit it ({e})") from e
    if unexpected:
        raise BundleError(f"{where}: {path} holds tensors the encoder does not have: {sorted(unexpected)[:5]}")
    if state_sha256(enc) != entry["finetuned"].get("state_sha256"):
        raise BundleError(f"{where}: its fine-tuned blocks in {path} are corrupted (hash differs)")


def load_encoders(folder: str | os.PathLike, spec: ClassifierSpec) -> dict[str, Encoder]:
    """Every modality's encoder of an exported bundle (:func:`load_encoder`)."""
    return load_encoder_entries(folder, spec.encoders, spec.in_dims)


def load_encoder_entries(folder: str | os.PathLike, entries: Mapping[str, dict[str, Any]],
                         modalities: Iterable[str]) -> dict[str, Encoder]:  # fmt: skip
    """The encoders of ``modalities`` from a bundle's ``encoders`` entries (a classifier's or a
    task model's, :mod:`fusionkit.tasks.bundle`), each checked by :func:`load_encoder`."""
    folder = Path(folder)
    if not entries:
        raise BundleError(
            f"{folder / 'model.json'}: no encoders recorded (a bundle written by 04, not exported); make one with "
            "`fusionkit export RUN --out DIR`"
        )
    missing = sorted(set(modalities) - set(entries))
    if missing:
        raise BundleError(f"{folder / 'model.json'}: no encoder recorded for modalities {missing}")
    tensors = None
    if any(e.get("weights") == "bundle" for e in entries.values()):
        tensors = load_tensors(folder / ENCODER_WEIGHTS)
    return {m: load_encoder(folder, m, entries[m], tensors) for m in sorted(modalities)}
