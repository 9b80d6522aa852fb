"""VQA-RAD (Lau, Gayen, Ben Abacha, Demner-Fushman 2018; CC0): clinical questions about radiology
images, as answer classification with VQA-RAD's own metric.

Reads, under ``source_dir`` (``../shared/data/vqa-rad``, or what ``fusionkit data download
vqarad`` leaves)::

    trainset.json    [{"qid", "image_name", "image_organ", "answer", "answer_type", "question_type",
    testset.json      "question", "phrase_type"}, ...]   the split of Nguyen et al. (MICCAI 2019, MEVF)
    images/          synpic54610.jpg ...                  (``image_dir``; 315 head CT/MRI, chest X-ray,
                                                           abdominal CT images)

``testset.json`` is read when it is there (the official test questions; this repository's shared
copy holds only the training questions).

Normalisation
    ``answer_type``: stray spaces dropped and upper-cased (``"CLOSED "`` -> ``"CLOSED"``); anything
    but CLOSED / OPEN is a bad record. Answers are compared after lower-casing and trimming
    (:func:`normalise_answer`: VQA-RAD's exact match, *not* VQA v2's normalisation - "one" and "1"
    stay different answers); a few answers are JSON numbers (``1``) and are read as their text.

Splits (by image: no image's questions on both sides)
    val: a seeded fraction ``val_fraction`` of the *training* questions' images. test:
    ``testset.json`` when present (its images are the training images, as in the published split);
    without it, another fraction ``test_fraction`` of the training images, and the dataset's
    ``info["official_test"]`` is False: numbers on that split are validation numbers, not
    comparable with the published ones (:data:`PUBLISHED`).

Target ``answer``: every distinct (normalised) training answer, most frequent first (ties
alphabetically), plus a last class :data:`UNSEEN` for val / test answers no training question has
(they stay in the data: the metric counts them, as wrong).

Files besides the manifest: ``vqa/questions_{split}.json`` and ``vqa/annotations_{split}.json`` in
VQA v2 format (what the chain's VQA task reads; one answer per question; ``answer_type``,
``question_type``, ``image_organ`` and ``phrase_type`` kept; integer ``image_id`` = the image's
index in ``vqa/images.json``). The annotation files say ``"metric": "exact"`` (the VQA task then
uses :func:`normalise_answer` for its vocabulary and its accuracy) and ``"benchmark": "vqa-rad"``
with ``"official_test"``. Images are indexed in place (``media_root`` = ``source_dir``). Greyscale
radiographs go through the image encoders' RGB conversion, which replicates the grey channel into
3 identical channels (``fusionkit.encoders.image``), so the ImageNet encoders see them unchanged.

Bad input (each named with its file and record; raised, or with ``on_error="skip"`` left out and
listed): a record that is not an object or misses a field, a non-integer or duplicate ``qid``
(across both files), an unknown answer type, an empty question or answer, an image that is absent
(or, with ``check_media``, unreadable) or whose name escapes the image folder.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data.base import SPLITS, Built, DatasetError, Sample
from fusionkit.data.problems import Problems
from fusionkit.data.readers import check_image, read_json, safe_media_path

__all__ = [
    "ANSWER_TYPES",
    "FIELDS",
    "PUBLISHED",
    "UNSEEN",
    "PublishedResult",
    "VQARadQuestion",
    "normalise_answer",
    "read_vqarad",
    "scan",
]

ANSWER_TYPES = ("CLOSED", "OPEN")
#: the fields every record must have (``phrase_type`` is kept when present)
FIELDS = ("qid", "image_name", "image_organ", "answer", "answer_type", "question_type", "question")
#: the class of val / test answers that no training question has
UNSEEN = "<answer not in training>"


@dataclass(frozen=True)
class PublishedResult:
    """A published VQA-RAD result on the MEVF split (accuracies in percent, on its 451 test questions)."""

    method: str
    open: float
    closed: float
    source: str


#: the published numbers fusionkit's VQA-RAD results are shown next to (the one place they live)
PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult("MEVF+SAN", 40.7, 74.1, "Nguyen et al., MICCAI 2019"),
    PublishedResult("MEVF+BAN", 43.9, 75.1, "Nguyen et al., MICCAI 2019"),
)


def normalise_answer(answer: Any) -> str:
    """VQA-RAD's comparison: the answer's text lower-cased and trimmed."""
    return str(answer).strip().lower()


@dataclass
class VQARadQuestion:
    where: str  # "file: [k] (qid N)"
    qid: int
    image: str  # the image's path relative to source_dir
    organ: str
    answer: str  # as written (a number read as its text), trimmed
    answer_type: str  # CLOSED | OPEN
    question_type: str
    question: str  # whitespace collapsed
    phrase_type: str


def _text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    return None


def read_vqarad(
    path: Path,
    problems: Problems,
    *,
    root: Path,
    image_dir: str,
    seen: dict[int, str],
    image_ok: dict[str, bool],
    check_media: str = "verify",
) -> list[VQARadQuestion]:
    """The usable questions of one VQA-RAD file (``trainset.json`` / ``testset.json``); ``seen``:
    qid -> where, shared between the files (duplicates across them are refused too);
    ``image_ok``: image -> readable, shared so each image is checked once."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise DatasetError(f"{path}: expected a JSON list of VQA-RAD question records, got {type(doc).__name__}")
    out: list[VQARadQuestion] = []
    for k, r in enumerate(doc):
        where = f"{path}: [{k}]"
        if not isinstance(r, dict):
            problems.error("malformed", where, f"expected an object with {', '.join(FIELDS)}")
            continue
        qid = r.get("qid")
        if isinstance(qid, int) and not isinstance(qid, bool):
            where = f"{where} (qid {qid})"
        missing = [f for f in FIELDS if f not in r]
        if missing:
            problems.error("malformed", where, f"missing field(s) {missing}; expected {', '.join(FIELDS)}")
            continue
        if not isinstance(qid, int) or isinstance(qid, bool):
            problems.error("malformed", where, f"qid = {qid!r}; expected an integer")
            continue
        if qid in seen:
            problems.error("duplicate", where, f"qid {qid} appears twice (duplicated id; first at {seen[qid]})")
            continue
        seen[qid] = where
        atype = r["answer_type"].strip().upper() if isinstance(r["answer_type"], str) else None
        if atype not in ANSWER_TYPES:
            problems.error("malformed", where, f"answer_type = {r['answer_type']!r}; expected CLOSED or OPEN")
            continue
        question, answer = _text(r["question"]), _text(r["answer"])
        if question is None or not question.strip():
            problems.error("empty_caption", where, f"question = {r['question']!r}; expected a non-empty text")
            continue
        if answer is None or not answer.strip():
            problems.error("empty_caption", where, f"answer = {r['answer']!r}; expected a non-empty text")
            continue
        name = r["image_name"]
        if not isinstance(name, str) or not name.strip():
            problems.error("malformed", where, f"image_name = {name!r}; expected an image file name")
            continue
        try:
            rel = safe_media_path(root, f"{image_dir}/{name.strip()}" if image_dir else name.strip(), where)
        except DatasetError as exc:
            problems.error("unsafe_path", where, str(exc), file=name)
            continue
        if rel not in image_ok:
            p = root / rel
            if not p.is_file():
                image_ok[rel] = False
            elif check_media == "none":
                image_ok[rel] = True
            else:
                try:
                    check_image(p, decode=check_media == "decode", record=f"qid {qid}")
                    image_ok[rel] = True
                except DatasetError as exc:
                    image_ok[rel] = False
                    problems.error("corrupt", where, str(exc), file=rel)
                    continue
        if not image_ok[rel]:
            if not (root / rel).is_file():
                problems.error("missing_file", where, f"image {rel} does not exist under {root}", file=rel)
            else:
                problems.error("corrupt", where, f"image {rel} is unreadable (see its first question)", file=rel)
            continue
        out.append(
            VQARadQuestion(
                where, qid, rel, str(r["image_organ"]).strip(), answer.strip(), atype,
                str(r["question_type"]).strip(), " ".join(question.split()), str(r.get("phrase_type", "")).strip(),
            )
        )  # fmt: skip
    return out


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_dir: str = "images",
    check_media: str = "verify",
) -> Built:
    """VQA-RAD (module docstring).

    ``val_fraction``: share of the training questions' images whose questions form val.
    ``test_fraction``: without ``testset.json``, share of them that form test (ignored when
    ``testset.json`` is there). ``image_dir``: the images' folder under ``source_dir``.
    ``check_media``: "verify" (open each image), "decode" or "none"."""
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
            raise DatasetError(f"vqarad: {name} = {v!r}; expected a fraction in (0, 1)")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise DatasetError("vqarad: val_fraction + test_fraction must leave images for training (< 1)")
    if check_media not in ("verify", "decode", "none"):
        raise DatasetError(f"vqarad: check_media = {check_media!r}; expected verify, decode or none")
    if source.is_file():
        source = source.parent
    train_path, test_path = source / "trainset.json", source / "testset.json"
    if not train_path.is_file():
        raise DatasetError(
            f"{source}: no trainset.json; expected the VQA-RAD folder (trainset.json, testset.json when present, "
            "images/) - see `fusionkit data download vqarad`"
        )
    seen: dict[int, str] = {}
    image_ok: dict[str, bool] = {}
    kw = {"root": source, "image_dir": image_dir, "seen": seen, "image_ok": image_ok, "check_media": check_media}
    train_qs = read_vqarad(train_path, problems, **kw)
    official = test_path.is_file()
    test_qs = read_vqarad(test_path, problems, **kw) if official else []
    built_empty = Built(
        name="vqarad", format="vqa-rad", modalities={"image": "image", "text": "text"},
        targets={"answer": []}, samples=[],
    )  # fmt: skip
    if not train_qs:
        return built_empty
    # ------------------------------------------------------------------ splits by image
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(505,)))
    imgs = sorted({q.image for q in train_qs})
    order = [imgs[i] for i in rng.permutation(len(imgs))]
    n_val = max(1, round(len(imgs) * float(val_fraction)))
    n_test = 0 if official else max(1, round(len(imgs) * float(test_fraction)))
    split_of = {im: "val" for im in order[:n_val]}
    split_of.update({im: "test" for im in order[n_val : n_val + n_test]})
    rows = [(q, split_of.get(q.image, "train")) for q in train_qs] + [(q, "test") for q in test_qs]
    # ------------------------------------------------------------------ answer classes
    counts = Counter(normalise_answer(q.answer) for q, sp in rows if sp == "train")
    if not counts:
        raise DatasetError(f"{train_path}: no training questions left after the val / test images")
    classes = sorted(counts, key=lambda a: (-counts[a], a)) + [UNSEEN]
    index = {a: i for i, a in enumerate(classes)}
    all_imgs = sorted({q.image for q, _ in rows})
    image_id = {im: i for i, im in enumerate(all_imgs)}
    rows.sort(key=lambda t: (SPLITS.index(t[1]), t[0].qid))
    samples = [
        Sample(f"q{q.qid}", sp, {"image": q.image, "text": q.question},
               {"answer": index.get(normalise_answer(q.answer), len(classes) - 1)})
        for q, sp in rows
    ]  # fmt: skip
    # ------------------------------------------------------------------ files
    files: dict[str, Any] = {}
    for sp in SPLITS:
        rs = [q for q, s in rows if s == sp]
        test_note = "testset.json" if official else "carved from trainset.json by image (not the official test)"
        files[f"vqa/questions_{sp}.json"] = {
            "info": {"description": f"VQA-RAD questions of the fusionkit {sp} split"},
            "data_subtype": sp,
            "questions": [
                {"question_id": q.qid, "image_id": image_id[q.image], "question": q.question, "image_path": q.image}
                for q in rs
            ],
        }
        files[f"vqa/annotations_{sp}.json"] = {
            "info": {"description": f"VQA-RAD answers of the fusionkit {sp} split"
                     + (f" ({test_note})" if sp == "test" else "")},
            "data_subtype": sp,
            "metric": "exact",
            "benchmark": "vqa-rad",
            "official_test": official,
            "annotations": [
                {"question_id": q.qid, "image_id": image_id[q.image], "multiple_choice_answer": q.answer,
                 "answers": [{"answer": q.answer, "answer_id": 1}], "answer_type": q.answer_type,
                 "question_type": q.question_type, "image_organ": q.organ, "phrase_type": q.phrase_type}
                for q in rs
            ],
        }  # fmt: skip
    files["vqa/images.json"] = {"images": all_imgs}
    files["vqa/answers.json"] = {"classes": classes, "train_counts": [counts.get(a, 0) for a in classes]}
    per_split = {sp: Counter(q.answer_type for q, s in rows if s == sp) for sp in SPLITS}
    unseen = {sp: sum(1 for s in samples if s.split == sp and s.targets["answer"] == len(classes) - 1) for sp in SPLITS}
    stats = {
        "questions": len(rows),
        "images": len(all_imgs),
        "images_per_split": {sp: len({q.image for q, s in rows if s == sp}) for sp in SPLITS},
        "answer_types": {sp: dict(c) for sp, c in per_split.items()},
        "organs": dict(Counter(q.organ for q, _ in rows)),
        "answer_classes": len(classes),
        "answers_not_in_training": unseen,
        "official_test": official,
    }
    majority = counts.most_common(1)[0][1] / max(1, sum(counts.values()))
    info = {
        "description": "VQA-RAD: answer classification over the training answers, exact match after lower-casing "
        "and trimming (fusionkit.data.vqarad)",
        "task": "vqa",
        "metric": "exact",
        "official_test": official,
        "test_split": "testset.json (official)"
        if official
        else "carved from trainset.json by image: validation, not comparable with published numbers",
        "ceilings": {"majority_train_answer": round(majority, 6)},
        "files": {
            "questions": {sp: f"vqa/questions_{sp}.json" for sp in SPLITS},
            "annotations": {sp: f"vqa/annotations_{sp}.json" for sp in SPLITS},
            "answers": "vqa/answers.json",
            "images": "vqa/images.json",
        },
    }
    return Built(
        name="vqarad", format="vqa-rad", modalities={"image": "image", "text": "text"},
        targets={"answer": classes}, samples=samples, info=info, media_root=source, files=files, stats=stats,
    )  # fmt: skip


def is_vqarad_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a VQA-RAD ``trainset.json`` (a list of records with ``qid`` and ``image_name``)."""
    p = Path(path) / "trainset.json"
    if not p.is_file():
        return False
    try:
        doc = read_json(p)
    except DatasetError:
        return False
    return isinstance(doc, list) and bool(doc) and isinstance(doc[0], dict) and {"qid", "image_name"} <= set(doc[0])
