"""VQA v2: question/annotation JSON + COCO-named images -> top-K answer classification."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fusionkit.data import registry, shapes
from fusionkit.data.base import DatasetError
from fusionkit.data.problems import Report
from fusionkit.data.validate import check

ANSWERS = ["yes", "no", "2", "dog", "red", "yes", "no", "yes", "grass", "rare-answer"]


def _vqa_folder(root: Path, images: list[Path]) -> Path:
    """VQA v2 files for 16 train + 8 val images, 3 questions each, COCO 2014 file names."""
    docs = {}
    qid = 0
    for part, imgs in (("train2014", images[:16]), ("val2014", images[16:24])):
        (root / part).mkdir(parents=True, exist_ok=True)
        qs, anns = [], []
        for k, src in enumerate(imgs):
            iid = 100 + k + (0 if part == "train2014" else 50)
            shutil.copyfile(src, root / part / f"COCO_{part}_{iid:012d}.jpg")
            for j in range(3):
                qid += 1
                ans = ANSWERS[(k * 3 + j) % len(ANSWERS)]
                qs.append({"question_id": qid, "image_id": iid, "question": f"question {j} about image {iid}?"})
                answers = [{"answer": ans, "answer_confidence": "yes", "answer_id": a + 1} for a in range(10)]
                answers[0]["answer"] = "maybe"  # annotators disagree: kept for VQA accuracy
                anns.append(
                    {
                        "question_id": qid,
                        "image_id": iid,
                        "multiple_choice_answer": ans,
                        "answers": answers,
                        "answer_type": "yes/no" if ans in ("yes", "no") else "other",
                        "question_type": "what",
                    }
                )
        docs[part] = (qs, anns)
        (root / f"v2_OpenEnded_mscoco_{part}_questions.json").write_text(
            json.dumps({"task_type": "Open-Ended", "data_subtype": part, "questions": qs}), encoding="utf-8"
        )
        (root / f"v2_mscoco_{part}_annotations.json").write_text(
            json.dumps({"data_subtype": part, "annotations": anns}), encoding="utf-8"
        )
    return root


@pytest.fixture
def vqa_src(tmp_path, flickr_small):
    src_small, caps = flickr_small
    return _vqa_folder(tmp_path / "vqa", [src_small / "Flicker8k_Dataset" / n for n in caps])


def test_vqa_v2_top_k_splits_and_answer_files(vqa_src, tmp_path):
    ds = registry.prepare("vqa", tmp_path / "out", source_dir=vqa_src, top_k=5, progress=False)
    train_counts = Counter(ANSWERS[i % len(ANSWERS)] for i in range(48))
    assert ds.targets["answer"][:2] == ["yes", "no"] and len(ds.targets["answer"]) == 5
    assert train_counts[ds.targets["answer"][0]] >= train_counts[ds.targets["answer"][-1]]
    assert registry.detect(vqa_src)[0] == "vqa"
    # splits keep images together; val2014 was divided into val and test
    img_split = {}
    for s in ds.samples:
        assert img_split.setdefault(s.modalities["image"], s.split) == s.split
        assert s.id.startswith("q") and s.modalities["text"].startswith("question")
    assert {p.split("/")[0] for p, sp in img_split.items() if sp == "train"} == {"train2014"}
    assert Counter(sp for p, sp in img_split.items() if p.startswith("val2014")) == {"val": 4, "test": 4}
    rep = Report.load(ds.root)
    dropped = rep.stats["dropped_outside_top_k"]
    assert sum(dropped.values()) == 72 - len(ds) and sum(dropped.values()) > 0
    assert rep.ok and len(rep.of_kind("dropped")) >= 1
    # annotation files keep the 10 original answers of exactly the kept questions
    for sp in ("train", "val", "test"):
        q = json.loads((ds.root / "vqa" / f"questions_{sp}.json").read_text())
        a = json.loads((ds.root / "vqa" / f"annotations_{sp}.json").read_text())
        ids = {int(s.id[1:]) for s in ds.samples if s.split == sp}
        assert {x["question_id"] for x in q["questions"]} == ids == {x["question_id"] for x in a["annotations"]}
        assert all(len(x["answers"]) == 10 and x["answers"][0]["answer"] == "maybe" for x in a["annotations"])
        assert q["data_subtype"] == a["data_subtype"] == sp
    answers = json.loads((ds.root / "vqa" / "answers.json").read_text())
    assert answers["classes"] == ds.targets["answer"]


def test_vqa_bad_records(vqa_src, tmp_path):
    qp = vqa_src / "v2_OpenEnded_mscoco_train2014_questions.json"
    ap = vqa_src / "v2_mscoco_train2014_annotations.json"
    qdoc, adoc = json.loads(qp.read_text()), json.loads(ap.read_text())
    qdoc["questions"].append(dict(qdoc["questions"][0]))  # duplicate question id
    qdoc["questions"].append({"question_id": 999, "image_id": 777, "question": "is the image there?"})
    adoc["annotations"].append(dict(adoc["annotations"][1], question_id=999, image_id=777))
    qdoc["questions"].append({"question_id": 1000, "image_id": 100, "question": "no annotation?"})
    adoc["annotations"].append(dict(adoc["annotations"][1], question_id=1001))  # no question
    qdoc["questions"].append({"question_id": 1002, "image_id": 100, "question": 42})
    qp.write_text(json.dumps(qdoc))
    ap.write_text(json.dumps(adoc))
    (vqa_src / "train2014" / "COCO_train2014_000000000101.jpg").write_bytes(b"not an image")
    with pytest.raises(
        DatasetError, match=r"questions\.json: questions\[3\] \(question_id 4\): .*000000000101\.jpg: corrupt"
    ):
        registry.prepare("vqa", tmp_path / "out", source_dir=vqa_src, top_k=5, progress=False)
    assert not (tmp_path / "out").exists()
    ds = registry.prepare("vqa", tmp_path / "out", source_dir=vqa_src, top_k=5, on_error="skip", progress=False)
    kinds = Counter(i.kind for i in Report.load(ds.root).skipped)
    assert kinds == {"duplicate": 1, "missing_file": 1, "unmatched": 2, "malformed": 1, "corrupt": 3}
    assert all(not s.modalities["image"].endswith("000000000101.jpg") for s in ds.samples)
    assert not check(vqa_src).ok


def test_vqa_on_the_shapes_files(tmp_path):
    """The synthetic default writes VQA v2 files too: the same loader reads them."""
    src = shapes.generate(tmp_path / "shapes", n=24, seed=2, image_size=48, progress=False).root
    ds = registry.prepare("vqa", tmp_path / "out", source_dir=src, top_k=8, check_media="none", progress=False)
    by_split = Counter(s.split for s in ds.samples)
    assert set(by_split) == {"train", "val", "test"} and len(ds.targets["answer"]) == 8
    assert ds.samples[0].modalities["image"].startswith("images/shapes_")
