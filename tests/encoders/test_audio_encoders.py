"""Audio encoders: any sample rate / channel count / bit depth, padding that does not leak into the
features, bad files, the CNN's seeded init and fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from fusionkit.encoders import InputError, build_encoder
from fusionkit.encoders.audio import read_audio


def tone(sr: float, seconds: float, f0: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def logmel():
    return build_encoder("audio")


def test_resample_mixdown_and_fixed_length(tmp_path):
    sf.write(tmp_path / "a8k.wav", tone(8000, 0.5), 8000, subtype="PCM_16")
    stereo = np.stack([tone(44100, 0.5), tone(44100, 0.5)], axis=1)
    sf.write(tmp_path / "s44.wav", stereo, 44100, subtype="PCM_24")
    sf.write(tmp_path / "f32.wav", tone(16000, 3.0), 16000, subtype="FLOAT")
    a = read_audio(tmp_path / "a8k.wav", 16000, 1.0)
    s = read_audio(tmp_path / "s44.wav", 16000, 1.0)
    f = read_audio(tmp_path / "f32.wav", 16000, 1.0)
    assert a.wave.shape == s.wave.shape == f.wave.shape == (16000,)
    assert a.length == s.length == 8000 and f.length == 16000
    assert (a.wave[8000:] == 0).all()
    assert abs(float(s.wave[: s.length].abs().max()) - 0.5) < 0.02  # mixdown of equal channels keeps the level


def test_logmel_padding_does_not_change_pooled(tmp_path):
    sf.write(tmp_path / "x.wav", tone(8000, 0.4), 8000)
    short = build_encoder("audio", "logmel", seconds=1.0)
    longer = build_encoder("audio", "logmel", seconds=2.0)
    with torch.inference_mode():
        a = short(short.collate([short.load("x.wav", tmp_path)]))
        b = longer(longer.collate([longer.load("x.wav", tmp_path)]))
    assert a["grid"].shape == (1, 101, 64) and b["grid"].shape == (1, 201, 64)
    assert int(a["grid_mask"].sum()) == int(b["grid_mask"].sum()) == 1 + 6400 // 160
    assert torch.allclose(a["pooled"], b["pooled"], atol=1e-5)
    assert a["pooled"].shape == (1, 128) and short.identity_hash() != longer.identity_hash()


def test_mfcc_dims(tmp_path, logmel):
    sf.write(tmp_path / "x.wav", tone(16000, 0.05), 16000)  # 6 frames: deltas still defined
    enc = build_encoder("audio", "mfcc")
    with torch.inference_mode():
        out = enc(enc.collate([enc.load(tmp_path / "x.wav")]))
    assert enc.dims == {"pooled": 120, "grid": 60}
    assert out["pooled"].shape == (1, 120) and out["grid"].shape == (1, 101, 60)
    assert torch.isfinite(out["pooled"]).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero-length"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really"), "unreadable or corrupt"),
        (lambda p: p.write_bytes(b""), "unreadable or corrupt"),
        (lambda p: sf.write(p, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT"), "NaN"),
    ],
    ids=["zero-length", "garbage", "empty-file", "nan"],
)
def test_bad_audio_names_the_file(tmp_path, make, match):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(InputError, match=match) as e:
        read_audio(p, 16000, 1.0)
    assert str(p) in str(e.value)


def test_truncated_wav(tmp_path):
    p = tmp_path / "t.wav"
    sf.write(p, tone(16000, 0.5), 16000, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:30])  # cut inside the header
    with pytest.raises(InputError) as e:
        read_audio(p, 16000, 1.0)
    assert str(p) in str(e.value)


def test_missing_audio(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_audio(tmp_path / "nope.wav", 16000, 1.0)


def test_audio_cnn_seeded_and_trainable(tmp_path):
    sf.write(tmp_path / "x.wav", tone(16000, 0.7), 16000)
    a = build_encoder("audio", "audio_cnn", seed=3)
    b = build_encoder("audio", "audio_cnn", seed=3)
    c = build_encoder("audio", "audio_cnn", seed=4)
    assert a.identity() == b.identity() and a.identity_hash() != c.identity_hash()
    batch = a.collate([a.load(tmp_path / "x.wav")] * 2)
    with torch.inference_mode():
        oa, ob = a(batch), b(batch)
    assert torch.equal(oa["pooled"], ob["pooled"]) and oa["pooled"].shape == (2, 128)
    assert oa["grid"].shape == (2, 6, 128) and oa["grid_mask"].shape == (2, 6)
    a.train()
    a(batch)["pooled"].sum().backward()
    assert a.blocks[0][0].weight.grad is not None
    a.freeze()
    a.train()
    assert a.frozen and not a.blocks[0][1].training


def test_logmel_has_no_weights_and_is_frozen(logmel):
    assert logmel.frozen and logmel.identity()["weights"].startswith("none")
    assert logmel.dims == {"pooled": 128, "grid": 64}


def test_fsdd_recordings(shared_data, logmel):
    files = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[:4]
    assert files, "fsdd/recordings is empty"
    with torch.inference_mode():
        out = logmel(logmel.collate([logmel.load(f) for f in files]))
    assert out["pooled"].shape == (4, 128) and torch.isfinite(out["pooled"]).all()
    assert (out["grid_mask"].sum(1) > 10).all()
