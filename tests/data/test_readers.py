"""Bad input at the file level: encodings, BOM/CRLF, malformed CSV/JSON, unsafe paths, corrupt media."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fusionkit.data.base import DatasetError
from fusionkit.data.readers import (
    check_audio,
    check_image,
    check_wav,
    load_rgb,
    open_image,
    read_csv,
    read_json,
    read_jsonl,
    read_parquet,
    safe_media_path,
)


def test_csv_bom_and_crlf_read_like_plain_utf8(tmp_path):
    plain = 'image,caption\na.jpg,"a dog, running"\nb.jpg,a cat\n'
    (tmp_path / "plain.csv").write_text(plain, encoding="utf-8")
    (tmp_path / "bom_crlf.csv").write_bytes(b"\xef\xbb\xbf" + plain.replace("\n", "\r\n").encode())
    a = read_csv(tmp_path / "plain.csv", ["image", "caption"])
    b = read_csv(tmp_path / "bom_crlf.csv", ["image", "caption"])
    assert a == b
    assert a[0] == ["image", "caption"]  # the BOM is not part of the first column name
    assert a[1][0] == (2, {"image": "a.jpg", "caption": "a dog, running"})


def test_csv_quoted_newline_keeps_line_numbers_of_the_record_end(tmp_path):
    (tmp_path / "m.csv").write_text('image,caption\na.jpg,"two\nlines"\nb.jpg,x,extra\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.csv:4: 3 field\(s\); expected 2"):
        read_csv(tmp_path / "m.csv")


def test_non_utf8_names_file_line_and_byte(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("image,caption\na.jpg,ok\nb.jpg,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.csv:3: not valid utf-8 text \(byte 0xe9"):
        read_csv(tmp_path / "latin1.csv")
    cols, rows = read_csv(tmp_path / "latin1.csv", encoding="latin-1")  # on purpose: fine
    assert rows[1][1]["caption"] == "café au lait"


def test_wrong_columns_and_duplicate_header(tmp_path):
    (tmp_path / "w.csv").write_text("img,text\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"w\.csv:1: missing column\(s\) \['image'\]; the header has \['img', 'text'\]"
    ):
        read_csv(tmp_path / "w.csv", ["image"])
    (tmp_path / "d.csv").write_text("image,image\na,b\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="appear twice"):
        read_csv(tmp_path / "d.csv")


def test_bad_rows_can_be_collected_instead(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n1,2\n3\n4,5\n", encoding="utf-8")
    bad = []
    cols, rows = read_csv(tmp_path / "m.csv", on_bad_row=lambda ln, msg: bad.append(ln))
    assert [ln for ln, _ in rows] == [2, 4] and bad == [3]


def test_json_and_jsonl_errors_name_line(tmp_path):
    (tmp_path / "x.json").write_text('{"images": [\n  {"a": 1},\n  {"b": }\n]}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"x\.json:3:\d+: not valid JSON"):
        read_json(tmp_path / "x.json")
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")
    it = read_jsonl(tmp_path / "x.jsonl")
    assert next(it) == (1, {"a": 1})
    with pytest.raises(DatasetError, match=r"x\.jsonl:3: expected a JSON object, got list"):
        next(it)


def test_parquet_without_pyarrow_says_so(tmp_path):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401

        pytest.skip("pyarrow installed: Parquet is read (see test_manifest)")
    except ImportError:
        pass
    (tmp_path / "m.parquet").write_bytes(b"PAR1not really")
    with pytest.raises(DatasetError, match="needs the 'pyarrow' package"):
        read_parquet(tmp_path / "m.parquet")


@pytest.mark.parametrize(
    "value, pattern",
    [
        ("../../etc/passwd", "escapes the dataset root"),
        ("images/../../outside.jpg", "escapes the dataset root"),
        ("/etc/passwd", "absolute path"),
        ("C:\\Windows\\x.jpg", "absolute path"),
        ("", "expected a non-empty relative file path"),
        (None, "expected a non-empty relative file path"),
    ],
)
def test_unsafe_paths_refused(tmp_path, value, pattern):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=pattern):
        safe_media_path(tmp_path, value, "manifest.csv:7 (id 's7')")


def test_symlink_out_refused_inside_allowed(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "images" / "link.jpg")
    os.symlink(tmp_path, root / "up")
    (root / "images" / "ok.jpg").write_bytes(b"x")
    os.symlink(root / "images" / "ok.jpg", root / "images" / "inside.jpg")
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        safe_media_path(root, "images/link.jpg", "where")
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        safe_media_path(root, "up/secret.jpg", "where")
    assert safe_media_path(root, "images/inside.jpg", "where") == "images/inside.jpg"
    assert safe_media_path(root, "./images//ok.jpg", "where") == "images/ok.jpg"


def test_corrupt_and_empty_images(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 6), "red").save(good)
    assert check_image(good) == (8, 6)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.jpg: empty file \(0 bytes\); expected an image"):
        check_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(os.urandom(2000))
    with pytest.raises(DatasetError, match=r"junk\.jpg: corrupt or unreadable image"):
        check_image(tmp_path / "junk.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DatasetError, match=r"trunc\.jpg: corrupt"):
        check_image(tmp_path / "trunc.jpg", decode=True)


def test_wav_checks_zero_bytes_mp3_and_real(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(800, dtype=np.float32), 8000, subtype="PCM_16")
    assert check_wav(good)["frames"] == 800 and check_audio(good)["samplerate"] == 8000
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"zero\.wav: empty file \(0 bytes\); expected a RIFF/WAVE audio file"):
        check_wav(tmp_path / "zero.wav")
    (tmp_path / "song.wav").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x21" + os.urandom(400))
    with pytest.raises(
        DatasetError, match=r"song\.wav: not a WAV file \(it looks like an MP3 file\); expected a RIFF/WAVE header"
    ):
        check_wav(tmp_path / "song.wav")
    (tmp_path / "frame.wav").write_bytes(b"\xff\xfb\x90\x64" + os.urandom(400))
    with pytest.raises(DatasetError, match="looks like an MP3"):
        check_wav(tmp_path / "frame.wav")
    (tmp_path / "hdr.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + b"\x00" * 10)
    with pytest.raises(DatasetError, match=r"hdr\.wav: unreadable WAV audio"):
        check_wav(tmp_path / "hdr.wav")
    empty = tmp_path / "silent.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    with pytest.raises(DatasetError, match="holds no samples"):
        check_wav(empty)


def test_images_over_the_decompression_bomb_limit_are_refused_naming_file_and_record(tmp_path, monkeypatch):
    """PIL raises DecompressionBombError (not an OSError) above twice MAX_IMAGE_PIXELS and only warns
    above it: both must come out as a DatasetError naming the file and the record, never raw."""
    big, mid = tmp_path / "big.png", tmp_path / "mid.png"
    Image.new("RGB", (100, 100)).save(big)  # 10,000 pixels > 2 x 1,000: PIL raises
    Image.new("RGB", (40, 40)).save(mid)  # 1,600 pixels: PIL would only warn
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for p in (big, mid):
        for decode in (False, True):
            with pytest.raises(
                DatasetError, match=rf"{p.name} \(id 'rec7'\): refused as a possible decompression bomb"
            ):
                check_image(p, decode=decode, record="rec7")
        with pytest.raises(DatasetError, match=rf"{p.name}: refused .*MAX_IMAGE_PIXELS = 1000 pixels"):
            load_rgb(p)
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 20), dtype=np.uint8)).save(small)
    rgb = load_rgb(small, "r", size=(8, 8))
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    with open_image(small) as im:
        assert im.size == (20, 10)
    small.write_bytes(small.read_bytes()[:120])  # truncated: the error comes from decoding inside the block
    with pytest.raises(DatasetError, match=r"small\.png \(id 'r'\): corrupt or unreadable image"):
        load_rgb(small, "r")
