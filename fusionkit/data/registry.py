"""One entry point for every dataset: ``prepare(name, out_dir, source_dir=..., **options)``.

=============  =====================================================  ==================================
name           raw data (``source_dir``)                               classification target(s)
=============  =====================================================  ==================================
shapes         none: generated (:mod:`fusionkit.data.shapes`)          label, has_red, tone, and
                                                                       redundant, unique, synergy,
                                                                       unreliable, mixed
flickr8k       Kaggle ``captions.txt`` / ``Flickr8k.token.txt`` +     match (image-caption matching)
               split files / Karpathy ``dataset_flickr8k.json``
flickr30k      ``results_20130124.token`` / ``results.csv`` /          match
               ``dataset_flickr30k.json``
coco           ``annotations/captions_{train,val}2014.json`` and/or    match
               ``dataset_coco.json`` + image folders
imagefolder    a folder of images + a captions file                    match
vqa            VQA v2 questions + annotations JSON + COCO images       answer (top-K answers)
vqarad         VQA-RAD ``trainset.json`` (+ ``testset.json``) +       answer (training answers; exact
               ``images/``                                             match after lower-case + trim)
avdigits       FSDD recordings (+ sklearn's 8x8 digits, offline)       digit
manifest       your CSV / JSONL / Parquet manifest, or a fusionkit     your target columns
               dataset folder
=============  =====================================================  ==================================

Each loader's options are the keyword-only parameters of its ``scan`` function, documented there
(:func:`fusionkit.data.captions.scan_flickr`, :func:`fusionkit.data.coco.scan`,
:func:`fusionkit.data.vqa.scan`, :func:`fusionkit.data.vqarad.scan`, :func:`fusionkit.data.avdigits.scan`,
:func:`fusionkit.data.manifest.scan`, ...); :func:`options` lists them with their defaults, and an
unknown option is an error naming the allowed ones.

What ``prepare`` guarantees
* the processed folder is built in a temporary sibling folder and renamed into place; inside it
  ``dataset.json`` is written last, so a folder holding one is complete and valid
  (:func:`fusionkit.data.base.load_dataset` is run on it before the rename);
* ``info.fingerprint`` hashes the loader, its options, ``seed``, ``on_error``, the source path and
  a listing (path, size, mtime) of the source files: calling ``prepare`` again with the same
  inputs returns the existing folder without reading the raw data again; anything else rebuilds;
* a failed build leaves no ``dataset.json`` for the requested inputs: an older dataset at
  ``out_dir`` built from other inputs is marked stale (``dataset.json`` -> ``dataset.json.stale``)
  so nothing downstream mistakes it for the one requested;
* besides ``dataset.json`` + ``manifest.jsonl`` the folder holds ``report.json`` (the
  :class:`~fusionkit.data.problems.Report`), ``skipped.json`` (records left out with
  ``on_error="skip"``: kind, where, message, file) and the loader's own files (caption references,
  VQA annotations, recordings.jsonl ...). Image/audio paths are relative to ``media_root``: the raw
  folder when files are indexed in place (captions, VQA, manifest), the processed folder itself
  when the loader writes the media (avdigits);
* one process at a time builds a folder (:func:`fusionkit.data.base.dataset_lock`, held from the
  reuse check to the rename): two chains preparing the same folder at once read the raw data
  once, the second reuses the first's folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusionkit.data.base import (
    SPLITS,
    Built,
    Dataset,
    DatasetError,
    atomic_write_text,
    dataset_lock,
    load_dataset,
    with_options,
    write_dataset,
)
from fusionkit.data.problems import Issue, Problems, Report, check_on_error, class_balance, write_issues
from fusionkit.data.vqarad import is_vqarad_folder

__all__ = ["Built", "available", "check_raw", "detect", "fingerprint", "options", "prepare"]

REGISTRY_VERSION = 1

# name -> "module:function" of the scan function (imported lazily: sklearn, PIL ... only when used)
_LOADERS: dict[str, str] = {
    "flickr8k": "fusionkit.data.captions:scan_flickr8k",
    "flickr30k": "fusionkit.data.captions:scan_flickr30k",
    "coco": "fusionkit.data.coco:scan",
    "imagefolder": "fusionkit.data.captions:scan_imagefolder",
    "vqa": "fusionkit.data.vqa:scan",
    "vqarad": "fusionkit.data.vqarad:scan",
    "avdigits": "fusionkit.data.avdigits:scan",
    "manifest": "fusionkit.data.manifest:scan",
}
# the download that provides a dataset's raw data (fusionkit data download NAME)
DOWNLOAD_FOR = {"flickr8k": "flickr8k", "coco": "coco", "vqa": "vqa", "vqarad": "vqarad", "avdigits": "fsdd"}
_FIXED = {"source", "seed", "problems", "progress"}


def available() -> list[str]:
    """The dataset names :func:`prepare` knows."""
    return ["shapes", *_LOADERS]


def _loader(name: str) -> Callable[..., Built]:
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {available()}")
    mod, fn = _LOADERS[name].split(":")
    import importlib

    return getattr(importlib.import_module(mod), fn)


def options(name: str) -> dict[str, Any]:
    """The options of dataset ``name`` with their defaults (see its ``scan`` docstring)."""
    if name == "shapes":
        return {
            "n": 1200,
            "image_size": 128,
            "splits": (0.7, 0.15, 0.15),
            "questions_per_scene": 5,
            "fades": True,
            "tabular": False,
        }
    sig = inspect.signature(_loader(name))
    return {k: p.default for k, p in sig.parameters.items() if k not in _FIXED and p.kind == p.KEYWORD_ONLY}


def _normalise(name: str, given: dict[str, Any]) -> dict[str, Any]:
    return with_options(name, options(name), given)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, range):
        return list(v)
    return v


# ------------------------------------------------------------------------------------ fingerprint
def source_listing_hash(source: Path, exclude: Path | None = None) -> str:
    """sha256 over (relative path, size, mtime) of every file under ``source`` (a file: the files
    of its folder), skipping hidden entries and ``exclude``."""
    h = hashlib.sha256()
    base = source if source.is_dir() else source.parent
    excl = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        dirnames[:] = sorted(
            n for n in dirnames if not n.startswith(".") and (excl is None or (d / n).resolve() != excl)
        )
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = d / fn
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint(name: str, source: Path, seed: int, on_error: str, opts: dict[str, Any], exclude: Path | None) -> str:
    doc = {
        "registry": REGISTRY_VERSION,
        "loader": name,
        "source": str(source),
        "seed": seed,
        "on_error": on_error,
        "options": _jsonable(opts),
        "listing": source_listing_hash(source, exclude),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _reuse(out: Path, fp: str) -> Dataset | None:
    meta = out / "dataset.json"
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8")).get("info") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if info.get("fingerprint") != fp:
        return None
    try:
        return load_dataset(out)
    except DatasetError:
        return None


# ---------------------------------------------------------------------------------------- writing
def _guard(source: Path, out: Path) -> None:
    s, o = source.resolve(), out.resolve()
    if o == s or s.is_relative_to(o):
        raise DatasetError(f"out_dir {out} is (or contains) the raw data folder {source}; choose another folder")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; expected a dataset folder (or nothing)")
    if out.is_dir():
        names = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if names and not ({"dataset.json", "dataset.json.stale"} & set(names)):
            raise DatasetError(
                f"{out}: refusing to replace a folder that is not a fusionkit dataset (it holds {sorted(names)[:5]}); "
                "pass another out_dir or empty it"
            )


def _mark_stale(out: Path) -> None:
    meta = out / "dataset.json"
    if meta.is_file():
        os.replace(meta, out / "dataset.json.stale")


def _replace_dir(tmp: Path, root: Path) -> None:
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, root)


def make_report(built: Built, source: Path, problems: Problems) -> Report:
    return Report(
        name=built.name,
        source=str(source),
        format=built.format,
        counts={sp: n for sp in SPLITS if (n := sum(s.split == sp for s in built.samples))},
        stats=built.stats,
        class_balance=class_balance(built.targets, built.samples),
        issues=list(problems.issues),
    )


def _write(out: Path, built: Built, report: Report, meta_info: dict[str, Any], progress: bool) -> None:
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for w in built.writers:
            w(tmp, progress)
        for rel, content in built.files.items():
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, indent=1) + "\n"
            atomic_write_text(tmp / rel, text)
        report.write(tmp / "report.json")
        write_issues(tmp / "skipped.json", report.skipped)
        info = dict(built.info)
        info.update(meta_info)
        info["report"] = {
            "counts": report.counts,
            "n_skipped": len(report.skipped),
            "n_warnings": len(report.warnings),
            "files": {"report": "report.json", "skipped": "skipped.json"},
        }
        write_dataset(
            tmp, built.name, built.modalities, built.targets, built.samples, info, media_root=built.media_root,
            tabular=built.tabular,
        )  # fmt: skip
        load_dataset(tmp)  # validate before it takes the place of out
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finish(built: Built, problems: Problems, source: Path) -> None:
    if not built.samples:
        first = problems.issues[0].line() if problems.issues else "no records found"
        raise DatasetError(
            f"{source}: no usable samples for {built.name!r} ({len(problems.issues)} problem(s); first: {first})"
        )
    ids: set[str] = set()
    for s in built.samples:  # a loader bug, not bad input
        if s.id in ids:
            raise DatasetError(f"{built.name}: sample id {s.id!r} appears twice in the built manifest")
        ids.add(s.id)
    for sp in SPLITS:
        if not any(s.split == sp for s in built.samples):
            problems.warn("malformed", str(source), f"split {sp!r} is empty")


# ---------------------------------------------------------------------------------------- prepare
def prepare(
    name: str,
    out_dir: str | os.PathLike,
    *,
    source_dir: str | os.PathLike | None = None,
    seed: int = 0,
    on_error: str = "raise",
    progress: bool = True,
    force: bool = False,
    **opts: Any,
) -> Dataset:
    """Read dataset ``name`` from ``source_dir``, write the fusionkit dataset folder ``out_dir``
    and return it loaded (see the module docstring).

    ``on_error``: "raise" (stop at the first bad record, naming file, line/record and what was
    expected) or "skip" (leave bad records out, listed in report.json and skipped.json).
    ``force``: rebuild even when ``out_dir`` already holds this exact dataset. ``opts``: the
    loader's options (:func:`options`)."""
    out = Path(out_dir)
    if name == "shapes":
        from fusionkit.data import shapes

        kw = _normalise("shapes", opts)
        ds = shapes.generate(out, seed=seed, overwrite=force, progress=progress, **kw)
        return ds
    loader = _loader(name)
    check_on_error(on_error)
    kw = _normalise(name, opts)
    if source_dir is None or str(source_dir) == "":
        hint = (
            f" (`fusionkit data download {DOWNLOAD_FOR[name]} --to data/raw` fetches it)"
            if name in DOWNLOAD_FOR
            else ""
        )
        raise DatasetError(f"{name}: source_dir is required: the folder holding the raw data{hint}")
    source = Path(source_dir).expanduser().resolve()
    if not source.exists():
        hint = (
            f"; `fusionkit data download {DOWNLOAD_FOR[name]} --to data/raw` fetches it" if name in DOWNLOAD_FOR else ""
        )
        raise DatasetError(f"{name}: source_dir {source} does not exist{hint}")
    _guard(source, out)
    with dataset_lock(out):  # a second process preparing this folder waits, then reuses it
        return _build(name, loader, source, out, seed, on_error, kw, force, progress)


def _build(
    name: str,
    loader: Callable[..., Built],
    source: Path,
    out: Path,
    seed: int,
    on_error: str,
    kw: dict[str, Any],
    force: bool,
    progress: bool,
) -> Dataset:
    """``prepare``'s work, with the folder's lock held: reuse ``out`` when its fingerprint matches,
    else read the raw data and write the folder."""
    fp = fingerprint(name, source, seed, on_error, kw, exclude=out)
    if not force and (ds := _reuse(out, fp)) is not None:
        return ds
    problems = Problems(on_error)
    try:
        built = loader(source, seed=seed, problems=problems, progress=progress, **kw)
        _finish(built, problems, source)
        report = make_report(built, source, problems)
        meta = {
            "fingerprint": fp,
            "loader": name,
            "format": built.format,
            "source": str(source),
            "seed": seed,
            "on_error": on_error,
            "options": _jsonable(kw),
        }
        _write(out, built, report, meta, progress)
    except BaseException:
        _mark_stale(out)
        raise
    return load_dataset(out)


# ----------------------------------------------------------------------------------------- detect
def _has(path: Path, pattern: str, depth: int = 2) -> list[Path]:
    found: list[Path] = []
    for d in range(depth + 1):
        found += sorted(path.glob("/".join(["*"] * d + [pattern])))
    return [p for p in found if not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(path).parts)]


def detect(path: str | os.PathLike) -> tuple[str, str]:
    """(registry name, why) for the raw data at ``path``; DatasetError when no layout fits."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".parquet", ".txt"):
            return "manifest", f"{path.name} is a table"
        raise DatasetError(
            f"{path}: cannot tell the format of this file; expected a .csv/.tsv/.jsonl/.parquet manifest"
        )
    if (path / "dataset.json").is_file():
        return "manifest", "dataset.json: a fusionkit dataset folder"
    if is_vqarad_folder(path):
        return "vqarad", "VQA-RAD trainset.json"
    if _has(path, "*questions*.json") and _has(path, "*annotations*.json"):
        return "vqa", "VQA questions + annotations JSON"
    if _has(path, "dataset_flickr30k.json") or _has(path, "results_20130124.token") or _has(path, "results.csv"):
        return "flickr30k", "Flickr30k captions file"
    if _has(path, "dataset_coco.json") or _has(path, "captions_*20[0-9][0-9].json"):
        return "coco", "COCO captions JSON"
    if _has(path, "dataset_flickr8k.json") or _has(path, "Flickr8k.token.txt") or (path / "captions.txt").is_file():
        return "flickr8k", "Flickr8k captions file"
    import re

    if any(re.fullmatch(r"\d_[^_]+_\d+\.wav", p.name) for p in _has(path, "*.wav", depth=2)[:50]):
        return "avdigits", "FSDD recordings ({digit}_{speaker}_{index}.wav)"
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        if (path / f"manifest.{ext}").is_file():
            return "manifest", f"manifest.{ext}"
    for cap in ("captions.csv", "captions.tsv", "captions.jsonl", "captions.json"):
        if (path / cap).is_file():
            return "imagefolder", cap
    tables = [p for ext in ("csv", "jsonl", "parquet") for p in path.glob(f"*.{ext}")]
    if len(tables) == 1:
        return "manifest", tables[0].name
    raise DatasetError(
        f"{path}: cannot tell the dataset format; expected Flickr8k/30k captions (captions.txt, *.token.txt, "
        "dataset_*.json), COCO captions (annotations/captions_*.json), VQA v2 (*questions*.json + *annotations*.json), VQA-RAD (trainset.json), "
        "FSDD recordings ({digit}_{speaker}_{index}.wav), a manifest (.csv/.jsonl/.parquet) or a fusionkit dataset "
        "folder (dataset.json)"
    )


def check_raw(
    path: str | os.PathLike, name: str | None = None, seed: int = 0, media: str | None = None, **opts: Any
) -> Report:
    """Read the raw data at ``path`` as ``prepare`` would, writing nothing, and report every problem.
    ``media``: the loader's ``check_media`` when it has one."""
    path = Path(path).resolve()
    fmt_note = ""
    try:
        if name is None:
            name, fmt_note = detect(path)
        if name == "shapes":
            raise DatasetError("shapes is generated, not read: check a generated folder instead")
        loader = _loader(name)
        if media is not None and "check_media" in options(name):
            opts.setdefault("check_media", media)
        kw = _normalise(name, opts)
    except DatasetError as e:
        rep = Report(name=name or "?", source=str(path))
        rep.issues.append(Issue("malformed", str(path), str(e)))
        return rep
    problems = Problems("collect")
    try:
        built = loader(path, seed=seed, problems=problems, progress=False, **kw)
    except DatasetError as e:
        rep = Report(name=name, source=str(path), format=fmt_note)
        rep.issues = list(problems.issues) + [Issue("malformed", str(path), str(e))]
        return rep
    if not built.samples:
        problems.error("malformed", str(path), "no usable samples")
    rep = make_report(built, path, problems)
    return rep
