"""fusionkit.data.base: the rules of a dataset folder, written once for load_dataset and data check."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fusionkit.data import readers
from fusionkit.data.base import DatasetError, Sample, load_dataset, safe_media_path, write_dataset
from fusionkit.data.validate import check

BAD_ROWS = {
    "not json": "{broken",
    "not an object": "[1, 2]",
    "no id": {"split": "train", "image": "a.png", "text": "x", "y": 0},
    "bad split": {"id": "b", "split": "holdout", "image": "a.png", "text": "x", "y": 0},
    "missing modality": {"id": "b", "split": "train", "text": "x", "y": 0},
    "text not a string": {"id": "b", "split": "train", "image": "a.png", "text": 3, "y": 0},
    "escaping path": {"id": "b", "split": "train", "image": "../a.png", "text": "x", "y": 0},
    "absolute path": {"id": "b", "split": "train", "image": "/etc/passwd", "text": "x", "y": 0},
    "missing file": {"id": "b", "split": "train", "image": "gone.png", "text": "x", "y": 0},
    "target out of range": {"id": "b", "split": "train", "image": "a.png", "text": "x", "y": 2},
    "bool target": {"id": "b", "split": "train", "image": "a.png", "text": "x", "y": True},
    "duplicate id": {"id": "a", "split": "train", "image": "a.png", "text": "x", "y": 1},
}


@pytest.fixture
def folder(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (8, 8)).save(media / "a.png")
    samples = [Sample("a", "train", {"image": "a.png", "text": "a cat"}, {"y": 0})]
    return write_dataset(tmp_path / "ds", "toy", {"image": "image", "text": "text"}, {"y": ["no", "yes"]}, samples,
                         media_root=media)  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_load_dataset_and_data_check_apply_the_same_row_rules(folder, case):
    """The first problem data check lists for a bad row is exactly what load_dataset raises."""
    good = (folder / "manifest.jsonl").read_text(encoding="utf-8").strip()
    bad = BAD_ROWS[case]
    (folder / "manifest.jsonl").write_text(good + "\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
    rep = check(folder)
    assert not rep.ok and rep.issues[0].where.startswith(f"{folder / 'manifest.jsonl'}:2")
    with pytest.raises(DatasetError) as e:
        load_dataset(folder)
    assert str(e.value) == rep.issues[0].line()


def test_an_empty_text_loads_but_data_check_reports_it(folder):
    rows = (folder / "manifest.jsonl").read_text(encoding="utf-8").replace('"a cat"', '"  "')
    (folder / "manifest.jsonl").write_text(rows, encoding="utf-8")
    assert load_dataset(folder).samples[0].modalities["text"] == "  "
    assert [(i.kind, i.message) for i in check(folder).issues] == [("empty_caption", "text modality 'text' is empty")]


def test_media_paths_are_checked_by_one_function(tmp_path):
    assert readers.safe_media_path is safe_media_path
    assert safe_media_path(tmp_path, "./images//a.png", "w") == "images/a.png"
    with pytest.raises(DatasetError, match=r"^w: absolute path '/etc/passwd' refused"):
        safe_media_path(tmp_path, "/etc/passwd", "w")


def test_ceilings_are_the_targets_own(tmp_path):
    from fusionkit.data import shapes

    ds = shapes.generate(tmp_path / "shapes", n=24, image_size=32, progress=False)
    assert ds.ceilings("mixed") == shapes.TARGET_CEILINGS["mixed"] != ds.ceilings("label")
    assert ds.ceilings() == ds.ceilings("label") == shapes.TARGET_CEILINGS["label"]
    del ds.info["target_ceilings"]
    assert ds.ceilings() == ds.info["ceilings"] and ds.ceilings("mixed") == {}  # info["ceilings"]: the first target's
    with pytest.raises(KeyError, match="target 'nope' not in dataset"):
        ds.ceilings("nope")
    # a regression target's ceilings are its R^2 ones, whatever the class targets document
    assert ds.ceilings("score") == shapes.score_ceilings(tabular=False) == ds.info["r2_ceilings"]["score"]
    del ds.info["r2_ceilings"]
    assert ds.ceilings("score") == {}
