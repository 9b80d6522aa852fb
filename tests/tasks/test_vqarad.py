"""The VQA task on VQA-RAD: exact match (lower-case + trim) in the vocabulary and the metric, the
organ breakdown, the majority and question-only baselines, the table next to the published
numbers, fine-tuning the last image block as an option (a tiny case)."""

from __future__ import annotations

import pytest
import torch

from fusionkit.data import registry
from fusionkit.data.vqarad import PUBLISHED
from fusionkit.encoders import build_encoder
from fusionkit.index import FeatureIndex
from fusionkit.tasks import features as F
from fusionkit.tasks import run
from fusionkit.tasks.vqa import AnswerVocab, vqa_accuracy
from fusionkit.tasks.vqa.data import VQARecord, VQATable
from fusionkit.tasks.vqa.model import QuestionOnlyNet
from fusionkit.tasks.vqa.task import majority_predictions
from tests.synthetic import vqarad_folder

TINY = {"hidden": 32, "heads": 2, "images_per_batch": 8, "baselines": True}


def test_exact_match_is_not_vqa_normalisation():
    anns = [
        {"question_id": 1, "answers": ["one"], "answer_type": "OPEN", "question_type": "COUNT", "image_organ": "HEAD"},
        {"question_id": 2, "answers": ["Yes"], "answer_type": "CLOSED", "question_type": "PRES", "image_organ": "CHEST"},
        {"question_id": 3, "answers": ["the left lung"], "answer_type": "OPEN", "question_type": "POS",
         "image_organ": "CHEST"},
    ]  # fmt: skip
    preds = {1: "1", 2: " yes ", 3: "left lung"}
    vqa = vqa_accuracy(preds, anns)
    exact = vqa_accuracy(preds, anns, metric="exact")
    assert vqa["per_question"] == {1: 1.0, 2: 1.0, 3: 1.0}  # VQA v2: number words, articles
    assert exact["per_question"] == {1: 0.0, 2: 1.0, 3: 0.0}
    assert exact["per_answer_type"] == {"CLOSED": 1.0, "OPEN": 0.0}
    assert exact["per_image_organ"] == {"CHEST": 0.5, "HEAD": 0.0}
    assert "per_image_organ" not in vqa_accuracy({1: "1"}, [{"question_id": 1, "answers": ["1"]}])
    with pytest.raises(ValueError, match="metric='bleu'"):
        vqa_accuracy(preds, anns, metric="bleu")


def test_exact_vocabulary_keeps_answers_vqa_would_merge():
    recs = [VQARecord(i, 0, "k", "q?", [a], a) for i, a in enumerate(["one", "1", "One ", "the liver", "liver"])]
    vqa = AnswerVocab.build(VQATable(recs))
    exact = AnswerVocab.build(VQATable(recs, metric="exact"))
    assert vqa.answers == ["1", "liver"] and vqa.counts == [3, 2]
    assert exact.answers == ["one", "1", "liver", "the liver"] and exact.counts == [2, 1, 1, 1]
    again = AnswerVocab.from_state_dict(exact.state_dict())
    assert again.metric == "exact" and again.index(" ONE") == 0 and again.index("the liver") == 3


def test_majority_answer_per_answer_type():
    def rec(i, a, t):
        return VQARecord(i, 0, "k", "q?", [a], a, answer_type=t)

    train = VQATable([rec(1, "Yes", "CLOSED"), rec(2, "no", "CLOSED"), rec(3, "yes ", "CLOSED"),
                      rec(4, "axial", "OPEN"), rec(5, "left", "OPEN"), rec(6, "left", "OPEN")], metric="exact")  # fmt: skip
    test = VQATable([rec(7, "no", "CLOSED"), rec(8, "left", "OPEN"), rec(9, "x", "OTHER")], metric="exact")
    assert majority_predictions(train, test, "exact") == {7: "yes", 8: "left", 9: "left"}


def test_question_only_ignores_the_image():
    torch.manual_seed(0)
    net = QuestionOnlyNet(8, 5, hidden=16).eval()
    q = torch.randn(3, 8)
    a = net(torch.randn(2, 4, 32), q, torch.tensor([0, 1, 1]))
    b = net(torch.zeros(1, 32), q)
    assert a.shape == (3, 5) and torch.equal(a, b)


@pytest.fixture(scope="module")
def vqarad_index(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("vqarad_task")
    src = vqarad_folder(tmp / "raw", n_images=20, per_image=4)
    ds = registry.prepare("vqarad", tmp / "ds", source_dir=src, progress=False)
    index = tmp / "features.json"
    FeatureIndex.build(ds, {"text": "minilm"}, tmp / "cache", ["pooled"], path=index, progress=False)
    img = build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0)
    F.extract_task_features(ds, index, ["vqa"], tmp / "cache", image_encoder=img, text_encoder="minilm",
                            progress=False)  # fmt: skip
    return index, tmp


def test_train_and_evaluate_with_baselines_next_to_the_published_numbers(vqarad_index):
    index, tmp = vqarad_index
    out = tmp / "run"
    s = run.train_task("vqa", index, out, epochs=3, method=["film"], progress=False, **TINY)
    assert "question_only/best_val_accuracy" in s and "film/best_val_accuracy" in s
    res = run.evaluate_task("vqa", index, out, n_examples=0)
    m = res.metrics.set_index("model")
    assert list(m.index) == ["film", "question_only", "majority"]
    assert m.loc["film", "kind"] == "fusion" and m.loc["majority", "kind"] == "baseline"
    assert bool(m.loc["film", "best"]) and not m.loc[["question_only", "majority"], "best"].any()
    for col in ("answer_type/CLOSED", "answer_type/OPEN", "image_organ/HEAD", "question_type/PRES"):
        assert m[col].between(0, 1).all()
    # the majority baseline answers every closed test question with the training's majority closed answer
    tables = F.vqa_tables(F.read_task_index(index), index)
    train_closed = [
        r.multiple_choice_answer.strip().lower() for r in tables["train"].records if r.answer_type == "CLOSED"
    ]
    top = max(sorted(set(train_closed)), key=train_closed.count)
    closed = [r.multiple_choice_answer.strip().lower() for r in tables["test"].records if r.answer_type == "CLOSED"]
    assert m.loc["majority", "answer_type/CLOSED"] == pytest.approx(sum(a == top for a in closed) / len(closed))
    organs = {r.image_organ for r in tables["test"].records}
    assert set(res.tables["per_image_organ"]["image_organ"]) == organs and len(organs) >= 2
    pub = res.tables["vqarad_vs_published"]
    ours = pub[pub.kind != "published"].set_index("model")
    assert ours.loc["film", "closed"] == pytest.approx(100 * m.loc["film", "answer_type/CLOSED"])
    assert ours.loc["film", "all"] == pytest.approx(100 * m.loc["film", "accuracy"])
    assert ours["evaluated_on"].str.startswith("validation, not comparable").all()
    theirs = pub[pub.kind == "published"]
    assert list(theirs.model) == [p.method for p in PUBLISHED] and list(theirs.closed) == [74.1, 75.1]
    assert any("not comparable" in n for n in res.notes)


def test_fine_tuning_the_last_image_block_is_an_option(vqarad_index):
    index, tmp = vqarad_index
    out = tmp / "ft"
    s = run.train_task("vqa", index, out, epochs=2, method=["concat"], progress=False, finetune_image_blocks=1,
                       finetune_epochs=1, finetune_batch_size=8, augment=False, **{**TINY, "baselines": False})  # fmt: skip
    assert s["concat_finetuned/image_blocks"] == 1
    res = run.evaluate_task("vqa", index, out, n_examples=0)
    m = res.metrics.set_index("model")
    assert m.loc["concat_finetuned", "encoders"].startswith("image last 1")
    assert "concat_finetuned" in set(res.tables["vqarad_vs_published"].model)
