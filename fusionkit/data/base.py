"""The dataset record every loader produces (docs/architecture.md, "Data flow").

On disk a dataset is a folder with

* ``dataset.json`` - metadata: ``name``, ``modalities`` (name -> kind: image | text | audio |
  tabular), for each tabular modality its columns in ``tabular`` (modality -> column ->
  ``{"type": "numeric" | "categorical", "missing": whether the value may be missing}``),
  ``targets`` (name -> list of class names; an empty list for a *regression* target, whose
  values are numbers), free-form ``info``;
* ``manifest.jsonl`` - one JSON object per sample: ``id``, ``split``, one key per modality
  (a path relative to the dataset root for image/audio, the text itself for text, for tabular an
  object column -> value: a finite number, a string, or null where missing is allowed) and one key per
  target (an integer class index; a finite number for a regression target).

Every loader (synthetic shapes, Flickr8k, AV-digits, a user's own manifest) ends in this format,
so everything downstream (feature cache, training, reports) walks one code path.

A dataset folder is written by one process at a time: whatever prepares one holds
:func:`dataset_lock` (``.{name}.lock`` next to the folder), so two chains preparing the same folder
at once build it once and the second reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionkit.locks import file_lock

MODALITY_KINDS = ("image", "text", "audio", "tabular")
#: kinds whose manifest value is the data itself, not a file
INLINE_KINDS = ("text", "tabular")
TABULAR_TYPES = ("numeric", "categorical")
#: split names a raw file may use, and the split each means (the Karpathy files' ``restval`` is
#: added by :mod:`fusionkit.data.caption_formats`)
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "val", "test")
#: what a target can be: classes (its class names in ``dataset.json``) or a number (no class names)
TARGET_KINDS = ("classification", "regression")


def target_kind(classes: list[str]) -> str:
    """``"regression"`` for a target without class names (``targets[name] == []``), else
    ``"classification"``: the one rule that tells the two apart (``dataset.json``, the feature
    index, the comparison's ``num_classes`` of 0)."""
    return "classification" if classes else "regression"


class DatasetError(ValueError):
    """Bad dataset input: the message names the file, the record and what was expected."""


@dataclass(frozen=True)
class Sample:
    id: str
    split: str
    modalities: dict[str, Any]  # name -> path relative to the root (image/audio), text, or {column: value} (tabular)
    targets: dict[str, int | float] = field(default_factory=dict)  # class index, or the number (regression)
    #: the group the sample belongs to (speaker, patient, site): a group is kept inside one split
    #: (``fusionkit.data.groups``); None when the dataset has no groups
    group: str | None = None


@dataclass
class Dataset:
    name: str
    root: Path
    modalities: dict[str, str]  # name -> kind
    targets: dict[str, list[str]]  # target name -> class names ([] for a regression target)
    samples: list[Sample]
    info: dict[str, Any] = field(default_factory=dict)
    #: folder that image/audio paths are relative to: the dataset folder itself, or the raw data
    #: folder when a loader indexes files in place (``media_root`` in dataset.json)
    media_root: Path | None = None
    #: tabular modality -> column -> {"type": "numeric" | "categorical", "missing": bool}
    tabular: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.media_root = Path(self.media_root) if self.media_root else self.root

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise DatasetError(f"{self.root}: unknown split {split!r}; expected one of {SPLITS}")
        return [s for s in self.samples if s.split == split]

    def groups(self) -> dict[str, str]:
        """Sample id -> group, for the samples that have one (empty when the dataset has no groups)."""
        return {s.id: s.group for s in self.samples if s.group is not None}

    def path(self, sample: Sample, modality: str) -> Path:
        """Absolute path of a file modality (image/audio) of ``sample``."""
        kind = self.modalities[modality]
        if kind in INLINE_KINDS:
            raise DatasetError(f"modality {modality!r} is {kind}, not a file")
        return self.media_root / sample.modalities[modality]

    def labels(self, split: str, target: str | None = None) -> list[int | float]:
        target = target or next(iter(self.targets))
        return [s.targets[target] for s in self.split(split)]

    def target_kind(self, target: str | None = None) -> str:
        """``"classification"`` or ``"regression"`` (:func:`target_kind`) of ``target`` (default: the first)."""
        target = target or next(iter(self.targets))
        if target not in self.targets:
            raise KeyError(f"{self.root}: target {target!r} not in dataset; it has {list(self.targets)}")
        return target_kind(self.targets[target])

    def ceilings(self, target: str | None = None) -> dict[str, float]:
        """The documented ceilings of ``target`` (default: the first target) in its metric - accuracy,
        or R^2 for a regression target: what each modality alone, each subset and all together can
        reach (``chance``, ``<modality>``, ``a+b``, ``late``, ``fused``, where the dataset documents
        them). A regression target's from ``info["r2_ceilings"]``; a class target's from
        ``info["target_ceilings"]`` (one entry per target), else ``info["ceilings"]``, which
        describes the first target; ``{}`` when the dataset documents none for ``target``."""
        target = target or next(iter(self.targets))
        if target not in self.targets:
            raise KeyError(f"{self.root}: target {target!r} not in dataset; it has {list(self.targets)}")
        if not self.targets[target]:  # a regression target
            return dict((self.info.get("r2_ceilings") or {}).get(target) or {})
        by_target = self.info.get("target_ceilings") or {}
        if target in by_target:
            return dict(by_target[target])
        return dict(self.info.get("ceilings") or {}) if target == next(iter(self.targets)) else {}

    def manifest_hash(self) -> str:
        """Content hash of the manifest (ids, splits, modality values, targets) and of the
        metadata: the feature cache is keyed by it, so any change to the data invalidates it."""
        return manifest_hash(self.root)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "n": len(self.samples)}
        out["splits"] = dict(Counter(s.split for s in self.samples))
        for t, classes in self.targets.items():
            if not classes:  # regression: the distribution of the numbers per split
                out[f"values/{t}"] = {sp: value_stats([s.targets[t] for s in self.split(sp)]) for sp in SPLITS}
                continue
            counts = Counter((s.split, s.targets[t]) for s in self.samples)
            out[f"class_balance/{t}"] = {
                sp: {classes[c]: counts.get((sp, c), 0) for c in range(len(classes))} for sp in SPLITS
            }
        return out


def value_stats(values: list[int | float]) -> dict[str, float | int]:
    """``n``, ``mean``, ``std``, ``min``, ``max`` of a regression target's values (``{"n": 0}`` for none)."""
    if not values:
        return {"n": 0}
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def with_options(
    what: str, allowed: Mapping[str, Any], given: Mapping[str, Any], error: type[Exception] = DatasetError
) -> dict[str, Any]:
    """The defaults ``allowed`` updated with ``given``; a key of ``given`` that ``allowed`` lacks
    raises ``error`` naming ``what``, the unknown key(s) and the valid ones."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise error(f"{what}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
    return {**allowed, **given}


def manifest_hash(root: str | os.PathLike) -> str:
    root = Path(root)
    h = hashlib.sha256()
    for name in ("dataset.json", "manifest.jsonl"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + rename, so a crash never leaves a
    half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def dataset_lock(root: str | os.PathLike):
    """The lock held while the dataset folder ``root`` is (re)built: ``.{name}.lock`` beside it (the
    folder itself is replaced by a rename; hidden, like the temporary folders, so a source listing
    skips it), on the resolved path, so two spellings of one folder share it. A context manager
    (:func:`fusionkit.locks.file_lock`)."""
    root = Path(root).resolve()
    return file_lock(root.with_name(f".{root.name}.lock"), f"dataset folder {root}")


def write_dataset(
    root: str | os.PathLike,
    name: str,
    modalities: dict[str, str],
    targets: dict[str, list[str]],
    samples: list[Sample],
    info: dict[str, Any] | None = None,
    media_root: str | os.PathLike | None = None,
    tabular: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> Path:
    """Write ``dataset.json`` + ``manifest.jsonl`` atomically (the manifest first, the metadata
    last, so a dataset folder with a ``dataset.json`` is always complete). ``media_root``: where
    image/audio paths are relative to, when it is not the dataset folder itself (files indexed in
    place, e.g. in ``data/raw``); stored as an absolute path. ``tabular``: the columns of each
    tabular modality (module docstring)."""
    root = Path(root)
    lines = []
    for s in samples:
        row: dict[str, Any] = {"id": s.id, "split": s.split}
        row.update(s.modalities)
        row.update(s.targets)
        if s.group is not None:
            row["group"] = s.group
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(root / "manifest.jsonl", "\n".join(lines) + "\n")
    meta: dict[str, Any] = {"name": name, "modalities": modalities, "targets": targets, "info": info or {}}
    if tabular:
        meta["tabular"] = tabular
    if media_root is not None:
        meta["media_root"] = str(Path(media_root).resolve())
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return root


def safe_media_path(root: str | os.PathLike, value: Any, where: str) -> str:
    """``value`` as a clean relative POSIX path inside ``root``; DatasetError when it is empty,
    absolute, or escapes ``root`` (``..``, a symlink pointing outside)."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: expected a non-empty relative file path, got {value!r}")
    value = value.strip().replace("\\", "/")
    root = Path(root)
    p = Path(value)
    if p.is_absolute() or value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        raise DatasetError(f"{where}: absolute path {value!r} refused; expected a path relative to {root}")
    resolved = (root / p).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: path {value!r} escapes the dataset root {root} (via '..' or a symlink); refused")
    return Path(os.path.normpath(value)).as_posix()


# ------------------------------------------------------------------------- reading a dataset folder
#: ``problem(kind, where, message, file, fatal)``: what :func:`read_manifest` calls for a bad row
#: (``fatal=False``: worth reporting, but the sample is still usable - an empty text)
ProblemFn = Callable[[str, str, str, "str | None", bool], None]


def read_metadata(root: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """(``dataset.json`` of the folder, the media root), checked: a JSON object with ``name``,
    ``modalities`` (kinds in :data:`MODALITY_KINDS`) and ``targets``, and a ``media_root`` that
    exists. DatasetError naming the file and what was expected otherwise."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(
            f"dataset directory {root} does not exist; expected a folder with dataset.json and manifest.jsonl"
        )
    for p in (meta_path, root / "manifest.jsonl"):
        if not p.is_file():
            raise DatasetError(f"{p}: missing; expected a fusionkit dataset folder (dataset.json + manifest.jsonl)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{meta_path}: not valid UTF-8 JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: expected a JSON object")
    for key in ("name", "modalities", "targets"):
        if key not in meta:
            raise DatasetError(f"{meta_path}: missing key {key!r}")
    if not isinstance(meta["modalities"], dict) or not isinstance(meta["targets"], dict):
        raise DatasetError(f"{meta_path}: 'modalities' and 'targets' must be objects")
    for m, kind in meta["modalities"].items():
        if kind not in MODALITY_KINDS:
            raise DatasetError(f"{meta_path}: modality {m!r} has kind {kind!r}; expected one of {MODALITY_KINDS}")
    tabular = meta.get("tabular") or {}
    for m, kind in meta["modalities"].items():
        cols = tabular.get(m) if isinstance(tabular, dict) else None
        if kind == "tabular" and not (
            isinstance(cols, dict)
            and cols
            and all(isinstance(c, dict) and c.get("type") in TABULAR_TYPES for c in cols.values())
        ):
            raise DatasetError(
                f"{meta_path}: tabular modality {m!r} needs its columns in 'tabular' ({m!r}: column -> "
                f'{{"type": one of {TABULAR_TYPES}, "missing": true/false}})'
            )
    media_root = Path(meta["media_root"]) if meta.get("media_root") else root
    if not media_root.is_dir():
        raise DatasetError(
            f"{meta_path}: media_root {media_root} does not exist; expected the folder holding the files"
        )
    return meta, media_root


def read_manifest(
    man_path: Path,
    modalities: dict[str, str],
    targets: dict[str, list[str]],
    media_root: Path,
    problem: ProblemFn,
    *,
    check_files: bool = True,
    check_media: Callable[[str, Path], None] | None = None,
    tabular: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> tuple[list[Sample], int]:
    """The rules of a ``manifest.jsonl`` row, written once for :func:`load_dataset` and
    ``fusionkit data check``: (usable samples, number of rows with an id). Each row: a JSON object
    with a non-empty string ``id`` seen once, ``split`` in :data:`SPLITS`, every modality (text: a
    string, not empty; image/audio: a relative path inside ``media_root``, the file there when
    ``check_files``, and ``check_media(kind, path)`` happy with it, each file checked once) and
    every target (an integer class index; a finite number for a regression target) and an
    optional ``group`` (a non-empty string). Every problem goes to ``problem`` (which may raise);
    a row with a fatal one is left out."""
    try:
        text = man_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{man_path}: not valid UTF-8 ({e})") from e
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    checked: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{man_path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problem("malformed", where, f"not valid JSON ({e.msg})", None, True)
            continue
        if not isinstance(row, dict):
            problem("malformed", where, "expected a JSON object", None, True)
            continue
        sid = row.get("id")
        if not isinstance(sid, str) or not sid:
            problem("malformed", where, f"expected a non-empty string 'id', got {sid!r}", None, True)
            continue
        where = f"{where} (id {sid!r})"
        if sid in seen:
            problem("duplicate", where, f"id appears twice (first on line {seen[sid]})", None, True)
            continue
        seen[sid] = lineno
        bad = False
        if row.get("split") not in SPLITS:
            problem("malformed", where, f"split {row.get('split')!r}; expected one of {SPLITS}", None, True)
            bad = True
        mods: dict[str, str] = {}
        for m, kind in modalities.items():
            if m not in row:
                problem("malformed", where, f"missing modality {m!r}", None, True)
                bad = True
                continue
            v = row[m]
            if kind == "tabular":
                msg = tabular_problem(v, (tabular or {}).get(m, {}), m)
                if msg:
                    problem("malformed", where, msg, None, True)
                    bad = True
                mods[m] = v
                continue
            if kind == "text":
                if not isinstance(v, str):
                    problem("malformed", where, f"text modality {m!r} must be a string, got {v!r}", None, True)
                    bad = True
                elif not v.strip():
                    problem("empty_caption", where, f"text modality {m!r} is empty", None, False)
                mods[m] = v
                continue
            try:
                rel = safe_media_path(media_root, v, f"modality {m!r}")
            except DatasetError as e:
                problem("unsafe_path" if isinstance(v, str) and v else "malformed", where, str(e), None, True)
                bad = True
                continue
            p = media_root / rel
            if check_files and not p.is_file():
                problem("missing_file", where, f"{kind} file {p} does not exist", str(p), True)
                bad = True
            elif check_media is not None and rel not in checked:
                checked.add(rel)
                try:
                    check_media(kind, p)
                except DatasetError as e:
                    problem("corrupt", where, str(e), str(p), True)
                    bad = True
            mods[m] = rel
        tg: dict[str, int | float] = {}
        for t, classes in targets.items():
            v = row.get(t)
            if not classes:  # regression
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    problem(
                        "malformed", where, f"regression target {t!r} = {v!r}; expected a finite number", None, True
                    )
                    bad = True
                else:
                    tg[t] = v
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(classes):
                msg = f"target {t!r} = {v!r}; expected an integer in [0, {len(classes)})"
                problem("malformed", where, msg, None, True)
                bad = True
            else:
                tg[t] = v
        group = row.get("group")
        if group is not None and (not isinstance(group, str) or not group):
            problem("malformed", where, f"group {group!r}; expected a non-empty string (or no 'group' key)", None, True)
            bad = True
        if not bad:
            samples.append(Sample(id=sid, split=row["split"], modalities=mods, targets=tg, group=group))
    return samples, len(seen)


def _raise_fatal(kind: str, where: str, message: str, file: str | None, fatal: bool) -> None:
    if fatal:
        raise DatasetError(f"{where}: {message}")


def load_dataset(root: str | os.PathLike, check_files: bool = True) -> Dataset:
    """Read a dataset folder written by :func:`write_dataset` and validate it (the rules of
    :func:`read_metadata` and :func:`read_manifest`; an empty text is allowed).

    Raises :class:`DatasetError` at the first problem, naming the file, the line and what was
    expected."""
    root = Path(root)
    meta, media_root = read_metadata(root)
    man_path = root / "manifest.jsonl"
    samples, _ = read_manifest(
        man_path, meta["modalities"], meta["targets"], media_root, _raise_fatal, check_files=check_files,
        tabular=meta.get("tabular"),
    )  # fmt: skip
    if not samples:
        raise DatasetError(f"{man_path}: no samples")
    return Dataset(
        name=meta["name"],
        root=root,
        modalities=meta["modalities"],
        targets=meta["targets"],
        samples=samples,
        info=meta.get("info", {}),
        media_root=media_root,
        tabular=meta.get("tabular") or {},
    )


def tabular_problem(value: Any, columns: dict[str, dict[str, Any]], modality: str) -> str | None:
    """What is wrong with one tabular record ``value`` given its ``columns`` (``dataset.json``'s
    ``tabular`` entry), or None: an object with every column - a finite number (numeric) or a
    string (categorical), null only where ``missing`` is allowed - and no other."""
    if not isinstance(value, dict):
        return f"tabular modality {modality!r} = {value!r}; expected an object column -> value"
    absent = [c for c in columns if c not in value]
    if absent:
        return f"tabular modality {modality!r} lacks column(s) {absent}; expected {list(columns)}"
    extra = [c for c in value if c not in columns]
    if extra:
        return f"tabular modality {modality!r} has unknown column(s) {extra}; expected {list(columns)}"
    for c, spec in columns.items():
        v = value[c]
        if v is None:
            if not spec.get("missing"):
                return f"tabular column {c!r} of {modality!r} is missing; it was not declared as allowed to be missing"
        elif spec["type"] == "numeric":
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return f"tabular column {c!r} of {modality!r} = {v!r}; expected a finite number"
        elif not isinstance(v, str):
            return f"tabular column {c!r} of {modality!r} = {v!r}; expected a category (a string)"
    return None


@dataclass
class Built:
    """What a loader's ``scan`` returns: everything needed to write the processed folder."""

    name: str
    format: str  # the raw layout that was read, e.g. "kaggle-csv", "karpathy-json", "vqa-v2"
    modalities: dict[str, str]
    targets: dict[str, list[str]]
    samples: list[Sample]
    info: dict[str, Any] = field(default_factory=dict)
    media_root: Path | None = None  # None: paths are relative to the processed folder itself
    tabular: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # see write_dataset
    files: dict[str, Any] = field(default_factory=dict)  # relpath -> str, or a JSON-able object
    writers: list[Callable[[Path, bool], None]] = field(default_factory=list)  # write media into the folder
    stats: dict[str, Any] = field(default_factory=dict)  # extra counts for the report
