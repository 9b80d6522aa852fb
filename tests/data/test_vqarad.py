"""VQA-RAD: the loader (splits by image, answer normalisation, testset.json when present), bad
input named with its record, detection and check, the download entry; the real training split."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

import pytest

from fusionkit.data import download, registry
from fusionkit.data.base import DatasetError
from fusionkit.data.vqarad import PUBLISHED, UNSEEN, normalise_answer
from tests.synthetic import vqarad_folder


def _images_by_split(ds):
    out: dict[str, set[str]] = {}
    for s in ds.samples:
        out.setdefault(s.split, set()).add(s.modalities["image"])
    return out


def test_splits_by_image_and_answers_normalised(tmp_path):
    src = vqarad_folder(tmp_path / "raw", n_images=20)
    assert registry.detect(src) == ("vqarad", "VQA-RAD trainset.json")
    ds = registry.prepare("vqarad", tmp_path / "out", source_dir=src, progress=False)
    by = _images_by_split(ds)
    assert set(by) == {"train", "val", "test"}
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    assert len(by["val"]) == len(by["test"]) == 3  # 15 % of 20 images each
    assert ds.info["official_test"] is False and "not comparable" in ds.info["test_split"]
    classes = ds.targets["answer"]
    # "Yes"/"no " and "Left lung"/" left lung" are one class each (lower-case + trim); the number is text
    assert {"yes", "no", "left lung", "2"} <= set(classes) and classes[-1] == UNSEEN
    assert len(classes) == len(set(classes))
    ann = json.loads((ds.root / "vqa" / "annotations_train.json").read_text())
    assert ann["metric"] == "exact" and ann["benchmark"] == "vqa-rad" and ann["official_test"] is False
    types = Counter(a["answer_type"] for a in ann["annotations"])
    assert set(types) == {"CLOSED", "OPEN"}  # "CLOSED " normalised
    assert {a["image_organ"] for a in ann["annotations"]} == {"HEAD", "CHEST", "ABD"}
    raw = {r["qid"]: r for r in json.loads((src / "trainset.json").read_text())}
    for s in ds.samples:  # every question kept, labelled with its normalised answer (or UNSEEN)
        want = normalise_answer(raw[int(s.id[1:])]["answer"])
        got = classes[s.targets["answer"]]
        assert got == want or (got == UNSEEN and s.split != "train" and want not in classes)
    assert len(ds.samples) == len(raw)
    other = registry.prepare("vqarad", tmp_path / "out2", source_dir=src, seed=1, progress=False)
    assert _images_by_split(other)["val"] != by["val"]  # the seed draws the split


def test_testset_is_read_when_present(tmp_path):
    src = vqarad_folder(tmp_path / "raw", n_images=20, test=True)
    ds = registry.prepare("vqarad", tmp_path / "out", source_dir=src, progress=False)
    test_qids = {f"q{r['qid']}" for r in json.loads((src / "testset.json").read_text())}
    assert {s.id for s in ds.samples if s.split == "test"} == test_qids
    assert ds.info["official_test"] is True
    by = _images_by_split(ds)
    assert not (by["train"] & by["val"]) and len(by["val"]) == 3
    assert json.loads((ds.root / "vqa" / "annotations_test.json").read_text())["official_test"] is True


@pytest.mark.parametrize(
    "edit, kind, says",
    [
        (lambda r: r.update(answer_type="MAYBE"), "malformed", "answer_type = 'MAYBE'"),
        (lambda r: r.update(image_name="synpic_absent.jpg"), "missing_file", "does not exist"),
        (lambda r: r.update(question="  "), "empty_caption", "question"),
        (lambda r: r.update(answer=""), "empty_caption", "answer"),
        (lambda r: r.pop("image_organ"), "malformed", "missing field(s) ['image_organ']"),
        (lambda r: r.update(qid=1), "duplicate", "qid 1 appears twice"),
        (lambda r: r.update(image_name="../../outside.jpg"), "unsafe_path", "escapes"),
    ],
)
def test_bad_records_are_named_raised_or_skipped(tmp_path, edit, kind, says):
    src = vqarad_folder(tmp_path / "raw", n_images=20)
    recs = json.loads((src / "trainset.json").read_text())
    edit(recs[5])
    (src / "trainset.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match=r"trainset\.json: \[5\]") as e:
        registry.prepare("vqarad", tmp_path / "out", source_dir=src, progress=False)
    assert says in str(e.value)
    ds = registry.prepare("vqarad", tmp_path / "out", source_dir=src, on_error="skip", progress=False)
    assert len(ds.samples) == len(recs) - 1
    skipped = json.loads((ds.root / "skipped.json").read_text())
    assert [(i["kind"], "[5]" in i["where"]) for i in skipped] == [(kind, True)]
    rep = registry.check_raw(src)
    assert not rep.ok and [i.kind for i in rep.errors] == [kind]


def test_a_file_that_is_not_a_list_is_refused(tmp_path):
    src = vqarad_folder(tmp_path / "raw", n_images=6)
    (src / "testset.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(DatasetError, match=r"testset\.json: expected a JSON list"):
        registry.prepare("vqarad", tmp_path / "out", source_dir=src, progress=False)
    with pytest.raises(DatasetError, match="no trainset.json"):
        registry.prepare("vqarad", tmp_path / "out", source_dir=tmp_path, progress=False)


def test_download_entry_and_verified_local_archive(tmp_path):
    spec = download.SOURCES["vqarad"]
    assert spec["prepare"] == "vqarad" and registry.DOWNLOAD_FOR["vqarad"] == "vqarad"
    assert all(r.url.startswith("https://") for r in spec["files"])
    src = vqarad_folder(tmp_path / "raw", n_images=4)
    archive = tmp_path / "mirror" / spec["files"][0].filename
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    sha, _ = download._hashes(archive)
    good = [download.Remote("https://example.invalid/x.zip", archive.name, "data", archive.stat().st_size, sha)]
    dest = download.download("vqarad", tmp_path / "to", from_path=archive.parent, files=good, progress=False)
    assert registry.detect(dest)[0] == "vqarad" and (dest / "images" / "synpic1000.jpg").is_file()
    bad = [download.Remote("https://example.invalid/x.zip", archive.name, "data", archive.stat().st_size, "0" * 64)]
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        download.download("vqarad", tmp_path / "to2", from_path=archive.parent, files=bad, progress=False)


def test_published_numbers_are_the_papers():
    assert {(p.method, p.open, p.closed) for p in PUBLISHED} == {("MEVF+SAN", 40.7, 74.1), ("MEVF+BAN", 43.9, 75.1)}


def test_the_real_training_split(shared_data_module, tmp_path):
    src = shared_data_module / "vqa-rad"
    ds = registry.prepare("vqarad", tmp_path / "out", source_dir=src, check_media="none", progress=False)
    assert len(ds.samples) == 3064 and ds.info["official_test"] is False
    by = _images_by_split(ds)
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    ann = json.loads((ds.root / "vqa" / "annotations_train.json").read_text())
    assert {a["answer_type"] for a in ann["annotations"]} == {"CLOSED", "OPEN"}
    assert set(ds.targets["answer"][:2]) == {"no", "yes"}
