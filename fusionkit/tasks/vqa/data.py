"""VQA questions and answers as tables (read through :mod:`fusionkit.data.vqa`), and the answer
vocabulary."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit.data import problems
from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.vqa import VQAFile, read_vqa_file, vqa_annotations, vqa_questions
from fusionkit.tasks.vqa.metrics import _answers_of, answer_normaliser, check_metric

Tensor = torch.Tensor


@dataclass
class VQARecord:
    question_id: Any
    image_id: Any  # as in the files (COCO: an int)
    image_key: str  # the id of the image's feature row (a file stem, e.g. "shapes_00042")
    question: str
    answers: list[str]  # every annotator's answer (VQA v2: 10)
    multiple_choice_answer: str
    answer_type: str = ""
    question_type: str = ""
    image_organ: str = ""  # VQA-RAD: HEAD / CHEST / ABD


@dataclass
class VQATable:
    """The questions of one split with their answers; :attr:`questions` is what the text
    encoder encodes (in this order). ``metric``: how its answers are compared ("vqa": VQA v2's
    accuracy; "exact": VQA-RAD's exact match), from the annotation file's ``"metric"``;
    ``info``: that file's ``benchmark`` / ``official_test`` entries when it has them."""

    records: list[VQARecord]
    source: str = ""
    report: problems.InputReport = field(default_factory=problems.InputReport)
    metric: str = "vqa"
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def questions(self) -> list[str]:
        return [r.question for r in self.records]

    @property
    def question_ids(self) -> list[Any]:
        return [r.question_id for r in self.records]

    @property
    def image_keys(self) -> list[str]:
        return [r.image_key for r in self.records]

    def annotations(self) -> list[dict[str, Any]]:
        """Records in the shape :func:`vqa_accuracy` reads."""
        return [
            {
                "question_id": r.question_id,
                "answers": list(r.answers),
                "answer_type": r.answer_type,
                "question_type": r.question_type,
                **({"image_organ": r.image_organ} if r.image_organ else {}),
            }
            for r in self.records
        ]

    def labels(self, vocab: AnswerVocab) -> Tensor:
        """Index of each question's (normalised) multiple-choice answer in ``vocab``; -1 when
        it is not in the vocabulary."""
        return torch.as_tensor([vocab.index(r.multiple_choice_answer) for r in self.records], dtype=torch.long)

    def subset(self, index: Sequence[int]) -> VQATable:
        return VQATable([self.records[i] for i in index], self.source, self.report, self.metric, self.info)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.records])


def image_keys_from_karpathy(path: str | os.PathLike) -> dict[Any, str]:
    """``{imgid: file stem}`` (also under ``cocoid``) from a Karpathy ``captions.json``: how VQA's
    numeric image ids find their feature rows. A malformed image record raises
    :class:`TaskInputError` naming the file and the record."""
    out: dict[Any, str] = {}
    with problems.as_task_error():
        for im in karpathy_images(path, problems.Problems("raise")):
            for v in im.ids.values():
                out[v] = im.stem
    return out


def _vqa_file(path: Path, key: str) -> VQAFile:
    if not path.is_file():
        raise problems.TaskInputError(f"{path}: file not found")
    with problems.as_task_error():
        f = read_vqa_file(path, key)
    if f is None:
        raise problems.TaskInputError(f"{path}: expected a VQA {key} file {{'{key}': [...]}}")
    return f


def load_vqa(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    *,
    image_key: Mapping[Any, str] | Callable[[Any], str] | None = None,
    on_error: str = "raise",
    report_path: str | os.PathLike | None = None,
) -> VQATable:
    """Read VQA v2 question + annotation files into a :class:`VQATable` (question order kept),
    through the data side's VQA v2 parser (:mod:`fusionkit.data.vqa`).

    ``image_key``: maps the files' ``image_id`` to the feature id (a dict or a function; default
    ``str(image_id)``); an image id it does not know is a question about a missing image."""
    problems.check_on_error(on_error)
    qp, ap = Path(questions_path), Path(annotations_path)
    qf, af = _vqa_file(qp, "questions"), _vqa_file(ap, "annotations")
    metric = str(af.doc.get("metric", "vqa"))
    if metric not in ("vqa", "exact"):
        raise problems.TaskInputError(f"{ap}: metric = {metric!r}; expected 'vqa' or 'exact'")
    report = problems.InputReport(source=f"{qp} + {ap}")
    anns: dict[Any, dict[str, Any]] = {}
    for ann in vqa_annotations(af, problems.ReportProblems(report, on_error, ap)):
        anns[ann.question_id] = ann.raw
    records: list[VQARecord] = []
    seen: dict[Any, int] = {}
    for vq in vqa_questions(qf, problems.ReportProblems(report, on_error, qp)):
        qid, k, text = vq.question_id, vq.index, vq.question
        where = f"questions[{k}] (question_id {qid})"
        if qid in seen:
            problems.problem(
                report, on_error, str(qp), where, f"question_id repeated (first questions[{seen[qid]}]) (duplicated id)"
            )
            continue
        seen[qid] = k
        if not text.strip():
            problems.problem(report, on_error, str(qp), where, f"empty question text {text!r}")
            continue
        a = anns.get(qid)
        if a is None:
            problems.problem(report, on_error, str(ap), where, "question without answers: no annotation for it")
            continue
        answers = _answers_of(a)
        if not answers or not all(isinstance(x, str) and x.strip() for x in answers):
            problems.problem(
                report, on_error, str(ap), where, f"question without answers: answers {a.get('answers')!r}"
            )
            continue
        img = vq.image_id
        if a.get("image_id", img) != img:
            problems.problem(
                report, on_error, str(ap), where, f"image_id {a.get('image_id')!r} differs from the question's {img!r}"
            )
            continue
        if image_key is None:
            key = str(img)
        elif callable(image_key):
            key = image_key(img)
        else:
            key = image_key.get(img)
        if key is None:
            problems.problem(report, on_error, str(qp), where, f"question names image_id {img!r}, which has no image")
            continue
        mc = a.get("multiple_choice_answer")
        if not isinstance(mc, str) or not mc.strip():
            mc = Counter(answers).most_common(1)[0][0]
        records.append(
            VQARecord(
                question_id=qid,
                image_id=img,
                image_key=key,
                question=" ".join(text.split()),
                answers=answers,
                multiple_choice_answer=mc,
                answer_type=str(a.get("answer_type", "")),
                question_type=str(a.get("question_type", "")),
                image_organ=str(a.get("image_organ", "") or ""),
            )
        )
    for qid in anns:
        if qid not in seen:
            problems.problem(
                report, on_error, str(ap), f"annotation for question_id {qid}", f"no such question in {qp}"
            )
    if not records:
        raise problems.TaskInputError(f"{qp}: no usable questions ({report.to_text()})")
    info = {k: af.doc[k] for k in ("benchmark", "official_test") if k in af.doc}
    table = VQATable(records, report.source, report, metric, info)
    if report_path is not None:
        report.write(report_path)
    return table


def load_shapes_vqa(
    root: str | os.PathLike, split: str, on_error: str = "raise", report_path: str | os.PathLike | None = None
) -> VQATable:
    """The shapes dataset's ``vqa/questions_{split}.json`` + ``vqa/annotations_{split}.json``,
    image ids mapped to feature ids through ``captions.json``."""
    root = Path(root)
    return load_vqa(
        root / "vqa" / f"questions_{split}.json",
        root / "vqa" / f"annotations_{split}.json",
        image_key=image_keys_from_karpathy(root / "captions.json"),
        on_error=on_error,
        report_path=report_path,
    )


@dataclass
class AnswerVocab:
    """The ``top_k`` most frequent (normalised) answers; index ``i`` <-> ``answers[i]``.
    ``metric``: which normalisation ("vqa": VQA v2's; "exact": lower-case + trim)."""

    answers: list[str]
    counts: list[int] = field(default_factory=list)
    metric: str = "vqa"

    def __post_init__(self) -> None:
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("AnswerVocab: repeated answers")
        self._norm = answer_normaliser(check_metric(self.metric))
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(
        cls,
        table: VQATable | Iterable[Mapping[str, Any]],
        top_k: int = 1000,
        min_count: int = 1,
        use: str = "multiple_choice_answer",
        metric: str | None = None,
    ) -> AnswerVocab:
        """Count the normalised answers of ``table`` (a :class:`VQATable` or annotation
        records): ``use="multiple_choice_answer"`` (one per question, the usual choice) or
        ``"answers"`` (every annotator's); keep the ``top_k`` most frequent (ties alphabetical).
        ``metric``: the normalisation (default: the table's, else "vqa")."""
        if metric is None:
            metric = table.metric if isinstance(table, VQATable) else "vqa"
        norm = answer_normaliser(metric)
        if use not in ("multiple_choice_answer", "answers"):
            raise ValueError(f"use={use!r}; expected 'multiple_choice_answer' or 'answers'")
        recs = table.annotations() if isinstance(table, VQATable) else list(table)
        if isinstance(table, VQATable):
            for r, rec in zip(recs, table.records):
                r["multiple_choice_answer"] = rec.multiple_choice_answer
        counts: Counter[str] = Counter()
        for r in recs:
            if use == "answers":
                counts.update(norm(a) for a in _answers_of(r))
            else:
                mc = r.get("multiple_choice_answer")
                if mc is None:
                    mc = Counter(_answers_of(r)).most_common(1)[0][0]
                counts[norm(mc)] += 1
        counts.pop("", None)
        items = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))[:top_k]
        if not items:
            raise ValueError("AnswerVocab.build: no answers")
        return cls(items, [counts[a] for a in items], metric)

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int:
        """Index of the normalised ``answer``; -1 when it is not in the vocabulary."""
        return self._index.get(self._norm(answer), -1)

    def decode(self, index: int) -> str:
        return self.answers[index]

    def decode_logits(self, logits: Tensor) -> list[str]:
        return [self.answers[i] for i in logits.argmax(dim=-1).tolist()]

    def coverage(self, table: VQATable) -> float:
        """Share of ``table``'s questions whose answer is in the vocabulary."""
        return float((table.labels(self) >= 0).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"answers": self.answers, "counts": self.counts, "metric": self.metric}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> AnswerVocab:
        return cls(list(state["answers"]), list(state.get("counts", [])), str(state.get("metric", "vqa")))
