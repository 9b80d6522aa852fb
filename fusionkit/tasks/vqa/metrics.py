"""The VQA v2 accuracy (the official ``vqaEval.py``, ported line by line) and its normalisation;
and exact match (VQA-RAD's metric: answers compared after lower-casing and trimming,
:func:`fusionkit.data.vqarad.normalise_answer`). ``metric`` names which: "vqa" or "exact"."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from fusionkit.data.vqarad import normalise_answer as exact_normalise

Tensor = torch.Tensor

#: the answer comparisons a VQA table can ask for (its annotation file's ``"metric"``)
METRICS = ("vqa", "exact")
#: the breakdowns :func:`vqa_accuracy` reports, by annotation field (``image_organ`` only where present)
BREAKDOWNS = {"answer_type": "per_answer_type", "question_type": "per_question_type", "image_organ": "per_image_organ"}


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


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; expected one of {METRICS}")
    return metric


def answer_normaliser(metric: str):
    """How answers are normalised before they are compared (and counted into a vocabulary)."""
    return normalize_answer if check_metric(metric) == "vqa" else exact_normalise


def exact_score(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when ``prediction`` equals one of ``answers`` after lower-casing and trimming, else 0.0."""
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"exact_score: expected a non-empty list of ground-truth answers, got {answers!r}")
    p = exact_normalise(prediction)
    return float(any(p == exact_normalise(a) for a in answers))


def _answers_of(ann: Mapping[str, Any]) -> list[str]:
    answers = ann.get("answers")
    if not isinstance(answers, list):
        return []
    return [a["answer"] if isinstance(a, Mapping) else a for a in answers if isinstance(a, (str, Mapping))]


def vqa_accuracy(
    predictions: Mapping[Any, str],
    annotations: Iterable[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    metric: str = "vqa",
) -> dict[str, Any]:
    """VQA accuracy of ``predictions`` (``{question_id: answer}``) over the annotated questions
    (VQA v2 annotation records with ``question_id``, ``answers`` - dicts with ``"answer"`` or
    plain strings - and optionally ``answer_type`` / ``question_type``).

    Returns ``{"overall", "per_answer_type": {type: acc}, "per_question_type": {type: acc},
    "per_question": {question_id: acc}, "n"}`` (and ``"per_image_organ"`` when the annotations have
    ``image_organ``). ``metric``: "vqa" (:func:`vqa_score`) or "exact" (:func:`exact_score`). Every annotated question needs a prediction
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
    score = vqa_score if check_metric(metric) == "vqa" else exact_score
    per_q: dict[Any, float] = {}
    groups: dict[str, dict[str, list[float]]] = {f: defaultdict(list) for f in BREAKDOWNS}
    for qid, a in by_q.items():
        answers = _answers_of(a)
        if not answers:
            raise ValueError(f"vqa_accuracy: question_id {qid!r} has no ground-truth answers")
        acc = score(predictions[qid], answers)
        per_q[qid] = acc
        for f in BREAKDOWNS:
            if f != "image_organ" or a.get(f):
                groups[f][str(a.get(f, "all"))].append(acc)
    n = len(per_q)
    out: dict[str, Any] = {"overall": sum(per_q.values()) / n if n else float("nan")}
    for f, key in BREAKDOWNS.items():
        if f != "image_organ" or groups[f]:
            out[key] = {k: sum(v) / len(v) for k, v in sorted(groups[f].items())}
    out.update(per_question=per_q, n=n)
    return out
