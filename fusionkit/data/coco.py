"""COCO captions as image-caption matching (the task and files of :mod:`fusionkit.data.captions`).

Reads, under ``source_dir`` (what ``fusionkit data download coco`` leaves there)::

    annotations/captions_train2014.json, annotations/captions_val2014.json   (or ...2017.json)
    train2014/COCO_train2014_000000000009.jpg ...  val2014/...               (images, any depth)
    dataset_coco.json                                                         (Karpathy split, optional)

``captions="auto"`` reads COCO's own JSON when present, else Karpathy's ``dataset_coco.json``
(which carries the captions too). Both name every image by file; the image is looked up under
``source_dir`` (preferring the folder of its split, e.g. ``val2014/``).

Splits (an image never appears in two splits), ``split=``
    "auto": the Karpathy split when ``dataset_coco.json`` is there (113,287 train incl. restval /
    5,000 val / 5,000 test), else "official"; "karpathy": insist on it; "official": COCO's train
    images -> train, COCO's val images divided at random (seeded) into val and test, a fraction
    ``val_test_split`` of them to test; "random": a seeded split of all images by ``split_fractions``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionkit.data.base import Built, DatasetError
from fusionkit.data.caption_formats import CaptionEntry, parse_coco_captions, parse_karpathy
from fusionkit.data.captions import SPLIT_POLICIES, ImageIndex, _find, build_matching
from fusionkit.data.problems import Problems

__all__ = ["scan"]

_COCO_FILE = re.compile(r"captions_(train|val)(\d{4})\.json")


def _coco_files(source: Path, year: str | None) -> dict[str, list[Path]]:
    by_year: dict[str, list[Path]] = {}
    for p in sorted(source.rglob("captions_*.json")):
        if any(part.startswith((".", "__MACOSX")) for part in p.relative_to(source).parts):
            continue
        m = _COCO_FILE.fullmatch(p.name)
        if m and p.relative_to(source).as_posix().count("/") <= 2:
            by_year.setdefault(m.group(2), []).append(p)
    if year is not None:
        return {year: by_year.get(str(year), [])} if by_year.get(str(year)) else {}
    return by_year


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    captions: str = "auto",
    split: str = "auto",
    year: str | None = None,
    val_test_split: float = 0.5,
    split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
    pairs_per_image: int = 2,
    negatives: str = "hard",
    hard_pool: int = 10,
    hard_candidates: int = 20000,
    check_media: str = "verify",
    max_images: int | None = None,
    image_dir: str | None = None,
) -> Built:
    """COCO captions as image-caption matching (module docstring).

    ``captions``: "auto", "coco" (``captions_{train,val}YEAR.json``) or "karpathy" (``dataset_coco.json``).
    ``split``: "auto", "karpathy", "official" or "random". ``year``: "2014" or "2017" when both
    sets of COCO files are there (default: 2014 when present - the Karpathy split and VQA v2 use
    it). ``val_test_split``: share of COCO's val images that go to test under the official split.
    ``split_fractions``: for the random split. The other options are those of
    :func:`fusionkit.data.captions.scan_flickr`."""
    if split not in SPLIT_POLICIES:
        raise DatasetError(f"coco: split = {split!r}; expected one of {SPLIT_POLICIES}")
    if not 0.0 <= float(val_test_split) <= 1.0:
        raise DatasetError(f"coco: val_test_split = {val_test_split!r}; expected a fraction in [0, 1]")
    if source.is_file():
        raise DatasetError(f"coco: source_dir {source} is a file; expected the COCO folder")
    karpathy = _find(source, ["dataset_coco.json"])
    files = _coco_files(source, year)
    if year is None and len(files) > 1:
        files = {"2014": files["2014"]} if "2014" in files else {max(files): files[max(files)]}
    coco_paths = next(iter(files.values()), [])
    if captions == "auto":
        captions = "coco" if coco_paths else "karpathy" if karpathy else ""
    if captions not in ("coco", "karpathy"):
        raise DatasetError(
            f"{source}: no COCO captions found; expected annotations/captions_{{train,val}}2014.json "
            "or dataset_coco.json (Karpathy) - `fusionkit data download coco` fetches them"
        )
    if captions == "coco" and not coco_paths:
        raise DatasetError(f"coco: captions='coco' but no captions_{{train,val}}YEAR.json under {source}")
    if captions == "karpathy" and karpathy is None:
        raise DatasetError(f"coco: captions='karpathy' but no dataset_coco.json under {source}")
    if split == "karpathy" and karpathy is None:
        raise DatasetError(f"coco: split='karpathy' but no dataset_coco.json under {source}")
    entries: dict[str, CaptionEntry] = {}
    if captions == "coco":
        for p in coco_paths:
            m = _COCO_FILE.fullmatch(p.name)
            official = "train" if m and m.group(1) == "train" else "val"
            for k, e in parse_coco_captions(p, problems, official).items():
                entries[k] = e
        fmt = "coco-json"
    else:
        entries = parse_karpathy(karpathy, problems)  # type: ignore[arg-type]
        fmt = "karpathy-json"
        for e in entries.values():  # the folder in the Karpathy file is the official split
            e.filepath = e.filepath or (e.ref.split("/", 1)[0] if "/" in e.ref else None)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(202,)))
    policy = split
    if split == "auto":
        policy = "karpathy" if karpathy is not None else "official"
    if policy == "karpathy":
        if captions == "karpathy":
            pass  # entries carry the Karpathy split already
        else:
            kp = parse_karpathy(karpathy, Problems("skip"))  # type: ignore[arg-type]
            by_id = {e.original_id: e.split for e in kp.values() if e.original_id is not None}
            unsplit = 0
            for e in entries.values():
                e.split = by_id.get(e.original_id)
                unsplit += e.split is None
            if unsplit:
                problems.dropped(
                    str(karpathy), f"{unsplit} images of the COCO files are in no Karpathy split; left out"
                )
            entries = {k: e for k, e in entries.items() if e.split is not None}
    elif policy == "official":
        official_of = {}
        for k, e in entries.items():
            folder = (e.filepath or "").lower()
            official_of[k] = "train" if "train" in folder else "val" if "val" in folder else e.split or "train"
        vals = sorted(k for k, s in official_of.items() if s == "val")
        n_test = round(len(vals) * float(val_test_split))
        to_test = {vals[i] for i in rng.permutation(len(vals))[:n_test]}
        for k, e in entries.items():
            e.split = "test" if k in to_test else official_of[k]
    else:
        for e in entries.values():
            e.split = None
    index = ImageIndex(source, image_dir)
    return build_matching(
        entries,
        name="coco",
        fmt=fmt,
        source=source,
        index=index,
        seed=seed,
        problems=problems,
        progress=progress,
        split_of=None,
        split_source=policy,
        split_fractions=split_fractions,
        pairs_per_image=pairs_per_image,
        negatives_mode=negatives,
        hard_pool=hard_pool,
        hard_candidates=hard_candidates,
        check_media=check_media,
        max_images=max_images,
        stats={"image_files_found": index.n, "captions_source": fmt},
    )
