"""The raw caption formats, each parsed in one place: Kaggle-style caption tables (CSV/TSV/pipe),
Flickr token files, Flickr8k split lists, Karpathy split JSON (``dataset_*.json``, and the
``captions.json`` every fusionkit caption dataset writes), COCO captions JSON, JSONL and
``{"image.jpg": [captions]}``.

Every parser reports bad records to a :class:`~fusionkit.data.problems.Problems` collector (which
raises, skips or collects according to its ``on_error``) with ``where`` = ``file: record``. The
dataset loaders (:mod:`fusionkit.data.captions`, :mod:`fusionkit.data.coco`) turn what they return
into :class:`CaptionEntry` objects; the task readers (:class:`fusionkit.tasks.captioning.CaptionDataset`,
:func:`fusionkit.tasks.vqa.image_keys_from_karpathy`, the task index) read the same records
through :func:`karpathy_images` and :func:`coco_images`, with a collector that files into their
:class:`~fusionkit.data.problems.InputReport`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionkit.data.base import SPLIT_ALIASES as BASE_SPLIT_ALIASES
from fusionkit.data.base import DatasetError
from fusionkit.data.problems import Problems
from fusionkit.data.readers import read_csv, read_json, read_jsonl, read_lines

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_COLUMNS",
    "SPLIT_ALIASES",
    "CaptionEntry",
    "CocoImage",
    "KarpathyImage",
    "coco_images",
    "karpathy_images",
    "parse_caption_table",
    "parse_captions_file",
    "parse_coco_captions",
    "parse_karpathy",
    "parse_split_files",
    "parse_token_file",
]

IMAGE_COLUMNS = ("image", "image_name", "filename", "file_name", "file", "img", "path", "image_path")
CAPTION_COLUMNS = ("caption", "comment", "text", "sentence", "description", "raw")
#: the split names of :data:`fusionkit.data.base.SPLIT_ALIASES`, and the Karpathy files' ``restval`` (train)
SPLIT_ALIASES = {**BASE_SPLIT_ALIASES, "restval": "train"}


@dataclass
class CaptionEntry:
    """One image of a caption corpus, as read from the raw files."""

    key: str  # the name the raw files use (file name, or COCO id as str)
    ref: str  # what the raw file says the image is: a file name or a relative path
    where: str  # file:line / file: record of its first mention
    captions: list[tuple[str, str]] = field(default_factory=list)  # (caption, where)
    split: str | None = None
    original_id: int | None = None
    filepath: str | None = None  # a folder the raw file names (Karpathy 'filepath', COCO split folder)


# --------------------------------------------------------------------------------- tables, token files
def _add(entries: dict[str, CaptionEntry], key: str, ref: str, caption: str, where: str, problems: Problems) -> None:
    e = entries.get(key)
    if e is None:
        e = entries[key] = CaptionEntry(key=key, ref=ref, where=where)
    e.captions.append((caption, where))


def parse_caption_table(path: Path, problems: Problems, encoding: str = "utf-8") -> dict[str, CaptionEntry]:
    """A CSV/TSV/pipe table with an image column and a caption column (Kaggle Flickr8k
    ``captions.txt``, Kaggle Flickr30k ``results.csv``, a user's ``captions.csv``)."""
    cols, rows = read_csv(
        path, encoding=encoding, on_bad_row=lambda ln, msg: problems.error("malformed", f"{path}:{ln}", msg)
    )
    img_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    cap_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if img_col is None or cap_col is None:
        raise DatasetError(
            f"{path}:1: header {cols}; expected an image column (one of {list(IMAGE_COLUMNS)}) and a caption "
            f"column (one of {list(CAPTION_COLUMNS)}), e.g. 'image,caption'"
        )
    entries: dict[str, CaptionEntry] = {}
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        ref = row[img_col]
        if not ref:
            problems.error("malformed", where, f"empty {img_col!r} value; expected an image file name")
            continue
        _add(entries, ref, ref, row[cap_col], where, problems)
    return entries


def parse_token_file(path: Path, problems: Problems, encoding: str = "utf-8") -> dict[str, CaptionEntry]:
    """``Flickr8k.token.txt`` / ``results_20130124.token``: ``name.jpg#k<TAB>caption`` per line."""
    entries: dict[str, CaptionEntry] = {}
    for lineno, line in read_lines(path, encoding):
        where = f"{path}:{lineno}"
        if "\t" not in line:
            problems.error("malformed", where, f"expected 'image.jpg#k<TAB>caption', got {line[:60]!r}")
            continue
        left, caption = line.split("\t", 1)
        name, _, k = left.partition("#")
        if not name or (k and not k.isdigit()):
            problems.error("malformed", where, f"expected 'image.jpg#k' before the tab, got {left!r}")
            continue
        _add(entries, name.strip(), name.strip(), caption.strip(), where, problems)
    return entries


def parse_split_files(folder: Path, files: dict[str, Path]) -> dict[str, str]:
    """{image name: split} from Flickr8k's ``Flickr_8k.{train,dev,test}Images.txt``."""
    out: dict[str, str] = {}
    for split, p in files.items():
        for lineno, line in read_lines(p):
            name = line.strip()
            if name in out and out[name] != split:
                raise DatasetError(f"{p}:{lineno}: image {name!r} is also listed in the {out[name]} split file")
            out[name] = split
    return out


# --------------------------------------------------------------------------------- Karpathy JSON
@dataclass
class KarpathyImage:
    """One ``images[k]`` record of a Karpathy split file, as written (checked: a non-empty string
    ``filename``, a string ``filepath`` when there is one)."""

    index: int  # k
    where: str  # "file: images[k] (ref)"
    filename: str
    filepath: str | None
    split: Any  # as written; see :meth:`split_name`
    ids: dict[str, Any]  # "imgid" / "cocoid" as written (absent keys left out)
    raw: dict[str, Any]

    @property
    def ref(self) -> str:
        """``filepath/filename`` (or ``filename``): the image file relative to the image root."""
        return f"{self.filepath}/{self.filename}" if self.filepath else self.filename

    @property
    def stem(self) -> str:
        """The image id of the feature cache and the task readers: the file stem."""
        return Path(self.filename).stem

    @property
    def original_id(self) -> int | None:
        cid = self.ids.get("cocoid", self.ids.get("imgid"))
        return cid if isinstance(cid, int) and not isinstance(cid, bool) else None

    def split_name(self) -> str | None:
        """train / val / test (``restval`` and the other :data:`SPLIT_ALIASES` mapped), else None."""
        return SPLIT_ALIASES.get(str(self.split if self.split is not None else "").lower())

    def sentences(self, problems: Problems) -> list[tuple[str, str]] | None:
        """``[(raw caption, where)]`` (``raw``, else the joined ``tokens``); None when there is no
        ``sentences`` list. A sentence without text is a bad record of ``problems``."""
        sents = self.raw.get("sentences")
        if not isinstance(sents, list):
            problems.error("malformed", self.where, "expected a 'sentences' list")
            return None
        out = []
        for j, s in enumerate(sents):
            w = f"{self.where} sentences[{j}]"
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(map(str, s["tokens"]))
            if not isinstance(raw, str):
                problems.error("malformed", w, "expected a sentence object with a string 'raw'")
                continue
            out.append((raw, w))
        return out


def karpathy_images(path: str | Path, problems: Problems, doc: Any = None) -> Iterator[KarpathyImage]:
    """The ``images`` of a Karpathy split file, in file order (a generator: each record is checked
    as the caller reaches it). A file that is not ``{"images": [...]}`` raises DatasetError.
    ``doc``: the file's JSON when the caller has read it already."""
    path = Path(path)
    doc = read_json(path) if doc is None else doc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{path}: expected a Karpathy split object {{'images': [...], 'dataset': ...}}")
    for k, im in enumerate(doc["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str) or not im.get("filename"):
            problems.error("malformed", where, "expected an object with a non-empty string 'filename'")
            continue
        fp = im.get("filepath") or None
        if fp is not None and not isinstance(fp, str):
            problems.error("malformed", where, f"'filepath' = {fp!r}; expected a folder name")
            continue
        ids = {key: im[key] for key in ("imgid", "cocoid") if key in im}
        img = KarpathyImage(k, where, im["filename"], fp, im.get("split"), ids, im)
        img.where = f"{where} ({img.ref})"
        yield img


def parse_karpathy(path: Path, problems: Problems) -> dict[str, CaptionEntry]:
    """Karpathy's ``dataset_{flickr8k,flickr30k,coco}.json`` as caption entries keyed by ``ref``."""
    entries: dict[str, CaptionEntry] = {}
    for im in karpathy_images(path, problems):
        ref, where = im.ref, im.where
        split = im.split_name()
        if split is None:
            problems.error("malformed", where, f"split {im.split!r}; expected train/restval/val/test")
            continue
        if ref in entries:
            problems.error("duplicate", where, f"image {ref!r} appears twice (first at {entries[ref].where})")
            continue
        sents = im.sentences(problems)
        if sents is None:
            continue
        e = entries[ref] = CaptionEntry(key=ref, ref=ref, where=where, split=split, filepath=im.filepath)
        e.original_id = im.original_id
        e.captions.extend(sents)
    return entries


# ------------------------------------------------------------------------------------ COCO JSON
@dataclass
class CocoImage:
    """One image of a COCO captions file with its captions (``[(caption, where)]``, file order)."""

    index: int  # k in images[k]
    where: str  # "file: images[k] (id N)"
    id: int
    file_name: str
    captions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem


def coco_images(path: str | Path, problems: Problems, doc: Any = None) -> list[CocoImage]:
    """The images of a COCO captions file (``images`` + ``annotations``), in file order, each with
    its captions in annotation order. Bad records (an image without an integer ``id`` and a
    ``file_name``, a repeated image or annotation id, an annotation without an integer
    ``image_id`` and a string ``caption``, or naming an image the file does not list) go to
    ``problems``; a file without both lists raises DatasetError. ``doc``: the file's JSON when
    the caller has read it already."""
    path = Path(path)
    doc = read_json(path) if doc is None else doc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("annotations"), list)
    ):
        raise DatasetError(f"{path}: expected a COCO captions object with 'images' and 'annotations' lists")
    by_id: dict[int, CocoImage] = {}
    for k, im in enumerate(doc["images"]):
        where = f"{path}: images[{k}]"
        iid, fn = (im.get("id"), im.get("file_name")) if isinstance(im, dict) else (None, None)
        if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(fn, str) or not fn:
            problems.error("malformed", where, "expected an object with an integer 'id' and a string 'file_name'")
            continue
        where = f"{where} (id {iid})"
        if iid in by_id:
            problems.error("duplicate", where, f"image id {iid} appears twice (first at {by_id[iid].where})")
            continue
        by_id[iid] = CocoImage(k, where, iid, fn)
    seen_ann: set[int] = set()
    for k, a in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(a, dict):
            problems.error("malformed", where, "expected an object")
            continue
        aid, iid, cap = a.get("id"), a.get("image_id"), a.get("caption")
        where = f"{where} (id {aid})"
        if not isinstance(iid, int) or not isinstance(cap, str):
            problems.error("malformed", where, "expected an integer 'image_id' and a string 'caption'")
            continue
        if isinstance(aid, int):
            if aid in seen_ann:
                problems.error("duplicate", where, f"annotation id {aid} appears twice")
                continue
            seen_ann.add(aid)
        img = by_id.get(iid)
        if img is None:
            problems.error(
                "unmatched", where, f"caption names image_id {iid}, which is not in the 'images' list of {path.name}"
            )
            continue
        img.captions.append((cap, where))
    return list(by_id.values())


def parse_coco_captions(path: Path, problems: Problems, split: str | None) -> dict[str, CaptionEntry]:
    """COCO's ``captions_{train,val}{2014,2017}.json`` as caption entries keyed ``folder/id``."""
    m = re.search(r"(train|val|test)(\d{4})", path.name)
    folder = m.group(0) if m else None
    entries: dict[str, CaptionEntry] = {}
    for img in coco_images(path, problems):
        e = CaptionEntry(
            key=f"{folder or path.stem}/{img.id}",
            ref=img.file_name,
            where=img.where,
            split=split,
            original_id=img.id,
            filepath=folder,
        )
        e.captions = img.captions
        entries[e.key] = e
    return entries


# ---------------------------------------------------------------------------- any captions file
def parse_captions_file(path: Path, problems: Problems, encoding: str = "utf-8") -> tuple[dict[str, CaptionEntry], str]:
    """Any supported captions file for ``imagefolder``: (entries, format)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        entries: dict[str, CaptionEntry] = {}
        for lineno, obj in read_jsonl(path, encoding):
            where = f"{path}:{lineno}"
            img = next((obj[c] for c in IMAGE_COLUMNS if c in obj), None)
            cap = next((obj[c] for c in CAPTION_COLUMNS if c in obj), None)
            if not isinstance(img, str) or not img or not isinstance(cap, str):
                problems.error("malformed", where, 'expected {"image": "file name", "caption": "text"}')
                continue
            _add(entries, img, img, cap, where, problems)
            sp = obj.get("split")
            if sp is not None:
                entries[img].split = SPLIT_ALIASES.get(str(sp).lower())
                if entries[img].split is None:
                    problems.error("malformed", where, f"split {sp!r}; expected train/val/test")
                    del entries[img]
        return entries, "captions-jsonl"
    if suffix == ".json":
        doc = read_json(path, encoding)
        if isinstance(doc, dict) and "annotations" in doc:
            return parse_coco_captions(path, problems, None), "coco-json"
        if isinstance(doc, dict) and "images" in doc:
            return parse_karpathy(path, problems), "karpathy-json"
        if isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()):
            entries = {}
            for img, caps in doc.items():
                for j, c in enumerate(caps):
                    _add(entries, img, img, c if isinstance(c, str) else "", f"{path}: [{img!r}][{j}]", problems)
            return entries, "captions-json"
        raise DatasetError(f'{path}: expected COCO captions, a Karpathy split, or {{"image.jpg": ["caption", ...]}}')
    if path.name.endswith((".token.txt", ".token")):
        return parse_token_file(path, problems, encoding), "flickr-token"
    return parse_caption_table(path, problems, encoding), "caption-table"
