"""fusionkit.data.caption_formats and the VQA v2 parser of fusionkit.data.vqa: one parser per raw
format, read by the dataset loaders and by the task readers alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusionkit import workbook as wb
from fusionkit.data import shapes
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.data.caption_formats import coco_images, karpathy_images, parse_coco_captions, parse_karpathy
from fusionkit.data.problems import InputReport, Problems, ReportProblems, TaskInputError
from fusionkit.data.vqa import processed_vqa_files, read_vqa_file, vqa_annotations, vqa_questions
from fusionkit.tasks import vqa as V
from fusionkit.tasks.captioning import CaptionDataset


@pytest.fixture(scope="module")
def shapes_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats") / "ds"
    shapes.generate(root, n=24, seed=2, image_size=64, progress=False)
    return load_dataset(root)


def _karpathy(path: Path, images: list) -> Path:
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def test_karpathy_records_reach_the_loader_and_the_task_reader_alike(shapes_ds):
    """The same images, in file order, with the same captions, whichever side reads captions.json."""
    path = Path(shapes_ds.root) / "captions.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    images = list(karpathy_images(path, Problems("raise")))
    assert [im.ref for im in images] == [d["filename"] for d in doc["images"]]
    sentences = [[c for c, _ in im.sentences(Problems("raise"))] for im in images]
    assert sentences == [[s["raw"] for s in d["sentences"]] for d in doc["images"]]
    entries = parse_karpathy(path, Problems("raise"))
    caps = CaptionDataset.read_karpathy(path)
    assert list(entries) == [im.ref for im in images]
    assert caps.ids() == [Path(r).stem for r in entries] == [im.stem for im in images]
    assert all(caps.references[Path(r).stem] == [c for c, _ in e.captions] for r, e in entries.items())
    assert {caps.splits[Path(r).stem] for r in entries} <= {"train", "val", "test"}
    assert all(caps.splits[Path(r).stem] == e.split for r, e in entries.items())
    assert V.image_keys_from_karpathy(path) == {d["imgid"]: Path(d["filename"]).stem for d in doc["images"]}
    assert wb.captions_by_sample(shapes_ds) == caps.references


def test_a_malformed_karpathy_record_is_named_on_both_sides(tmp_path):
    path = _karpathy(
        tmp_path / "captions.json",
        [
            {"filename": "a.png", "split": "train", "sentences": [{"raw": "a cat"}]},
            {"split": "train", "sentences": [{"raw": "no file name"}]},
            {"filename": "c.png", "split": "val", "sentences": [{"raw": "a dog"}, {"tokens": ["two", "dogs"]}, 7]},
        ],
    )
    with pytest.raises(
        DatasetError, match=r"captions\.json: images\[1\]: expected an object with a non-empty string 'filename'"
    ):
        parse_karpathy(path, Problems("raise"))
    with pytest.raises(
        TaskInputError, match=r"captions\.json: images\[1\]: expected an object with a non-empty string 'filename'"
    ):
        CaptionDataset.read_karpathy(path)
    p = Problems("skip")
    entries = parse_karpathy(path, p)
    assert [i.where for i in p.issues] == [f"{path}: images[1]", f"{path}: images[2] (c.png) sentences[2]"]
    assert [c for c, _ in entries["c.png"].captions] == ["a dog", "two dogs"]
    caps = CaptionDataset.read_karpathy(path, on_error="skip")
    assert caps.ids() == ["a", "c"] and caps.references["c"] == ["a dog", "two dogs"]
    assert [(i.file, i.record) for i in caps.report.issues] == [
        (str(path), "images[1]"),
        (str(path), "images[2] (c.png) sentences[2]"),
    ]
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TaskInputError, match=r"bad\.json:1:2: not valid JSON"):
        CaptionDataset.read_karpathy(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    with pytest.raises(TaskInputError, match=r"list\.json: expected a Karpathy split object"):
        CaptionDataset.read_karpathy(tmp_path / "list.json")


def test_coco_captions_parse_once_for_the_loader_and_the_task_reader(tmp_path):
    doc = {
        "images": [
            {"id": 3, "file_name": "x/c.png"},
            {"id": 1, "file_name": "x/a.png"},
            {"id": 1, "file_name": "x/d.png"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a cat"},
            {"id": 11, "image_id": 3, "caption": "a cow"},
            {"id": 12, "image_id": 2, "caption": "orphan"},
            {"id": 13, "image_id": 1, "caption": "the cat"},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    p = Problems("skip")
    images = coco_images(path, p)
    assert [(im.id, im.file_name, [c for c, _ in im.captions]) for im in images] == [
        (3, "x/c.png", ["a cow"]),
        (1, "x/a.png", ["a cat", "the cat"]),
    ]
    assert [(i.kind, i.where) for i in p.issues] == [
        ("duplicate", f"{path}: images[2] (id 1)"),
        ("unmatched", f"{path}: annotations[2] (id 12)"),
    ]
    entries = parse_coco_captions(path, Problems("skip"), "val")
    assert list(entries) == ["val2014/3", "val2014/1"] and entries["val2014/1"].original_id == 1
    caps = CaptionDataset.read_coco(path, "test", on_error="skip")
    assert caps.ids() == ["c", "a"] and caps.references == {"c": ["a cow"], "a": ["a cat", "the cat"]}
    assert [i.record for i in caps.report.issues] == ["images[2] (id 1)", "annotations[2] (id 12)"]
    with pytest.raises(TaskInputError, match=r"images\[2\] \(id 1\): image id 1 appears twice"):  # the first problem
        CaptionDataset.read_coco(path, "test", on_error="raise")


def test_vqa_files_parse_once_for_the_loader_the_task_reader_and_the_workbook(shapes_ds, tmp_path):
    root = Path(shapes_ds.root)
    files, why = processed_vqa_files(root)
    assert why == "" and set(files) == {"questions", "annotations"}
    table = V.load_shapes_vqa(root, "val")
    qf = read_vqa_file(files["questions"]["val"], "questions")
    af = read_vqa_file(files["annotations"]["val"], "annotations")
    raw = json.loads(files["questions"]["val"].read_text(encoding="utf-8"))["questions"]
    assert [q.question_id for q in vqa_questions(qf, Problems("raise"))] == [q["question_id"] for q in raw]
    assert table.question_ids == [q["question_id"] for q in raw]
    assert {a.question_id for a in vqa_annotations(af, Problems("raise"))} == set(table.question_ids)
    qt = wb.questions_table(shapes_ds, n=1000)
    assert list(qt[qt.split == "val"].question) == [q["question"] for q in raw]
    assert processed_vqa_files(tmp_path) == (None, f"no VQA files: {tmp_path / 'vqa'} does not exist")
    # a question annotated twice: named with file and record by the data side and the task side
    adoc = json.loads(files["annotations"]["val"].read_text(encoding="utf-8"))
    adoc["annotations"].append(adoc["annotations"][0])
    ap = tmp_path / "annotations.json"
    ap.write_text(json.dumps(adoc), encoding="utf-8")
    n = len(adoc["annotations"]) - 1
    with pytest.raises(
        DatasetError, match=rf"annotations\.json: annotations\[{n}\] \(question_id \d+\): question_id annotated twice"
    ):
        list(vqa_annotations(read_vqa_file(ap, "annotations"), Problems("raise")))
    with pytest.raises(
        TaskInputError, match=rf"annotations\.json: annotations\[{n}\] \(question_id \d+\): question_id annotated twice"
    ):
        V.load_vqa(files["questions"]["val"], ap, image_key=V.image_keys_from_karpathy(root / "captions.json"))
    assert read_vqa_file(root / "captions.json", "questions") is None


def test_report_problems_files_parser_problems_as_task_records(tmp_path):
    rep = InputReport(source="f.json")
    sink = ReportProblems(rep, "skip", "f.json")
    sink.error("duplicate", "f.json: images[2] (a.png)", "appears twice")
    sink.warn("malformed", "f.json: images[3]", "9 answers")  # not the task readers' concern
    assert [(i.kind, i.file, i.record, i.message, i.severity) for i in rep.issues] == [
        ("duplicate", "f.json", "images[2] (a.png)", "appears twice", "skipped")
    ]
    with pytest.raises(TaskInputError, match=r"^f\.json: images\[2\]: bad$"):
        ReportProblems(rep, "raise", "f.json").error("malformed", "f.json: images[2]", "bad")
    with pytest.raises(ValueError, match="on_error"):
        ReportProblems(rep, "collect", "f.json")
