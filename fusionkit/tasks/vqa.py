"""Visual question answering as answer classification over the most frequent answers.

::

    train_tab = load_shapes_vqa(root, "train")          # or load_vqa(questions.json, annotations.json, image_key=...)
    vocab     = AnswerVocab.build(train_tab, top_k=1000)
    q_feats   = text_encoder(train_tab.questions)       # notebooks encode train_tab.questions
    train     = vqa_split_data(train_tab, vocab, image_ids, image_feats, q_feats)      # SplitData
    model     = build_vqa_model("film", image_dim, question_dim, len(vocab))
    fusionkit.train.train(model, train, val, TrainConfig(...))
    evaluate_vqa(model, test_data, test_tab, vocab)     # VQA accuracy, per answer / question type

Metric (:func:`vqa_score`, :func:`vqa_accuracy`): the VQA v2 evaluation (``vqaEval.py`` of
GT-Vision-Lab/VQA), ported line by line: the predicted answer is normalised
(:func:`process_punctuation` then :func:`process_digit_article`: punctuation, number words ->
digits, articles dropped, contractions restored); the ground-truth answers get the punctuation
step only, and only when the annotators disagree (the official code's behaviour - VQA's stored
answers are already normalised); then ``acc = mean over the 10 leave-one-annotator-out subsets
of min(1, #matching answers among the other 9 / 3)``. With a single ground-truth answer (a plain
classification dataset) the score is exact match after normalising both sides. Scores are
fractions in [0, 1] (the official script prints percentages rounded to 2 decimals).

Model (:func:`build_vqa_model`): ``fusionkit.model.build_model`` with modalities ``"image"``
(pooled ``(N, D)`` or grid ``(N, L, D)``) and ``"question"`` (pooled or token states), any
registered fusion method, and a classifier over the answer vocabulary. It trains with the
package's loop (``fusionkit.train.train`` on :class:`~fusionkit.train.SplitData`): early
stopping on validation accuracy of the top answer, which equals VQA accuracy when annotators
agree. Questions whose answer is outside the vocabulary are left out of training and validation
data (``vqa_split_data(..., answerable_only=True)``) but kept for the test score, where they count
as the model gets them.

Bad input: questions without an annotation or with an empty answer list, duplicated question ids,
annotations for unknown questions, empty question text, images without a key or without
features: :class:`~fusionkit.data.problems.TaskInputError` naming the file and the record, or
(``on_error="skip"``) dropped and listed in ``table.report``.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.problems import (
    InputReport,
    Problems,
    ReportProblems,
    TaskInputError,
    as_task_error,
    check_on_error,
    problem,
)
from fusionkit.data.vqa import VQAFile, read_vqa_file, vqa_annotations, vqa_questions

Tensor = torch.Tensor

__all__ = [
    "AnswerVocab",
    "VQARecord",
    "VQATable",
    "build_vqa_model",
    "evaluate_vqa",
    "image_keys_from_karpathy",
    "load_shapes_vqa",
    "load_vqa",
    "normalize_answer",
    "predict_answers",
    "process_digit_article",
    "process_punctuation",
    "vqa_accuracy",
    "vqa_score",
    "vqa_split_data",
]

# ============================================================================== official normalisation
# from vqaEval.py (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation), kept as published
# (including its oddities, e.g. "somebody'd" -> "somebodyd")
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: a punctuation mark next to a space (or anywhere, when
    the text has a digit-comma-digit group) is deleted, elsewhere replaced by a space; periods not
    followed by a digit are deleted. (The official call passes ``re.UNICODE`` as ``sub``'s
    ``count`` argument, so at most 32 periods go; kept.)"""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower case, number words -> digits, articles
    dropped, contractions restored, words joined by one space."""
    words = []
    for w in text.lower().split():
        w = MANUAL_MAP.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The normalisation the official evaluation applies to a predicted answer."""
    a = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(a))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer against the annotators' ``answers``:
    ``mean_i min(1, #{j != i: answers[j] == prediction} / 3)`` after the official normalisation;
    exact match after normalisation when there is a single answer. E.g. 2 of 10 annotators ->
    (2 x 1/3 + 8 x 2/3) / 10 = 0.6; 3 or more of 10 -> 0.9 or more; 4 or more -> 1."""
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"vqa_score: expected a non-empty list of ground-truth answers, got {answers!r}")
    res = normalize_answer(prediction)
    if len(answers) == 1:
        return float(res == normalize_answer(answers[0]))
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        matching = sum(1 for j, a in enumerate(gts) if j != i and a == res)
        accs.append(min(1.0, matching / 3))
    return sum(accs) / len(accs)


def _answers_of(ann: Mapping[str, Any]) -> list[str]:
    answers = ann.get("answers")
    if not isinstance(answers, list):
        return []
    return [a["answer"] if isinstance(a, Mapping) else a for a in answers if isinstance(a, (str, Mapping))]


def vqa_accuracy(
    predictions: Mapping[Any, str],
    annotations: Iterable[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
) -> dict[str, Any]:
    """VQA accuracy of ``predictions`` (``{question_id: answer}``) over the annotated questions
    (VQA v2 annotation records with ``question_id``, ``answers`` - dicts with ``"answer"`` or
    plain strings - and optionally ``answer_type`` / ``question_type``).

    Returns ``{"overall", "per_answer_type": {type: acc}, "per_question_type": {type: acc},
    "per_question": {question_id: acc}, "n"}``. Every annotated question needs a prediction
    (``ValueError`` naming the missing ids); predictions for unannotated questions are an error
    too."""
    anns = list(annotations.values()) if isinstance(annotations, Mapping) else list(annotations)
    by_q: dict[Any, Mapping[str, Any]] = {}
    for a in anns:
        qid = a.get("question_id")
        if qid in by_q:
            raise ValueError(f"vqa_accuracy: question_id {qid!r} annotated twice")
        by_q[qid] = a
    missing = [q for q in by_q if q not in predictions]
    extra = [q for q in predictions if q not in by_q]
    if missing or extra:
        raise ValueError(
            f"vqa_accuracy: no prediction for question ids {missing[:5]}; predictions for unannotated ids {extra[:5]}"
        )
    per_q: dict[Any, float] = {}
    by_atype: dict[str, list[float]] = defaultdict(list)
    by_qtype: dict[str, list[float]] = defaultdict(list)
    for qid, a in by_q.items():
        answers = _answers_of(a)
        if not answers:
            raise ValueError(f"vqa_accuracy: question_id {qid!r} has no ground-truth answers")
        acc = vqa_score(predictions[qid], answers)
        per_q[qid] = acc
        by_atype[str(a.get("answer_type", "all"))].append(acc)
        by_qtype[str(a.get("question_type", "all"))].append(acc)
    n = len(per_q)
    return {
        "overall": sum(per_q.values()) / n if n else float("nan"),
        "per_answer_type": {k: sum(v) / len(v) for k, v in sorted(by_atype.items())},
        "per_question_type": {k: sum(v) / len(v) for k, v in sorted(by_qtype.items())},
        "per_question": per_q,
        "n": n,
    }


# ============================================================================== tables
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


@dataclass
class VQATable:
    """The questions of one split with their answers; :attr:`questions` is what the text
    encoder encodes (in this order)."""

    records: list[VQARecord]
    source: str = ""
    report: InputReport = field(default_factory=InputReport)

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
            }
            for r in self.records
        ]

    def labels(self, vocab: AnswerVocab) -> Tensor:
        """Index of each question's (normalised) multiple-choice answer in ``vocab``; -1 when
        it is not in the vocabulary."""
        return torch.as_tensor([vocab.index(r.multiple_choice_answer) for r in self.records], dtype=torch.long)

    def subset(self, index: Sequence[int]) -> VQATable:
        return VQATable([self.records[i] for i in index], self.source, self.report)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.records])


def image_keys_from_karpathy(path: str | os.PathLike) -> dict[Any, str]:
    """``{imgid: file stem}`` (also under ``cocoid``) from a Karpathy ``captions.json``: how VQA's
    numeric image ids find their feature rows. A malformed image record raises
    :class:`TaskInputError` naming the file and the record."""
    out: dict[Any, str] = {}
    with as_task_error():
        for im in karpathy_images(path, Problems("raise")):
            for v in im.ids.values():
                out[v] = im.stem
    return out


def _vqa_file(path: Path, key: str) -> VQAFile:
    if not path.is_file():
        raise TaskInputError(f"{path}: file not found")
    with as_task_error():
        f = read_vqa_file(path, key)
    if f is None:
        raise TaskInputError(f"{path}: expected a VQA {key} file {{'{key}': [...]}}")
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
    check_on_error(on_error)
    qp, ap = Path(questions_path), Path(annotations_path)
    qf, af = _vqa_file(qp, "questions"), _vqa_file(ap, "annotations")
    report = InputReport(source=f"{qp} + {ap}")
    anns: dict[Any, dict[str, Any]] = {}
    for ann in vqa_annotations(af, ReportProblems(report, on_error, ap)):
        anns[ann.question_id] = ann.raw
    records: list[VQARecord] = []
    seen: dict[Any, int] = {}
    for vq in vqa_questions(qf, ReportProblems(report, on_error, qp)):
        qid, k, text = vq.question_id, vq.index, vq.question
        where = f"questions[{k}] (question_id {qid})"
        if qid in seen:
            problem(
                report, on_error, str(qp), where, f"question_id repeated (first questions[{seen[qid]}]) (duplicated id)"
            )
            continue
        seen[qid] = k
        if not text.strip():
            problem(report, on_error, str(qp), where, f"empty question text {text!r}")
            continue
        a = anns.get(qid)
        if a is None:
            problem(report, on_error, str(ap), where, "question without answers: no annotation for it")
            continue
        answers = _answers_of(a)
        if not answers or not all(isinstance(x, str) and x.strip() for x in answers):
            problem(report, on_error, str(ap), where, f"question without answers: answers {a.get('answers')!r}")
            continue
        img = vq.image_id
        if a.get("image_id", img) != img:
            problem(
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
            problem(report, on_error, str(qp), where, f"question names image_id {img!r}, which has no image")
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
            )
        )
    for qid in anns:
        if qid not in seen:
            problem(report, on_error, str(ap), f"annotation for question_id {qid}", f"no such question in {qp}")
    if not records:
        raise TaskInputError(f"{qp}: no usable questions ({report.to_text()})")
    table = VQATable(records, report.source, report)
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


# ============================================================================== answers
@dataclass
class AnswerVocab:
    """The ``top_k`` most frequent (normalised) answers; index ``i`` <-> ``answers[i]``."""

    answers: list[str]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("AnswerVocab: repeated answers")
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(
        cls,
        table: VQATable | Iterable[Mapping[str, Any]],
        top_k: int = 1000,
        min_count: int = 1,
        use: str = "multiple_choice_answer",
    ) -> AnswerVocab:
        """Count the normalised answers of ``table`` (a :class:`VQATable` or annotation
        records): ``use="multiple_choice_answer"`` (one per question, the usual choice) or
        ``"answers"`` (every annotator's); keep the ``top_k`` most frequent (ties alphabetical)."""
        if use not in ("multiple_choice_answer", "answers"):
            raise ValueError(f"use={use!r}; expected 'multiple_choice_answer' or 'answers'")
        recs = table.annotations() if isinstance(table, VQATable) else list(table)
        if isinstance(table, VQATable):
            for r, rec in zip(recs, table.records):
                r["multiple_choice_answer"] = rec.multiple_choice_answer
        counts: Counter[str] = Counter()
        for r in recs:
            if use == "answers":
                counts.update(normalize_answer(a) for a in _answers_of(r))
            else:
                mc = r.get("multiple_choice_answer")
                if mc is None:
                    mc = Counter(_answers_of(r)).most_common(1)[0][0]
                counts[normalize_answer(mc)] += 1
        counts.pop("", None)
        items = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))[:top_k]
        if not items:
            raise ValueError("AnswerVocab.build: no answers")
        return cls(items, [counts[a] for a in items])

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int:
        """Index of the normalised ``answer``; -1 when it is not in the vocabulary."""
        return self._index.get(normalize_answer(answer), -1)

    def decode(self, index: int) -> str:
        return self.answers[index]

    def decode_logits(self, logits: Tensor) -> list[str]:
        return [self.answers[i] for i in logits.argmax(dim=-1).tolist()]

    def coverage(self, table: VQATable) -> float:
        """Share of ``table``'s questions whose answer is in the vocabulary."""
        return float((table.labels(self) >= 0).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"answers": self.answers, "counts": self.counts}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> AnswerVocab:
        return cls(list(state["answers"]), list(state.get("counts", [])))


# ============================================================================== model and data
def build_vqa_model(
    method: str,
    image_dim: int,
    question_dim: int,
    num_answers: int,
    hidden: int = 256,
    dropout: float = 0.1,
    **fusion_hparams: Any,
):
    """A ``MultimodalModel`` over ``{"image", "question"}``: projectors to ``hidden``, the
    registered fusion ``method`` (e.g. ``"film"``, ``"cross_attention"``, ``"concat"``), and an
    answer classifier with ``num_answers`` outputs."""
    from fusionkit.model import build_model

    return build_model(
        method,
        {"image": image_dim, "question": question_dim},
        num_answers,
        hidden=hidden,
        dropout=dropout,
        **fusion_hparams,
    )


def vqa_split_data(
    table: VQATable,
    vocab: AnswerVocab,
    feature_ids: Sequence[str],
    image_features: Tensor,
    question_features: Tensor,
    *,
    question_mask: Tensor | None = None,
    answerable_only: bool = False,
    on_error: str = "raise",
):
    """A :class:`~fusionkit.train.SplitData` with ``features={"image": ..., "question": ...}``
    (one row per question), ``labels`` the answer index (-1: not in ``vocab``), ``ids`` the
    question ids as strings.

    ``image_features``: rows = ``feature_ids`` (``(N, D)`` or ``(N, L, D)``);
    ``question_features``: rows in the order of ``table.questions`` (``(Q, D)`` or token states
    ``(Q, L, D)``; ``question_mask`` ``(Q, L)`` zeroes the padding tokens). Questions whose image
    has no features are an error or skipped (``on_error``); ``answerable_only=True`` drops the
    questions whose answer is not in ``vocab`` (needed for training/validation data).
    Returns ``(data, kept)``: ``kept`` the row of each kept question in ``table``."""
    from fusionkit.train import SplitData

    check_on_error(on_error)
    if len(question_features) != len(table):
        raise ValueError(f"question_features has {len(question_features)} rows; the table has {len(table)} questions")
    q = question_features.float()
    if question_mask is not None:
        if q.dim() != 3 or question_mask.shape != q.shape[:2]:
            raise ValueError("question_mask must be (Q, L) matching token-state question features (Q, L, D)")
        q = q * question_mask.to(q.dtype).unsqueeze(-1)
    row_of: dict[str, int] = {}
    for r, f in enumerate(feature_ids):
        if f in row_of:
            raise TaskInputError(f"feature ids: {f!r} appears twice (rows {row_of[f]} and {r})")
        row_of[f] = r
    labels = table.labels(vocab)
    kept, rows = [], []
    for i, rec in enumerate(table.records):
        if rec.image_key not in row_of:
            problem(
                table.report,
                on_error,
                table.source,
                f"question_id {rec.question_id}",
                f"image {rec.image_key!r} has no feature row",
            )
            continue
        if answerable_only and labels[i] < 0:
            continue
        kept.append(i)
        rows.append(row_of[rec.image_key])
    if not kept:
        raise TaskInputError(f"{table.source}: no questions left (answerable_only={answerable_only})")
    k = torch.as_tensor(kept, dtype=torch.long)
    data = SplitData(
        features={"image": image_features[torch.as_tensor(rows)].float(), "question": q[k]},
        labels=labels[k],
        ids=[str(table.records[i].question_id) for i in kept],
    )
    return data, kept


def predict_answers(model, data, vocab: AnswerVocab, batch_size: int = 512) -> list[str]:
    """The top answer for every row of ``data``."""
    from fusionkit.train import predict

    logits, _ = predict(model, data, batch_size=batch_size)
    return vocab.decode_logits(logits)


def evaluate_vqa(model, data, table: VQATable, vocab: AnswerVocab, kept: Sequence[int] | None = None) -> dict[str, Any]:
    """VQA accuracy (overall, per answer type, per question type) of ``model`` on ``data``,
    scored against every annotator answer in ``table``. ``kept``: rows of ``table`` that
    ``data`` holds (as returned by :func:`vqa_split_data`; default: all, in order)."""
    kept = list(range(len(table))) if kept is None else list(kept)
    if len(kept) != len(data):
        raise ValueError(f"data has {len(data)} rows but kept lists {len(kept)} questions")
    answers = predict_answers(model, data, vocab)
    sub = table.subset(kept)
    preds = {r.question_id: a for r, a in zip(sub.records, answers)}
    return vqa_accuracy(preds, sub.annotations())
