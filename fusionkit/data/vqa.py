"""VQA v2 as answer classification over the top-K answers.

Reads, under ``source_dir`` (what ``fusionkit data download vqa`` leaves there, or the ``vqa/``
files the shapes generator writes)::

    v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{"question_id", "image_id", "question"}],
    v2_OpenEnded_mscoco_val2014_questions.json      "data_subtype": "train2014", ...}
    v2_mscoco_train2014_annotations.json           {"annotations": [{"question_id", "image_id",
    v2_mscoco_val2014_annotations.json              "multiple_choice_answer", "answers": [10 x {"answer",
                                                     "answer_confidence", "answer_id"}], "answer_type",
                                                     "question_type"}], "data_subtype": ...}
    train2014/COCO_train2014_000000000009.jpg ...  images, anywhere below source_dir

Question and annotation files are paired by ``data_subtype``; a questions file without
annotations (test-dev) is skipped with a warning. The image of ``image_id`` is the image file whose
name ends in that number (``COCO_val2014_000000000042.jpg``, ``000000000042.jpg``,
``shapes_00042.png``), preferring the folder named like the subtype (``val2014/``).

Splits (by image: all questions of one image stay together)
    subtype containing "train" -> train, "test" -> test, "val" -> val; when no test subtype has
    annotations (the public VQA v2 case), the val images are divided at random (seeded) into val
    and test, a fraction ``val_test_split`` of them to test.

Target ``answer``: the ``top_k`` most frequent ``multiple_choice_answer`` of the *train* split
(classes ordered by frequency, ties alphabetically). Questions whose answer is outside the top K
are dropped and counted per split (``dropped_outside_top_k`` in the report). The sample's text is
the question; its id ``q{question_id}``.

Files besides the manifest: ``vqa/questions_{split}.json`` and ``vqa/annotations_{split}.json`` in
VQA v2 format holding exactly the kept questions with all 10 original answers (for VQA accuracy
later: min(#annotators who gave the answer / 3, 1)), ``data_subtype`` = the fusionkit split and
``original_subtype`` kept per question; ``vqa/answers.json``: the classes with their train counts.
Images are indexed in place (``media_root`` = ``source_dir``).

Validation: malformed question/annotation records, duplicate question ids, annotations without a
question and questions without an annotation (``unmatched``), image ids without an image file,
corrupt images (``check_media``), empty questions, answer lists that are not 10 long (warning).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data.base import SPLITS, Built, DatasetError, Sample
from fusionkit.data.problems import Problems
from fusionkit.data.readers import IMAGE_EXTENSIONS, check_image, read_json, safe_media_path
from fusionkit.progress import progress as _progress

__all__ = [
    "VQAAnnotation",
    "VQAFile",
    "VQAQuestion",
    "processed_vqa_files",
    "read_vqa_file",
    "scan",
    "vqa_annotations",
    "vqa_questions",
]

_TRAILING_INT = re.compile(r"(\d+)$")


def _json_files(source: Path, pattern: str) -> list[Path]:
    out = []
    for p in sorted(source.rglob(pattern)):
        rel = p.relative_to(source)
        if len(rel.parts) <= 4 and not any(x.startswith((".", "__MACOSX")) for x in rel.parts):
            out.append(p)
    return out


class _ImageById:
    def __init__(self, root: Path, under: str | None):
        self.root = root
        self.by_id: dict[int, list[str]] = defaultdict(list)
        base = root / safe_media_path(root, under, "image_dir option") if under else root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n != "__MACOSX")
            for fn in filenames:
                stem, ext = os.path.splitext(fn)
                if fn.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS:
                    continue
                m = _TRAILING_INT.search(stem)
                if m:
                    self.by_id[int(m.group(1))].append((Path(dirpath) / fn).relative_to(root).as_posix())
        self.n = sum(len(v) for v in self.by_id.values())

    def find(self, image_id: int, subtype: str) -> str | None:
        hits = self.by_id.get(image_id, [])
        if len(hits) > 1:
            pref = [h for h in hits if subtype and subtype in h]
            hits = pref or hits
        if len(hits) > 1:
            return None
        return hits[0] if hits else None

    def candidates(self, image_id: int) -> list[str]:
        return self.by_id.get(image_id, [])


# ------------------------------------------------------------------------------- the VQA v2 format
@dataclass
class VQAFile:
    """A VQA v2 questions or annotations file: its ``data_subtype`` ("" when absent) and records."""

    path: Path
    subtype: str
    records: list[Any]
    doc: dict[str, Any]  # the whole object (task_type, info, ...)


def read_vqa_file(path: str | os.PathLike, key: str) -> VQAFile | None:
    """The file at ``path`` when it is a VQA v2 ``{key: [...]}`` object (``key``: "questions" or
    "annotations"), else None; JSON that does not parse raises DatasetError naming the line."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        return None
    return VQAFile(path, str(doc.get("data_subtype") or ""), doc[key], doc)


@dataclass
class VQAQuestion:
    index: int  # k in questions[k]
    where: str  # "file: questions[k] (question_id N)"
    question_id: int
    image_id: int
    question: str  # as written (may be blank)
    raw: dict[str, Any]


def vqa_questions(f: VQAFile, problems: Problems, progress: bool = False) -> Iterator[VQAQuestion]:
    """The questions of ``f`` in file order (a generator: each is checked as the caller reaches
    it): an object with integer ``question_id`` and ``image_id`` and a string ``question``."""
    for k, q in enumerate(_progress(f.records, enabled=progress, desc=f"vqa: {f.path.name}", unit="q")):
        where = f"{f.path}: questions[{k}]"
        if not isinstance(q, dict):
            problems.error("malformed", where, "expected an object")
            continue
        qid, iid, text = q.get("question_id"), q.get("image_id"), q.get("question")
        if not isinstance(qid, int) or isinstance(qid, bool) or not isinstance(iid, int) or isinstance(iid, bool):
            problems.error("malformed", where, "expected integer 'question_id' and 'image_id'")
            continue
        where = f"{where} (question_id {qid})"
        if not isinstance(text, str):
            problems.error("malformed", where, f"question = {text!r}; expected a string")
            continue
        yield VQAQuestion(k, where, qid, iid, text, q)


@dataclass
class VQAAnnotation:
    index: int  # k in annotations[k]
    where: str  # "file: annotations[k] (question_id N)"
    question_id: int
    raw: dict[str, Any]  # image_id, multiple_choice_answer, answers, answer_type, question_type, ...


def vqa_annotations(f: VQAFile, problems: Problems) -> Iterator[VQAAnnotation]:
    """The annotations of ``f`` in file order (a generator): an object with an integer
    ``question_id``, each question annotated once. The answers are left to the reader."""
    seen: dict[int, str] = {}
    for k, a in enumerate(f.records):
        where = f"{f.path}: annotations[{k}]"
        qid = a.get("question_id") if isinstance(a, dict) else None
        if not isinstance(qid, int) or isinstance(qid, bool):
            problems.error("malformed", where, "expected an object with an integer 'question_id'")
            continue
        where = f"{where} (question_id {qid})"
        if qid in seen:
            problems.error("duplicate", where, f"question_id annotated twice (duplicated id; first at {seen[qid]})")
            continue
        seen[qid] = where
        yield VQAAnnotation(k, where, qid, a)


def processed_vqa_files(root: str | os.PathLike) -> tuple[dict[str, dict[str, Path]] | None, str]:
    """The VQA v2 files of a processed dataset folder (``vqa/questions_{split}.json`` and
    ``vqa/annotations_{split}.json``, as :func:`scan` and the shapes generator write them):
    ``({"questions": {split: path}, "annotations": {...}}, "")``, or ``(None, why not)``."""
    root = Path(root)
    vdir = root / "vqa"
    if not vdir.is_dir():
        return None, f"no VQA files: {vdir} does not exist"
    files: dict[str, dict[str, Path]] = {"questions": {}, "annotations": {}}
    missing = []
    for sp in SPLITS:
        q, a = vdir / f"questions_{sp}.json", vdir / f"annotations_{sp}.json"
        for kind, p in (("questions", q), ("annotations", a)):
            if p.is_file():
                files[kind][sp] = p
            else:
                missing.append(p.name)
    if missing:
        return None, f"VQA needs questions and annotations for train, val and test; {vdir} lacks {', '.join(missing)}"
    return files, ""


def _split_of_subtype(subtype: str) -> str | None:
    s = subtype.lower()
    for key, sp in (("train", "train"), ("test", "test"), ("val", "val")):
        if key in s:
            return sp
    return None


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    top_k: int = 1000,
    val_test_split: float = 0.5,
    check_media: str = "verify",
    max_questions: int | None = None,
    image_dir: str | None = None,
) -> Built:
    """VQA v2 (module docstring).

    ``top_k``: number of answer classes (the most frequent train answers). ``val_test_split``:
    share of the val images that go to test when no annotated test subtype exists.
    ``check_media``: "verify" (open each image), "decode" or "none". ``max_questions``: keep a
    seeded subset of this many questions (whole images at a time, after the top-K filter).
    ``image_dir``: only look for images in this sub-folder."""
    if not isinstance(top_k, int) or top_k < 2:
        raise DatasetError(f"vqa: top_k = {top_k!r}; expected an integer >= 2")
    if not 0.0 <= float(val_test_split) <= 1.0:
        raise DatasetError(f"vqa: val_test_split = {val_test_split!r}; expected a fraction in [0, 1]")
    if check_media not in ("verify", "decode", "none"):
        raise DatasetError(f"vqa: check_media = {check_media!r}; expected verify, decode or none")
    if source.is_file():
        raise DatasetError(f"vqa: source_dir {source} is a file; expected the VQA folder")
    q_files = _json_files(source, "*questions*.json")
    a_files = _json_files(source, "*annotations*.json")
    if not q_files:
        raise DatasetError(
            f"{source}: no VQA questions file (*questions*.json); expected e.g. "
            "v2_OpenEnded_mscoco_train2014_questions.json - `fusionkit data download vqa` fetches them"
        )
    # ---------------------------------------------------------------- annotations by subtype
    ann_by_sub: dict[str, tuple[Path, dict[int, tuple[dict[str, Any], str]]]] = {}
    for ap in a_files:
        af = read_vqa_file(ap, "annotations")
        if af is None:
            continue  # e.g. COCO instances_*.json: not ours
        anns = af.records
        if anns and not (isinstance(anns[0], dict) and "question_id" in anns[0]):
            continue  # COCO captions/instances annotations
        sub = af.subtype or ap.stem
        table: dict[int, tuple[dict[str, Any], str]] = {}
        for ann in vqa_annotations(af, problems):
            a, where = ann.raw, ann.where
            mc, answers = a.get("multiple_choice_answer"), a.get("answers")
            if not isinstance(mc, str) or not mc.strip():
                problems.error("malformed", where, f"multiple_choice_answer = {mc!r}; expected a non-empty string")
                continue
            if not isinstance(answers, list) or not all(
                isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers
            ):
                problems.error(
                    "malformed", where, "expected 'answers': a list of {\"answer\": str, ...} (10 in VQA v2)"
                )
                continue
            if len(answers) != 10:
                problems.warn("malformed", where, f"{len(answers)} answers; VQA v2 has 10 per question")
            table[ann.question_id] = (a, where)
        if sub in ann_by_sub:
            raise DatasetError(
                f"{ap}: a second annotations file for data_subtype {sub!r} (first: {ann_by_sub[sub][0]})"
            )
        ann_by_sub[sub] = (ap, table)
    if not ann_by_sub:
        raise DatasetError(f"{source}: no VQA annotations file (*annotations*.json with question_id/answers records)")
    images = _ImageById(source, image_dir)
    # ---------------------------------------------------------------- questions
    records: list[dict[str, Any]] = []  # question, annotation, subtype, image path, split
    seen_q: dict[int, str] = {}
    used_ann: dict[str, set[int]] = defaultdict(set)
    img_ok: dict[str, bool] = {}
    for qp in q_files:
        qf = read_vqa_file(qp, "questions")
        if qf is None:
            raise DatasetError(f"{qp}: expected a VQA questions object {{'questions': [...], 'data_subtype': ...}}")
        sub = qf.subtype
        if sub not in ann_by_sub:
            alt = [s for s in ann_by_sub if s and s in qp.name]
            sub = alt[0] if len(alt) == 1 and not sub else sub
        if sub not in ann_by_sub:
            problems.warn(
                "unmatched",
                str(qp),
                f"no annotations file for data_subtype {sub!r}: questions without answers left out",
            )
            continue
        split = _split_of_subtype(sub)
        if split is None:
            raise DatasetError(f"{qp}: data_subtype {sub!r}; expected it to name train, val or test")
        ap, table = ann_by_sub[sub]
        for vq in vqa_questions(qf, problems, progress):
            q, qid, iid, text, where = vq.raw, vq.question_id, vq.image_id, vq.question, vq.where
            if not text.strip():
                problems.error("empty_caption", where, "empty question text")
                continue
            if qid in seen_q:
                problems.error("duplicate", where, f"question_id {qid} appears twice (first at {seen_q[qid]})")
                continue
            seen_q[qid] = where
            ann = table.get(qid)
            if ann is None:
                problems.error("unmatched", where, f"no annotation for this question in {ap.name}")
                continue
            used_ann[sub].add(qid)
            a, awhere = ann
            if a.get("image_id", iid) != iid:
                problems.error("unmatched", awhere, f"image_id {a.get('image_id')} differs from the question's ({iid})")
                continue
            rel = images.find(iid, sub)
            if rel is None:
                cands = images.candidates(iid)
                msg = (
                    f"image_id {iid}: several image files match ({cands[:3]}); pass image_dir="
                    if cands
                    else f"image_id {iid}: no image file for it under {source} (expected e.g. COCO_{sub}_{iid:012d}.jpg)"
                )
                problems.error("missing_file", where, msg)
                continue
            try:
                rel = safe_media_path(source, rel, where)
            except DatasetError as exc:
                problems.error("unsafe_path", where, str(exc), file=rel)
                continue
            if check_media != "none":
                if rel not in img_ok:
                    try:
                        check_image(source / rel, decode=check_media == "decode")
                        img_ok[rel] = True
                    except DatasetError as exc:
                        img_ok[rel] = False
                        problems.error("corrupt", where, str(exc), file=rel)
                        continue
                elif not img_ok[rel]:
                    problems.error("corrupt", where, f"image {rel} is corrupt (see above)", file=rel)
                    continue
            records.append({"q": q, "a": a, "sub": sub, "image": rel, "split": split, "text": " ".join(text.split())})
    for sub, (ap, table) in ann_by_sub.items():
        orphans = sorted(set(table) - used_ann[sub])
        for qid in orphans[:1000]:
            problems.error("unmatched", table[qid][1], "annotation for a question that no questions file has")
        if len(orphans) > 1000:
            problems.error("unmatched", str(ap), f"... and {len(orphans) - 1000} more annotations without a question")
    if not records:
        return Built(
            name="vqa",
            format="vqa-v2",
            modalities={"image": "image", "text": "text"},
            targets={"answer": []},
            samples=[],
        )
    # ---------------------------------------------------------------- splits by image
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(303,)))
    has_test = any(r["split"] == "test" for r in records)
    if not has_test and val_test_split > 0:
        val_imgs = sorted({r["image"] for r in records if r["split"] == "val"})
        n_test = round(len(val_imgs) * float(val_test_split))
        to_test = {val_imgs[i] for i in rng.permutation(len(val_imgs))[:n_test]}
        for r in records:
            if r["split"] == "val" and r["image"] in to_test:
                r["split"] = "test"
    # ---------------------------------------------------------------- top-K answers
    train_counts = Counter(r["a"]["multiple_choice_answer"].strip() for r in records if r["split"] == "train")
    if not train_counts:
        raise DatasetError(f"{source}: no annotated train questions; the answer classes come from the train split")
    classes = [a for a, _ in sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    cls_idx = {a: i for i, a in enumerate(classes)}
    dropped: Counter[str] = Counter()
    kept = []
    for r in records:
        ans = r["a"]["multiple_choice_answer"].strip()
        if ans in cls_idx:
            r["label"] = cls_idx[ans]
            kept.append(r)
        else:
            dropped[r["split"]] += 1
    for sp, n in dropped.items():
        problems.dropped(
            f"{source} ({sp})", f"{n} question(s) whose answer is outside the top {len(classes)} train answers"
        )
    if max_questions is not None and len(kept) > max_questions:
        by_img: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in kept:
            by_img[r["image"]].append(r)
        order = sorted(by_img)
        sub_kept: list[dict[str, Any]] = []
        for i in rng.permutation(len(order)):
            if len(sub_kept) >= max_questions:
                break
            sub_kept += by_img[order[i]]
        kept = sub_kept
    kept.sort(key=lambda r: (SPLITS.index(r["split"]), r["q"]["question_id"]))
    samples = [
        Sample(
            f"q{r['q']['question_id']}", r["split"], {"image": r["image"], "text": r["text"]}, {"answer": r["label"]}
        )
        for r in kept
    ]
    # ---------------------------------------------------------------- files
    files: dict[str, Any] = {}
    for sp in SPLITS:
        rs = [r for r in kept if r["split"] == sp]
        if not rs:
            continue
        qs, anns = [], []
        for r in rs:
            q = dict(r["q"])
            q["original_subtype"] = r["sub"]
            q["image_path"] = r["image"]
            qs.append(q)
            a = dict(r["a"])
            a["original_subtype"] = r["sub"]
            anns.append(a)
        files[f"vqa/questions_{sp}.json"] = {
            "info": {"description": f"VQA v2 questions of the fusionkit {sp} split"},
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": sp,
            "license": {},
            "questions": qs,
        }
        files[f"vqa/annotations_{sp}.json"] = {
            "info": {"description": f"VQA v2 annotations (10 answers each) of the fusionkit {sp} split"},
            "data_type": "mscoco",
            "data_subtype": sp,
            "license": {},
            "annotations": anns,
        }
    files["vqa/answers.json"] = {"classes": classes, "train_counts": [train_counts[a] for a in classes]}
    coverage = sum(train_counts[a] for a in classes) / max(sum(train_counts.values()), 1)
    answer_types = Counter(str(r["a"].get("answer_type", "?")) for r in kept)
    stats = {
        "questions": len(records),
        "questions_kept": len(kept),
        "images": len({r["image"] for r in kept}),
        "answer_classes": len(classes),
        "train_answer_coverage": round(coverage, 4),
        "dropped_outside_top_k": {sp: dropped.get(sp, 0) for sp in SPLITS},
        "answer_types": dict(answer_types),
        "subtypes": sorted({r["sub"] for r in records}),
        "image_files_found": images.n,
    }
    info = {
        "description": "VQA v2: answer classification over the top-K train answers (fusionkit.data.vqa)",
        "task": "vqa",
        "top_k": top_k,
        "train_answer_coverage": stats["train_answer_coverage"],
        "ceilings": {"chance": round(1 / max(len(classes), 1), 6)},
        "files": {
            "questions": {sp: f"vqa/questions_{sp}.json" for sp in SPLITS if f"vqa/questions_{sp}.json" in files},
            "annotations": {sp: f"vqa/annotations_{sp}.json" for sp in SPLITS if f"vqa/annotations_{sp}.json" in files},
            "answers": "vqa/answers.json",
        },
    }
    if math.isnan(coverage):  # pragma: no cover
        raise DatasetError("vqa: empty train split")
    return Built(
        name="vqa",
        format="vqa-v2",
        modalities={"image": "image", "text": "text"},
        targets={"answer": classes},
        samples=samples,
        info=info,
        media_root=source,
        files=files,
        stats=stats,
    )
