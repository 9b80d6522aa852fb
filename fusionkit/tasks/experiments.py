"""The three tasks end to end, as the notebooks call them: features (02), training (04), evaluation (05).

::

    # 02_feature_extraction, after FeatureIndex.build(...)
    extract_task_features(ds, features_index, tasks, cache_dir)          # adds index["tasks"]
    # 04_train
    summary = train_task("captioning", features_index, task_dir, seed=seed)
    # 05_evaluate
    res = evaluate_task("captioning", features_index, task_dir, n_examples=8)
    res.metrics, res.tables["samples"], res.figures["attention"], res.summary

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

Training (:func:`train_task`) and evaluation (:func:`evaluate_task`)
    ``out_dir/<task>/``: ``*.safetensors`` weights + a ``.json`` each (what rebuilds the model,
    the training history, the hyper-parameters) and ``summary.json``. Early stopping on the task's
    validation metric (CIDEr-D of greedy captions; VQA accuracy of the top answer; RSUM), best state
    restored before saving. ``evaluate_task`` loads the checkpoints and scores the *test* split:

    captioning  Transformer and Show-Attend-Tell decoders, greedy and beam, plus the nearest-neighbour
                baseline: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, PTB tokenised); a table of
                test images (path, captions, references, per-image scores); attention maps.
    vqa         every trained fusion method: VQA accuracy overall, per answer type and per question type.
    retrieval   dual encoder vs ridge map: R@1/5/10 both directions, medr, meanr, RSUM; the fusion
                matcher's re-ranking of the dual encoder's top-k (before / after).

Transfer learning (``finetune_image_blocks`` / ``finetune_text_blocks`` > 0, every task)
    After the model trained on frozen features, a copy of it is fine-tuned together with the last
    blocks of the encoder(s) that made the features (rebuilt from the index, checked by identity),
    on augmented training images (:mod:`fusionkit.tasks.transfer`), early-stopped on the same
    validation metric. The copy, the encoders' trained blocks and the fine-tuned test features are
    saved next to the frozen model (``<model>_finetuned*``); ``evaluate_task`` reports both. A
    training run without fine-tuning removes them, so evaluation never reports a stale model.
    Captioning fine-tunes the image encoder only (its decoder reads word pieces, not the text
    encoder); VQA the image encoder and / or the question encoder; retrieval either or both.

Progress bars honour ``FUSIONKIT_NO_PROGRESS`` (``fusionkit.progress``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from fusionkit import bundle
from fusionkit.data.base import SPLITS, Dataset, Sample, atomic_write_text, write_dataset
from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.problems import Problems, TaskInputError, as_task_error, check_on_error
from fusionkit.data.vqa import processed_vqa_files, read_vqa_file, vqa_questions
from fusionkit.index import FeatureIndex
from fusionkit.progress import progress_enabled
from fusionkit.runtime import tune_allocator
from fusionkit.tasks.transfer import FinetuneConfig as _FinetuneConfig
from fusionkit.training import Step, TrainResult, fit, seed_everything, warmup_cosine

Tensor = torch.Tensor

__all__ = [
    "TASKS",
    "TaskResult",
    "caption_features",
    "evaluate_task",
    "extract_task_features",
    "read_task_index",
    "task_status",
    "text_key",
    "train_task",
]

TASKS = ("captioning", "vqa", "retrieval")
INDEX_VERSION = 1


class TaskSetupError(TaskInputError):
    """A task cannot run on this index / dataset / checkpoint folder; the message says why and what to do."""


# ================================================================================ small helpers
def text_key(text: str) -> str:
    """The feature id of a text in the derived ``captions`` / ``questions`` datasets."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def _check_tasks(tasks: Iterable[str] | str | None) -> list[str]:
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


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise TaskSetupError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaskSetupError(f"{path}: not valid UTF-8 JSON ({e})") from e


def _write_json(path: Path, obj: Any) -> Path:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default) + "\n")
    return path


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _show(progress: bool) -> bool:
    return bool(progress) and progress_enabled()


def _encoder_identity_matches(enc, recorded: Mapping[str, Any]) -> bool:
    a = json.dumps(enc.identity(), sort_keys=True, default=str)
    b = json.dumps(recorded, sort_keys=True, default=str)
    return a == b


def _pooled_is_grid_mean(enc) -> bool:
    """True for encoders whose ``pooled`` output is exactly the mean of their ``grid`` (CNNs:
    ``ImageEncoder.forward``); the ViT's pooled vector is its CLS token."""
    from fusionkit.encoders.image import ImageEncoder

    if not isinstance(enc, ImageEncoder):
        return False
    own_forward = type(enc).forward
    if own_forward is ImageEncoder.forward:
        return True
    return getattr(enc, "name", "") not in ("vit_b_16",) and type(enc).__name__ == "TorchvisionImage"


# ================================================================================ sources
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


# ================================================================================ derived datasets
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
    meta_ok = False
    if man.is_file() and (root / "dataset.json").is_file():
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
            meta_ok = False
    if not (meta_ok and man.read_text(encoding="utf-8") == want):
        write_dataset(root, name, modalities, {}, samples, info, media_root=media_root)
    return Dataset(name=name, root=root, modalities=modalities, targets={}, samples=samples, info=info,
                   media_root=media_root)  # fmt: skip


def _extract(ds: Dataset, modality: str, enc, output: str, cache_dir, progress: bool, batch_size: int | None):
    from fusionkit.features import extract_features

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


# ================================================================================ extraction
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
    from fusionkit.encoders import build_encoder
    from fusionkit.encoders.base import Encoder
    from fusionkit.tasks.captioning import CaptionDataset
    from fusionkit.tasks.vqa import load_vqa

    check_on_error(on_error)
    wanted = _check_tasks(tasks)
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
        entry["image_encoder"] = {"name": img_enc.name, "identity": img_enc.identity(), "build": _build_spec(img_enc)}
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
                "build": _build_spec(txt_enc),
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


# ================================================================================ reading back
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


def _require(index: Mapping[str, Any], task: str, index_path) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    entry = index["tasks"]
    st = entry["status"].get(task, {})
    if st.get("status") != "ok":
        why = st.get("reason") or "it was not requested in extract_task_features(tasks=...)"
        raise TaskSetupError(f"{index_path}: task {task!r} has no features ({st.get('status')}: {why})")
    return entry


def _load_rows(files: Mapping[str, str], keys: Sequence[str], what: str) -> tuple[Tensor, Tensor | None]:
    """Rows for ``keys`` gathered from the per-split cache files of a derived dataset."""
    from fusionkit.features import read_feature_set

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
        grid, _ = _load_rows(feats["files"]["grid"], keys, "image grid features")
    if feats.get("pooled_from") == "grid-mean":
        pooled = grid.mean(dim=1)
    else:
        pooled, _ = _load_rows(feats["files"]["pooled"], keys, "image pooled features")
    return grid, pooled


# ================================================================================ task data
@dataclass
class _CaptionData:
    caps: Any  # CaptionDataset
    ids: dict[str, list[str]]  # image ids per split
    grid: dict[str, Tensor | None]
    pooled: dict[str, Tensor]
    media_root: Path


def _caption_data(index: Mapping[str, Any], index_path, need_grid: bool = True) -> _CaptionData:
    from fusionkit.tasks.captioning import CaptionDataset

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
                g, _ = _load_rows(feats["files"]["grid"], ids[sp], "image grid features")
                pooled[sp] = g.mean(1)
                del g
            else:
                pooled[sp], _ = _load_rows(feats["files"]["pooled"], ids[sp], "image pooled features")
            grid[sp] = None
    return _CaptionData(caps, ids, grid, pooled, media_root)


def caption_features(index_path: str | os.PathLike, split: str) -> tuple[Any, Tensor]:
    """(CaptionDataset, caption features ``(M, D)`` in the order of ``CaptionDataset.pairs(split)``)."""
    from fusionkit.tasks.captioning import CaptionDataset

    index = read_task_index(index_path)
    entry = _require(index, "retrieval", index_path)
    caps = CaptionDataset.read_karpathy(
        Path(entry["captions_file"]), on_error=entry.get("on_error", "raise"), image_root=Path(entry["media_root"])
    )
    _, texts, _ = caps.pairs(split)
    rows, _ = _load_rows(entry["features"]["captions"]["files"]["pooled"], [text_key(t) for t in texts], "captions")
    return caps, rows


def _vqa_tables(index: Mapping[str, Any], index_path) -> dict[str, Any]:
    from fusionkit.data.base import load_dataset
    from fusionkit.tasks.vqa import load_vqa

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


# ================================================================================ defaults
_FT = _FinetuneConfig()


def _finetune_defaults(batch_size: int, text: bool = True) -> dict[str, Any]:
    """The transfer-learning options every task shares (values from
    :class:`fusionkit.tasks.transfer.FinetuneConfig`, measured on flickr8k-800 retrieval).
    Fine-tuning runs after the frozen-feature model, starting from it; 0 blocks: frozen only.
    Slow on a CPU: EfficientNet-Lite0 with 1 block trained, 600 images: ~25 s per epoch on 2 cores."""
    d: dict[str, Any] = {"finetune_image_blocks": 0}  # last blocks of the image encoder trained
    if text:
        d["finetune_text_blocks"] = 0  # last transformer layers of the text encoder trained
    d.update({
        "augment": _FT.augment,  # torchvision v2 augmentation of the training images when the image encoder trains
        "finetune_epochs": _FT.epochs,
        "finetune_lr": _FT.lr,  # the task model
        "encoder_lr": _FT.encoder_lr,  # unfrozen encoder blocks
        "finetune_batch_size": batch_size,  # distinct images per step
        "finetune_patience": _FT.patience,
    })  # fmt: skip
    return d


CAPTION_DEFAULTS: dict[str, Any] = {
    "decoders": ("transformer", "lstm"),
    "max_len": 0,  # 0: from the training captions (95th percentile of pieces + BOS/EOS, at most 40)
    "min_count": 1,  # vocabulary: pieces seen at least this often in the training captions
    "d_model": 256,
    "layers": 2,
    "heads": 4,
    "dropout": 0.1,
    "lstm_dropout": 0.3,
    "att_dim": 256,
    "alpha_c": 1.0,
    "init_embeddings": False,  # word embeddings from MiniLM's
    "use_pooled": True,  # the pooled vector as one more memory slot / in the LSTM's initial state
    "lr": 5e-4,
    "batch_size": 64,
    "weight_decay": 1e-2,
    "label_smoothing": 0.1,
    "patience": 5,
    "val_max_images": 300,
    "beam_size": 3,
    "length_penalty": 1.0,
    "nn_k": 1,
    "resume": False,  # continue an interrupted training from <out>/captioning/<decoder>[_finetune]_checkpoint.pt
    **_finetune_defaults(32, text=False),  # 32 images per step, each with all its captions
}
CAPTION_EPOCHS = 30

VQA_DEFAULTS: dict[str, Any] = {
    "methods": ("film",),  # fusion method(s); several are trained and compared
    "image": "grid",  # "grid" (regions) or "pooled"
    "hidden": 128,
    "context_layers": 1,  # Transformer layers over the regions (per image) before the fusion
    "heads": 4,
    "glimpses": 2,  # question-guided attention glimpses over the regions (0: the fusion sees every region)
    "pca_dim": 0,  # whiten the image features to this many principal components first (0: off)
    "dropout": 0.1,
    "lr": 2e-3,
    "images_per_batch": 16,  # each batch: these images with all their questions (~5 each)
    "weight_decay": 1e-2,
    "label_smoothing": 0.0,
    "patience": 8,
    "top_k": 1000,
    "resume": False,  # continue an interrupted training from <out>/vqa/<method>[_finetune]_checkpoint.pt
    **_finetune_defaults(16),  # 16 images per step, each with all its questions
}
VQA_EPOCHS = 40

RETRIEVAL_DEFAULTS: dict[str, Any] = {
    # dual encoder (chosen on the validation RSUM of the default and flickr8k-800 datasets)
    "embed_dim": 256,
    "hidden": 0,  # 0: linear projection heads (an MLP head, e.g. 512, overfits a few hundred images)
    "dropout": 0.1,
    "input_dropout": 0.5,  # dropout on the features entering both heads
    "text_head": "project",  # "identity": text features as they are, only the image head learns
    "lr": 3e-4,
    "batch_size": 512,
    "weight_decay": 1e-2,
    "patience": 10,
    "ridge_alphas": (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0),
    **_finetune_defaults(_FT.batch_size),  # 64 images per step, each with one random caption
    # continue an interrupted training from <out>/retrieval/{dual,finetune}_checkpoint.pt
    "resume": False,
    "matcher": "film",  # fusion method of the re-ranking model ("" : no re-ranking)
    "matcher_epochs": 20,
    "matcher_hidden": 128,
    "rerank_k": 10,
    # final re-ranking score = matcher logit + mix x dual-encoder cosine; mix picked on validation RSUM
    "rerank_mix": (0.0, 1.0, 3.0, 10.0, 30.0, 100.0),
    "hard_k": 10,
    "n_negatives": 4,
}
RETRIEVAL_EPOCHS = 100

DEFAULTS = {"captioning": CAPTION_DEFAULTS, "vqa": VQA_DEFAULTS, "retrieval": RETRIEVAL_DEFAULTS}
EPOCHS = {"captioning": CAPTION_EPOCHS, "vqa": VQA_EPOCHS, "retrieval": RETRIEVAL_EPOCHS}


def _options(task: str, kw: Mapping[str, Any]) -> dict[str, Any]:
    allowed = DEFAULTS[task]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(f"train_task({task!r}): unknown option(s) {unknown}; valid: {sorted(allowed)}")
    out = dict(allowed)
    out.update(kw)
    return out


def _task_dir(out_dir, task: str) -> Path:
    d = Path(out_dir) / task
    d.mkdir(parents=True, exist_ok=True)
    return d


#: the bundle kind (fusionkit.bundle) of each task model, from its meta's "task" (and "kind")
_BUNDLE_KIND = {"captioning": "captioner", "vqa": "vqa", "retrieval": "dual_encoder"}


def _save(model: torch.nn.Module, path: Path, meta: Mapping[str, Any], kind: str | None = None) -> Path:
    """A task model as a :mod:`fusionkit.bundle` (safetensors + JSON, written atomically)."""
    return bundle.save(path, model, kind or _BUNDLE_KIND[meta["task"]], meta)


def _load_meta(path: Path) -> dict[str, Any]:
    try:
        return bundle.read_meta(path)
    except bundle.BundleError as e:
        raise TaskSetupError(f"{e.args[0]}; run train_task first" if "not found" in e.args[0] else e.args[0]) from e


def _load_state(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    try:
        return bundle.load_weights(model, path)
    except bundle.BundleError as e:
        raise TaskSetupError(e.args[0]) from e


def _checkpoint(path: Path, opts: Mapping[str, Any]) -> Path:
    """The per-epoch training checkpoint of one model: kept for ``resume=True``, else a stale
    one from an earlier run is removed so that it can never be picked up by mistake."""
    if not opts.get("resume") and path.exists():
        path.unlink()
    return path


# ================================================================================ training
def train_task(
    task: str,
    index_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    epochs: int | None = None,
    method: str | Sequence[str] | None = None,
    progress: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """Train ``task``'s models on the cached features, early-stopped on its validation metric
    with the best state restored, and save them in ``out_dir/<task>/`` (safetensors + json).
    Returns a summary of numbers (also written to ``out_dir/<task>/summary.json``).

    ``epochs``: maximum epochs (default per task: :data:`EPOCHS`). ``method``: captioning - the
    decoder(s) ``"transformer"``, ``"lstm"`` (default both); vqa - the fusion method(s) (default
    ``"film"``; a list trains and compares several); retrieval - the re-ranking matcher's fusion
    method (default ``"film"``; ``"none"`` skips re-ranking). Further keywords: the task's options
    in :data:`CAPTION_DEFAULTS`, :data:`VQA_DEFAULTS`, :data:`RETRIEVAL_DEFAULTS`.

    Every model's training state is checkpointed after each epoch
    (``<out_dir>/<task>/<model>_checkpoint.pt``, removed when it finishes): after an interrupt,
    the same call with ``resume=True`` continues from the last epoch and saves the same model an
    uninterrupted run saves."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs={epochs!r}; expected a positive integer")
    index = read_task_index(index_path)
    _require(index, task, index_path)
    opts = _options(task, kw)
    tune_allocator()  # fusionkit.runtime: no page faults for every batch-sized tensor
    epochs = int(epochs or EPOCHS[task])
    out = _task_dir(out_dir, task)
    t0 = time.perf_counter()
    fn = {"captioning": _train_captioning, "vqa": _train_vqa, "retrieval": _train_retrieval}[task]
    summary = fn(index, Path(index_path), out, seed, epochs, method, opts, progress)
    summary["train_time_s"] = round(time.perf_counter() - t0, 2)
    _write_json(out / "summary.json", summary)
    return summary


def _methods(method: str | Sequence[str] | None, default: Sequence[str], valid: Sequence[str] | None, what: str):
    if method is None or method == "" or method == "all" and valid is None:
        return list(default)
    if method == "all" and valid is not None:
        return list(valid)
    names = [method] if isinstance(method, str) else list(method)
    if valid is not None:
        bad = [m for m in names if m not in valid]
        if bad:
            raise ValueError(f"{what}: unknown {bad}; expected some of {list(valid)}")
    return names


def _auto_max_len(tok, captions: Sequence[str], cap: int = 40) -> int:
    import numpy as np

    lengths = [len(p) + 2 for p in tok._tk.encode_batch(list(captions), add_special_tokens=False)]
    return int(min(cap, max(8, math.ceil(float(np.percentile(lengths, 95))))))


def _train_captioning(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:
    from fusionkit.tasks import captioning as C
    from fusionkit.train import seed_everything

    kinds = _methods(method, opts["decoders"], ("transformer", "lstm"), "captioning decoders")
    if method in ("both",):
        kinds = ["transformer", "lstm"]
    data = _caption_data(index, index_path)
    caps = data.caps
    train_caps = caps.captions("train")
    tok = C.CaptionTokenizer.build(train_caps, max_len=64, min_count=int(opts["min_count"]))
    max_len = int(opts["max_len"]) or _auto_max_len(tok, train_caps)
    tok = C.CaptionTokenizer(tok.itos, max_len=max_len, path=tok.path)
    tok.save(out / "tokenizer.json")
    pooled = {sp: (data.pooled[sp] if opts["use_pooled"] else None) for sp in SPLITS}
    splits = {sp: C.caption_split(caps, sp, tok, data.ids[sp], data.grid[sp], pooled[sp]) for sp in ("train", "val")}
    feat_dim = int(splits["train"].grid.shape[-1])
    pooled_dim = int(data.pooled["train"].shape[-1]) if opts["use_pooled"] else None
    if int(opts["finetune_image_blocks"]):
        splits["test"] = C.caption_split(caps, "test", tok, data.ids["test"], data.grid["test"], pooled["test"])
    decoded: dict[str, Tensor] = {}  # the split's images, decoded once for every decoder's fine-tuning
    summary: dict[str, Any] = {
        "vocab_size": tok.vocab_size,
        "max_len": max_len,
        "n_train_images": len(splits["train"]),
        "n_train_captions": int(len(splits["train"].tokens)),
        "n_truncated": int(splits["train"].n_truncated),
    }
    for kind in kinds:
        if kind == "transformer":
            hp = {"d_model": opts["d_model"], "heads": opts["heads"], "layers": opts["layers"], "dropout": opts["dropout"],
                  "max_regions": max(256, int(splits["train"].grid.shape[1]))}  # fmt: skip
        else:
            hp = {"d_model": opts["d_model"], "att_dim": opts["att_dim"], "dropout": opts["lstm_dropout"],
                  "alpha_c": opts["alpha_c"]}  # fmt: skip
        seed_everything(seed)
        model = C.build_captioner(
            kind, tok, feat_dim=feat_dim, pooled_dim=pooled_dim, init_embeddings=bool(opts["init_embeddings"]), **hp
        )
        cfg = C.CaptionTrainConfig(
            epochs=epochs,
            batch_size=int(opts["batch_size"]),
            lr=float(opts["lr"]),
            weight_decay=float(opts["weight_decay"]),
            label_smoothing=float(opts["label_smoothing"]),
            patience=int(opts["patience"]),
            val_max_images=int(opts["val_max_images"]) or None,
            seed=seed,
        )
        ckpt = _checkpoint(out / f"{kind}_checkpoint.pt", opts)
        res = C.train_captioner(model, splits["train"], splits["val"], tok, cfg, show_progress=_show(progress),
                                checkpoint=ckpt, resume=bool(opts["resume"]))  # fmt: skip
        ckpt.unlink(missing_ok=True)
        meta = {
            "task": "captioning",
            "kind": kind,
            "feat_dim": feat_dim,
            "pooled_dim": pooled_dim,
            "hparams": hp,
            "init_embeddings": bool(opts["init_embeddings"]),
            "tokenizer": "tokenizer.json",
            "decode": {"beam_size": int(opts["beam_size"]), "length_penalty": float(opts["length_penalty"])},
            "nn_k": int(opts["nn_k"]),
            "options": opts,
            "seed": seed,
            "train": res.as_dict(),
            "params": model.num_parameters(),
        }
        _save(model, out / f"{kind}.safetensors", meta)
        summary.update(_finetune_captioning(index, index_path, out, kind, model, meta, tok, splits, opts, seed,
                                            progress, decoded))  # fmt: skip
        summary[f"{kind}/best_val_cider"] = res.best_value
        summary[f"{kind}/best_epoch"] = res.best_epoch
        summary[f"{kind}/epochs_run"] = res.epochs_run
        summary[f"{kind}/train_time_s"] = round(res.train_time_s, 2)
        summary[f"{kind}/params"] = model.num_parameters()
    _write_json(out / "decoders.json", {"decoders": kinds})
    return summary


def _finetune_captioning(
    index, index_path, out: Path, kind: str, model, meta, tok, splits, opts, seed, progress, decoded: dict[str, Tensor]
) -> dict[str, Any]:
    """Transfer learning for one decoder (see :mod:`fusionkit.tasks.transfer`): a copy of the
    frozen-feature decoder fine-tuned with the last blocks of the image encoder; saves it, the
    encoder's trained blocks and the fine-tuned test features (``<kind>_finetuned*``)."""
    import copy

    from fusionkit.tasks import transfer as T

    files = _finetuned_files(out, kind)
    cfg = _finetune_cfg(opts, seed)
    if not cfg.image_blocks:
        _remove(files.values())
        return {}
    enc = _task_encoder(index, "image", index_path)
    show = _show(progress)
    for sp in ("train", "val", "test"):
        if sp not in decoded:
            decoded[sp] = T.decode_for_training(enc, _split_images(index, splits[sp].image_ids), show)
    ft = copy.deepcopy(model)
    ckpt = _checkpoint(files["checkpoint"], opts)
    res = T.finetune_captioner(
        ft, enc, splits["train"], decoded["train"], splits["val"], decoded["val"], tok, cfg,
        label_smoothing=float(opts["label_smoothing"]), val_max_images=int(opts["val_max_images"]) or None,
        checkpoint=ckpt, resume=bool(opts["resume"]), show_progress=show,
    )  # fmt: skip
    from dataclasses import asdict

    _save(ft, files["model"], {**meta, "finetune": asdict(cfg), "train": res.as_dict(),
                               "image_encoder": index["tasks"]["image_encoder"]["name"],
                               "test_ids": list(splits["test"].image_ids)})  # fmt: skip
    _save_encoders(files["encoders"], enc)
    f = T.encode_image_features(enc, decoded["test"])
    bundle.save_tensors(files["features"], {f"test/{k}": v for k, v in f.items()})
    ckpt.unlink(missing_ok=True)  # finished: nothing left to resume
    return _finetune_summary(f"{kind}_finetuned", "val_cider", res.best_value, res, cfg)


# -------------------------------------------------------------------------------- vqa
class VQANet(torch.nn.Module):
    """Answer classifier: image regions (or the pooled vector) and the question, fused by a
    registered fusion method, then an MLP over the answers.

    * image branch, computed once per *image* (all its questions share it): a fixed PCA whitening
      (``pca_dim``, fitted on the training images), ``Projector`` to ``hidden``, learned region
      positions, ``context_layers`` Transformer encoder layers over the regions (a region learns
      about its neighbours: counting, "left of");
    * question branch: ``Projector`` of the sentence vector;
    * question-guided glimpses (``glimpses`` > 0; Yang et al. 2016 "Stacked Attention Networks",
      the glimpses of MCB/MFB/BAN): ``e = w^T tanh(W_r r_l + W_q q)`` per region and glimpse; a
      softmax glimpse ``sum_l softmax(e)_l r_l`` (what the question is about) and a count glimpse
      ``mean_l sigmoid(e)_l r_l`` (how much of it there is) per glimpse. The fusion then sees the
      ``2 * glimpses`` vectors as the image sequence; ``glimpses=0``: all regions;
    * fusion: ``build_fusion(method, {"image": hidden, "question": hidden})``; head:
      Linear-GELU-Dropout-Linear (none when the method outputs logits itself)."""

    def __init__(
        self,
        method: str,
        image_dim: int,
        question_dim: int,
        num_answers: int,
        *,
        n_regions: int = 0,
        hidden: int = 128,
        dropout: float = 0.1,
        context_layers: int = 1,
        heads: int = 4,
        glimpses: int = 2,
        pca_dim: int = 0,
        **fusion_hparams: Any,
    ):
        super().__init__()
        from torch import nn

        from fusionkit.fusion import build_fusion, get
        from fusionkit.model import Projector

        self.method, self.n_regions = method, int(n_regions)
        self.pca_dim = int(pca_dim) if pca_dim and pca_dim < image_dim else 0
        if self.pca_dim:
            self.register_buffer("pca_mean", torch.zeros(image_dim))
            self.register_buffer("pca_proj", torch.zeros(image_dim, self.pca_dim))
        self.image_proj = Projector(self.pca_dim or image_dim, hidden, dropout)
        self.question_proj = Projector(question_dim, hidden, dropout)
        self.region_pos = nn.Parameter(torch.randn(self.n_regions, hidden) * 0.02) if self.n_regions else None
        self.context: nn.Module | None = None
        if self.n_regions and context_layers:
            layer = nn.TransformerEncoderLayer(
                hidden, heads, 2 * hidden, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.context = nn.TransformerEncoder(layer, context_layers, enable_nested_tensor=False)
        self.glimpses = int(glimpses) if self.n_regions else 0
        if self.glimpses:
            self.att_r = nn.Linear(hidden, hidden)
            self.att_q = nn.Linear(hidden, hidden)
            self.att_w = nn.Linear(hidden, self.glimpses)
        if get(method).outputs_logits:
            fusion_hparams.setdefault("num_classes", num_answers)
        self.fusion = build_fusion(method, {"image": hidden, "question": hidden}, **fusion_hparams)
        if self.fusion.outputs_logits:
            self.head: nn.Module = nn.Identity()
        else:
            self.head = nn.Sequential(
                nn.Linear(self.fusion.out_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_answers)
            )

    @torch.no_grad()
    def fit_pca(self, images: Tensor) -> None:
        """Fit the whitening PCA on training image features (all regions, or the pooled vectors)."""
        if not self.pca_dim:
            return
        x = images.reshape(-1, images.shape[-1]).double()
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / max(1, len(x) - 1)
        vals, vecs = torch.linalg.eigh(cov)
        top = vals.flip(0)[: self.pca_dim].clamp(min=1e-8)
        self.pca_mean.copy_(mean.float())
        self.pca_proj.copy_((vecs.flip(1)[:, : self.pca_dim] / top.sqrt()).float())

    def encode_images(self, image: Tensor) -> Tensor:
        image = image.float()
        if self.pca_dim:
            image = (image - self.pca_mean) @ self.pca_proj
        x = self.image_proj(image)
        if x.dim() == 3:
            if self.region_pos is None or x.shape[1] != self.n_regions:
                raise ValueError(f"this model was built for {self.n_regions} regions; got {tuple(image.shape)}")
            x = x + self.region_pos
            if self.context is not None:
                x = self.context(x)
        return x

    def attend(
        self, regions: Tensor, question: Tensor, image_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(the image input of the fusion, the softmax attention ``(B, L, G)`` or None)."""
        if image_index is None:
            image_index = torch.arange(len(question), device=question.device)
        if regions.dim() == 2 or not self.glimpses:
            return regions[image_index], None
        keys = self.att_r(regions)[image_index]  # per image, then shared by its questions
        r = regions[image_index]
        e = self.att_w(torch.tanh(keys + self.att_q(question).unsqueeze(1)))  # (B, L, G)
        soft = torch.softmax(e, dim=1)
        count = torch.sigmoid(e) / e.shape[1]
        img = torch.cat([soft.transpose(1, 2) @ r, count.transpose(1, 2) @ r], dim=1)  # (B, 2G, d)
        return img, soft

    def forward(self, image: Tensor, question: Tensor, image_index: Tensor | None = None) -> Tensor:
        regions = self.encode_images(image)
        q = self.question_proj(question.float())
        img, _ = self.attend(regions, q, image_index)
        return self.head(self.fusion({"image": img, "question": q}).fused)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@dataclass
class _VQAArrays:
    images: Tensor  # (N_img, L, D) or (N_img, D)
    image_keys: list[str]
    questions: Tensor  # (Q, Dq)
    q_image: Tensor  # (Q,) image row of each question
    labels: Tensor  # (Q,) answer index, -1 outside the vocabulary
    table: Any  # the VQATable (rows = questions)


def _vqa_keys(table) -> list[str]:
    """The image rows of a VQA split: its distinct image keys, sorted."""
    return sorted({r.image_key for r in table.records})


def _vqa_arrays(index, index_path, table, vocab, image_kind: str) -> _VQAArrays:
    keys = _vqa_keys(table)
    grid, pooled = image_features(index, keys)
    if image_kind == "grid":
        if grid is None:
            raise TaskSetupError(f"{index_path}: no image grid features for VQA (use image='pooled')")
        images = grid
    elif image_kind == "pooled":
        images = pooled
    else:
        raise ValueError(f"image={image_kind!r}; expected 'grid' or 'pooled'")
    files = index["tasks"]["features"]["questions"]["files"]["pooled"]
    q, _ = _load_rows(files, [text_key(t) for t in table.questions], "question features")
    row = {k: i for i, k in enumerate(keys)}
    q_image = torch.as_tensor([row[r.image_key] for r in table.records], dtype=torch.long)
    for name, x in (("image", images), ("question", q)):
        if not torch.isfinite(x).all():
            raise TaskSetupError(f"{index_path}: {name} features have NaN/inf values")
    return _VQAArrays(images.float(), keys, q.float(), q_image, table.labels(vocab), table)


@torch.inference_mode()
def _vqa_logits(model: VQANet, a: _VQAArrays, batch_images: int = 64) -> Tensor:
    model.eval()
    out = torch.empty(len(a.labels), 0)
    chunks = []
    order = []
    for s in range(0, len(a.images), batch_images):
        rows = torch.arange(s, min(s + batch_images, len(a.images)))
        qs = ((a.q_image >= s) & (a.q_image < s + len(rows))).nonzero().flatten()
        if not len(qs):
            continue
        chunks.append(model(a.images[rows], a.questions[qs], a.q_image[qs] - s).float())
        order.append(qs)
    if not chunks:
        return out
    logits = torch.cat(chunks)
    res = torch.empty_like(logits)
    res[torch.cat(order)] = logits
    return res


def _fit_vqa(
    model: VQANet, train: _VQAArrays, val: _VQAArrays, opts, epochs: int, seed: int, progress: bool, checkpoint=None
) -> TrainResult:
    """Batches of ``images_per_batch`` images with all their (answerable) questions: the image
    branch runs once per image. AdamW, warm-up + cosine, label smoothing, early stopping on the
    validation accuracy of the top answer (questions outside the vocabulary count as wrong).
    ``checkpoint``: training state after every epoch; ``opts["resume"]``: continue from it."""
    ok = train.labels >= 0
    by_image: list[list[int]] = [[] for _ in range(len(train.images))]
    for qi, (img, good) in enumerate(zip(train.q_image.tolist(), ok.tolist())):
        if good:
            by_image[img].append(qi)
    has_q = torch.as_tensor([i for i, b in enumerate(by_image) if b], dtype=torch.long)
    if not len(has_q):
        raise TaskSetupError("VQA: no training question has its answer in the vocabulary")
    bpi = max(1, int(opts["images_per_batch"]))
    steps = epochs * math.ceil(len(has_q) / bpi)
    opt = torch.optim.AdamW(model.parameters(), lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]))
    sched = warmup_cosine(opt, steps, int(0.05 * steps))

    def batches(gen: torch.Generator):
        perm = has_q[torch.randperm(len(has_q), generator=gen)]
        for s in range(0, len(perm), bpi):
            yield perm[s : s + bpi]

    def step(imgs: Tensor, gen: torch.Generator) -> Step:
        qs = torch.as_tensor([q for i in imgs.tolist() for q in by_image[i]], dtype=torch.long)
        local = torch.full((len(train.images),), -1, dtype=torch.long)
        local[imgs] = torch.arange(len(imgs))
        logits = model(train.images[imgs], train.questions[qs], local[train.q_image[qs]])
        y = train.labels[qs]
        loss = F.cross_entropy(logits, y, label_smoothing=float(opts["label_smoothing"]))
        return Step(loss, len(qs), sums={"train_acc": int((logits.argmax(1) == y).sum())})

    def evaluate() -> dict[str, float]:
        vl = _vqa_logits(model, val)
        val_acc = float((vl.argmax(1) == val.labels).float().mean()) if len(vl) else float("nan")
        return {"val_acc": val_acc, "lr": sched.get_last_lr()[0]}

    return fit(model, opt, sched, batches, step, evaluate, epochs=epochs, seed=seed, monitor="val_acc",
               patience=int(opts["patience"]), grad_clip=5.0, checkpoint=checkpoint, resume=bool(opts["resume"]),
               show_progress=_show(progress), desc="vqa epochs")  # fmt: skip


def _build_vqa(meta: Mapping[str, Any]) -> VQANet:
    return VQANet(meta["method"], meta["image_dim"], meta["question_dim"], meta["num_answers"], **meta["hparams"])


def _train_vqa(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:
    from fusionkit.fusion import available
    from fusionkit.tasks.vqa import AnswerVocab

    methods = _methods(method, opts["methods"], available(), "vqa fusion methods")
    tables = _vqa_tables(index, index_path)
    vocab = AnswerVocab.build(tables["train"], top_k=int(opts["top_k"]))
    train = _vqa_arrays(index, index_path, tables["train"], vocab, opts["image"])
    val = _vqa_arrays(index, index_path, tables["val"], vocab, opts["image"])
    image_dim = int(train.images.shape[-1])
    q_dim = int(train.questions.shape[-1])
    n_regions = int(train.images.shape[1]) if train.images.dim() == 3 else 0
    decoded: dict[str, Tensor] = {}  # the splits' images, decoded once for every method's fine-tuning
    summary: dict[str, Any] = {
        "n_answers": len(vocab),
        "answer_coverage_val": vocab.coverage(tables["val"]),
        "n_train_questions": int((train.labels >= 0).sum()),
    }
    for m in methods:
        seed_everything(seed)
        hp = {"n_regions": n_regions, "hidden": int(opts["hidden"]), "dropout": float(opts["dropout"]),
              "context_layers": int(opts["context_layers"]), "heads": int(opts["heads"]),
              "glimpses": int(opts["glimpses"]), "pca_dim": int(opts["pca_dim"])}  # fmt: skip
        model = VQANet(m, image_dim, q_dim, len(vocab), **hp)
        model.fit_pca(train.images)
        ckpt = _checkpoint(out / f"{m}_checkpoint.pt", opts)
        res = _fit_vqa(model, train, val, opts, epochs, seed, progress, checkpoint=ckpt)
        ckpt.unlink(missing_ok=True)
        meta = {
            "task": "vqa",
            "method": m,
            "image_dim": image_dim,
            "question_dim": q_dim,
            "num_answers": len(vocab),
            "hparams": hp,
            "image": opts["image"],
            "vocab": vocab.state_dict(),
            "options": opts,
            "seed": seed,
            "train": res.as_dict(),
            "params": model.num_parameters(),
        }
        _save(model, out / f"{m}.safetensors", meta)
        summary.update(_finetune_vqa(index, index_path, out, m, model, meta, train, val, tables, opts, seed, progress,
                                     decoded))  # fmt: skip
        summary[f"{m}/best_val_accuracy"] = res.best_val_acc
        summary[f"{m}/best_epoch"] = res.best_epoch
        summary[f"{m}/epochs_run"] = res.epochs_run
        summary[f"{m}/train_time_s"] = round(res.train_time_s, 2)
        summary[f"{m}/params"] = model.num_parameters()
    _write_json(out / "methods.json", {"methods": methods})
    return summary


def _encode_distinct(encoder, texts: Sequence[str]) -> Tensor:
    """Pooled features of ``texts``, each distinct text encoded once."""
    from fusionkit.tasks.transfer import encode_texts

    uniq = sorted(set(texts))
    row = {t: i for i, t in enumerate(uniq)}
    return encode_texts(encoder, uniq)[torch.as_tensor([row[t] for t in texts], dtype=torch.long)]


def _finetune_vqa(index, index_path, out: Path, method: str, model, meta, train: _VQAArrays, val: _VQAArrays, tables,
                  opts, seed, progress, decoded: dict[str, Tensor]) -> dict[str, Any]:  # fmt: skip
    """Transfer learning for one VQA model (see :mod:`fusionkit.tasks.transfer`): a copy of the
    frozen-feature model fine-tuned with the last blocks of the image and / or question encoder.
    Each step: ``finetune_batch_size`` images with all their answerable questions. Saves the
    copy, the encoders' trained blocks and the fine-tuned test features (``<method>_finetuned*``)."""
    import copy
    import dataclasses

    from torch.nn import functional as F

    from fusionkit.tasks import transfer as T

    files = _finetuned_files(out, method)
    cfg = _finetune_cfg(opts, seed)
    if not cfg.image_blocks and not cfg.text_blocks:
        _remove(files.values())
        return {}
    img_enc = _task_encoder(index, "image", index_path)
    txt_enc = _task_encoder(index, "text", index_path) if cfg.text_blocks else None
    show = _show(progress)
    keys = {"train": train.image_keys, "val": val.image_keys, "test": _vqa_keys(tables["test"])}
    for sp, k in keys.items():
        if sp not in decoded:
            decoded[sp] = T.decode_for_training(img_enc, _split_images(index, k), show)
    kind = meta["image"]
    by_image: list[list[int]] = [[] for _ in range(len(train.image_keys))]
    for qi, (img, y) in enumerate(zip(train.q_image.tolist(), train.labels.tolist())):
        if y >= 0:
            by_image[img].append(qi)
    rows_with_q = torch.as_tensor([i for i, b in enumerate(by_image) if b], dtype=torch.long)
    smoothing = float(opts["label_smoothing"])
    model_ft = copy.deepcopy(model)

    def batch_loss(feats, rows, gen):
        qs = torch.as_tensor([q for r in rows.tolist() for q in by_image[r]], dtype=torch.long)
        local = torch.as_tensor([j for j, r in enumerate(rows.tolist()) for _ in by_image[r]], dtype=torch.long)
        if txt_enc is not None:
            q = txt_enc(txt_enc.collate([train.table.questions[int(i)] for i in qs]))["pooled"]
        else:
            q = train.questions[qs]
        logits = model_ft(feats[kind], q, local)
        return F.cross_entropy(logits, train.labels[qs], label_smoothing=smoothing), len(qs)

    def arrays(a: _VQAArrays, feats: dict[str, Tensor]) -> _VQAArrays:
        q = _encode_distinct(txt_enc, a.table.questions) if txt_enc is not None else a.questions
        return dataclasses.replace(a, images=feats[kind], questions=q)

    def validate(feats):
        logits = _vqa_logits(model_ft, arrays(val, feats))
        return {"val_acc": float((logits.argmax(1) == val.labels).float().mean()) if len(logits) else float("nan")}

    ckpt = _checkpoint(files["checkpoint"], opts)
    res = T.finetune_on_images(
        model_ft, img_enc, decoded["train"], decoded["val"], batch_loss, validate, cfg, monitor="val_acc",
        train_rows=rows_with_q, text_encoder=txt_enc, checkpoint=ckpt, resume=bool(opts["resume"]),
        show_progress=show, desc="vqa fine-tune epochs",
    )  # fmt: skip
    from dataclasses import asdict

    _save(model_ft, files["model"], {**meta, "finetune": asdict(cfg), "train": res.as_dict(), "test_keys": keys["test"],
                                     "image_encoder": index["tasks"]["image_encoder"]["name"],
                                     "text_encoder": index["tasks"]["text_encoder"]["name"]})  # fmt: skip
    _save_encoders(files["encoders"], img_enc, txt_enc)
    f = T.encode_image_features(img_enc, decoded["test"])
    feats = {"test/image": f[kind].contiguous()}
    if txt_enc is not None:
        feats["test/questions"] = _encode_distinct(txt_enc, tables["test"].questions).contiguous()
    bundle.save_tensors(files["features"], feats)
    ckpt.unlink(missing_ok=True)  # finished: nothing left to resume
    return _finetune_summary(f"{method}_finetuned", "val_accuracy", res.best_value, res, cfg)


# -------------------------------------------------------------------------------- retrieval
def _retrieval_splits(index, index_path, splits: Sequence[str]):
    from fusionkit.tasks.retrieval import retrieval_split

    data = _caption_data(index, index_path, need_grid=False)
    files = index["tasks"]["features"]["captions"]["files"]["pooled"]
    out = {}
    for sp in splits:
        _, texts, _ = data.caps.pairs(sp)
        txt, _ = _load_rows(files, [text_key(t) for t in texts], "caption features")
        out[sp] = retrieval_split(data.caps, sp, data.ids[sp], data.pooled[sp], txt)
    return data, out


def _train_retrieval(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:
    from fusionkit.tasks import retrieval as R
    from fusionkit.train import seed_everything

    matcher_method = opts["matcher"] if method is None else method
    if isinstance(matcher_method, (list, tuple)):
        raise ValueError("retrieval: method is one matcher fusion method (or 'none')")
    if matcher_method in ("", "none", None):
        matcher_method = ""
    else:
        from fusionkit.fusion import available

        if matcher_method not in available():
            raise ValueError(
                f"retrieval: unknown matcher fusion method {matcher_method!r}; expected one of {available()}"
            )
    _, sp = _retrieval_splits(index, index_path, ("train", "val"))
    train, val = sp["train"], sp["val"]
    idim, tdim = int(train.image.shape[-1]), int(train.text.shape[-1])
    seed_everything(seed)
    dual_hp = {
        "embed_dim": int(opts["embed_dim"]),
        "hidden": int(opts["hidden"]) or None,
        "dropout": float(opts["dropout"]),
        "input_dropout": float(opts["input_dropout"]),
        "text_head": str(opts["text_head"]),
    }
    dual = R.DualEncoder(idim, tdim, **dual_hp)
    cfg = R.RetrievalTrainConfig(
        epochs=epochs,
        batch_size=int(opts["batch_size"]),
        lr=float(opts["lr"]),
        weight_decay=float(opts["weight_decay"]),
        patience=int(opts["patience"]),
        seed=seed,
    )
    ckpt = _checkpoint(out / "dual_checkpoint.pt", opts)
    res = R.train_dual_encoder(dual, train, val, cfg, show_progress=_show(progress), checkpoint=ckpt,
                               resume=bool(opts["resume"]))  # fmt: skip
    ckpt.unlink(missing_ok=True)
    _save(dual, out / "dual_encoder.safetensors", {
        "task": "retrieval", "image_dim": idim, "text_dim": tdim, "hparams": dual_hp, "options": opts,
        "seed": seed, "train": res.as_dict(), "temperature": float(1 / dual.scale().detach()),
    })  # fmt: skip
    ridge, ridge_scores = R.fit_ridge(train, val, alphas=tuple(float(a) for a in opts["ridge_alphas"]))
    ridge_path = out / "ridge.safetensors"
    bundle.save(
        ridge_path,
        {"weight": ridge.weight, "bias": ridge.bias, "x_mean": ridge.x_mean},
        "ridge",
        {"task": "retrieval", "alpha": ridge.alpha, "val_rsum": {str(k): v for k, v in ridge_scores.items()}},
    )
    summary: dict[str, Any] = {
        "dual/best_val_rsum": res.best_rsum,
        "dual/best_epoch": res.best_epoch,
        "dual/epochs_run": res.epochs_run,
        "dual/train_time_s": round(res.train_time_s, 2),
        "dual/temperature": float(1 / dual.scale().detach()),
        "ridge/alpha": ridge.alpha,
        "ridge/val_rsum": ridge_scores[ridge.alpha],
    }
    summary.update(_finetune_retrieval(index, index_path, out, seed, dual, dual_hp, opts, sp, progress))
    mpath = out / "matcher.safetensors"
    if matcher_method:
        seed_everything(seed)
        m_hp = {"hidden": int(opts["matcher_hidden"]), "dropout": float(opts["dropout"])}
        matcher = R.build_matcher(matcher_method, idim, tdim, **m_hp)
        mcfg = R.MatcherTrainConfig(
            epochs=int(opts["matcher_epochs"]),
            rerank_k=int(opts["rerank_k"]),
            hard_k=int(opts["hard_k"]),
            n_negatives=int(opts["n_negatives"]),
            seed=seed,
        )
        mres = R.train_matcher(matcher, dual, train, val, mcfg, show_progress=_show(progress))
        mixes = [float(m) for m in (opts["rerank_mix"] if isinstance(opts["rerank_mix"], (list, tuple))
                                    else [opts["rerank_mix"]])]  # fmt: skip
        mix_rsum = {m: R.rerank(dual, matcher, val, k=int(opts["rerank_k"]), mix=m)["after"]["rsum"] for m in mixes}
        mix = max(mixes, key=lambda m: (mix_rsum[m], -mixes.index(m)))
        _save(matcher, mpath, kind="matcher", meta={
            "task": "retrieval", "method": matcher_method, "image_dim": idim, "text_dim": tdim, "hparams": m_hp,
            "rerank_k": int(opts["rerank_k"]), "mix": mix, "val_rsum_by_mix": {str(k): v for k, v in mix_rsum.items()},
            "seed": seed, "train": mres.as_dict(),
        })  # fmt: skip
        summary.update({
            f"matcher/{matcher_method}/best_val_rsum": mres.best_rsum,
            f"matcher/{matcher_method}/best_epoch": mres.best_epoch,
            f"matcher/{matcher_method}/train_time_s": round(mres.train_time_s, 2),
            f"matcher/{matcher_method}/mix": mix,
            f"matcher/{matcher_method}/val_rsum_at_mix": mix_rsum[mix],
        })  # fmt: skip
    else:
        for p in (mpath, mpath.with_suffix(".json")):
            if p.exists():
                p.unlink()
    return summary


def _build_spec(enc) -> dict[str, Any] | None:
    """``build_encoder``'s arguments of ``enc`` when they can be written to JSON (else None)."""
    spec = getattr(enc, "build_spec", None)
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        return None
    return spec


def _task_encoder(index: Mapping[str, Any], kind: str, index_path):
    """Rebuild the image / text encoder that made the task's features (checked by identity)."""
    from fusionkit.encoders import build_encoder

    rec = index["tasks"].get(f"{kind}_encoder")
    if not rec:
        raise TaskSetupError(f"{index_path}: the task features record no {kind} encoder")
    spec = rec.get("build") or {"name": rec["name"], "kwargs": {}}
    enc = build_encoder(kind, spec["name"], **spec["kwargs"])
    if not _encoder_identity_matches(enc, rec["identity"]):
        raise TaskSetupError(
            f"{index_path}: {kind} encoder {rec['name']!r} here differs from the one that made the cached "
            "features (weights or preprocessing); re-extract the task features"
        )
    return enc


def _split_images(index: Mapping[str, Any], ids: Sequence[str]) -> list[str]:
    from fusionkit.data.base import load_dataset

    feats = index["tasks"]["features"]["images"]
    ds = load_dataset(feats["dataset_dir"], check_files=False)
    mod = feats.get("modality", "image")
    paths = {s.id: str(ds.path(s, mod)) for s in ds.samples}
    missing = [i for i in ids if i not in paths]
    if missing:
        raise TaskSetupError(f"{feats['dataset_dir']}: no image for ids {missing[:5]}")
    return [paths[i] for i in ids]


def _finetune_cfg(opts: Mapping[str, Any], seed: int) -> _FinetuneConfig:
    """A task's transfer-learning options (:func:`_finetune_defaults`) as a FinetuneConfig."""
    return _FinetuneConfig(
        image_blocks=int(opts["finetune_image_blocks"]), text_blocks=int(opts.get("finetune_text_blocks", 0)),
        augment=bool(opts["augment"]), epochs=int(opts["finetune_epochs"]),
        batch_size=int(opts["finetune_batch_size"]), lr=float(opts["finetune_lr"]),
        encoder_lr=float(opts["encoder_lr"]), patience=int(opts["finetune_patience"]), seed=seed,
    )  # fmt: skip


def _finetune_summary(prefix: str, metric: str, best: float, res, cfg: _FinetuneConfig) -> dict[str, Any]:
    """The numbers ``train_task`` reports for a fine-tuned model."""
    return {
        f"{prefix}/best_{metric}": best,
        f"{prefix}/best_epoch": res.best_epoch,
        f"{prefix}/epochs_run": res.epochs_run,
        f"{prefix}/train_time_s": round(res.train_time_s, 2),
        f"{prefix}/image_blocks": cfg.image_blocks,
        f"{prefix}/text_blocks": cfg.text_blocks,
    }


def _finetuned_files(out: Path, stem: str) -> dict[str, Path]:
    """Where a fine-tuned copy of model ``stem`` lives: weights (+ json), the encoders' trained
    blocks, the fine-tuned test features, the per-epoch training checkpoint."""
    return {
        "model": out / f"{stem}_finetuned.safetensors",
        "meta": out / f"{stem}_finetuned.json",
        "encoders": out / f"{stem}_finetuned_encoders.safetensors",
        "features": out / f"{stem}_finetuned_features.safetensors",
        "checkpoint": out / f"{stem}_finetune_checkpoint.pt",
    }


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.exists():
            p.unlink()


def _save_encoders(path: Path, image_encoder, text_encoder=None) -> None:
    """The trained blocks (and buffers) of the fine-tuned encoders, ``image.*`` / ``text.*``."""
    from fusionkit.tasks.transfer import _trainable_state

    state = {f"image.{k}": v for k, v in _trainable_state(image_encoder).items()}
    if text_encoder is not None:
        state.update({f"text.{k}": v for k, v in _trainable_state(text_encoder).items()})
    bundle.save_tensors(path, state)


def _finetune_label(c: Mapping[str, Any]) -> str:
    """``"image last 1, text last 1, augmented"`` from a saved FinetuneConfig."""
    parts = [f"image last {c['image_blocks']}" if c["image_blocks"] else "",
             f"text last {c['text_blocks']}" if c.get("text_blocks") else ""]  # fmt: skip
    return ", ".join(x for x in parts if x) + (", augmented" if c["augment"] and c["image_blocks"] else "")


def _finetune_retrieval(index, index_path, out: Path, seed, dual, dual_hp, opts, sp, progress) -> dict[str, Any]:
    """Transfer learning (see :mod:`fusionkit.tasks.transfer`): fine-tune the last blocks of the
    encoders with a copy of the frozen-feature dual encoder; save the heads, the encoders'
    trained blocks and the fine-tuned features of val / test (evaluation reads those)."""
    import copy

    from fusionkit.tasks import transfer as T

    files = [out / n for n in ("dual_encoder_finetuned.safetensors", "dual_encoder_finetuned.json",
                               "finetuned_encoders.safetensors", "finetuned_features.safetensors")]  # fmt: skip
    ib, tb = int(opts["finetune_image_blocks"]), int(opts["finetune_text_blocks"])
    if not ib and not tb:
        _remove(files)
        return {}
    img_enc = _task_encoder(index, "image", index_path)
    txt_enc = _task_encoder(index, "text", index_path) if tb else None
    show = _show(progress)
    data, test_sp = _retrieval_splits(index, index_path, ("test",))
    sp = {**sp, **test_sp}
    images = {k: T.decode_for_training(img_enc, _split_images(index, v.image_ids), show) for k, v in sp.items()}
    texts = {}
    for k, v in sp.items():
        _, caps, _ = data.caps.pairs(k)
        if len(caps) != v.n_texts:
            raise TaskSetupError(f"{index_path}: {k}: {len(caps)} captions but {v.n_texts} caption features")
        texts[k] = list(caps) if tb else v.text
    cfg = _finetune_cfg(opts, seed)
    ft = copy.deepcopy(dual)
    ckpt = _checkpoint(out / "finetune_checkpoint.pt", opts)
    res = T.finetune_dual_encoder(
        ft, img_enc, images["train"], texts["train"], sp["train"].text_to_image,
        images["val"], texts["val"], sp["val"].text_to_image, cfg,
        text_encoder=txt_enc, checkpoint=ckpt, resume=bool(opts["resume"]), show_progress=show,
    )  # fmt: skip
    from dataclasses import asdict

    _save(ft, files[0], {
        "task": "retrieval", "image_dim": int(sp["train"].image.shape[-1]), "text_dim": int(sp["train"].text.shape[-1]),
        "hparams": dual_hp, "finetune": asdict(cfg), "seed": seed, "train": res.as_dict(),
        "image_encoder": index["tasks"]["image_encoder"]["name"],
        "text_encoder": index["tasks"]["text_encoder"]["name"],
    })  # fmt: skip
    _save_encoders(files[2], img_enc, txt_enc)
    feats = {}
    for k in ("val", "test"):
        feats[f"{k}/image"] = T.encode_images(img_enc, images[k]).contiguous()
        feats[f"{k}/text"] = (T.encode_texts(txt_enc, texts[k]) if tb else sp[k].text).float().contiguous()
    bundle.save_tensors(files[3], feats)
    ckpt.unlink(missing_ok=True)  # finished: nothing left to resume
    return _finetune_summary("finetuned", "val_rsum", res.best_rsum, res, cfg)


# ================================================================================ evaluation
@dataclass
class TaskResult:
    """What :func:`evaluate_task` returns: ``metrics`` one row per model / baseline (a ``model``
    column, then one column per metric), ``tables`` for W&B (``Tracker.log_table``; a column
    ``image`` holds image paths), ``figures`` (matplotlib), ``summary`` numbers for the run summary."""

    task: str
    metrics: Any  # pandas.DataFrame
    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def log(self, tracker, prefix: str | None = None) -> None:
        """Log everything to a :class:`fusionkit.tracking.Tracker`: tables (image columns as
        images), figures, the metrics table and the summary."""
        p = prefix or self.task
        tracker.log_table(f"{p}_metrics", self.metrics)
        for k, df in self.tables.items():
            tracker.log_table(f"{p}_{k}", df, image_columns=["image"] if "image" in df.columns else [])
        for k, fig in self.figures.items():
            tracker.log_figure(f"{p}_{k}", fig)
        tracker.summary(self.summary)


def evaluate_task(
    task: str, index_path: str | os.PathLike, out_dir: str | os.PathLike, *, n_examples: int = 8, progress: bool = True
) -> TaskResult:
    """Load ``task``'s checkpoints from ``out_dir/<task>/`` and score them on the test split
    (see the module docstring); ``n_examples``: images in the attention-map figure (captioning) /
    rows of the sample tables."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(n_examples, int) or n_examples < 0:
        raise ValueError(f"n_examples={n_examples!r}; expected an integer >= 0")
    index = read_task_index(index_path)
    _require(index, task, index_path)
    folder = Path(out_dir) / task
    if not folder.is_dir():
        raise TaskSetupError(f"{folder}: no trained {task} models here; run train_task({task!r}, ...) first")
    fn = {"captioning": _eval_captioning, "vqa": _eval_vqa, "retrieval": _eval_retrieval}[task]
    res = fn(index, Path(index_path), folder, n_examples, progress)
    _write_json(
        folder / "test_metrics.json", {"metrics": res.metrics.to_dict(orient="records"), "summary": res.summary}
    )
    return res


def _eval_captioning(index, index_path, folder: Path, n_examples: int, progress: bool) -> TaskResult:
    import pandas as pd

    from fusionkit.tasks import captioning as C
    from fusionkit.tasks.metrics import caption_metrics

    kinds = _read_json(folder / "decoders.json", "list of trained decoders")["decoders"]
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise TaskSetupError(f"{tok_path}: not found; run train_task('captioning', ...) first")
    tok = C.CaptionTokenizer.load(tok_path)
    data = _caption_data(index, index_path)
    caps = data.caps
    metas = {k: _load_meta(folder / f"{k}.safetensors") for k in kinds}
    use_pooled = any(m["pooled_dim"] for m in metas.values())
    test = C.caption_split(
        caps, "test", tok, data.ids["test"], data.grid["test"], data.pooled["test"] if use_pooled else None
    )
    refs = test.reference_dict()
    rows, preds_all, per_image_all = [], {}, {}
    models, splits = {}, {}
    notes: list[str] = []
    # (name, decoder kind, meta, weights, test grid, test pooled): each decoder, then its fine-tuned copy
    entries = [(k, k, m, folder / f"{k}.safetensors", test.grid, test.pooled) for k, m in metas.items()]
    for kind in metas:
        files = _finetuned_files(folder, kind)
        if files["model"].is_file():
            fm = _load_meta(files["model"])
            if fm.get("test_ids") != list(test.image_ids):
                raise TaskSetupError(f"{files['features']}: fine-tuned features of other test images; train again")
            f = bundle.load_tensors(files["features"])
            entries.append((f"{kind}_finetuned", kind, fm, files["model"], f["test/grid"], f.get("test/pooled")))
    finetuned: dict[str, str] = {}
    for name_, kind, meta, weights, grid, pooled in entries:
        # init_embeddings decides the embedding table's shape (384-d MiniLM rows + a projection)
        model = C.build_captioner(kind, tok, feat_dim=meta["feat_dim"], pooled_dim=meta["pooled_dim"],
                                  init_embeddings=bool(meta.get("init_embeddings")), **meta["hparams"])  # fmt: skip
        _load_state(model, weights)
        models[name_] = model
        if "finetune" in meta:
            finetuned[name_] = _finetune_label(meta["finetune"])
        split = C.CaptionSplit(test.image_ids, grid, pooled if meta["pooled_dim"] else None, test.references,
                               test.tokens, test.caption_image, test.n_truncated)  # fmt: skip
        splits[name_] = split
        dec = meta.get("decode", {})
        for how, kw in (("greedy", {"method": "greedy"}),
                        ("beam", {"method": "beam", "beam_size": int(dec.get("beam_size", 3)),
                                  "length_penalty": float(dec.get("length_penalty", 1.0))})):  # fmt: skip
            name = f"{name_}/{how}"
            preds = C.predict_captions(model, tok, split, **kw)
            m = caption_metrics(refs, preds, per_image=True)
            notes += [n for n in m.pop("notes", []) if n not in notes]
            per_image_all[name] = m.pop("per_image")
            preds_all[name] = preds
            rows.append({"model": name, **{k: v for k, v in m.items() if k != "n_images"}, "n_images": m["n_images"],
                         "encoders": finetuned.get(name_, "frozen")})  # fmt: skip
    nn_k = int(next(iter(metas.values())).get("nn_k", 1)) if metas else 1
    nn_preds = C.nearest_neighbour_captions(
        data.pooled["train"],
        data.ids["train"],
        caps.reference_dict("train"),
        data.pooled["test"],
        data.ids["test"],
        k=nn_k,
    )
    m = caption_metrics(refs, nn_preds, per_image=True)
    m.pop("notes", None)
    per_image_all["nearest_neighbour"] = m.pop("per_image")
    preds_all["nearest_neighbour"] = nn_preds
    rows.append(
        {
            "model": "nearest_neighbour",
            **{k: v for k, v in m.items() if k != "n_images"},
            "n_images": m["n_images"],
            "encoders": "frozen",
        }
    )
    metrics = pd.DataFrame(rows)
    models_only = metrics[metrics.model != "nearest_neighbour"]
    best = (
        str(models_only.sort_values("CIDEr", ascending=False, kind="stable").iloc[0]["model"])
        if len(models_only)
        else "nearest_neighbour"
    )
    metrics["best"] = metrics["model"] == best
    image_paths = {i: str(data.media_root / caps.files[i]) for i in test.image_ids}
    table = C.caption_table(refs, preds_all[best], per_image_all[best], image_paths, ids=test.image_ids)
    table.insert(3, "nearest_neighbour", [nn_preds[i] for i in test.image_ids])
    table.insert(1, "model", best)
    tables = {"samples": table}
    figures = {}
    if n_examples and models:
        name_ = best.split("/")[0]
        hw = tuple(index["tasks"]["features"]["images"].get("grid_hw") or ())
        maps = C.attention_maps(models[name_], tok, splits[name_], n=n_examples, grid_hw=hw if len(hw) == 2 else None)
        figures["attention"] = C.plot_attention_maps(maps, image_paths)
    summary: dict[str, float] = {}
    for r in rows:
        for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"):
            if k in r:
                summary[f"captioning/{r['model']}/{k}"] = float(r[k])
    bm = metrics[metrics.model == best].iloc[0]
    nnm = metrics[metrics.model == "nearest_neighbour"].iloc[0]
    for k in ("BLEU-4", "CIDEr", "METEOR", "ROUGE-L"):
        summary[f"captioning/best/{k}"] = float(bm[k])
        summary[f"captioning/nn_baseline/{k}"] = float(nnm[k])
    return TaskResult("captioning", metrics, tables, figures, summary, notes)


def _eval_vqa(index, index_path, folder: Path, n_examples: int, progress: bool) -> TaskResult:
    import pandas as pd

    from fusionkit.tasks.vqa import AnswerVocab, vqa_accuracy

    methods = _read_json(folder / "methods.json", "list of trained VQA models")["methods"]
    tables = _vqa_tables(index, index_path)
    table = tables["test"]
    rows, per_type = [], []
    arrays: dict[str, _VQAArrays] = {}
    results = {}
    import dataclasses

    # (name, weights): each method, then its fine-tuned copy
    entries = [(m, folder / f"{m}.safetensors") for m in methods]
    entries += [(f"{m}_finetuned", f) for m in methods if (f := _finetuned_files(folder, m)["model"]).is_file()]
    for m, weights in entries:
        meta = _load_meta(weights)
        vocab = AnswerVocab.from_state_dict(meta["vocab"])
        key = json.dumps([meta["image"], meta["vocab"]["answers"]])
        if key not in arrays:
            arrays[key] = _vqa_arrays(index, index_path, table, vocab, meta["image"])
        a = arrays[key]
        if "finetune" in meta:
            if meta.get("test_keys") != a.image_keys:
                raise TaskSetupError(f"{weights}: fine-tuned on other test images than this index's; train again")
            f = bundle.load_tensors(_finetuned_files(folder, m.removesuffix("_finetuned"))["features"])
            a = dataclasses.replace(a, images=f["test/image"], questions=f.get("test/questions", a.questions))
        model = _load_state(_build_vqa(meta), weights)
        answers = vocab.decode_logits(_vqa_logits(model, a))
        preds = {r.question_id: ans for r, ans in zip(table.records, answers)}
        acc = vqa_accuracy(preds, table.annotations())
        results[m] = (acc, preds)
        rows.append({"model": m, "accuracy": acc["overall"],
                     **{f"answer_type/{k}": v for k, v in acc["per_answer_type"].items()},
                     **{f"question_type/{k}": v for k, v in acc["per_question_type"].items()},
                     "n": acc["n"], "params": model.num_parameters(),
                     "encoders": _finetune_label(meta["finetune"]) if "finetune" in meta else "frozen"})  # fmt: skip
        for k, v in acc["per_question_type"].items():
            per_type.append({"model": m, "kind": "question_type", "type": k, "accuracy": v})
        for k, v in acc["per_answer_type"].items():
            per_type.append({"model": m, "kind": "answer_type", "type": k, "accuracy": v})
    metrics = pd.DataFrame(rows)
    best = str(metrics.sort_values("accuracy", ascending=False, kind="stable").iloc[0]["model"])
    metrics["best"] = metrics["model"] == best
    breakdown = pd.DataFrame(per_type)
    by_qtype = breakdown[breakdown.kind == "question_type"].pivot(index="type", columns="model", values="accuracy")
    by_atype = breakdown[breakdown.kind == "answer_type"].pivot(index="type", columns="model", values="accuracy")
    acc, preds = results[best]
    tables_out = {
        "per_question_type": by_qtype.rename_axis("question_type").reset_index(),
        "per_answer_type": by_atype.rename_axis("answer_type").reset_index(),
    }
    if n_examples:
        paths = _image_paths(index, table)
        sample_rows = []
        for r in table.records[:n_examples]:
            sample_rows.append({"image": paths.get(r.image_key, ""), "question_id": r.question_id,
                                "question": r.question, "answer": r.multiple_choice_answer,
                                "prediction": preds[r.question_id], "accuracy": acc["per_question"][r.question_id],
                                "question_type": r.question_type, "model": best})  # fmt: skip
        tables_out["samples"] = pd.DataFrame(sample_rows)
    figures = {"per_question_type": _bar(by_qtype, "VQA accuracy per question type (test)")}
    summary = {f"vqa/{r['model']}/accuracy": float(r["accuracy"]) for r in rows}
    summary["vqa/best/accuracy"] = float(acc["overall"])
    for k, v in acc["per_question_type"].items():
        summary[f"vqa/best/question_type/{k}"] = float(v)
    for k, v in acc["per_answer_type"].items():
        summary[f"vqa/best/answer_type/{k}"] = float(v)
    return TaskResult("vqa", metrics, tables_out, figures, summary)


def _image_paths(index, table) -> dict[str, str]:
    """Image key -> absolute image path for the records of a VQA table (from the derived images
    dataset or the dataset itself)."""
    from fusionkit.data.base import load_dataset

    feats = index["tasks"]["features"]["images"]
    ds = load_dataset(feats["dataset_dir"], check_files=False)
    mod = feats.get("modality", "image")
    keys = {r.image_key for r in table.records}
    return {s.id: str(ds.path(s, mod)) for s in ds.samples if s.id in keys}


def _bar(df, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(df) + 1.5))
    df.plot.barh(ax=ax)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("VQA accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _eval_retrieval(index, index_path, folder: Path, n_examples: int, progress: bool) -> TaskResult:
    import pandas as pd

    from fusionkit.tasks import retrieval as R

    _, sp = _retrieval_splits(index, index_path, ("test",))
    test = sp["test"]
    meta = _load_meta(folder / "dual_encoder.safetensors")
    dual = _load_state(
        R.DualEncoder(meta["image_dim"], meta["text_dim"], **meta["hparams"]), folder / "dual_encoder.safetensors"
    )
    rpath = folder / "ridge.safetensors"
    rmeta = _load_meta(rpath)
    t = bundle.load_tensors(rpath)
    ridge = R.RidgeMap(rmeta["alpha"])
    ridge.weight, ridge.bias, ridge.x_mean = t["weight"], t["bias"], t["x_mean"]
    rows = []
    dual_m = R.recall_at_k(R.encode_split(dual, test), test.text_to_image)
    rows.append({"model": "dual_encoder", **dual_m})
    rows.append({"model": "ridge", **R.recall_at_k(ridge.embeddings(test), test.text_to_image)})
    fpath = folder / "dual_encoder_finetuned.safetensors"
    if fpath.is_file():
        fm = _load_meta(fpath)
        ft = _load_state(R.DualEncoder(fm["image_dim"], fm["text_dim"], **fm["hparams"]), fpath)
        f = bundle.load_tensors(folder / "finetuned_features.safetensors")
        if len(f["test/image"]) != test.n_images or len(f["test/text"]) != test.n_texts:
            raise TaskSetupError(f"{folder}: fine-tuned features do not match the test split; train again")
        with torch.inference_mode():
            ftm = R.recall_at_k((ft.encode_image(f["test/image"]), ft.encode_text(f["test/text"])), test.text_to_image)
        ft_label = _finetune_label(fm["finetune"])
        rows.append({"model": f"dual_encoder fine-tuned ({ft_label})", **ftm, "encoders": ft_label})
        summary_ft = {f"retrieval/finetuned/{k}": float(v) for k, v in ftm.items()}
    else:
        summary_ft = {}
    raw_dim_ok = test.image.shape[-1] == test.text.shape[-1]
    if raw_dim_ok:
        rows.append({"model": "raw_cosine", **R.recall_at_k((test.image, test.text), test.text_to_image)})
    mpath = folder / "matcher.safetensors"
    summary_extra = {}
    if mpath.is_file():
        mm = _load_meta(mpath)
        matcher = _load_state(R.build_matcher(mm["method"], mm["image_dim"], mm["text_dim"], **mm["hparams"]), mpath)
        mix = float(mm.get("mix", 0.0))
        rr = R.rerank(dual, matcher, test, k=int(mm.get("rerank_k", 10)), mix=mix)
        label = f"dual_encoder+rerank({mm['method']}, top {rr['k']}" + (f", mix {mix:g})" if mix else ")")
        rows.append({"model": label, **rr["after"]})
        summary_extra = {f"retrieval/rerank/{k}": float(v) for k, v in rr["after"].items()}
    metrics = pd.DataFrame(rows)
    metrics["encoders"] = metrics["encoders"].fillna("frozen") if "encoders" in metrics else "frozen"
    order = ["model"] + [c for c in metrics.columns if c != "model"]
    metrics = metrics[order]
    summary = {f"retrieval/dual/{k}": float(v) for k, v in dual_m.items()}
    summary.update({f"retrieval/ridge/{k}": float(v) for k, v in rows[1].items() if k != "model"})
    summary.update(summary_extra)
    summary.update(summary_ft)
    tables = {}
    if n_examples:
        tables["samples"] = _retrieval_samples(index, dual, test, n_examples)
    fig = _recall_plot(metrics)
    return TaskResult("retrieval", metrics, tables, {"recall": fig}, summary)


def _retrieval_samples(index, dual, test, n: int):
    """For the first ``n`` test images: the image, its top-3 captions under the dual encoder and
    whether each is one of the image's own."""
    import pandas as pd

    from fusionkit.tasks import retrieval as R

    data_caps = None
    ie, te = R.encode_split(dual, test)
    _, idx = R.topk_similarity(ie[:n], te, 3)
    feats = index["tasks"]
    from fusionkit.tasks.captioning import CaptionDataset

    data_caps = CaptionDataset.read_karpathy(Path(feats["captions_file"]), on_error=feats.get("on_error", "raise"),
                                             image_root=Path(feats["media_root"]))  # fmt: skip
    _, texts, _ = data_caps.pairs("test")
    texts = [texts[j] for j in range(len(texts))]
    rows = []
    media_root = Path(feats["media_root"])
    for r in range(min(n, test.n_images)):
        iid = test.image_ids[r]
        row = {"image": str(media_root / data_caps.files[iid]), "image_id": iid}
        for k, j in enumerate(idx[r].tolist()):
            row[f"top{k + 1}"] = texts[j]
            row[f"top{k + 1}_correct"] = bool(int(test.text_to_image[j]) == r)
        rows.append(row)
    return pd.DataFrame(rows)


def _recall_plot(metrics):
    import matplotlib.pyplot as plt

    cols = [c for c in metrics.columns if "_R@" in c]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    metrics.set_index("model")[cols].T.plot.bar(ax=ax)
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.05)
    ax.set_title("retrieval recall on the test split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
