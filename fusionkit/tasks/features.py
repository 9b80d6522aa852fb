"""What the tasks cache, and how they read it back.

::

    # 02_feature_extraction, after FeatureIndex.build(...)
    extract_task_features(ds, features_index, tasks, cache_dir)          # adds the index's "tasks" entry

Features (:func:`extract_task_features`)
    Everything goes through the feature cache (``fusionkit.features.extract_features``) on small
    *derived* fusionkit datasets written under ``{cache_dir}/tasks/{dataset}-{manifest hash}/``:

    ``images``     one sample per image of ``captions.json`` (and of the VQA files), the image path
                   relative to the dataset's ``media_root``, id = the file stem (what
                   :class:`~fusionkit.tasks.captioning.CaptionDataset` and
                   :class:`~fusionkit.tasks.vqa.VQATable` call the image). When the dataset itself is
                   already one sample per image with those ids (the shapes dataset), it is used as is,
                   so whatever ``FeatureIndex.build`` cached for it is reused.
    ``captions``   one sample per *distinct* reference caption (after CaptionDataset's whitespace
                   clean-up), id = :func:`text_key` of the text; a caption's features are found by its
                   text, so the rows of ``CaptionDataset.pairs(split)`` map to feature rows by
                   ``text_key(caption)`` (:func:`caption_features` does it).
    ``questions``  one sample per distinct VQA question text, keyed the same way (the 6,000 shapes
                   questions are 383 distinct texts: 16x fewer forward passes); sentence vectors.

    The image encoder gives ``grid`` (regions, for captioning and VQA) and the pooled vector; for
    CNN encoders the pooled vector *is* the mean of the grid (``forward`` does exactly that), so it
    is taken from the grid instead of a second forward pass (``pooled_from: "grid-mean"`` in the
    index); other encoders (ViT: CLS token) get their own ``pooled`` extraction. Texts get
    ``pooled`` (sentence vectors). A second run is a
    cache hit everywhere: no forward pass.

    The result is written into the feature index (the same JSON file ``FeatureIndex.build`` wrote,
    atomically rewritten) under ``"tasks"``: per task ``status`` ("ok" / "skipped") with the reason
    when skipped (no ``captions.json`` -> no captioning/retrieval; no ``vqa/`` -> no VQA), the
    source files, the encoders, and the cached files per split.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusionkit.data.base import SPLITS, Dataset, Sample, dataset_lock, load_dataset, write_dataset
from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.problems import Problems, as_task_error, check_on_error
from fusionkit.data.vqa import processed_vqa_files, read_vqa_file, vqa_questions
from fusionkit.encoders import build_encoder
from fusionkit.encoders.base import Encoder
from fusionkit.encoders.image import ImageEncoder
from fusionkit.features import extract_features, read_feature_set
from fusionkit.index import FeatureIndex
from fusionkit.tasks.captioning import CaptionDataset
from fusionkit.tasks.common import TaskSetupError
from fusionkit.tasks.vqa import load_vqa

Tensor = torch.Tensor


TASKS = ("captioning", "vqa", "retrieval")


INDEX_VERSION = 1


def text_key(text: str) -> str:
    """The feature id of a text in the derived ``captions`` / ``questions`` datasets."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def check_tasks(tasks: Iterable[str] | str | None) -> list[str]:
    if tasks is None or tasks == "all":
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = [tasks]
    out = []
    for t in tasks:
        if t == "all":
            return list(TASKS)
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected some of {TASKS} (or 'all')")
        if t not in out:
            out.append(t)
    return out


def _pooled_is_grid_mean(enc) -> bool:
    """True for encoders whose ``pooled`` output is exactly the mean of their ``grid`` (CNNs:
    ``ImageEncoder.forward``); the ViT's pooled vector is its CLS token."""

    if not isinstance(enc, ImageEncoder):
        return False
    own_forward = type(enc).forward
    if own_forward is ImageEncoder.forward:
        return True
    return getattr(enc, "name", "") not in ("vit_b_16",) and type(enc).__name__ == "TorchvisionImage"


@dataclass
class _ImageRef:
    key: str  # feature id (file stem)
    split: str
    path: str  # relative to media_root


def _image_refs_from_captions(caps, media_root: Path) -> dict[str, _ImageRef]:
    out = {}
    for iid in caps.ids():
        out[iid] = _ImageRef(iid, caps.splits[iid], caps.files[iid])
    return out


def _vqa_image_map(root: Path, ds: Dataset, vqa_files) -> tuple[dict[Any, str], dict[str, _ImageRef]]:
    """VQA image_id -> image key, and the images' references. Through ``captions.json`` when the
    dataset has one (shapes), else through the manifest's ``q{question_id}`` samples (the ``vqa``
    registry loader)."""
    cap = root / "captions.json"
    if cap.is_file():
        keys, refs = {}, {}
        with as_task_error():  # a bad record: TaskInputError naming the file and the record
            for im in karpathy_images(cap, Problems("raise")):
                keys.update(dict.fromkeys(im.ids.values(), im.stem))
                refs[im.stem] = _ImageRef(im.stem, "train" if im.split == "restval" else im.split, im.ref)
        return keys, refs
    img_mod = next((m for m, k in ds.modalities.items() if k == "image"), None)
    if img_mod is None:
        raise TaskSetupError(f"{root}: VQA needs images, but the dataset has no image modality and no captions.json")
    by_id = {s.id: s for s in ds.samples}
    keys: dict[Any, str] = {}
    refs: dict[str, _ImageRef] = {}
    for sp in SPLITS:
        qf = read_vqa_file(vqa_files["questions"][sp], "questions")
        for q in vqa_questions(qf, Problems("skip")) if qf is not None else ():
            s = by_id.get(f"q{q.question_id}")
            if s is None:
                continue
            path = s.modalities[img_mod]
            stem = Path(path).stem
            prev = refs.get(stem)
            if prev is not None and prev.path != path:
                raise TaskSetupError(f"{root}: two image files share the stem {stem!r}: {prev.path} and {path}")
            refs[stem] = _ImageRef(stem, s.split, path)
            keys[q.image_id] = stem
    return keys, refs


def _derived(
    base: Path, kind: str, name: str, modalities: dict[str, str], samples: list[Sample], media_root: Path | None, info
) -> Dataset:
    """Write (or keep) a derived dataset folder and return it."""
    root = base / kind
    man = root / "manifest.jsonl"
    lines = []
    for s in samples:
        row: dict[str, Any] = {"id": s.id, "split": s.split}
        row.update(s.modalities)
        lines.append(json.dumps(row, ensure_ascii=False))
    want = "\n".join(lines) + "\n"
    with dataset_lock(root):  # two chains sharing the cache: one writes, the other finds it written
        if not _derived_current(root, man, want, name, modalities, media_root):
            write_dataset(root, name, modalities, {}, samples, info, media_root=media_root)
    return Dataset(name=name, root=root, modalities=modalities, targets={}, samples=samples, info=info,
                   media_root=media_root)  # fmt: skip


def _derived_current(
    root: Path, man: Path, want: str, name: str, modalities: dict[str, str], media_root: Path | None
) -> bool:
    """Whether the derived dataset at ``root`` already holds exactly this manifest and metadata."""
    if not (man.is_file() and (root / "dataset.json").is_file()):
        return False
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        meta_ok = (
            meta.get("name") == name
            and meta.get("modalities") == modalities
            and (
                str(Path(meta["media_root"]).resolve()) == str(media_root.resolve())
                if media_root is not None
                else "media_root" not in meta
            )
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError):
        return False
    return meta_ok and man.read_text(encoding="utf-8") == want


def _extract(ds: Dataset, modality: str, enc, output: str, cache_dir, progress: bool, batch_size: int | None):

    files: dict[str, str] = {}
    dims = None
    for sp in SPLITS:
        if not ds.split(sp):
            continue
        fs = extract_features(
            ds, modality, enc, split=sp, cache_dir=cache_dir, output=output, progress=progress, batch_size=batch_size
        )
        files[sp] = str(Path(fs.path).resolve())
        dims = list(fs.values.shape[1:])
    return files, dims


def _text_dataset(base: Path, kind: str, name: str, texts_by_split: Mapping[str, Sequence[str]]) -> Dataset:
    """One sample per distinct text (first split it occurs in), id = text_key(text)."""
    seen: dict[str, str] = {}
    samples = []
    for sp in SPLITS:
        for t in texts_by_split.get(sp, ()):
            k = text_key(t)
            if k in seen:
                if seen[k] != t:  # pragma: no cover - a 80-bit hash collision
                    raise TaskSetupError(f"text_key collision between {seen[k]!r} and {t!r}")
                continue
            seen[k] = t
            samples.append(Sample(k, sp, {"text": t}))
    return _derived(base, kind, name, {"text": "text"}, samples, None, {"derived": kind})


def shared_outputs(ds: Dataset, tasks: Iterable[str] | str | None) -> dict[str, list[str]]:
    """What :meth:`fusionkit.index.FeatureIndex.build` should compute beside its own outputs for
    ``tasks`` (its ``also``): the image grids, when captioning or VQA will read ``ds``'s own image
    features - one image modality, one sample per image file (the shapes scenes; a dataset of
    image-caption pairs repeats its images and the tasks encode a dataset of the images instead).
    The grid then comes from the same pass of the image encoder as the pooled vector."""
    wanted = check_tasks(tasks)
    img_mods = [m for m, k in ds.modalities.items() if k == "image"]
    if not ({"captioning", "vqa"} & set(wanted)) or len(img_mods) != 1:
        return {}
    files = [s.modalities.get(img_mods[0]) for s in ds.samples]
    return {"image": ["grid"]} if len(set(files)) == len(files) else {}


def extract_task_features(
    ds: Dataset,
    index_path: str | os.PathLike,
    tasks: Iterable[str] | str | None = TASKS,
    cache_dir: str | os.PathLike | None = None,
    *,
    image_encoder: Any = None,
    text_encoder: Any = None,
    on_error: str = "raise",
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Cache what the tasks need and record it in the feature index (see the module docstring).

    ``ds``: the dataset ``FeatureIndex.build`` indexed (checked against the index's manifest hash).
    ``tasks``: names from :data:`TASKS` (or "all"). ``cache_dir``: default, the index's.
    ``image_encoder`` / ``text_encoder``: an Encoder, a registry name, or None for the encoder the
    index records for the dataset's image / text modality (else the kind's default).
    ``on_error``: "raise" on bad captions / questions, or "skip" them (reports written next to the
    derived datasets and listed in the index). Returns the index's ``"tasks"`` entry."""

    check_on_error(on_error)
    wanted = check_tasks(tasks)
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a fusionkit Dataset (fusionkit.data.load_dataset), got {type(ds).__name__}")
    index_path = Path(index_path)
    index = FeatureIndex.read(index_path).to_dict()
    if index.get("manifest_hash") not in (None, ds.manifest_hash()):
        raise TaskSetupError(
            f"{index_path}: written for dataset {index.get('dataset')!r} at {index.get('dataset_dir')} "
            f"(manifest {index.get('manifest_hash')}), not for {ds.name!r} at {ds.root} "
            f"(manifest {ds.manifest_hash()}); run FeatureIndex.build on this dataset first"
        )
    cache_dir = Path(cache_dir or index.get("cache_dir") or "")
    if not str(cache_dir):
        raise ValueError("cache_dir is required (the index records none)")
    root = Path(ds.root)
    media_root = Path(ds.media_root or root)
    base = cache_dir / "tasks" / f"{ds.name}-{ds.manifest_hash()}"

    def pick(kind: str, given: Any) -> Encoder:
        if isinstance(given, Encoder):
            if given.kind != kind:
                raise ValueError(f"{kind}_encoder: {given.name!r} is a {given.kind} encoder")
            return given
        if given is None:
            given = next((e["encoder"] for e in index.get("modalities", {}).values() if e.get("kind") == kind), None)
        return build_encoder(kind, given)

    status: dict[str, dict[str, Any]] = {t: {"status": "not requested"} for t in TASKS}
    entry: dict[str, Any] = {
        "version": INDEX_VERSION,
        "requested": wanted,
        "status": status,
        "on_error": on_error,
        "dataset_dir": str(root.resolve()),
        "media_root": str(media_root.resolve()),
        "features": {},
        "reports": {},
    }

    # ---- what the dataset supports
    cap_path = root / "captions.json"
    caps = None
    need_caps = [t for t in wanted if t in ("captioning", "retrieval")]
    if need_caps:
        if not cap_path.is_file():
            for t in need_caps:
                status[t] = {"status": "skipped", "reason": f"no caption file: {cap_path} does not exist"}
        else:
            report_path = base / "captions_report.txt"
            caps = CaptionDataset.read_karpathy(cap_path, on_error=on_error, image_root=media_root)
            if on_error == "skip":
                caps.report.write(report_path)
                entry["reports"]["captions"] = str(report_path)
            empty = [sp for sp in SPLITS if not caps.ids(sp)]
            if empty:
                for t in need_caps:
                    status[t] = {"status": "skipped", "reason": f"{cap_path}: no images with captions in {empty}"}
                caps = None
            else:
                entry["captions_file"] = str(cap_path.resolve())
                for t in need_caps:
                    status[t] = {"status": "ok"}
    vqa_files = None
    tables = {}
    vqa_refs: dict[str, _ImageRef] = {}
    if "vqa" in wanted:
        vqa_files, why = processed_vqa_files(root)
        if vqa_files is None:
            status["vqa"] = {"status": "skipped", "reason": why}
        else:
            keys, vqa_refs = _vqa_image_map(root, ds, vqa_files)
            for sp in SPLITS:
                rp = base / f"vqa_{sp}_report.txt"
                tables[sp] = load_vqa(
                    vqa_files["questions"][sp], vqa_files["annotations"][sp], image_key=keys, on_error=on_error
                )
                if on_error == "skip":
                    tables[sp].report.write(rp)
                    entry["reports"][f"vqa_{sp}"] = str(rp)
            entry["vqa_files"] = {k: {sp: str(p.resolve()) for sp, p in v.items()} for k, v in vqa_files.items()}
            entry["vqa_image_map"] = "captions.json" if cap_path.is_file() else "manifest"
            status["vqa"] = {"status": "ok"}

    active = [t for t in wanted if status[t]["status"] == "ok"]
    if active:
        img_enc = pick("image", image_encoder)
        entry["image_encoder"] = {"name": img_enc.name, "identity": img_enc.identity(), "build": build_spec(img_enc)}
        # ---- images
        refs: dict[str, _ImageRef] = {}
        if caps is not None:
            refs.update(_image_refs_from_captions(caps, media_root))
        for k, r in vqa_refs.items():
            if k in refs and refs[k].path != r.path:
                raise TaskSetupError(f"image {k!r}: two files ({refs[k].path}, {r.path})")
            if "vqa" in active:
                refs.setdefault(k, r)
        if "vqa" in active:
            used = {rec.image_key for t in tables.values() for rec in t.records}
            missing = sorted(used - set(refs))
            if missing:
                raise TaskSetupError(f"{root}: VQA questions name images without a file: {missing[:5]}")
        bad_split = sorted(k for k, r in refs.items() if r.split not in SPLITS)
        if bad_split:
            raise TaskSetupError(f"{root}: images with an unknown split: {bad_split[:5]}")
        img_ds = _images_dataset(ds, refs, base, media_root)
        need_grid = "captioning" in active or "vqa" in active
        img_mod = "image"
        feats: dict[str, Any] = {"dataset_dir": str(Path(img_ds.root).resolve()), "modality": img_mod, "files": {}}
        if img_ds is ds:
            img_mod = next(m for m, k in ds.modalities.items() if k == "image")
            feats["modality"] = img_mod
            feats["dataset_dir"] = str(root.resolve())
        if need_grid:
            files, dims = _extract(img_ds, img_mod, img_enc, "grid", cache_dir, progress, batch_size)
            feats["files"]["grid"] = files
            feats["dims"] = {"grid": dims, "pooled": [dims[-1]]}
            side = int(round(math.sqrt(dims[0])))
            feats["grid_hw"] = [side, side] if side * side == dims[0] else [1, dims[0]]
        if not need_grid or not _pooled_is_grid_mean(img_enc):
            files, dims = _extract(img_ds, img_mod, img_enc, "pooled", cache_dir, progress, batch_size)
            feats["files"]["pooled"] = files
            feats.setdefault("dims", {})["pooled"] = dims
            feats["pooled_from"] = "file"
        else:
            feats["pooled_from"] = "grid-mean"
        entry["features"]["images"] = feats

        # ---- texts
        txt_enc = None
        if caps is not None and ("retrieval" in active):
            txt_enc = pick("text", text_encoder)
            texts = {sp: caps.pairs(sp)[1] for sp in SPLITS}
            cds = _text_dataset(base, "captions", f"{ds.name}-captions", texts)
            files, dims = _extract(cds, "text", txt_enc, "pooled", cache_dir, progress, batch_size)
            entry["features"]["captions"] = {
                "dataset_dir": str(Path(cds.root).resolve()),
                "files": {"pooled": files},
                "dims": {"pooled": dims},
                "n_captions": sum(len(v) for v in texts.values()),
                "n_distinct": len(cds.samples),
            }
        if "vqa" in active:
            txt_enc = txt_enc or pick("text", text_encoder)
            texts = {sp: tables[sp].questions for sp in SPLITS}
            qds = _text_dataset(base, "questions", f"{ds.name}-questions", texts)
            qf: dict[str, Any] = {"dataset_dir": str(Path(qds.root).resolve()), "files": {}, "dims": {}}
            for out in ("pooled",):
                files, dims = _extract(qds, "text", txt_enc, out, cache_dir, progress, batch_size)
                qf["files"][out] = files
                qf["dims"][out] = dims
            qf["n_questions"] = sum(len(v) for v in texts.values())
            qf["n_distinct"] = len(qds.samples)
            entry["features"]["questions"] = qf
        if txt_enc is not None:
            entry["text_encoder"] = {
                "name": txt_enc.name,
                "identity": txt_enc.identity(),
                "build": build_spec(txt_enc),
            }

    fi = FeatureIndex.read(index_path)  # re-read: keep whatever else was added meanwhile
    fi.tasks = entry
    fi.write(index_path)
    return entry


def _images_dataset(ds: Dataset, refs: Mapping[str, _ImageRef], base: Path, media_root: Path) -> Dataset:
    """``ds`` itself when it is one sample per image with exactly these ids, splits and files;
    else a derived dataset of the images."""
    img_mods = [m for m, k in ds.modalities.items() if k == "image"]
    if len(img_mods) == 1 and len(ds.samples) == len(refs):
        m = img_mods[0]
        same = all(
            s.id in refs and refs[s.id].split == s.split and refs[s.id].path == s.modalities[m] for s in ds.samples
        )
        if same:
            return ds
    samples = [Sample(r.key, r.split, {"image": r.path}) for r in sorted(refs.values(), key=lambda r: r.key)]
    return _derived(base, "images", f"{ds.name}-images", {"image": "image"}, samples, media_root, {"derived": "images"})


def read_task_index(index_path: str | os.PathLike) -> dict[str, Any]:
    """The feature index with its ``"tasks"`` entry (error when extract_task_features has not run)."""
    index = FeatureIndex.read(index_path).to_dict()
    entry = index.get("tasks")
    if not isinstance(entry, dict) or entry.get("version") != INDEX_VERSION:
        raise TaskSetupError(
            f"{index_path}: no task features recorded; run extract_task_features(ds, {str(index_path)!r}, tasks, "
            "cache_dir) in 02_feature_extraction first"
        )
    return index


def task_status(index_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{task: {"status": "ok" | "skipped" | "not requested", "reason": ...}}``."""
    return read_task_index(index_path)["tasks"]["status"]


def require_task(index: Mapping[str, Any], task: str, index_path) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    entry = index["tasks"]
    st = entry["status"].get(task, {})
    if st.get("status") != "ok":
        why = st.get("reason") or "it was not requested in extract_task_features(tasks=...)"
        raise TaskSetupError(f"{index_path}: task {task!r} has no features ({st.get('status')}: {why})")
    return entry


def load_rows(files: Mapping[str, str], keys: Sequence[str], what: str) -> tuple[Tensor, Tensor | None]:
    """Rows for ``keys`` gathered from the per-split cache files of a derived dataset."""

    where: dict[str, tuple[int, int]] = {}
    sets = []
    for n, (_, path) in enumerate(sorted(files.items())):
        fs = read_feature_set(path, verify=False)
        sets.append(fs)
        for r, k in enumerate(fs.ids):
            where[k] = (n, r)
    missing = [k for k in keys if k not in where]
    if missing:
        raise TaskSetupError(
            f"{what}: no cached features for {len(missing)} record(s) (e.g. {missing[:3]}); "
            "re-run extract_task_features"
        )
    first = sets[0].values
    out = first.new_empty((len(keys), *first.shape[1:]))
    has_mask = sets[0].mask is not None
    mask = torch.zeros(len(keys), first.shape[1], dtype=torch.long) if has_mask else None
    by_file: dict[int, tuple[list[int], list[int]]] = {}
    for i, k in enumerate(keys):
        n, r = where[k]
        by_file.setdefault(n, ([], []))
        by_file[n][0].append(i)
        by_file[n][1].append(r)
    for n, (dst, src) in by_file.items():
        v = sets[n].values[src]
        if v.dim() == 3 and v.shape[1] != out.shape[1]:  # token grids padded per file
            length = max(v.shape[1], out.shape[1])
            if length > out.shape[1]:
                out = torch.cat([out, out.new_zeros(out.shape[0], length - out.shape[1], out.shape[2])], 1)
                if mask is not None:
                    mask = torch.cat([mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])], 1)
            v = (
                torch.cat([v, v.new_zeros(v.shape[0], length - v.shape[1], v.shape[2])], 1)
                if v.shape[1] < length
                else v
            )
        out[torch.as_tensor(dst)] = v.float()
        if mask is not None and sets[n].mask is not None:
            m = sets[n].mask[src]
            mask[torch.as_tensor(dst), : m.shape[1]] = m.long()
    return out, mask


def image_features(index: Mapping[str, Any], keys: Sequence[str]) -> tuple[Tensor | None, Tensor]:
    """(grid ``(N, L, D)`` or None, pooled ``(N, D)``) for image ``keys``."""
    feats = index["tasks"]["features"]["images"]
    grid = None
    if "grid" in feats["files"]:
        grid, _ = load_rows(feats["files"]["grid"], keys, "image grid features")
    if feats.get("pooled_from") == "grid-mean":
        pooled = grid.mean(dim=1)
    else:
        pooled, _ = load_rows(feats["files"]["pooled"], keys, "image pooled features")
    return grid, pooled


@dataclass
class CaptionData:
    caps: Any  # CaptionDataset
    ids: dict[str, list[str]]  # image ids per split
    grid: dict[str, Tensor | None]
    pooled: dict[str, Tensor]
    media_root: Path


def caption_data(index: Mapping[str, Any], index_path, need_grid: bool = True) -> CaptionData:

    entry = index["tasks"]
    cap_file = Path(entry["captions_file"])
    media_root = Path(entry["media_root"])
    caps = CaptionDataset.read_karpathy(cap_file, on_error=entry.get("on_error", "raise"), image_root=media_root)
    ids = {sp: caps.ids(sp) for sp in SPLITS}
    feats = entry["features"]["images"]
    if need_grid and "grid" not in feats["files"]:
        raise TaskSetupError(f"{index_path}: no image grid features (extract_task_features with captioning)")
    grid, pooled = {}, {}
    for sp in SPLITS:
        if need_grid:
            grid[sp], pooled[sp] = image_features(index, ids[sp])
        else:
            if feats.get("pooled_from") == "grid-mean":
                g, _ = load_rows(feats["files"]["grid"], ids[sp], "image grid features")
                pooled[sp] = g.mean(1)
                del g
            else:
                pooled[sp], _ = load_rows(feats["files"]["pooled"], ids[sp], "image pooled features")
            grid[sp] = None
    return CaptionData(caps, ids, grid, pooled, media_root)


def caption_features(index_path: str | os.PathLike, split: str) -> tuple[Any, Tensor]:
    """(CaptionDataset, caption features ``(M, D)`` in the order of ``CaptionDataset.pairs(split)``)."""

    index = read_task_index(index_path)
    entry = require_task(index, "retrieval", index_path)
    caps = CaptionDataset.read_karpathy(
        Path(entry["captions_file"]), on_error=entry.get("on_error", "raise"), image_root=Path(entry["media_root"])
    )
    _, texts, _ = caps.pairs(split)
    rows, _ = load_rows(entry["features"]["captions"]["files"]["pooled"], [text_key(t) for t in texts], "captions")
    return caps, rows


def vqa_tables(index: Mapping[str, Any], index_path) -> dict[str, Any]:

    entry = index["tasks"]
    files = {k: {sp: Path(p) for sp, p in v.items()} for k, v in entry["vqa_files"].items()}
    root = Path(entry["dataset_dir"])
    ds = load_dataset(root, check_files=False) if entry.get("vqa_image_map") == "manifest" else None
    keys, _ = _vqa_image_map(root, ds, files)
    return {
        sp: load_vqa(
            files["questions"][sp], files["annotations"][sp], image_key=keys, on_error=entry.get("on_error", "raise")
        )
        for sp in SPLITS
    }


def build_spec(enc) -> dict[str, Any] | None:
    """``build_encoder``'s arguments of ``enc`` when they can be written to JSON (else None)."""
    spec = getattr(enc, "build_spec", None)
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        return None
    return spec


def task_encoder(index: Mapping[str, Any], kind: str, index_path):
    """Rebuild the image / text encoder that made the task's features (checked by identity)."""

    rec = index["tasks"].get(f"{kind}_encoder")
    if not rec:
        raise TaskSetupError(f"{index_path}: the task features record no {kind} encoder")
    spec = rec.get("build") or {"name": rec["name"], "kwargs": {}}
    enc = build_encoder(kind, spec["name"], **spec["kwargs"])
    if not enc.matches(rec["identity"]):
        raise TaskSetupError(
            f"{index_path}: {kind} encoder {rec['name']!r} here differs from the one that made the cached "
            "features (weights or preprocessing); re-extract the task features"
        )
    return enc


def split_images(index: Mapping[str, Any], ids: Sequence[str]) -> list[str]:

    feats = index["tasks"]["features"]["images"]
    ds = load_dataset(feats["dataset_dir"], check_files=False)
    mod = feats.get("modality", "image")
    paths = {s.id: str(ds.path(s, mod)) for s in ds.samples}
    missing = [i for i in ids if i not in paths]
    if missing:
        raise TaskSetupError(f"{feats['dataset_dir']}: no image for ids {missing[:5]}")
    return [paths[i] for i in ids]


def image_paths(index, table) -> dict[str, str]:
    """Image key -> absolute image path for the records of a VQA table (from the derived images
    dataset or the dataset itself)."""

    feats = index["tasks"]["features"]["images"]
    ds = load_dataset(feats["dataset_dir"], check_files=False)
    mod = feats.get("modality", "image")
    keys = {r.image_key for r in table.records}
    return {s.id: str(ds.path(s, mod)) for s in ds.samples if s.id in keys}
