"""The feature cache: warm = zero forward passes, resumable after a crash (even kill -9) with
bit-identical results, corrupt files rebuilt, bad input raised or skipped with file + record."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from fusionkit.data.base import Sample, load_dataset, write_dataset
from fusionkit.encoders import InputError, build_encoder
from fusionkit.features import (
    CacheError,
    cache_key,
    extract_features,
    load_cached,
    read_feature_set,
)

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a red circle",
    "two dogs play in the snow near a fence",
    "a man rides a bike",
    "kids",
    "a very small blue square next to a big green triangle on a white table",
    "the cat sleeps",
    "people walk along a busy street in the city at night",
    "a boat",
    "sunset over the sea with birds flying",
    "one tree",
    "three girls laugh",
    "a dog jumps to catch a frisbee in the park",
]


def make_dataset(root: Path, n: int = 12, *, bad_image=(), bad_caption=None, long_caption=(), bad_audio=()):
    """A tiny image + text + audio dataset written in fusionkit's format."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    samples = []
    for i in range(n):
        sid = f"s{i:02d}"
        img = root / "images" / f"{sid}.jpg"
        if sid in bad_image:
            img.write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
        else:
            Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(img, quality=90)
        wav = root / "audio" / f"{sid}.wav"
        y = (
            np.zeros(0, np.float32)
            if sid in bad_audio
            else (0.3 * np.sin(np.arange(800 + 100 * i) * (0.05 + 0.01 * i))).astype(np.float32)
        )
        sf.write(wav, y, 8000)
        text = CAPTIONS[i % len(CAPTIONS)]
        if bad_caption and sid in bad_caption:
            text = bad_caption[sid]
        if sid in long_caption:
            text = "word " * 600
        samples.append(
            Sample(
                id=sid,
                split="train",
                modalities={"image": f"images/{sid}.jpg", "caption": text, "audio": f"audio/{sid}.wav"},
                targets={"label": i % 2},
            )
        )
    write_dataset(root, "mini", {"image": "image", "caption": "text", "audio": "audio"}, {"label": ["a", "b"]}, samples)
    return load_dataset(root)


def tiny_image_encoder():
    return build_encoder("image", "efficientnet_lite0", weights=None, image_size=32)


def count_forward(enc, monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count the encoder's forward passes (a pre-forward hook: it travels with the copy that
    ``extract_features`` runs, ``Encoder.inference_module``), optionally crashing at one."""
    calls: list[int] = []

    def hook(module, args):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("simulated crash")

    handle = enc.register_forward_pre_hook(hook)
    monkeypatch.setattr(enc, "_fk_count_hook", handle, raising=False)
    return calls


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


KW = {"split": "train", "chunk_size": 4, "batch_size": 2, "num_workers": 0, "progress": False}


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "ds")


@pytest.fixture(scope="module")
def minilm():
    return build_encoder("text")


# ------------------------------------------------------------------------------- warm / cold
def test_warm_cache_makes_zero_forward_passes(ds, tmp_path, monkeypatch):
    enc = tiny_image_encoder()
    calls = count_forward(enc, monkeypatch)
    assert load_cached(ds, "image", enc, split="train", cache_dir=tmp_path / "c") is None
    cold = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert len(calls) == 6  # 12 records / batch 2
    assert cold.ids == [f"s{i:02d}" for i in range(12)] and cold.values.shape == (12, 1280)
    warm = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert len(calls) == 6, "a warm cache must not run the encoder"
    assert torch.equal(cold.values, warm.values) and warm.ids == cold.ids
    assert load_cached(ds, "image", enc, split="train", cache_dir=tmp_path / "c").ids == cold.ids
    # layout and sidecar
    rel = cache_key(ds, enc, "train", "pooled")
    assert rel.startswith(f"mini-{ds.manifest_hash()}/image/efficientnet_lite0-") and rel.endswith("/train-pooled")
    assert warm.path == tmp_path / "c" / f"{rel}.safetensors"
    meta = json.loads(warm.path.with_suffix(".json").read_text())
    assert meta["ids"] == cold.ids and meta["shapes"]["values"] == [12, 1280] and meta["dtype"] == "float32"
    assert meta["sha256"] == sha(warm.path) and meta["versions"]["torch"] == torch.__version__
    assert meta["encoder"]["weights"].startswith("random:0")
    # a cold extraction applies fusionkit's allocator settings (where the platform has them) and says so
    from fusionkit.runtime import allocator_tuned

    assert meta["settings"]["allocator_tuned"] is allocator_tuned()
    switched_off = os.environ.get("FUSIONKIT_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off")
    assert allocator_tuned() is (GLIBC and not switched_off)
    assert not (warm.path.parent / "train-pooled.parts").exists()
    assert torch.equal(warm.rows(["s03", "s01"]), warm.values[[3, 1]])


def test_key_follows_encoder_and_data(ds, tmp_path):
    a, b = tiny_image_encoder(), build_encoder("image", "efficientnet_lite0", weights=None, image_size=32, seed=1)
    assert cache_key(ds, a, "train", "pooled") != cache_key(ds, b, "train", "pooled")
    assert cache_key(ds, a, "train", "pooled") != cache_key(ds, a, "train", "grid")
    other = make_dataset(tmp_path / "other", n=11)
    assert cache_key(ds, a, "train", "pooled").split("/")[0] != cache_key(other, a, "train", "pooled").split("/")[0]


def test_grid_outputs_and_workers(ds, tmp_path, minilm):
    enc = tiny_image_encoder()
    g0 = extract_features(ds, "image", enc, output="grid", cache_dir=tmp_path / "c0", **KW)
    g1 = extract_features(ds, "image", enc, output="grid", cache_dir=tmp_path / "c1", **{**KW, "num_workers": 1})
    assert g0.values.shape == (12, 1, 1280) and g0.mask is None
    assert torch.equal(g0.values, g1.values), "DataLoader workers change nothing"
    t = extract_features(ds, "caption", minilm, output="grid", cache_dir=tmp_path / "c0", **KW)
    assert t.values.shape[:2] == t.mask.shape and t.values.shape[2] == 384
    assert (t.values[t.mask == 0] == 0).all()
    p = extract_features(ds, "caption", minilm, cache_dir=tmp_path / "c0", **KW)
    # texts are grouped by length inside a chunk: rows must still follow the manifest
    with torch.inference_mode():
        for i in (0, 4, 11):
            single = minilm(minilm.collate([ds.samples[i].modalities["caption"]]))["pooled"][0]
            assert torch.allclose(p.values[i], single, atol=1e-5)
            n = int(t.mask[i].sum())
            assert n == len(minilm.tokenizer(ds.samples[i].modalities["caption"])["input_ids"])


def test_also_computes_more_outputs_in_the_same_pass_equal_to_a_pass_each(ds, tmp_path, monkeypatch, minilm):
    enc = tiny_image_encoder()
    calls = count_forward(enc, monkeypatch)
    pooled = extract_features(ds, "image", enc, output="pooled", also=("grid",), cache_dir=tmp_path / "one", **KW)
    assert len(calls) == 6, "one forward per batch serves both outputs"
    grid = extract_features(ds, "image", enc, output="grid", cache_dir=tmp_path / "one", **KW)
    assert len(calls) == 6, "the grid came from the cache"
    for fs in (pooled, grid):
        output = fs.meta["output"]
        alone = extract_features(ds, "image", enc, output=output, cache_dir=tmp_path / output, **KW)
        assert torch.equal(fs.values, alone.values) and fs.ids == alone.ids
        assert fs.meta["timing"]["outputs_of_the_pass"] == ["grid", "pooled"]
        assert not fs.path.with_name(f"train-{output}.parts").exists()
    assert len(calls) == 18
    # one cached, one not: the pass computes what is missing and leaves the cached entry as it was
    pooled_sha = sha(pooled.path)
    for f in (grid.path, grid.path.with_suffix(".json")):
        f.unlink()
    again = extract_features(ds, "image", enc, output="grid", also=["pooled"], cache_dir=tmp_path / "one", **KW)
    assert len(calls) == 24 and sha(pooled.path) == pooled_sha and torch.equal(again.values, grid.values)
    # padded token grids (texts) come out as in a pass of their own
    extract_features(ds, "caption", minilm, also=("grid",), cache_dir=tmp_path / "t1", **KW)
    t_both = extract_features(ds, "caption", minilm, output="grid", cache_dir=tmp_path / "t1", **KW)
    t_grid = extract_features(ds, "caption", minilm, output="grid", cache_dir=tmp_path / "t2", **KW)
    assert torch.equal(t_both.values, t_grid.values) and torch.equal(t_both.mask, t_grid.mask)
    with pytest.raises(ValueError, match="output='tokens'"):
        extract_features(ds, "image", enc, also=("tokens",), cache_dir=tmp_path / "one", **KW)


def test_audio_features(ds, tmp_path):
    fs = extract_features(ds, "audio", "logmel", cache_dir=tmp_path / "c", **KW)
    assert fs.values.shape == (12, 128) and torch.isfinite(fs.values).all()
    g = extract_features(ds, "audio", "logmel", output="grid", cache_dir=tmp_path / "c", **KW)
    assert g.values.shape == (12, 101, 64) and g.mask.shape == (12, 101)


# ------------------------------------------------------------------------------- resumable
def test_resume_after_exception_is_bit_identical(ds, tmp_path, monkeypatch):
    clean = extract_features(ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "clean", **KW)
    enc = tiny_image_encoder()
    calls = count_forward(enc, monkeypatch, fail_at=5)  # chunks 0-1 saved, chunk 2 half done
    with pytest.raises(RuntimeError, match="simulated"):
        extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    path = tmp_path / "c" / (cache_key(ds, enc, "train", "pooled") + ".safetensors")
    assert not path.exists() and len(list(path.with_name("train-pooled.parts").glob("*.safetensors"))) == 2
    calls.clear()
    monkeypatch.undo()
    calls = count_forward(enc, monkeypatch)
    resumed = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert len(calls) == 2, "only the missing chunk is computed"
    assert sha(resumed.path) == sha(clean.path) and torch.equal(resumed.values, clean.values)


def test_resume_after_kill_9_is_bit_identical(ds, tmp_path, monkeypatch):
    script = textwrap.dedent(
        """
        import os, signal, sys
        from fusionkit.data.base import load_dataset
        from fusionkit.encoders import build_encoder
        from fusionkit.features import extract_features
        import torch
        torch.set_num_threads(int(sys.argv[3]))  # bit-identical needs the same CPU thread count on both sides
        ds = load_dataset(sys.argv[1])
        enc = build_encoder("image", "efficientnet_lite0", weights=None, image_size=32)
        n = [0]
        def hook(module, args):  # a pre-forward hook travels with extract_features' inference copy
            n[0] += 1
            if n[0] == 4:  # chunk 0 saved, chunk 1 half done
                os.kill(os.getpid(), signal.SIGKILL)
        enc.register_forward_pre_hook(hook)
        extract_features(ds, "image", enc, split="train", cache_dir=sys.argv[2], chunk_size=4, batch_size=2,
                         num_workers=0, progress=False)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ds.root), str(tmp_path / "c"), str(torch.get_num_threads())],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    enc = tiny_image_encoder()
    path = tmp_path / "c" / (cache_key(ds, enc, "train", "pooled") + ".safetensors")
    assert not path.exists()
    assert len(list(path.with_name("train-pooled.parts").glob("*.safetensors"))) == 1
    calls = count_forward(enc, monkeypatch)
    resumed = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert len(calls) == 4, "chunks 1 and 2 only"
    clean = extract_features(ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "clean", **KW)
    assert sha(resumed.path) == sha(clean.path)


def test_decode_groups_forward_in_batches_with_the_same_features(tmp_path):
    """On a CPU without spare cores, records are decoded in groups (``perf["decode_group"]``) and
    forwarded in batches of ``batch_size``; the features are those of batch-by-batch decoding, and a
    bad record inside a group is skipped without shifting the others."""
    ds = make_dataset(tmp_path / "ds", bad_image={"s05"})
    kw = {**KW, "chunk_size": 8, "batch_size": 3, "on_error": "skip"}
    grouped_enc = tiny_image_encoder()
    assert grouped_enc.perf["cpu"]["decode_group"] > kw["batch_size"]
    sizes: list[int] = []
    grouped_enc.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    grouped = extract_features(ds, "image", grouped_enc, cache_dir=tmp_path / "g", **kw)
    assert grouped.meta["settings"]["decode_group"] == grouped_enc.perf["cpu"]["decode_group"]
    assert sizes == [3, 3, 1, 3, 1], sizes  # chunk 0: 7 readable of 8 (s05 skipped); chunk 1: 4
    plain_enc = tiny_image_encoder()
    plain_enc.perf = {"cpu": {**plain_enc.perf["cpu"], "decode_group": None}}
    plain = extract_features(ds, "image", plain_enc, cache_dir=tmp_path / "p", **kw)
    assert plain.meta["settings"]["decode_group"] == kw["batch_size"]
    assert grouped.ids == plain.ids and "s05" not in grouped.ids and len(grouped.ids) == 11
    assert torch.allclose(grouped.values, plain.values, atol=1e-5)


# ------------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("damage", ["flip", "truncate", "no-sidecar", "bad-sidecar"])
def test_damaged_cache_is_rebuilt_with_a_warning(ds, tmp_path, monkeypatch, damage):
    enc = tiny_image_encoder()
    good = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    ref = good.values.clone()
    path, side = good.path, good.path.with_suffix(".json")
    del good
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "no-sidecar":
        side.unlink()
    else:
        side.write_text("{not json")
    with pytest.raises(CacheError):
        read_feature_set(path)
    calls = count_forward(enc, monkeypatch)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        again = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert len(calls) == 6 and torch.equal(again.values, ref)
    assert read_feature_set(path).ids == again.ids


def test_leftover_temp_and_garbage_parts_are_never_used(ds, tmp_path):
    enc = tiny_image_encoder()
    path = tmp_path / "c" / (cache_key(ds, enc, "train", "pooled") + ".safetensors")
    parts = path.with_name("train-pooled.parts")
    parts.mkdir(parents=True)
    (parts / "chunk4-000000.safetensors").write_bytes(b"half a file")
    (path.parent / f".{path.name}.tmp-999999").write_bytes(b"partial")
    fs = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    clean = extract_features(ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "clean", **KW)
    assert torch.equal(fs.values, clean.values)
    assert not (path.parent / f".{path.name}.tmp-999999").exists()


# ------------------------------------------------------------------------------- bad input
def test_bad_image_raise_names_file_and_record(tmp_path):
    ds = make_dataset(tmp_path / "ds", bad_image={"s05"})
    for workers in (0, 1):
        with pytest.raises(InputError) as e:
            extract_features(
                ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "c", **{**KW, "num_workers": workers}
            )
        assert "s05.jpg" in str(e.value) and "record 's05'" in str(e.value)


def test_bad_image_skip_lists_it_next_to_the_cache(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds", bad_image={"s05"})
    enc = tiny_image_encoder()
    fs = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", on_error="skip", **KW)
    assert "s05" not in fs.ids and len(fs.ids) == 11 and fs.values.shape[0] == 11
    assert "not a readable image" in fs.skipped["s05"]["reason"] and fs.skipped["s05"]["file"].endswith("s05.jpg")
    listing = json.loads((fs.path.parent / "skipped.json").read_text())
    assert listing["train"]["s05"]["reason"] == fs.skipped["s05"]["reason"]
    calls = count_forward(enc, monkeypatch)
    assert extract_features(ds, "image", enc, cache_dir=tmp_path / "c", on_error="skip", **KW).ids == fs.ids
    with pytest.raises(InputError, match="record 's05'"):  # the cache remembers, a strict caller still hears
        extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert not calls


def _shared_image_dataset(root: Path, *, copies: bool = False, bad: bool = False):
    """12 records naming 4 image files, 3 records each, interleaved so that records sharing a file
    fall in different chunks (chunk_size 4); ``copies``: each record its own file with the same
    bytes (nothing shared); ``bad``: the second file is not an image."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    pixels = [rng.integers(0, 255, (30 + k, 40, 3), dtype=np.uint8) for k in range(4)]
    samples = []
    for i in range(12):
        k = i % 4
        name = f"images/r{i:02d}.jpg" if copies else f"images/f{k}.jpg"
        if not (root / name).exists():
            if bad and k == 1:
                (root / name).write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
            else:
                Image.fromarray(pixels[k]).save(root / name, quality=90)
        samples.append(Sample(id=f"s{i:02d}", split="train", modalities={"image": name}, targets={"label": i % 2}))
    write_dataset(root, "shared", {"image": "image"}, {"label": ["a", "b"]}, samples)
    return load_dataset(root)


def test_a_file_several_records_name_is_decoded_and_encoded_once(tmp_path, monkeypatch):
    ds = _shared_image_dataset(tmp_path / "shared")
    enc = tiny_image_encoder()
    loads: list[str] = []
    real_load = enc.load
    monkeypatch.setattr(enc, "load", lambda v, root=None: (loads.append(str(v)), real_load(v, root))[1])
    fs = extract_features(ds, "image", enc, cache_dir=tmp_path / "c", **KW)
    assert sorted(loads) == [f"images/f{k}.jpg" for k in range(4)]  # 4 decodes for 12 records
    assert fs.ids == [f"s{i:02d}" for i in range(12)]
    for i in range(4, 12):  # a record gets the row of the first record naming its file
        assert torch.equal(fs.values[i], fs.values[i % 4])
    # the same features as when every record has a file of its own (nothing to share)
    ref = extract_features(_shared_image_dataset(tmp_path / "copies", copies=True), "image", tiny_image_encoder(),
                           cache_dir=tmp_path / "c2", **KW)  # fmt: skip
    torch.testing.assert_close(fs.values, ref.values, atol=1e-5, rtol=1e-5)


def test_a_bad_file_several_records_name_skips_each_of_them(tmp_path):
    ds = _shared_image_dataset(tmp_path / "shared", bad=True)
    fs = extract_features(ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "c", on_error="skip", **KW)
    assert sorted(fs.skipped) == ["s01", "s05", "s09"] and len(fs.ids) == 9
    assert all(v["file"].endswith("f1.jpg") and "not a readable image" in v["reason"] for v in fs.skipped.values())
    with pytest.raises(InputError, match="record 's01'"):  # the first record that names it
        extract_features(ds, "image", tiny_image_encoder(), cache_dir=tmp_path / "c3", **KW)


def test_text_empty_and_too_long(tmp_path, minilm):
    ds = make_dataset(tmp_path / "ds", bad_caption={"s02": "  "}, long_caption={"s07"})
    with pytest.raises(InputError, match="record 's02'.*empty text"):
        extract_features(ds, "caption", minilm, cache_dir=tmp_path / "c", **KW)
    fs = extract_features(ds, "caption", minilm, cache_dir=tmp_path / "c", on_error="skip", **KW)
    assert fs.skipped["s02"]["reason"] == "empty text" and fs.skipped["s02"]["file"] is None
    assert fs.meta["truncated"] == ["s07"] and fs.meta["n_truncated"] == 1
    assert torch.isfinite(fs.values).all() and len(fs.ids) == 11


def test_non_utf8_text_in_manifest(tmp_path, minilm):
    make_dataset(tmp_path / "ds")
    man = tmp_path / "ds" / "manifest.jsonl"
    rows = [json.loads(line) for line in man.read_text().splitlines()]
    rows[1]["caption"] = "caf\udce9"  # an escaped lone surrogate: valid JSON, not valid UTF-8 text
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(tmp_path / "ds")
    with pytest.raises(InputError, match="record 's01'.*UTF-8"):
        extract_features(ds, "caption", minilm, cache_dir=tmp_path / "c", **KW)


def test_zero_length_audio_skipped(tmp_path):
    ds = make_dataset(tmp_path / "ds", bad_audio={"s00", "s09"})
    fs = extract_features(ds, "audio", "logmel", cache_dir=tmp_path / "c", on_error="skip", **KW)
    assert set(fs.skipped) == {"s00", "s09"} and "zero-length" in fs.skipped["s09"]["reason"]
    assert fs.ids[0] == "s01" and len(fs.ids) == 10


def test_argument_errors(ds, tmp_path):
    with pytest.raises(ValueError, match="output"):
        extract_features(ds, "image", "efficientnet_lite0", split="train", cache_dir=tmp_path, output="logits")
    with pytest.raises(ValueError, match="on_error"):
        extract_features(ds, "image", "efficientnet_lite0", split="train", cache_dir=tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match="audio encoder"):
        extract_features(ds, "image", build_encoder("audio"), split="train", cache_dir=tmp_path)


# ------------------------------------------------------------------------------- real data
def test_flickr_images_with_real_weights(shared_data, tmp_path):
    src = shared_data / "flickr8k-800" / "images"
    names = sorted(p.name for p in src.glob("*.jpg"))[:6]
    samples = [Sample(id=n[:-4], split="val", modalities={"image": n}) for n in names]
    write_dataset(tmp_path / "ds", "flickr6", {"image": "image"}, {}, samples, media_root=src)
    ds = load_dataset(tmp_path / "ds")
    fs = extract_features(ds, "image", split="val", cache_dir=tmp_path / "c", progress=False)
    assert fs.values.shape == (6, 1280) and torch.isfinite(fs.values).all()
    assert fs.meta["encoder"]["weights"].startswith("sha256:")
