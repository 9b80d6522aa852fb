"""VQA: the official answer normalisation and accuracy, tables and their bad input, the answer
vocabulary, and the model on a synthetic feature problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusionkit.data.problems import TaskInputError
from fusionkit.runtime import cpu_threads
from fusionkit.tasks import vqa as V
from fusionkit.tasks.vqa.model import VQANet
from fusionkit.tasks.vqa.task import VQAArrays, fit_vqa, vqa_logits


# ----------------------------------------------------------------------------------- metric
@pytest.mark.parametrize(
    ("n_agree", "expected"),
    # mean over the 10 leave-one-out subsets of min(1, matches among the other 9 / 3)
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_score_subset_average(n_agree, expected):
    answers = ["2"] * n_agree + ["3"] * (10 - n_agree)
    assert V.vqa_score("2", answers) == pytest.approx(expected, abs=1e-12)


def test_hand_computed_cases():
    # 2 of 10: the 2 who said it see 1 match (1/3), the other 8 see 2 (2/3): (2/3 + 16/3) / 10
    assert V.vqa_score("yes", ["yes", "yes"] + ["no"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    # the prediction is normalised: number words, articles, punctuation, case, whitespace
    assert V.vqa_score("Two", ["2"] * 10) == 1.0
    assert V.vqa_score(" the Dog. ", ["dog"] * 10) == 1.0
    assert V.vqa_score("dont", ["don't"] * 10) == 1.0
    # ground truth gets the punctuation step only when annotators disagree (the official quirk)
    assert V.vqa_score("yes", ["yes."] * 10) == 0.0
    assert V.vqa_score("yes", ["yes."] * 5 + ["no"] * 5) == 1.0
    assert V.vqa_score("yes", ["yes!"] * 5 + ["no"] * 5) == 0.0  # "!" becomes a space, which stays
    # one answer: plain exact match after normalisation
    assert V.vqa_score("A cat", ["cat"]) == 1.0 and V.vqa_score("dog", ["cat"]) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        V.vqa_score("x", [])


def test_official_normalisation_steps():
    assert V.process_punctuation("hello, world") == "hello world"
    assert V.process_punctuation("1,000") == "1000"  # digit-comma-digit: marks deleted
    assert V.process_punctuation("3.5") == "3.5" and V.process_punctuation("end.") == "end"
    assert V.process_punctuation("black/white") == "black white"
    assert V.process_digit_article("The TWO dogs") == "2 dogs"
    assert V.process_digit_article("none of an apple") == "0 of apple"
    assert V.process_digit_article("isnt it") == "isn't it"
    assert V.normalize_answer("  Three\tCats!\n") == "3 cats"


def test_accuracy_breakdown_and_missing_predictions():
    anns = [
        {"question_id": 1, "answers": ["red"] * 10, "answer_type": "other", "question_type": "what color"},
        {"question_id": 2, "answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number", "question_type": "how many"},
        {"question_id": 3, "answers": [{"answer": "yes"}] * 10, "answer_type": "yes/no", "question_type": "is there"},
        {"question_id": 4, "answers": ["blue"] * 10, "answer_type": "other", "question_type": "what color"},
    ]
    preds = {1: "red", 2: "two", 3: "no", 4: "blue"}
    out = V.vqa_accuracy(preds, anns)
    assert out["per_question"] == {1: 1.0, 2: pytest.approx(0.6), 3: 0.0, 4: 1.0}
    assert out["overall"] == pytest.approx((1 + 0.6 + 0 + 1) / 4) and out["n"] == 4
    assert out["per_answer_type"] == {"number": pytest.approx(0.6), "other": 1.0, "yes/no": 0.0}
    assert out["per_question_type"]["what color"] == 1.0 and out["per_question_type"]["how many"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"no prediction for question ids \[4\]"):
        V.vqa_accuracy({1: "red", 2: "2", 3: "yes"}, anns)
    with pytest.raises(ValueError, match="annotated twice"):
        V.vqa_accuracy(preds, anns + anns[:1])


# ----------------------------------------------------------------------------------- tables
def _write(tmp: Path, questions: list[dict], annotations: list[dict]) -> tuple[Path, Path]:
    qp, ap = tmp / "q.json", tmp / "a.json"
    qp.write_text(json.dumps({"task_type": "Open-Ended", "questions": questions}))
    ap.write_text(json.dumps({"annotations": annotations}))
    return qp, ap


def _ann(qid: int, img: int, answer: str | None, n: int = 10) -> dict:
    answers = [] if answer is None else [{"answer": answer, "answer_id": k + 1} for k in range(n)]
    return {"question_id": qid, "image_id": img, "answers": answers, "multiple_choice_answer": answer or "",
            "answer_type": "other", "question_type": "what"}  # fmt: skip


def test_load_vqa_bad_input(tmp_path):
    questions = [
        {"question_id": 1, "image_id": 10, "question": "What color is it?"},
        {"question_id": 2, "image_id": 10, "question": "How many?"},  # no annotation
        {"question_id": 3, "image_id": 11, "question": "Is it red?"},  # empty answer list
        {"question_id": 1, "image_id": 11, "question": "Repeated id?"},
        {"question_id": 5, "image_id": 12, "question": "   "},
        {"question_id": 6, "image_id": 99, "question": "Missing image?"},
        {"question_id": 7, "image_id": 12, "question": "Fine?"},
    ]
    annotations = [_ann(1, 10, "red"), _ann(3, 11, None), _ann(5, 12, "x"), _ann(6, 99, "y"), _ann(7, 12, "yes"),
                   _ann(8, 12, "orphan")]  # fmt: skip
    qp, ap = _write(tmp_path, questions, annotations)
    keys = {10: "img_a", 11: "img_b", 12: "img_c"}
    with pytest.raises(TaskInputError, match=r"questions\[1\] \(question_id 2\): question without answers"):
        V.load_vqa(qp, ap, image_key=keys)
    report = tmp_path / "report.json"
    tab = V.load_vqa(qp, ap, image_key=keys, on_error="skip", report_path=report)
    assert tab.question_ids == [1, 7] and tab.image_keys == ["img_a", "img_c"]
    assert tab.records[0].answers == ["red"] * 10 and tab.questions[0] == "What color is it?"
    problems = [i["problem"] for i in json.loads(report.read_text())["issues"]]
    assert len(problems) == 6
    for needle in ("no annotation", "question without answers: answers []", "duplicated id", "empty question text",
                   "image_id 99, which has no image", "no such question"):  # fmt: skip
        assert any(needle in p for p in problems), needle
    qp2, ap2 = _write(tmp_path, questions[:1], [_ann(1, 10, "red"), _ann(1, 10, "blue")])
    with pytest.raises(TaskInputError, match="question_id annotated twice"):
        V.load_vqa(qp2, ap2)


def test_shapes_vqa_tables_and_vocabulary(shapes_root):
    tab = V.load_shapes_vqa(shapes_root, "train")
    doc = json.loads((shapes_root / "vqa" / "questions_train.json").read_text())
    assert len(tab) == len(doc["questions"]) and len(tab.report) == 0
    assert all(k.startswith("shapes_") for k in tab.image_keys)
    caps = json.loads((shapes_root / "captions.json").read_text())
    stem = {im["imgid"]: Path(im["filename"]).stem for im in caps["images"]}
    assert all(stem[r.image_id] == r.image_key for r in tab.records)
    vocab = V.AnswerVocab.build(tab, top_k=5)
    assert len(vocab) == 5 and vocab.counts == sorted(vocab.counts, reverse=True)
    labels = tab.labels(vocab)
    assert bool(((labels >= 0) | (labels == -1)).all()) and 0 < vocab.coverage(tab) < 1
    frame = tab.to_frame()
    assert list(frame["question"]) == tab.questions


def test_answer_vocabulary_normalises_and_ranks():
    recs = [{"multiple_choice_answer": a, "answers": [a]} for a in ["Two", "2", "two", "red", "Red.", "blue", "cat"]]
    vocab = V.AnswerVocab.build(recs, top_k=3)
    assert vocab.answers == ["2", "red", "blue"] and vocab.counts == [3, 2, 1]
    assert vocab.index("TWO") == 0 and vocab.index("cat") == -1
    assert V.AnswerVocab.from_state_dict(vocab.state_dict()).answers == vocab.answers
    assert vocab.decode_logits(torch.tensor([[0.0, 1.0, 0.0]])) == ["red"]


# ----------------------------------------------------------------------------------- model
COLORS = ["red", "green", "blue", "yellow", "purple", "cyan"]


def _problem(n: int, img_map: torch.Tensor, q_map: torch.Tensor, g: torch.Generator, grid: bool):
    """Four slots with a colour each; the question asks for one slot: both modalities needed."""
    slots = torch.randint(0, 6, (n, 4), generator=g)
    onehot = torch.nn.functional.one_hot(slots, 6).float()
    if grid:  # one region per slot, with a fixed position code
        img = onehot @ img_map[:6] + img_map[6:10] + 0.1 * torch.randn(n, 4, img_map.shape[1], generator=g)
    else:
        img = onehot.reshape(n, 24) @ img_map + 0.1 * torch.randn(n, img_map.shape[1], generator=g)
    which = torch.randint(0, 4, (n,), generator=g)
    q = torch.nn.functional.one_hot(which, 4).float() @ q_map + 0.1 * torch.randn(n, q_map.shape[1], generator=g)
    ans = slots[torch.arange(n), which].tolist()
    recs = [
        V.VQARecord(i, i, f"im{i}", f"what color is slot {w}?", [COLORS[a]] * 10, COLORS[a], "other", "what color")
        for i, (w, a) in enumerate(zip(which.tolist(), ans))
    ]
    return V.VQATable(recs, "synthetic"), img, q


@pytest.mark.parametrize(("method", "grid"), [("film", False), ("concat", False), ("cross_attention", True)])
def test_vqa_model_learns_a_synthetic_problem(method, grid):
    """The task's one VQA path (VQANet trained by fit_vqa, scored with the VQA accuracy) solves a
    problem where the answer is the colour in the slot the question names."""
    g = torch.Generator().manual_seed(0)
    img_map, q_map = torch.randn(24, 32, generator=g), torch.randn(4, 16, generator=g)
    splits = [_problem(n, img_map, q_map, g, grid) for n in (1200, 200, 200)]
    vocab = V.AnswerVocab.build(splits[0][0])
    arrays = [
        VQAArrays(img, [f"im{i}" for i in range(len(tab))], q, torch.arange(len(tab)), tab.labels(vocab), tab)
        for tab, img, q in splits
    ]
    torch.manual_seed(0)
    model = V.VQANet(method, 32, 16, len(vocab), n_regions=4 if grid else 0, hidden=64, dropout=0.0, heads=2)
    opts = {"images_per_batch": 64, "lr": 3e-3, "weight_decay": 1e-2, "patience": 6, "label_smoothing": 0.0,
            "resume": False}  # fmt: skip
    res = fit_vqa(model, arrays[0], arrays[1], opts, epochs=25, seed=0, progress=False)
    assert res.best_value == max(r["val_acc"] for r in res.history)
    test_tab = splits[2][0]
    answers = vocab.decode_logits(vqa_logits(model, arrays[2]))
    out = V.vqa_accuracy({r.question_id: a for r, a in zip(test_tab.records, answers)}, test_tab.annotations())
    assert out["overall"] > 0.9, out["overall"]
    assert set(out["per_answer_type"]) == {"other"} and out["n"] == 200


def test_the_image_branchs_gradients_do_not_depend_on_thread_timing():
    """A batch's questions share their image rows (repeated indices). Advanced indexing's backward
    accumulates those with atomic adds on 2+ threads, so with another process on the cores the same
    step gave other gradients (VQA-RAD trainings did not repeat); index_select's does not."""
    import hashlib
    import subprocess
    import sys

    torch.manual_seed(0)
    img, q = torch.randn(8, 49, 256), torch.randn(80, 64)
    qi = torch.arange(80) % 8
    model = VQANet("film", 256, 64, 30, n_regions=49, hidden=64, dropout=0.0, heads=4, glimpses=2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the cores are shared
    seen = set()
    try:
        with cpu_threads(2):
            for _ in range(6):
                model.zero_grad()
                torch.nn.functional.cross_entropy(model(img, q, qi), torch.arange(80) % 30).backward()
                seen.add(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest())
    finally:
        busy.kill()
        busy.wait()
    assert len(seen) == 1
