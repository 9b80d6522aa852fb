"""Your own data: CSV / JSONL / Parquet manifests, every kind of bad row, and the registry's guarantees."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fusionkit import cli
from fusionkit.data import registry
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.data.problems import Report
from fusionkit.data.validate import check

LABELS = ["cat", "dog", "bird"]


@pytest.fixture
def own(tmp_path) -> Path:
    """A user's folder: 12 images, 12 WAVs and manifest.csv (the docs/datasets.md example layout)."""
    root = tmp_path / "mydata"
    (root / "photos").mkdir(parents=True)
    (root / "clips").mkdir()
    rows = ["id,image,caption,audio,label,split"]
    for i in range(12):
        Image.new("RGB", (16, 16), (20 * i, 100, 50)).save(root / "photos" / f"p{i}.png")
        sf.write(root / "clips" / f"c{i}.wav", np.zeros(400, dtype=np.float32) + 0.01 * i, 8000, subtype="PCM_16")
        split = "train" if i < 6 else "val" if i < 9 else "test"
        rows.append(f's{i:02d},photos/p{i}.png,"a {LABELS[i % 3]}, number {i}",clips/c{i}.wav,{LABELS[i % 3]},{split}')
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _write(root: Path, lines: list[str], name: str = "manifest.csv") -> None:
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_csv_manifest_autodetect(own, tmp_path):
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    assert ds.name == "mydata"
    assert ds.modalities == {"image": "image", "caption": "text", "audio": "audio"}
    assert ds.targets == {"label": ["bird", "cat", "dog"]}  # classes sorted
    assert Counter(s.split for s in ds.samples) == {"train": 6, "val": 3, "test": 3}
    s = next(s for s in ds.samples if s.id == "s04")
    assert s.targets["label"] == 2 and s.modalities["caption"] == "a dog, number 4"
    assert ds.path(s, "image") == own / "photos" / "p4.png" and ds.media_root == own
    assert Report.load(ds.root).ok and registry.detect(own)[0] == "manifest"


def test_bom_crlf_manifest_is_the_same(own, tmp_path):
    text = (own / "manifest.csv").read_text(encoding="utf-8")
    a = registry.prepare("manifest", tmp_path / "a", source_dir=own, progress=False)
    (own / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    b = registry.prepare("manifest", tmp_path / "b", source_dir=own, progress=False)
    assert (a.root / "manifest.jsonl").read_bytes() == (b.root / "manifest.jsonl").read_bytes()


def test_explicit_columns_no_split_stratified_and_numeric_classes(own, tmp_path):
    lines = ["photo,words,y"] + [f"photos/p{i}.png,text {i},{[2, 10, 1][i % 3]}" for i in range(12)]
    _write(own, lines, "table.csv")
    ds = registry.prepare(
        "manifest",
        tmp_path / "out",
        source_dir=own / "table.csv",
        modalities="image=photo:image,words:text",
        targets="y",
        split_fractions=(0.5, 0.25, 0.25),
        progress=False,
    )
    assert ds.modalities == {"image": "image", "words": "text"} and ds.targets == {"y": ["1", "2", "10"]}
    assert [s.id for s in ds.samples if s.split == "train"][:1] and {s.id[:3] for s in ds.samples} == {"row"}
    per = Counter((s.split, s.targets["y"]) for s in ds.samples)
    assert all(per[(sp, c)] == n for sp, n in (("train", 2), ("val", 1), ("test", 1)) for c in range(3))


def test_jsonl_wrong_types_name_the_line(own, tmp_path):
    good = {"image": "photos/p0.png", "text": "a cat", "label": "cat", "split": "train"}
    rows = [dict(good, id=f"j{i}", label=LABELS[i % 3]) for i in range(6)]
    rows.append(dict(good, id="bad-image", image=["photos/p1.png"]))
    rows.append(dict(good, id="bad-text", text=7))
    rows.append(dict(good, id="bad-label", label=0.5))
    rows.append(dict(good, id="bad-split", split="holdout"))
    (own / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(
        DatasetError,
        match=r"m\.jsonl:7 \(id 'bad-image'\): column 'image' = \['photos/p1\.png'\]; expected a relative image file path",
    ):
        registry.prepare("manifest", tmp_path / "out", source_dir=own / "m.jsonl", progress=False)
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own / "m.jsonl", on_error="skip", progress=False)
    rep = Report.load(ds.root)
    msgs = {i.where.split("(id ")[1].rstrip(")"): i.message for i in rep.skipped}
    assert set(msgs) == {"'bad-image'", "'bad-text'", "'bad-label'", "'bad-split'"}
    assert "= 7 (int); expected text" in msgs["'bad-text'"]
    assert "= 0.5 (float); expected a class name or integer" in msgs["'bad-label'"]
    assert "split = 'holdout'; expected train, val or test" in msgs["'bad-split'"]
    assert len(ds) == 6


def test_malformed_csv_header_and_fields(own, tmp_path):
    _write(own, ["id,image,label", "a,photos/p0.png,cat,extra", "b,photos/p1.png,dog"])
    with pytest.raises(DatasetError, match=r"manifest\.csv:2: 4 field\(s\); expected 3 \(id,image,label\)"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    _write(own, ["id,image,label", "a,photos/p0.png,cat", "b,photos/p1.png,dog"])
    with pytest.raises(
        DatasetError, match=r"modality column 'photo' not found; the columns are \['id', 'image', 'label'\]"
    ):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, modalities="photo:image", progress=False)
    with pytest.raises(DatasetError, match=r"target column\(s\) \['class'\] not found"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, targets="class", progress=False)
    _write(own, ["id,image", "a,photos/p0.png"])
    with pytest.raises(DatasetError, match="no target column"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    (own / "manifest.csv").write_bytes("id,text,label\na,caf\xe9,x\n".encode("cp1252"))
    with pytest.raises(DatasetError, match=r"manifest\.csv:2: not valid utf-8 text \(byte 0xe9"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, encoding="cp1252", progress=False)
    assert ds.samples[0].modalities["text"] == "café"


def test_unsafe_missing_corrupt_duplicate_rows(own, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, own / "photos" / "link.png")
    (own / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (own / "clips" / "zero.wav").write_bytes(b"")
    (own / "clips" / "song.wav").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x21" + b"\x00" * 300)
    base = (own / "manifest.csv").read_text(encoding="utf-8").strip().splitlines()
    bad = [
        "x1,../../etc/passwd,t,clips/c0.wav,cat,train",
        "x2,/etc/passwd,t,clips/c0.wav,cat,train",
        "x3,photos/link.png,t,clips/c0.wav,cat,train",
        "x4,photos/nothere.png,t,clips/c0.wav,cat,train",
        "x5,photos/broken.png,t,clips/c0.wav,cat,train",
        "x6,photos/p0.png,t,clips/zero.wav,cat,train",
        "x7,photos/p0.png,t,clips/song.wav,cat,train",
        "s00,photos/p0.png,t,clips/c0.wav,cat,train",
        'x8,photos/p0.png,"  ",clips/c0.wav,cat,train',
    ]
    _write(own, base + bad)
    with pytest.raises(
        DatasetError, match=r"manifest\.csv:14 \(id 'x1'\): column 'image': path '\.\./\.\./etc/passwd' escapes"
    ):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, on_error="skip", progress=False)
    rep = Report.load(ds.root)
    kinds = {i.where.split("(id '")[1].rstrip("')"): i.kind for i in rep.skipped}
    assert kinds == {
        "x1": "unsafe_path",
        "x2": "unsafe_path",
        "x3": "unsafe_path",
        "x4": "missing_file",
        "x5": "corrupt",
        "x6": "corrupt",
        "x7": "corrupt",
        "s00": "duplicate",
        "x8": "empty_caption",
    }
    assert len(ds) == 12 and len(json.loads((ds.root / "skipped.json").read_text())) == 9
    by = {i.where.split("(id '")[1].rstrip("')"): i.message for i in rep.skipped}
    assert "absolute path '/etc/passwd' refused" in by["x2"] and "looks like an MP3" in by["x7"]
    assert "0 bytes" in by["x6"] and "first at" in by["s00"]
    # the same check from the command line: non-zero exit, every problem listed
    assert cli.main(["data", "check", str(own)]) == 1
    assert cli.main(["data", "check", str(ds.root)]) == 0


def test_parquet(own, tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (own / "m.parquet").write_bytes(b"PAR1")
        with pytest.raises(DatasetError, match=r"m\.parquet: reading Parquet needs the 'pyarrow' package"):
            registry.prepare("manifest", tmp_path / "out", source_dir=own / "m.parquet", progress=False)
        return
    import pandas as pd

    df = pd.DataFrame({"image": [f"photos/p{i}.png" for i in range(12)], "label": [i % 3 for i in range(12)]})
    df.to_parquet(own / "m.parquet")
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own / "m.parquet", progress=False)
    assert ds.targets == {"label": ["0", "1", "2"]} and len(ds) == 12


def test_fusionkit_folder_as_source_and_failures_leave_nothing_valid(own, tmp_path):
    first = registry.prepare("manifest", tmp_path / "a", source_dir=own, progress=False)
    again = registry.prepare("manifest", tmp_path / "b", source_dir=first.root, progress=False)
    assert [s.id for s in again.samples] == [s.id for s in first.samples] and again.media_root == own
    # a rebuild from broken input: the old folder no longer looks like a valid dataset
    _write(own, ["id,image,label", "a,photos/p0.png,cat", "a,photos/p1.png,dog"])
    with pytest.raises(DatasetError, match="appears twice"):
        registry.prepare("manifest", first.root, source_dir=own, progress=False)
    assert not (first.root / "dataset.json").exists() and (first.root / "dataset.json.stale").exists()
    with pytest.raises(DatasetError, match="dataset.json: missing"):
        load_dataset(first.root)
    # no temporary folders left behind; only the folders' locks (fusionkit.data.base.dataset_lock)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".a.lock", ".b.lock"]


def test_registry_guards(own, tmp_path):
    assert set(registry.available()) == {
        "shapes",
        "flickr8k",
        "flickr30k",
        "coco",
        "vqa",
        "vqarad",
        "avdigits",
        "manifest",
        "imagefolder",
    }
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['colour'\]"):
        registry.prepare("manifest", tmp_path / "o", source_dir=own, colour="red")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        registry.prepare("mnist", tmp_path / "o", source_dir=own)
    with pytest.raises(DatasetError, match="source_dir is required"):
        registry.prepare("avdigits", tmp_path / "o")
    with pytest.raises(DatasetError, match="does not exist; `fusionkit data download fsdd"):
        registry.prepare("avdigits", tmp_path / "o", source_dir=tmp_path / "nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(DatasetError, match="refusing to replace a folder that is not a fusionkit dataset"):
        registry.prepare("manifest", foreign, source_dir=own, progress=False)
    with pytest.raises(DatasetError, match="is \\(or contains\\) the raw data folder"):
        registry.prepare("manifest", own.parent, source_dir=own, progress=False)
    rep = check(tmp_path / "nope")
    assert not rep.ok and "does not exist" in rep.issues[0].message


def test_check_names_an_image_over_the_decompression_bomb_limit_and_exits_non_zero(own, tmp_path, monkeypatch, capsys):
    """`fusionkit data check` (raw folder and prepared folder) and `data prepare` on an image over
    PIL's pixel limit: the file and the record are named, no traceback, a non-zero exit."""
    ds = registry.prepare("manifest", tmp_path / "prepared", source_dir=own, progress=False)
    Image.new("RGB", (64, 64)).save(own / "photos" / "p4.png")  # 4,096 pixels > 2 x 1,000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(registry, "_reuse", lambda out, fp: None)
    for folder in (own, ds.root):
        capsys.readouterr()
        assert cli.main(["data", "check", str(folder)]) == 1
        out = capsys.readouterr().out
        assert "Traceback" not in out and "corrupt or unreadable files: 1" in out
        (line,) = [x for x in out.splitlines() if "decompression bomb" in x]
        assert "(id 's04')" in line and "p4.png" in line and "MAX_IMAGE_PIXELS" in line
    rc = cli.main(
        ["data", "prepare", "manifest", "--source", str(own), "--out", str(tmp_path / "again"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "(id 's04')" in err and "p4.png: refused as a possible decompression bomb" in err


# ------------------------------------------------------------------------------ regression targets
def _scores(root: Path, values: list[str], header: str = "id,caption,score,split") -> None:
    splits = ["train", "train", "val", "test"]
    _write(root, [header] + [f"r{i},text {i},{v},{splits[i % 4]}" for i, v in enumerate(values)])


def test_non_integer_numbers_are_a_regression_target_with_a_note(own, tmp_path):
    _scores(own, ["0.37", "1.5", "2", "-3e-1", "4.25", "0.5", "7", "1.125"])
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    assert ds.targets == {"score": []} and ds.target_kind("score") == "regression"
    by_id = {s.id: s.targets["score"] for s in ds.samples}
    assert by_id["r0"] == 0.37 and by_id["r2"] == 2.0 and by_id["r3"] == -0.3
    notes = [i for i in Report.load(ds.root).issues if i.kind == "note"]
    assert (
        len(notes) == 1 and "target 'score' holds non-integer numbers: read as a regression target" in notes[0].message
    )
    assert ds.summary()["values/score"]["train"]["n"] == 4
    assert load_dataset(ds.root).samples == ds.samples  # the folder reads back


def test_integer_columns_stay_classes_unless_declared(own, tmp_path):
    _scores(own, ["1", "3", "2", "3", "1", "2", "3", "1"])
    ds = registry.prepare("manifest", tmp_path / "a", source_dir=own, progress=False)
    assert ds.targets == {"score": ["1", "2", "3"]}
    ds = registry.prepare("manifest", tmp_path / "b", source_dir=own, regression="score", progress=False)
    assert ds.targets == {"score": []} and sorted({s.targets["score"] for s in ds.samples}) == [1.0, 2.0, 3.0]
    assert not [i for i in Report.load(ds.root).issues if i.kind == "note"]  # declared: nothing to note


def test_regression_bad_values_name_the_file_and_row(own, tmp_path):
    _scores(own, ["0.5", "1.5", "n/a", "2.5", "high", "0.25"])  # two words: the first is named
    with pytest.raises(DatasetError, match=r"manifest\.csv:4 \(id 'r2'\): regression target 'score' = 'n/a' \(a word"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    _scores(own, ["0.5", "1.5", "n/a", "2.5", "3.5", "0.25"])
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, on_error="skip", progress=False)
    assert len(ds) == 5 and [i.where for i in Report.load(ds.root).skipped] == [f"{own / 'manifest.csv'}:4 (id 'r2')"]
    for bad in ("nan", "inf", "-Infinity"):
        _scores(own, ["0.5", "1.5", "2.5", bad, "0.25"])
        with pytest.raises(
            DatasetError, match=rf"manifest\.csv:5 \(id 'r3'\): regression target 'score' = '{bad}' \(NaN / inf\)"
        ):
            registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    _scores(own, ["2"] * 6)  # a constant class target: a warning (one class, nothing to predict)
    ds = registry.prepare("manifest", tmp_path / "one", source_dir=own, progress=False)
    assert any("target 'score' is constant ('2' on all 6" in i.message for i in Report.load(ds.root).warnings)
    _scores(own, ["2.5"] * 6)
    with pytest.raises(DatasetError, match=r"manifest\.csv: regression target 'score' is constant \(2\.5 on all 6"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, regression="score", progress=False)
    with pytest.raises(DatasetError, match=r"manifest\.csv: regression target 'score' is constant \(2\.5 on all 6"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)  # detected, not declared
    with pytest.raises(DatasetError, match=r"regression column\(s\) \['y'\] not found"):
        registry.prepare("manifest", tmp_path / "out", source_dir=own, regression="y", progress=False)
    # a JSON NaN in a dataset folder's manifest.jsonl is refused when the folder is read
    _scores(own, ["0.5", "1.5", "2.5", "3.5"])
    ds = registry.prepare("manifest", tmp_path / "ok", source_dir=own, progress=False)
    man = ds.root / "manifest.jsonl"
    man.write_text(man.read_text().replace('"score": 1.5', '"score": NaN'), encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"manifest\.jsonl:\d+ \(id 'r1'\): regression target 'score' = nan; expected a finite"
    ):
        load_dataset(ds.root)


def test_without_a_split_column_a_regression_target_is_stratified_by_quintiles(own, tmp_path):
    _write(own, ["caption,score"] + [f"t{i},{i / 10}" for i in range(50)])
    ds = registry.prepare("manifest", tmp_path / "out", source_dir=own, progress=False)
    by_split = Counter(s.split for s in ds.samples)
    assert by_split == {"train": 30, "val": 10, "test": 10}
    for q in range(5):  # every quintile lands in every split
        inq = [s for s in ds.samples if q <= s.targets["score"] < q + 1]
        assert {s.split for s in inq} == {"train", "val", "test"}
