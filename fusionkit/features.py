"""Feature extraction into an on-disk cache that never recomputes what it already has.

    fs = extract_features(ds, "image", split="train", cache_dir="data/processed/features")
    fs.ids, fs.values            # list[str], (N, D) float32 tensor memory-mapped from safetensors
    fs = extract_features(ds, "image", split="train", cache_dir=..., also=("grid",))
                                 # the grid's entry too, from the same pass of the encoder

Cache layout (one folder per dataset content x modality x encoder configuration)::

    {cache_dir}/{dataset.name}-{manifest_hash}/{modality}/{encoder key}/
        {split}-{output}.safetensors   values (N, D) or (N, L, D) [+ mask (N, L)], float32
        {split}-{output}.json          sidecar: ids, shapes, dtype, versions, sha256 of the file, encoder
                                        identity, skipped and truncated records, timing
        {split}-{output}.parts/        chunk files while an extraction is in progress (resumable)
        {split}-{output}.lock          the entry's lock file (see "Concurrent processes")
        skipped.json                   records skipped under on_error="skip", per split, with reasons
        fitted.json                    an encoder fitted on the training split (tabular): its
                                        statistics and vocabularies (the sidecars carry them too)
    {cache_dir}/extractions.jsonl      one line per entry computed: key, records computed, seconds,
                                        host, pid, time (who computed what, and how often)

The encoder key is ``{encoder name}-{sha256 of encoder.identity()}`` (weights hash, preprocessing,
output dims) plus ``-bf16`` for CUDA autocast runs; the manifest hash covers every id, split, path,
text and target, so any change to the data or the encoder lands in a new folder.

Guarantees
* warm cache: the file is memory-mapped (``safetensors.safe_open``) and its sha256 checked against
  the sidecar; the encoder's ``forward`` is never called;
* a corrupt, truncated or half-written file is never used: mismatching checksum -> warning + rebuild;
  every file is written to a temporary name, fsynced and renamed, the sidecar last;
* resumable: records are processed in chunks of ``chunk_size`` (fixed positions in the split), each
  chunk saved as soon as it is complete; after a crash (even ``kill -9``) a rerun computes only the
  missing chunks, and the merged result is bit-identical to an uninterrupted run on the same machine
  and settings (batch size, decode group and memory format may change the last float bits, so resume
  with the same);
* concurrent processes (two chains, two workers) compute an entry once: the process that takes
  the entry's lock (``{split}-{output}.lock``, :func:`fusionkit.locks.file_lock`) computes it;
  another that needs the same entry waits on that lock, then finds the finished entry and reads
  it. Only that entry's lock is held, so entries that differ are computed side by side. A reader
  that finds an entry incomplete or unusable takes the lock before it removes or rebuilds
  anything, so it never removes a file another process is still writing;
* threads: the forward runs on :func:`fusionkit.runtime.work_threads` intra-op threads (the cores
  this process may actually use), DataLoader workers only on cores those leave free;
* bad input (``on_error``): ``"raise"`` (default) stops at the first bad record with an
  :class:`~fusionkit.encoders.base.InputError` naming the file and the record id; ``"skip"`` leaves the
  record out and lists it (with the reason) in the sidecar and ``skipped.json``. A cache built with
  ``"skip"`` that skipped records raises when read with ``"raise"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fusionkit import __version__, encoding
from fusionkit.data.base import INLINE_KINDS, Dataset, DatasetError, atomic_write_text, sha256_file
from fusionkit.data.problems import check_on_error
from fusionkit.data.readers import read_json, read_jsonl
from fusionkit.encoders import build_encoder
from fusionkit.encoders.base import Encoder, InputError
from fusionkit.locks import LockBusy, file_lock
from fusionkit.progress import progress as progress_bar
from fusionkit.runtime import allocator_tuned, cpu_threads, tune_allocator

CACHE_FORMAT = 1
OUTPUTS = ("pooled", "grid")
#: an encoder folder's fitted state (the tabular encoder's statistics and vocabularies), JSON
FITTED = "fitted.json"


class CacheError(ValueError):
    """A cache file that cannot be trusted (missing sidecar, checksum mismatch, wrong records)."""


@dataclass
class FeatureSet:
    """Features of one dataset split: row ``i`` of ``values`` (and ``mask``) belongs to ``ids[i]``.
    Skipped records are absent from ``ids`` and listed in ``meta["skipped"]``."""

    ids: list[str]
    values: torch.Tensor  # (N, D) pooled or (N, L, D) grid
    mask: torch.Tensor | None  # (N, L) for grids with padding (text tokens, audio frames)
    meta: dict[str, Any]
    path: Path
    _index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def skipped(self) -> dict[str, dict[str, str]]:
        return self.meta.get("skipped", {})

    def rows(self, ids: list[str]) -> torch.Tensor:
        """``values`` rows for ``ids`` in that order (KeyError names a missing id)."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids)}
        try:
            return self.values[[self._index[k] for k in ids]]
        except KeyError as e:
            raise KeyError(f"{self.path}: no features for record {e.args[0]!r}") from None


# ----------------------------------------------------------------------------------------- keys
def _precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def _modality_for(dataset: Dataset, encoder: Encoder, modality: str | None) -> str:
    if modality is not None:
        return modality
    matches = [m for m, k in dataset.modalities.items() if k == encoder.kind]
    if len(matches) != 1:
        raise ValueError(f"dataset {dataset.name}: pass modality= ({encoder.kind} modalities: {matches})")
    return matches[0]


def encoder_key(encoder: Encoder, device: str | torch.device | None = None) -> str:
    """``{name}-{identity hash}`` (+ ``-bf16`` on CUDA): the encoder's folder in the cache."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name).strip("_") or "encoder"
    key = f"{safe[:60]}-{encoder.identity_hash()[:12]}"
    if _precision(encoding.resolve_device(device)) != "fp32":
        key += "-bf16"
    return key


def cache_key(
    dataset: Dataset,
    encoder: Encoder,
    split: str,
    output: str = "pooled",
    *,
    modality: str | None = None,
    device: str | torch.device | None = None,
) -> str:
    """The cache entry of ``(dataset content, modality, encoder configuration, split, output)`` as a
    relative path without suffix: ``{name}-{manifest hash}/{modality}/{encoder key}/{split}-{output}``."""
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}; expected one of {OUTPUTS}")
    modality = _modality_for(dataset, encoder, modality)
    return f"{dataset.name}-{dataset.manifest_hash()}/{modality}/{encoder_key(encoder, device)}/{split}-{output}"


def cache_path(
    dataset: Dataset, encoder: Encoder, split: str, output: str, cache_dir: str | os.PathLike, **kw: Any
) -> Path:
    return Path(cache_dir) / (cache_key(dataset, encoder, split, output, **kw) + ".safetensors")


# ----------------------------------------------------------------------------------------- files
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors to a temporary name, fsync, rename: a crash never leaves a half file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _clean_stale_tmp(folder: Path) -> None:
    """Remove temporary files left by processes that died (kill -9) while writing."""
    if not folder.is_dir():
        return
    for p in folder.glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def read_feature_set(path: str | os.PathLike, verify: bool = True) -> FeatureSet:
    """Open a cached feature file (memory-mapped) after checking it against its sidecar.
    Raises :class:`CacheError` for anything that does not check out."""
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise CacheError(f"{path}: missing")
    if not side.is_file():
        raise CacheError(f"{path}: its sidecar {side.name} is missing (interrupted write)")
    meta = read_json(side, error=CacheError)
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{side}: not a fusionkit feature sidecar of format {CACHE_FORMAT}")
    size = path.stat().st_size
    if size != meta.get("file_size"):
        raise CacheError(f"{path}: {size} bytes, the sidecar says {meta.get('file_size')} (truncated or replaced)")
    if verify:
        digest = sha256_file(path)
        if digest != meta.get("sha256"):
            raise CacheError(
                f"{path}: sha256 {digest[:12]}... does not match the sidecar's {str(meta.get('sha256'))[:12]}... (corrupt)"
            )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            values = f.get_tensor("values")
            mask = f.get_tensor("mask") if "mask" in keys else None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CacheError(f"{path}: not a readable safetensors file ({e})") from e
    ids = meta.get("ids")
    if not isinstance(ids, list) or len(ids) != values.shape[0]:
        raise CacheError(
            f"{path}: {values.shape[0]} rows but the sidecar lists {len(ids) if isinstance(ids, list) else ids!r} ids"
        )
    if list(values.shape) != meta.get("shapes", {}).get("values"):
        raise CacheError(f"{path}: values shape {list(values.shape)} differs from the sidecar's")
    return FeatureSet(ids=ids, values=values, mask=mask, meta=meta, path=path)


def _try_cached(path: Path, expected: list[str], repair: bool = True) -> FeatureSet | None:
    """The cached set if present and sound, else None. ``repair`` (only with the entry's lock held):
    a file that was there but bad is removed, with a warning; without it nothing is touched (the
    entry may be another process's write in progress)."""
    if not path.exists() and not _sidecar(path).exists():
        return None
    try:
        fs = read_feature_set(path)
        skipped = set(fs.meta.get("skipped", {}))
        if fs.ids != [i for i in expected if i not in skipped] or not skipped <= set(expected):
            raise CacheError(f"{path}: its records differ from the dataset split's")
        return fs
    except CacheError as e:
        if not repair:
            return None
        warnings.warn(f"feature cache entry unusable, rebuilding: {e}", RuntimeWarning, stacklevel=3)
        for p in (_sidecar(path), path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return None


def _raise_for_skipped(fs: FeatureSet, on_error: str) -> None:
    if on_error == "raise" and fs.skipped:
        rid, info = next(iter(fs.skipped.items()))
        raise InputError(
            f"{info.get('reason')} ({len(fs.skipped)} record(s) were skipped when {fs.path.name} was built "
            f"with on_error='skip'; see {fs.path.parent / 'skipped.json'})",
            info.get("file"),
            rid,
        )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "fusionkit": __version__, "torch": torch.__version__}
    for pkg in ("torchvision", "transformers", "librosa", "safetensors", "numpy", "pillow", "soundfile"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


# ----------------------------------------------------------------------------------------- loading
def _pad_to(t: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    if t.shape[dim] == length:
        return t
    shape = list(t.shape)
    shape[dim] = length - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


# ----------------------------------------------------------------------------------------- extraction
def _resolve(dataset: Dataset, modality: str, encoder: Encoder | str | None) -> Encoder:
    if modality not in dataset.modalities:
        raise DatasetError(f"dataset {dataset.name}: no modality {modality!r}; it has {sorted(dataset.modalities)}")
    kind = dataset.modalities[modality]
    enc = encoder if isinstance(encoder, Encoder) else build_encoder(kind, encoder)
    if enc.kind != kind:
        raise ValueError(f"encoder {enc.name!r} is a {enc.kind} encoder but modality {modality!r} is {kind}")
    if enc.needs_fit and not enc.is_fitted:  # the tabular encoder: statistics of the training split only
        enc.fit_dataset(dataset, modality)
    return enc


def load_cached(
    dataset: Dataset,
    modality: str,
    encoder: Encoder | str | None = None,
    *,
    split: str,
    cache_dir: str | os.PathLike,
    output: str = "pooled",
    device: str | None = None,
) -> FeatureSet | None:
    """The cached features if a sound cache entry exists, else ``None``; never computes, never
    waits (an entry another process is writing is ``None``)."""
    enc = _resolve(dataset, modality, encoder)
    path = cache_path(dataset, enc, split, output, cache_dir, modality=modality, device=device)
    ids = [s.id for s in dataset.split(split)]
    if (fs := _try_cached(path, ids, repair=False)) is not None or not path.exists() and not _sidecar(path).exists():
        return fs
    try:  # something unusable is there: remove it (with a warning) unless another process is writing it
        with file_lock(_lock_path(path), f"feature cache entry {path.name}", wait=False):
            return _try_cached(path, ids)
    except LockBusy:
        return None


def extract_features(
    dataset: Dataset,
    modality: str,
    encoder: Encoder | str | None = None,
    *,
    split: str,
    cache_dir: str | os.PathLike,
    output: str = "pooled",
    also: tuple[str, ...] | list[str] = (),
    batch_size: int | None = None,
    num_workers: int | None = None,
    chunk_size: int = 256,
    on_error: str = "raise",
    progress: bool = True,
    device: str | None = None,
) -> FeatureSet:
    """Features of ``dataset``'s ``split`` for ``modality``, from the cache or computed into it.

    ``encoder``: an :class:`Encoder`, a registry name, or None for the kind's default.
    ``output``: ``"pooled"`` (N, D) or ``"grid"`` (N, L, D) (+ ``mask`` when positions are padding).
    ``also``: further outputs computed in the **same** pass of the encoder where they are not
    cached yet (every ``forward`` gives both the pooled vector and the grid), each into its own
    cache entry exactly as a pass of its own writes it; a later call reads them from the cache.
    02 asks for the image grids the tasks read this way (one EfficientNet pass, not two). A file
    that several records name (a pair dataset's images, VQA's image of each question) is decoded
    and encoded once in a pass, and each record gets its row (or its skip).
    ``batch_size`` / ``num_workers`` / memory format default to the encoder's measured per-device
    settings (``encoder.perf``; see benchmarks/README.md). ``device``: default CUDA when available
    (bf16 autocast there), else CPU. See the module docstring for the cache's guarantees."""
    outputs = list(dict.fromkeys([output, *also]))
    for o in outputs:
        if o not in OUTPUTS:
            raise ValueError(f"output={o!r}; expected one of {OUTPUTS}")
    check_on_error(on_error)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected >= 1")
    enc = _resolve(dataset, modality, encoder)
    dev = encoding.resolve_device(device)
    ids = [s.id for s in dataset.split(split)]
    paths = {o: cache_path(dataset, enc, split, o, cache_dir, modality=modality, device=dev) for o in outputs}

    found = {o: fs for o in outputs if (fs := _try_cached(paths[o], ids, repair=False)) is not None}  # warm: no lock
    missing = [o for o in outputs if o not in found]
    if missing:
        with contextlib.ExitStack() as locks:
            for o in sorted(missing):  # one order for every process: no two wait on each other
                rel = paths[o].relative_to(cache_dir).with_suffix("")
                locks.enter_context(file_lock(_lock_path(paths[o]), f"feature cache entry {rel}"))
            # another process may have computed some while this one waited (or removed a bad entry)
            todo = []
            for o in missing:
                if (fs := _try_cached(paths[o], ids)) is not None:
                    found[o] = fs
                else:
                    todo.append(o)
            if todo:
                computed = _compute_entries(
                    dataset, modality, enc, dev, split, {o: paths[o] for o in todo}, ids, cache_dir,
                    batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size, on_error=on_error,
                    progress=progress,
                )  # fmt: skip
                found.update(computed)
    for o in outputs:
        _raise_for_skipped(found[o], on_error)
    return found[output]


def _lock_path(path: Path) -> Path:
    """``{split}-{output}.lock`` next to the entry's ``.safetensors``."""
    return path.with_suffix(".lock")


def _compute_entries(
    dataset: Dataset,
    modality: str,
    enc: Encoder,
    dev: torch.device,
    split: str,
    paths: dict[str, Path],
    ids: list[str],
    cache_dir: str | os.PathLike,
    *,
    batch_size: int | None,
    num_workers: int | None,
    chunk_size: int,
    on_error: str,
    progress: bool,
) -> dict[str, FeatureSet]:
    """Compute the missing chunks of the entries ``paths`` (output -> entry; their locks held) in
    one pass of the encoder, then merge each into its file."""
    samples = dataset.split(split)
    threads, bs, workers, group, channels_last = encoding.settings(enc, dev, batch_size, num_workers)
    parts = {o: p.with_name(f"{split}-{o}.parts") for o, p in paths.items()}
    _clean_stale_tmp(next(iter(paths.values())).parent)  # the outputs' entries share their folder
    for folder in parts.values():
        _clean_stale_tmp(folder)
    n = len(samples)
    chunks = [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    chunk_ids_sha = [hashlib.sha256("\n".join(ids[i] for i in r).encode()).hexdigest() for r in chunks]

    def part_path(output: str, ci: int) -> Path:
        return parts[output] / f"chunk{chunk_size}-{ci:06d}.safetensors"

    def part_ok(output: str, ci: int) -> bool:
        p = part_path(output, ci)
        if not p.is_file():
            return False
        try:
            with safe_open(str(p), framework="pt") as f:
                md = f.metadata() or {}
                f.get_tensor("index")
            return md.get("ids_sha256") == chunk_ids_sha[ci] and md.get("output") == output
        except Exception:  # noqa: BLE001 - unreadable part: recompute it
            return False

    todo = [ci for ci in range(len(chunks)) if not all(part_ok(o, ci) for o in paths)]
    t0 = time.perf_counter()
    if todo:
        tune_allocator()  # no page faults per batch (fusionkit.runtime; ~1.6x faster forward on 2 CPU cores)
        with cpu_threads(threads):  # the cores this process may use (fusionkit.runtime.work_threads)
            _compute_chunks(
                enc, samples, modality, dataset, chunks, todo, part_path, chunk_ids_sha,
                outputs=list(paths), device=dev, batch_size=bs, decode_group=group, num_workers=workers,
                channels_last=channels_last,
                on_error=on_error, progress=progress, desc=f"{modality} {split} {enc.name}",
            )  # fmt: skip
    settings = {
        "batch_size": bs,
        "num_workers": workers,
        "decode_group": group,
        "chunk_size": chunk_size,
        "threads": threads,
        "allocator_tuned": allocator_tuned(),
    }
    timing: dict[str, Any] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "records_computed": sum(len(chunks[c]) for c in todo),
    }
    if len(paths) > 1:
        timing["outputs_of_the_pass"] = sorted(paths)  # one pass wrote them all: its seconds are shared
    out = {}
    for o, path in paths.items():
        files = [part_path(o, ci) for ci in range(len(chunks))]
        out[o] = _merge_entry(dataset, modality, enc, dev, split, o, path, ids, cache_dir, samples, files,
                              settings, timing)  # fmt: skip
        with contextlib.suppress(OSError):
            parts[o].rmdir()
    return out  # (extract_features raises for records skipped by a resumed "skip" run)


def _merge_entry(
    dataset: Dataset,
    modality: str,
    enc: Encoder,
    dev: torch.device,
    split: str,
    output: str,
    path: Path,
    ids: list[str],
    cache_dir: str | os.PathLike,
    samples,
    part_files: list[Path],
    settings: dict[str, Any],
    timing: dict[str, Any],
) -> FeatureSet:
    """Merge an entry's chunk files (in manifest order) into its final file, sidecar last."""
    vals, masks, kept, skipped, truncated = [], [], [], {}, []
    for part in part_files:
        with safe_open(str(part), framework="pt") as f:
            md = f.metadata() or {}
            index = f.get_tensor("index").tolist()
            vals.append(f.get_tensor("values"))
            masks.append(f.get_tensor("mask") if "mask" in f.keys() else None)
        kept.extend(ids[i] for i in index)
        skipped.update(json.loads(md.get("skipped", "{}")))
        truncated.extend(json.loads(md.get("truncated", "[]")))
    dim = enc.dims[output]
    if output == "grid" and any(m is not None for m in masks):
        length = max([v.shape[1] for v in vals if v.numel()] or [0])
        vals = [_pad_to(v, length) if v.numel() else v.new_zeros(0, length, dim) for v in vals]
        masks = [
            _pad_to(m, length) if m is not None and m.numel() else torch.zeros(0, length, dtype=torch.long)
            for m in masks
        ]
    nonempty = [v for v in vals if v.shape[0]]
    if nonempty:
        values = torch.cat(nonempty)
    else:
        values = torch.zeros((0, dim) if output == "pooled" else (0, 0, dim))
    tensors = {"values": values}
    if output == "grid" and any(m is not None for m in masks):
        nm = [m for m in masks if m is not None and m.shape[0]]
        tensors["mask"] = torch.cat(nm) if nm else torch.zeros(0, values.shape[1], dtype=torch.long)
    _atomic_save(tensors, path, metadata={"format": str(CACHE_FORMAT)})
    meta = {
        "format": CACHE_FORMAT,
        "dataset": {"name": dataset.name, "manifest_hash": dataset.manifest_hash(), "root": str(dataset.root)},
        "modality": modality,
        "split": split,
        "output": output,
        "encoder": enc.identity(),
        "encoder_key": path.parent.name,
        "device": str(dev),
        "precision": _precision(dev),
        "dtype": str(values.dtype).replace("torch.", ""),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "ids": kept,
        "skipped": skipped,
        "truncated": sorted(set(truncated)),
        "n_truncated": len(set(truncated)),
        "settings": settings,
        "timing": timing,
        "versions": _versions(),
        **({"fitted": enc.fitted()} if enc.fitted() is not None else {}),
        **({"notes": notes} if (notes := enc.split_notes([s.modalities[modality] for s in samples])) else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "file_size": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    unknown = (meta.get("notes") or {}).get("unknown_categories") or {}
    if unknown:
        warnings.warn(f"{path.with_suffix('')}: categories the training split lacks, encoded as unknown - records per "
                      f"column: {unknown}", RuntimeWarning, stacklevel=5)  # fmt: skip
    if enc.fitted() is not None:  # what the encoder learnt from the training split, beside its features
        atomic_write_text(path.parent / FITTED, json.dumps(enc.fitted(), indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(_sidecar(path), json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    _write_skipped(path.parent / "skipped.json", split, skipped)
    _log_extraction(Path(cache_dir), path, meta)
    for part in part_files:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return read_feature_set(path, verify=False)


def _media_root(dataset: Dataset) -> Path:
    """Where the dataset's files live (``media_root`` for datasets indexed in place)."""
    return Path(getattr(dataset, "media_root", None) or dataset.root)


def _write_skipped(path: Path, split: str, skipped: dict[str, Any]) -> None:
    """Update ``split``'s part of the encoder folder's ``skipped.json``, which the folder's other
    entries share: read, change and replace it under its own lock, so no update is lost."""
    with file_lock(path.with_name(path.name + ".lock"), f"{path}"):
        _update_skipped(path, split, skipped)


def _update_skipped(path: Path, split: str, skipped: dict[str, Any]) -> None:
    data: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
            data = json.loads(path.read_text(encoding="utf-8"))
    if skipped:
        data[split] = skipped
    else:
        data.pop(split, None)
    if data:
        atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    elif path.is_file():
        path.unlink()


EXTRACTIONS = "extractions.jsonl"


def _log_extraction(cache_dir: Path, path: Path, meta: dict[str, Any]) -> None:
    """One line in ``{cache_dir}/extractions.jsonl`` per entry computed (appended under its lock)."""
    try:
        key = path.relative_to(cache_dir).with_suffix("").as_posix()
    except ValueError:
        key = str(path.with_suffix(""))
    line = json.dumps({
        "entry": key,
        "records_computed": meta["timing"]["records_computed"],
        "seconds": meta["timing"]["seconds"],
        "threads": meta["settings"]["threads"],
        "host": platform.node(),
        "pid": os.getpid(),
        "time": meta["created"],
    }, ensure_ascii=False) + "\n"  # fmt: skip
    log = cache_dir / EXTRACTIONS
    with file_lock(log.with_name(log.name + ".lock"), str(log)):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def extractions(cache_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``{cache_dir}/extractions.jsonl``: one per entry computed, oldest first."""
    log = Path(cache_dir) / EXTRACTIONS
    return [rec for _, rec in read_jsonl(log)] if log.is_file() else []


def _compute_chunks(
    enc: Encoder,
    samples,
    modality: str,
    dataset: Dataset,
    chunks: list[range],
    todo: list[int],
    part_path,
    chunk_ids_sha: list[str],
    *,
    outputs: list[str],
    device: torch.device,
    batch_size: int,
    decode_group: int,
    num_workers: int,
    channels_last: bool,
    on_error: str,
    progress: bool,
    desc: str,
) -> None:
    """Encode the records of chunks ``todo`` once, writing each output's chunk files
    (``part_path(output, chunk)``) as soon as a chunk is complete."""
    kind = dataset.modalities[modality]
    if num_workers:
        enc.before_workers()  # e.g. import heavy libraries once, so forked workers inherit them
    values = [s.modalities[modality] for s in samples]
    ids = [s.id for s in samples]
    # a file that several records name (a pair dataset's images, a VQA set's image per question)
    # is decoded and encoded once; each of them gets its row (texts: each its own, as before)
    order = [i for c in todo for i in chunks[c]]
    same = encoding.shared_inputs(values, order) if kind not in INLINE_KINDS else {i: [i] for i in order}
    batches = encoding.batch_indices(enc, values, [[i for i in chunks[c] if i in same] for c in todo], decode_group)
    loader = encoding.loader(enc, values, _media_root(dataset), kind, batches, batch_size, num_workers, device)
    chunk_of = {i: ci for ci in todo for i in chunks[ci]}
    left = {ci: len(chunks[ci]) for ci in todo}
    rows: dict[str, dict[int, dict[int, tuple[torch.Tensor, torch.Tensor | None]]]] = {
        o: {ci: {} for ci in todo} for o in outputs
    }
    skipped: dict[int, dict[str, dict[str, str]]] = {ci: {} for ci in todo}
    truncated: dict[int, list[str]] = {ci: [] for ci in todo}

    total = sum(len(chunks[c]) for c in todo)
    bar = progress_bar(total=total, enabled=progress, desc=desc, unit=enc.unit, smoothing=0.1)

    def _done(i: int) -> None:  # record i is computed or skipped; its chunk is written when complete
        ci = chunk_of[i]
        left[ci] -= 1
        if left[ci] == 0:
            for o in outputs:
                _write_part(part_path(o, ci), rows[o].pop(ci), skipped[ci], truncated[ci], chunk_ids_sha[ci], o)

    try:
        with encoding.inference(enc, device, channels_last) as runner:
            for subs, bad in loader:
                for i, (reason, file) in bad:
                    if on_error == "raise":
                        raise InputError(reason, file, ids[i])
                    for d in same[i]:
                        skipped[chunk_of[d]][ids[d]] = {"file": file, "reason": reason}
                for i, _ in bad:
                    for d in same[i]:
                        _done(d)
                    bar.update(len(same[i]))
                for ok, batch in subs:
                    info = enc.batch_info(batch)
                    out = runner(enc.batch_to(batch, device, non_blocking=True))
                    for o in outputs:
                        v = out[o].float().cpu()
                        m = out.get("grid_mask") if o == "grid" else None
                        m = m.cpu() if m is not None else None
                        for j, i in enumerate(ok):
                            for d in same[i]:
                                rows[o][chunk_of[d]][d] = (v[j], None if m is None else m[j])
                    flags = info.get("truncated")
                    for j, i in enumerate(ok):
                        if flags is not None and bool(flags[j]):
                            for d in same[i]:
                                truncated[chunk_of[d]].append(ids[d])
                    for i in ok:
                        for d in same[i]:
                            _done(d)
                        bar.update(len(same[i]))
    finally:
        bar.close()


def _write_part(
    path: Path, rows: dict[int, tuple[torch.Tensor, torch.Tensor | None]], skipped, truncated, ids_sha, output
) -> None:
    order = sorted(rows)
    tensors: dict[str, torch.Tensor] = {"index": torch.tensor(order, dtype=torch.int64)}
    if order:
        vs = [rows[i][0] for i in order]
        ms = [rows[i][1] for i in order]
        if vs[0].dim() == 2:  # grid: pad the token / frame axis to the chunk's longest
            length = max(v.shape[0] for v in vs)
            vs = [_pad_to(v, length, dim=0) for v in vs]
            if ms[0] is not None:
                ms = [_pad_to(m, length, dim=0) for m in ms]
        tensors["values"] = torch.stack(vs)
        if ms[0] is not None:
            tensors["mask"] = torch.stack(ms).long()
    else:
        tensors["values"] = torch.zeros(0)
    md = {
        "ids_sha256": ids_sha,
        "output": output,
        "skipped": json.dumps(skipped, ensure_ascii=False),
        "truncated": json.dumps(truncated, ensure_ascii=False),
    }
    _atomic_save(tensors, path, metadata=md)
