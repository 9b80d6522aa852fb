"""AV-digits: FSDD recordings paired with sklearn digits; speaker-disjoint splits; bad WAVs."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from fusionkit.data import registry
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.data.problems import Report
from fusionkit.data.validate import check

pytestmark = pytest.mark.shared_data


def _rows(ds):
    return {r["id"]: r for r in map(json.loads, (ds.root / "recordings.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def av(tmp_path_factory, shared_data_module):
    out = tmp_path_factory.mktemp("av") / "avdigits"
    return registry.prepare(
        "avdigits", out, source_dir=shared_data_module / "fsdd", max_takes=8, image_size=32, progress=False
    )


@pytest.fixture
def fsdd_copy(tmp_path, shared_data_module):
    """takes 0-5 of the shared recordings, copied (free to corrupt)."""
    dst = tmp_path / "fsdd" / "recordings"
    dst.mkdir(parents=True)
    for p in sorted((shared_data_module / "fsdd" / "recordings").glob("*.wav")):
        if int(p.stem.rsplit("_", 1)[1]) < 6:
            shutil.copyfile(p, dst / p.name)
    return tmp_path / "fsdd"


def test_held_out_speaker_pairing_and_files(av):
    ds = av
    assert ds.modalities == {"image": "image", "audio": "audio"} and ds.targets["digit"] == [str(d) for d in range(10)]
    rows = _rows(ds)
    spk = defaultdict(set)
    for s in ds.samples:
        spk[s.split].add(rows[s.id]["speaker"])
        assert s.id == f"{s.targets['digit']}_{rows[s.id]['speaker']}_{rows[s.id]['take']}"
    assert spk["test"] == {"jackson"}  # the alphabetically first speaker is held out
    assert spk["val"] == {"lucas"}  # and the next one validates: no speaker in two splits
    assert spk["train"] == {"nicolas", "theo", "yweweler"}
    assert Counter(s.split for s in ds.samples) == {"train": 240, "val": 80, "test": 80}
    assert all(s.group == rows[s.id]["speaker"] for s in ds.samples) and ds.info["groups"] == "speaker"
    # every image is used in one split only, and shows the recording's digit
    from sklearn.datasets import load_digits

    labels = load_digits().target
    img_split = {}
    for s in ds.samples:
        r = rows[s.id]
        assert labels[r["image_index"]] == s.targets["digit"]
        assert img_split.setdefault(r["image_index"], s.split) == s.split
    # media in the processed folder: PNG of the requested size, the WAV copied byte for byte
    s = ds.samples[0]
    with Image.open(ds.path(s, "image")) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    src = ds.info["source"] + "/" + rows[s.id]["source"]
    assert ds.path(s, "audio").read_bytes() == open(src, "rb").read()
    assert ds.media_root == ds.root
    assert Report.load(ds.root).ok


def test_official_split_named_speakers_and_degradation(shared_data_module, tmp_path):
    src = shared_data_module / "fsdd"
    off = registry.prepare(
        "avdigits", tmp_path / "off", source_dir=src, split="fsdd_official", max_takes=10, progress=False
    )
    rows = _rows(off)
    for s in off.samples:
        assert (s.split == "test") == (rows[s.id]["take"] <= 4)
    named = registry.prepare(
        "avdigits",
        tmp_path / "named",
        source_dir=src,
        test_speakers="theo",
        val_speakers=["lucas"],
        max_takes=2,
        image_noise=0.0,
        image_pca=5,
        progress=False,
    )
    rows = _rows(named)
    assert {rows[s.id]["speaker"] for s in named.split("test")} == {"theo"}
    assert {rows[s.id]["speaker"] for s in named.split("val")} == {"lucas"}
    assert named.info["pca_explained_variance"] < 0.7 and named.info["degradation"]["image_pca"] == 5
    with pytest.raises(DatasetError, match=r"test/val speakers \['zoe'\] not among the speakers"):
        registry.prepare("avdigits", tmp_path / "x", source_dir=src, test_speakers="zoe", max_takes=1, progress=False)


def test_noise_degrades_the_image_deterministically(shared_data_module, tmp_path):
    kw = dict(source_dir=shared_data_module / "fsdd", speakers="theo,lucas", max_takes=1, val_split="takes")
    kw["progress"] = False
    clean = registry.prepare("avdigits", tmp_path / "clean", image_noise=0.0, **kw)
    noisy = registry.prepare("avdigits", tmp_path / "noisy", image_noise=0.6, **kw)
    again = registry.prepare("avdigits", tmp_path / "again", image_noise=0.6, **kw)
    s = clean.samples[0]
    a = np.asarray(Image.open(clean.path(s, "image")), dtype=float)
    b = np.asarray(Image.open(noisy.path(s, "image")), dtype=float)
    assert np.abs(a - b).mean() > 20
    assert noisy.path(s, "image").read_bytes() == again.path(s, "image").read_bytes()


def test_any_speaker_names_and_bad_wavs(fsdd_copy, tmp_path):
    rec = fsdd_copy / "recordings"
    for p in sorted(rec.glob("*_theo_*.wav")):  # a speaker no list knows
        p.rename(rec / p.name.replace("_theo_", "_zed-2_"))
    (rec / "3_lucas_0.wav").write_bytes(b"")  # 0-byte WAV
    (rec / "4_lucas_1.wav").write_bytes(b"ID3\x03\x00\x00\x00\x00\x0f\x76" + b"\xff\xfb" * 300)  # an MP3 named .wav
    (rec / "notes.wav").write_bytes(b"RIFF")  # not an FSDD name: ignored with a warning
    with pytest.raises(DatasetError, match=r"3_lucas_0\.wav: empty file \(0 bytes\); expected a RIFF/WAVE audio file"):
        registry.prepare("avdigits", tmp_path / "out", source_dir=fsdd_copy, progress=False)
    assert not (tmp_path / "out" / "dataset.json").exists()
    ds = registry.prepare("avdigits", tmp_path / "out", source_dir=fsdd_copy, on_error="skip", progress=False)
    rep = Report.load(ds.root)
    assert [i.kind for i in rep.skipped] == ["corrupt", "corrupt"]
    assert any("looks like an MP3 file" in i.message and i.file.endswith("4_lucas_1.wav") for i in rep.skipped)
    assert any("notes.wav" in i.where for i in rep.warnings)
    skipped = json.loads((ds.root / "skipped.json").read_text())
    assert {s["file"] for s in skipped} == {"recordings/3_lucas_0.wav", "recordings/4_lucas_1.wav"}
    assert "zed-2" in rep.stats["speakers"] and len(ds) == 6 * 50 - 2
    assert not check(fsdd_copy).ok
    load_dataset(ds.root)


def test_validation_speaker_rotates_and_takes_validation_has_no_groups(shared_data_module, tmp_path):
    src = shared_data_module / "fsdd"
    ds = registry.prepare(
        "avdigits", tmp_path / "y", source_dir=src, test_speakers="yweweler", max_takes=1, progress=False
    )
    rows = _rows(ds)
    assert {rows[s.id]["speaker"] for s in ds.split("val")} == {"jackson"}  # after the last speaker: the first
    takes = registry.prepare("avdigits", tmp_path / "t", source_dir=src, max_takes=4, val_split="takes", progress=False)
    rows = _rows(takes)
    assert {rows[s.id]["speaker"] for s in takes.split("val")} == {"lucas", "nicolas", "theo", "yweweler"}
    assert all(s.group is None for s in takes.samples)  # the splits share voices: no groups to keep
    with pytest.raises(
        DatasetError, match=r"held-out validation speaker needs 3 speakers or more .* \['lucas', 'theo'\]"
    ):
        registry.prepare("avdigits", tmp_path / "x", source_dir=src, speakers="theo,lucas", max_takes=1, progress=False)


def test_no_recordings(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no FSDD recordings"):
        registry.prepare("avdigits", tmp_path / "out", source_dir=tmp_path / "empty", progress=False)
