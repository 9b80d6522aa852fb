"""Caption datasets (Flickr8k, Flickr30k, COCO, an image folder + captions file) as image-text matching.

Reading
    Flickr8k in its three public formats - the Kaggle CSV ``captions.txt`` (``image,caption``), the
    original ``Flickr8k.token.txt`` (``name.jpg#k<TAB>caption``) with ``Flickr_8k.{train,dev,test}Images.txt``,
    and Karpathy's ``dataset_flickr8k.json``; Flickr30k as ``results_20130124.token``, the Kaggle
    ``results.csv`` (``image_name| comment_number| comment``) or ``dataset_flickr30k.json``; COCO in
    :mod:`fusionkit.data.coco`; any folder of images with a captions file (CSV/TSV with an image and a
    caption column, JSONL ``{"image", "caption"}``, COCO or Karpathy JSON) as ``imagefolder``.
    Image files are found anywhere under ``source_dir`` by file name (the zips nest them differently:
    ``Images/``, ``images/``, ``Flicker8k_Dataset/``, ``flickr30k_images/``); a value holding a
    folder (``train2014/x.jpg``) is taken as a path relative to ``source_dir`` and must stay inside it.

Splits (an image never appears in two splits)
    ``split="auto"``: the Karpathy split when a ``dataset_*.json`` is there (``restval`` counts as
    train), else the official split files (Flickr8k ``Flickr_8k.*Images.txt``; dev -> val), else a
    seeded random split of the images by ``split_fractions`` (default 0.75/0.125/0.125: 600/100/100
    images for ``flickr8k-800``). ``"karpathy"`` / ``"official"`` insist on that source (error when
    absent), ``"random"`` ignores the files. Images of the captions file that no split file names
    are left out and counted (``unsplit_images``; e.g. Flickr8k's stray ``2258277193_586949ec62.jpg.1``).

The classification manifest: image-text matching (target ``match``: no / yes)
    Per image, ``pairs_per_image`` of its captions (seeded choice) each give a positive sample
    (image, its caption, yes) and a negative (image, a caption of *another image of the same split*,
    no): exactly 50/50. The negatives are a permutation of the positives' captions, so every image
    and every caption appears equally often as yes and as no - neither modality alone carries the
    label (the ``ceilings`` in ``info``: 0.5 for image alone and text alone).

    ``negatives="random"``: a seeded random permutation. ``"hard"`` (default): each positive gets the
    unused caption with the highest TF-IDF cosine (English stop words removed, so shared *content
    words* count) among the ``hard_pool`` nearest captions of other images; leftovers are paired at
    random. ``"mixed"``: half of the images hard, half random. A negative caption is never one of the
    image's own captions (case- and space-insensitive), so duplicates across images cannot make a
    false negative; near-paraphrases can - the report gives the mean cosine of the negatives.
    For splits larger than ``hard_candidates`` positives, each caption is compared with a seeded
    random subset of that many captions.

Files besides the manifest (for the captioning and retrieval tasks)
    ``captions.json``: Karpathy format, every caption of every kept image (``filename`` relative to
    ``media_root``, ``imgid``, ``split``, ``sentences`` with ``raw``/``tokens``/``sentid``, and
    ``original_id`` - the COCO id when there is one); ``annotations/captions_{split}.json``: COCO
    caption references per split (``image_id`` = ``imgid``), as the shapes dataset writes them.
    Images are indexed in place: ``media_root`` is ``source_dir``.

Validation: missing image files, corrupt images (``check_media``: "verify" opens every image
and checks its structure, "decode" decodes every pixel, "none" checks existence only), empty
captions, duplicate image entries, malformed rows, paths escaping ``source_dir``; duplicate
captions of one image are kept once and listed as warnings.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data.base import SPLITS, Built, DatasetError, Sample
from fusionkit.data.caption_formats import (
    CaptionEntry,
    parse_caption_table,
    parse_captions_file,
    parse_karpathy,
    parse_split_files,
    parse_token_file,
)
from fusionkit.data.problems import Problems
from fusionkit.data.readers import (
    IMAGE_EXTENSIONS,
    check_image,
    safe_media_path,
)
from fusionkit.progress import progress as _progress

__all__ = [
    "CaptionEntry",
    "ImageIndex",
    "build_matching",
    "scan_flickr",
    "scan_flickr8k",
    "scan_flickr30k",
    "scan_imagefolder",
    "tokenize",
]

NEGATIVES = ("hard", "random", "mixed")
SPLIT_POLICIES = ("auto", "karpathy", "official", "random")
CHECK_MEDIA = ("verify", "decode", "none")
MATCH_CLASSES = ["no", "yes"]


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped (the Karpathy ``tokens`` field)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _norm(text: str) -> str:
    return " ".join(tokenize(text))


# ----------------------------------------------------------------------------------- image files
class ImageIndex:
    """Image files under a root, by file name; skips hidden files and ``__MACOSX``."""

    def __init__(self, root: Path, under: str | None = None):
        self.root = root
        self.by_name: dict[str, list[str]] = defaultdict(list)
        base = root / under if under else root
        if under:
            safe_media_path(root, under, "image_dir option")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n != "__MACOSX")
            for fn in filenames:
                if fn.startswith(".") or os.path.splitext(fn.lower())[1] not in IMAGE_EXTENSIONS:
                    continue
                rel = (Path(dirpath) / fn).relative_to(root).as_posix()
                self.by_name[fn].append(rel)
        self.n = sum(len(v) for v in self.by_name.values())

    def resolve(self, ref: str, where: str, prefer: str | None = None) -> str:
        """The relative path of ``ref`` (a file name, or a path relative to the root)."""
        if "/" in ref or "\\" in ref or os.path.isabs(ref):
            rel = safe_media_path(self.root, ref, where)
            if (self.root / rel).is_file():
                return rel
            hits = self.by_name.get(Path(rel).name, [])
            if len(hits) == 1:
                return hits[0]
            raise DatasetError(f"{where}: image file {ref!r} does not exist under {self.root}")
        hits = self.by_name.get(ref, [])
        if not hits:
            raise DatasetError(
                f"{where}: image file {ref!r} not found under {self.root} ({self.n} image files there); "
                "expected the file the annotation names"
            )
        if len(hits) > 1 and prefer:
            pref = [h for h in hits if f"/{prefer}/" in f"/{h}"]
            hits = pref or hits
        if len(hits) > 1:
            hits = sorted(hits, key=lambda h: (h.count("/"), h))
        return safe_media_path(self.root, hits[0], where)


# ---------------------------------------------------------------------------------------- splits
def _random_split(keys: list[str], fractions: Sequence[float], rng: np.random.Generator) -> dict[str, str]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DatasetError(f"split_fractions = {tuple(fractions)!r}; expected 3 non-negative fractions summing to 1")
    order = [keys[i] for i in rng.permutation(len(keys))]
    n = len(order)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    n_train = n - n_val - n_test
    return {k: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, k in enumerate(order)}


# ------------------------------------------------------------------------------------- negatives
def _valid(k: int, j: int, img_of: np.ndarray, norms: list[str], own: list[set[str]]) -> bool:
    return img_of[j] != img_of[k] and norms[j] not in own[img_of[k]]


def _fix(perm: np.ndarray, idx: Sequence[int], img_of, norms, own, rng: np.random.Generator) -> None:
    """Swap entries of ``perm`` until every k in ``idx`` is valid (each swap keeps it a permutation)."""
    n = len(perm)
    for k in idx:
        if _valid(k, perm[k], img_of, norms, own):
            continue
        for j in rng.permutation(n):
            if j != k and _valid(k, perm[j], img_of, norms, own) and _valid(j, perm[k], img_of, norms, own):
                perm[k], perm[j] = perm[j], perm[k]
                break
        else:
            raise DatasetError(
                "cannot find a negative caption for every positive (too few images or identical captions in the split)"
            )


def _tfidf(texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", sublinear_tf=True)
    try:
        return vec.fit_transform(texts)
    except ValueError:  # empty vocabulary (only stop words)
        return None


def negatives(
    captions: list[str],
    img_of: Sequence[int],
    own: list[set[str]],
    mode: str,
    rng: np.random.Generator,
    hard_pool: int = 10,
    hard_candidates: int = 20000,
    hard_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(perm, cosine): positive k is paired with caption ``perm[k]`` for its negative, and the
    TF-IDF cosine of the two captions. ``perm`` is a permutation of range(n); ``perm[k]`` belongs
    to another image and is none of image k's own captions (``own``: normalised texts per image).
    ``hard_mask``: which positives get a hard negative (all for "hard", none for "random")."""
    n = len(captions)
    img_of = np.asarray(img_of)
    if len(set(img_of.tolist())) < 2:
        raise DatasetError("a split needs at least 2 images to pair captions with other images")
    norms = [_norm(c) for c in captions]
    X = _tfidf(captions)
    perm = -np.ones(n, dtype=np.int64)
    if mode != "random" and X is not None:
        want = np.ones(n, bool) if hard_mask is None else hard_mask
        used = np.zeros(n, bool)
        order = [k for k in rng.permutation(n) if want[k]]
        cols = np.arange(n) if n <= hard_candidates else np.sort(rng.choice(n, hard_candidates, replace=False))
        Xc = X[cols].T.tocsc()
        chunk = max(16, int(4e6 // max(len(cols), 1)))
        top = min(len(cols), hard_pool + 8)
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            S = (X[rows] @ Xc).toarray()
            same = img_of[cols][None, :] == img_of[rows][:, None]
            S[same] = -1.0
            cand = (
                np.argpartition(-S, top - 1, axis=1)[:, :top]
                if top < len(cols)
                else np.tile(np.arange(len(cols)), (len(rows), 1))
            )
            for r, k in enumerate(rows):
                c = cand[r][np.argsort(-S[r, cand[r]], kind="stable")]
                taken = 0
                for ci in c:
                    if S[r, ci] <= 0 or taken >= hard_pool:
                        break
                    j = int(cols[ci])
                    taken += 1
                    if not used[j] and _valid(k, j, img_of, norms, own):
                        perm[k] = j
                        used[j] = True
                        break
    # the rest: a random permutation of the unused captions, then fixed by swaps
    rest = np.flatnonzero(perm < 0)
    free = np.setdiff1d(np.arange(n), perm[perm >= 0])
    perm[rest] = free[rng.permutation(len(free))]
    _fix(perm, rest, img_of, norms, own, rng)
    if X is not None:
        cos = np.asarray(X.multiply(X[perm]).sum(axis=1)).ravel()
    else:
        cos = np.zeros(n)
    return perm, cos


# ---------------------------------------------------------------------------------------- build
def build_matching(
    entries: dict[str, CaptionEntry],
    *,
    name: str,
    fmt: str,
    source: Path,
    index: ImageIndex,
    seed: int,
    problems: Problems,
    progress: bool,
    split_of: dict[str, str] | None,
    split_source: str,
    split_fractions: Sequence[float],
    pairs_per_image: int,
    negatives_mode: str,
    hard_pool: int,
    hard_candidates: int,
    check_media: str,
    max_images: int | None,
    stats: dict[str, Any] | None = None,
) -> Built:
    """The matching dataset from parsed caption entries (see the module docstring)."""
    if negatives_mode not in NEGATIVES:
        raise DatasetError(f"{name}: negatives = {negatives_mode!r}; expected one of {NEGATIVES}")
    if check_media not in CHECK_MEDIA:
        raise DatasetError(f"{name}: check_media = {check_media!r}; expected one of {CHECK_MEDIA}")
    if not isinstance(pairs_per_image, int) or pairs_per_image < 1:
        raise DatasetError(f"{name}: pairs_per_image = {pairs_per_image!r}; expected an integer >= 1")
    stats = dict(stats or {})

    def stream(*key: int) -> np.random.Generator:
        # independent streams, so the split and the positives do not depend on the negatives option
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(101, *key)))

    rng = stream(0)
    # 1. split membership (before touching files: unsplit images are not checked)
    unsplit = 0
    if split_of is not None:
        for key, e in entries.items():
            e.split = split_of.get(key, split_of.get(Path(e.ref).name))
        unsplit = sum(e.split is None for e in entries.values())
        entries = {k: e for k, e in entries.items() if e.split is not None}
    # 2. image files, captions
    kept: list[CaptionEntry] = []
    paths: dict[str, str] = {}
    seen_path: dict[str, str] = {}
    n_empty = n_dup_caps = 0
    for e in _progress(list(entries.values()), enabled=progress, desc=f"{name}: checking images", unit="image"):
        try:
            rel = index.resolve(e.ref, e.where, prefer=e.filepath)
        except DatasetError as exc:
            kind = "unsafe_path" if "escapes" in str(exc) or "absolute" in str(exc) else "missing_file"
            msg = str(exc)
            msg = msg[len(e.where) + 2 :] if msg.startswith(e.where + ": ") else msg
            problems.error(kind, e.where, msg, file=e.ref)
            continue
        if rel in seen_path:
            problems.error("duplicate", e.where, f"image file {rel} is also listed at {seen_path[rel]}", file=rel)
            continue
        if check_media != "none":
            try:
                check_image(source / rel, decode=check_media == "decode")
            except DatasetError as exc:
                problems.error("corrupt", e.where, str(exc), file=rel)
                continue
        caps: list[str] = []
        normed: set[str] = set()
        for cap, w in e.captions:
            c = " ".join(cap.split())
            if not c:
                n_empty += 1
                problems.error("empty_caption", w, f"empty caption for image {e.ref!r}; expected a sentence")
                continue
            if _norm(c) in normed:
                n_dup_caps += 1
                problems.warn("duplicate", w, f"caption {c!r} repeats another caption of {e.ref!r}; kept once")
                continue
            normed.add(_norm(c))
            caps.append(c)
        if not caps:
            problems.error("empty_caption", e.where, f"image {e.ref!r} has no usable caption", file=rel)
            continue
        e.captions = [(c, "") for c in caps]
        seen_path[rel] = e.where
        paths[e.key] = rel
        kept.append(e)
    if not kept:
        return Built(
            name=name,
            format=fmt,
            modalities={"image": "image", "text": "text"},
            targets={"match": MATCH_CLASSES},
            samples=[],
        )
    # 3. splits for entries that have none
    if any(e.split is None for e in kept):
        rs = _random_split(sorted(e.key for e in kept if e.split is None), split_fractions, rng)
        for e in kept:
            e.split = e.split or rs[e.key]
    if max_images is not None and len(kept) > max_images:
        sub = set(rng.choice(len(kept), max_images, replace=False).tolist())
        kept = [e for i, e in enumerate(sorted(kept, key=lambda e: e.key)) if i in sub]
    kept.sort(key=lambda e: (SPLITS.index(e.split), e.key))  # type: ignore[arg-type]
    # 4. pairs per split
    samples: list[Sample] = []
    neg_cos: dict[str, float] = {}
    for si, sp in enumerate(SPLITS):
        imgs = [e for e in kept if e.split == sp]
        if not imgs:
            continue
        rng_pos, rng_neg = stream(1, si), stream(2, si)
        caps, img_of, own = [], [], []
        for i, e in enumerate(imgs):
            texts = [c for c, _ in e.captions]
            own.append({_norm(t) for t in texts})
            choice = rng_pos.permutation(len(texts))[: min(pairs_per_image, len(texts))]
            for j in sorted(choice.tolist()):
                caps.append(texts[j])
                img_of.append(i)
        hard_mask = None
        if negatives_mode == "mixed":
            hard_imgs = rng_neg.permutation(len(imgs))[: len(imgs) // 2]
            hard_mask = np.isin(np.asarray(img_of), hard_imgs)
        try:
            perm, cos = negatives(
                caps,
                img_of,
                own,
                "random" if negatives_mode == "random" else "hard",
                rng_neg,
                hard_pool,
                hard_candidates,
                hard_mask,
            )
        except DatasetError as exc:
            raise DatasetError(f"{name}: split {sp!r} ({len(imgs)} images): {exc}") from exc
        neg_cos[sp] = round(float(cos.mean()), 4) if len(cos) else 0.0
        count: Counter[int] = Counter()
        for k, (cap, i) in enumerate(zip(caps, img_of)):
            e = imgs[i]
            j = count[i]
            count[i] += 1
            base = e.key
            samples.append(Sample(f"{base}#{j}+", sp, {"image": paths[e.key], "text": cap}, {"match": 1}))
            samples.append(Sample(f"{base}#{j}-", sp, {"image": paths[e.key], "text": caps[perm[k]]}, {"match": 0}))
    # 5. caption references
    files = _caption_files(name, kept, paths)
    per_split = Counter(e.split for e in kept)
    stats.update(
        {
            "images": len(kept),
            "images_per_split": {sp: per_split.get(sp, 0) for sp in SPLITS},
            "captions": sum(len(e.captions) for e in kept),
            "split_policy": split_source,
            "negatives": negatives_mode,
            "mean_negative_tfidf_cosine": neg_cos,
        }
    )
    if unsplit:
        stats["unsplit_images"] = unsplit
    if n_dup_caps:
        stats["duplicate_captions_kept_once"] = n_dup_caps
    info = {
        "description": f"{name}: image-caption matching (match = yes when the caption describes the image); "
        "negatives are captions of other images of the same split (fusionkit.data.captions)",
        "task": "matching",
        "ceilings": {"chance": 0.5, "image": 0.5, "text": 0.5},
        "split_policy": split_source,
        "negatives": negatives_mode,
        "mean_negative_tfidf_cosine": neg_cos,
        "n_images": stats["images_per_split"],
        "files": {
            "captions": "captions.json",
            "coco_references": {sp: f"annotations/captions_{sp}.json" for sp in SPLITS if per_split.get(sp)},
        },
    }
    return Built(
        name=name,
        format=fmt,
        modalities={"image": "image", "text": "text"},
        targets={"match": list(MATCH_CLASSES)},
        samples=samples,
        info=info,
        media_root=source,
        files=files,
        stats=stats,
    )


def _caption_files(name: str, kept: list[CaptionEntry], paths: dict[str, str]) -> dict[str, Any]:
    images, sentid = [], 0
    coco: dict[str, dict[str, Any]] = {}
    for imgid, e in enumerate(kept):
        sents = []
        for c, _ in e.captions:
            sents.append({"raw": c, "tokens": tokenize(c), "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {
                "filename": paths[e.key],
                "imgid": imgid,
                "original_id": e.original_id if e.original_id is not None else e.key,
                "split": e.split,
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
        doc = coco.setdefault(
            e.split,  # type: ignore[arg-type]
            {
                "info": {"description": f"{name} {e.split} caption references (fusionkit)"},
                "licenses": [],
                "type": "captions",
                "images": [],
                "annotations": [],
            },
        )
        doc["images"].append({"id": imgid, "file_name": paths[e.key]})
        for s in sents:
            doc["annotations"].append({"id": s["sentid"], "image_id": imgid, "caption": s["raw"]})
    files: dict[str, Any] = {"captions.json": {"dataset": name, "images": images}}
    for sp, doc in coco.items():
        files[f"annotations/captions_{sp}.json"] = doc
    return files


# -------------------------------------------------------------------------------------- loaders
def _find(source: Path, names: Sequence[str], depth: int = 3) -> Path | None:
    for d in range(depth + 1):
        for n in names:
            hits = sorted(
                p
                for p in source.glob("/".join(["*"] * d + [n]))
                if p.is_file() and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(source).parts)
            )
            if hits:
                return hits[0]
    return None


def scan_flickr(
    variant: str,
    /,
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    captions: str = "auto",
    split: str = "auto",
    split_fractions: Sequence[float] = (0.75, 0.125, 0.125),
    pairs_per_image: int = 2,
    negatives: str = "hard",
    hard_pool: int = 10,
    hard_candidates: int = 20000,
    check_media: str = "verify",
    max_images: int | None = None,
    image_dir: str | None = None,
    encoding: str = "utf-8",
) -> Built:
    """Flickr8k or Flickr30k (``variant``) as image-caption matching (module docstring); the
    registry's loaders are :data:`scan_flickr8k` and :data:`scan_flickr30k`.

    Options: ``captions`` which captions file to read when several are present: "auto" (Kaggle
    CSV, else token file, else Karpathy JSON), "kaggle", "token", "karpathy". ``split``: "auto",
    "karpathy", "official", "random" (see Splits). ``split_fractions``: (train, val, test) for the
    random split. ``pairs_per_image``: positives per image (each with one negative).
    ``negatives``: "hard", "random" or "mixed". ``hard_pool``: how many nearest captions a hard
    negative is drawn from. ``hard_candidates``: compare with at most this many captions.
    ``check_media``: "verify", "decode" or "none". ``max_images``: keep a seeded subset of this many
    images (after splitting). ``image_dir``: only look for images in this sub-folder.
    ``encoding``: of the text files (default UTF-8; a BOM is ignored)."""
    if variant not in ("flickr8k", "flickr30k"):
        raise ValueError(f"scan_flickr: variant = {variant!r}; expected 'flickr8k' or 'flickr30k'")
    if split not in SPLIT_POLICIES:
        raise DatasetError(f"{variant}: split = {split!r}; expected one of {SPLIT_POLICIES}")
    if source.is_file():
        raise DatasetError(f"{variant}: source_dir {source} is a file; expected the dataset folder")
    if variant == "flickr8k":
        karpathy = _find(source, ["dataset_flickr8k.json"])
        token = _find(source, ["Flickr8k.token.txt"])
        table = _find(source, ["captions.txt", "captions.csv"], depth=2)
    else:
        karpathy = _find(source, ["dataset_flickr30k.json"])
        token = _find(source, ["results_20130124.token", "Flickr30k.token.txt", "results.token"])
        table = _find(source, ["results.csv", "captions.txt", "captions.csv"], depth=2)
    choices = {"karpathy": karpathy, "token": token, "kaggle": table}
    if captions == "auto":
        fmt = next((k for k in ("kaggle", "token", "karpathy") if choices[k] is not None), None)
    elif captions in choices:
        fmt = captions
        if choices[fmt] is None:
            raise DatasetError(f"{variant}: captions={captions!r} but no such file under {source}")
    else:
        raise DatasetError(f"{variant}: captions = {captions!r}; expected auto, kaggle, token or karpathy")
    if fmt is None:
        raise DatasetError(
            f"{source}: no {variant} captions file found; expected captions.txt (Kaggle CSV), "
            f"{'Flickr8k.token.txt' if variant == 'flickr8k' else 'results_20130124.token / results.csv'} "
            f"or dataset_{variant}.json (Karpathy) - `fusionkit data download {variant}` fetches them"
        )
    path = choices[fmt]
    assert path is not None
    if fmt == "kaggle":
        entries = parse_caption_table(path, problems, encoding)
        fmt_name = "kaggle-csv"
    elif fmt == "token":
        entries = parse_token_file(path, problems, encoding)
        fmt_name = "flickr-token"
    else:
        entries = parse_karpathy(path, problems)
        fmt_name = "karpathy-json"
    # split policy
    split_of: dict[str, str] | None = None
    split_source = "random"
    official = {}
    if variant == "flickr8k":
        for sp, stem in (("train", "trainImages"), ("val", "devImages"), ("test", "testImages")):
            p = _find(source, [f"Flickr_8k.{stem}.txt"])
            if p is not None:
                official[sp] = p
    if split in ("auto", "karpathy") and karpathy is not None:
        if fmt == "karpathy":
            split_of = {k: e.split for k, e in entries.items() if e.split}  # type: ignore[misc]
        else:
            kp = parse_karpathy(karpathy, Problems("skip"))
            split_of = {Path(e.ref).name: e.split for e in kp.values() if e.split}  # type: ignore[misc]
        split_source = "karpathy"
    elif split == "karpathy":
        raise DatasetError(f"{variant}: split='karpathy' but no dataset_{variant}.json under {source}")
    elif split in ("auto", "official") and len(official) == 3:
        split_of = parse_split_files(source, official)
        split_source = "official"
    elif split == "official":
        raise DatasetError(
            f"{variant}: split='official' but the split files are missing under {source}; "
            "expected Flickr_8k.trainImages.txt, Flickr_8k.devImages.txt and Flickr_8k.testImages.txt"
        )
    if split == "random":
        split_of = None
        for e in entries.values():
            e.split = None
    elif split_of is None:
        for e in entries.values():
            e.split = None
    index = ImageIndex(source, image_dir)
    return build_matching(
        entries,
        name=variant,
        fmt=fmt_name,
        source=source,
        index=index,
        seed=seed,
        problems=problems,
        progress=progress,
        split_of=split_of,
        split_source=split_source,
        split_fractions=split_fractions,
        pairs_per_image=pairs_per_image,
        negatives_mode=negatives,
        hard_pool=hard_pool,
        hard_candidates=hard_candidates,
        check_media=check_media,
        max_images=max_images,
        stats={"captions_file": str(path.relative_to(source)), "image_files_found": index.n},
    )


#: the registry's loaders: :func:`scan_flickr` for one variant, each with its own random-split default
scan_flickr8k = functools.partial(scan_flickr, "flickr8k")
scan_flickr8k.__doc__ = """Flickr8k as image-caption matching: :func:`scan_flickr` with ``variant="flickr8k"``."""
scan_flickr30k = functools.partial(scan_flickr, "flickr30k", split_fractions=(0.9, 0.05, 0.05))
scan_flickr30k.__doc__ = """Flickr30k as image-caption matching: the options of :func:`scan_flickr`. Flickr30k has
    no official split files: ``split="auto"`` uses ``dataset_flickr30k.json`` (Karpathy: 29,000 /
    1,014 / 1,000 images) when present, else a random split by ``split_fractions`` (default 0.9 / 0.05 / 0.05)."""


def scan_imagefolder(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    captions_file: str | None = None,
    name: str = "imagefolder",
    split_fractions: Sequence[float] = (0.75, 0.125, 0.125),
    pairs_per_image: int = 2,
    negatives: str = "hard",
    hard_pool: int = 10,
    hard_candidates: int = 20000,
    check_media: str = "verify",
    max_images: int | None = None,
    image_dir: str | None = None,
    encoding: str = "utf-8",
) -> Built:
    """A folder of images + a captions file, as image-caption matching (module docstring).

    ``captions_file``: relative to ``source_dir``; default the first of captions.csv, captions.tsv,
    captions.txt, captions.jsonl, captions.json. It may be a table with an image column
    (image/filename/file_name/...) and a caption column (caption/text/comment/...), JSONL
    ``{"image": ..., "caption": ..., "split": optional}``, COCO or Karpathy JSON, or
    ``{"image.jpg": ["caption", ...]}``. A ``split`` given per image is used; the others are split
    at random by ``split_fractions``. ``name``: the dataset name. Other options as :func:`scan_flickr`."""
    if source.is_file():
        captions_path = source
        source = source.parent
    elif captions_file:
        captions_path = source / safe_media_path(source, captions_file, "captions_file option")
        if not captions_path.is_file():
            raise DatasetError(f"{captions_path}: captions file not found")
    else:
        found = next(
            (
                source / n
                for n in ("captions.csv", "captions.tsv", "captions.txt", "captions.jsonl", "captions.json")
                if (source / n).is_file()
            ),
            None,
        )
        if found is None:
            raise DatasetError(
                f"{source}: no captions file; expected captions.csv / .tsv / .txt / .jsonl / .json (or pass captions_file=)"
            )
        captions_path = found
    entries, fmt = parse_captions_file(captions_path, problems, encoding)
    has_split = any(e.split for e in entries.values())
    index = ImageIndex(source, image_dir)
    return build_matching(
        entries,
        name=name,
        fmt=fmt,
        source=source,
        index=index,
        seed=seed,
        problems=problems,
        progress=progress,
        split_of=None,
        split_source="given+random" if has_split else "random",
        split_fractions=split_fractions,
        pairs_per_image=pairs_per_image,
        negatives_mode=negatives,
        hard_pool=hard_pool,
        hard_candidates=hard_candidates,
        check_media=check_media,
        max_images=max_images,
        stats={"captions_file": captions_path.name, "image_files_found": index.n},
    )
