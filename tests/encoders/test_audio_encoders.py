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


def test_cmvn_segments_and_deltas_options(tmp_path, logmel):
    sweep = np.concatenate([tone(16000, 0.25, 300), tone(16000, 0.25, 1200)])  # two halves, two pitches
    sweep += np.random.default_rng(0).normal(0, 1e-3, sweep.shape).astype(np.float32)  # no band below amin
    sf.write(tmp_path / "x.wav", sweep, 16000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", 0.1 * sweep, 16000, subtype="FLOAT")
    enc = build_encoder("audio", "logmel", cmvn=True, segments=2, deltas=True)
    assert enc.dims == {"pooled": (2 + 2) * 3 * 64, "grid": 3 * 64}
    with torch.inference_mode():
        out = enc(enc.collate([enc.load("x.wav", tmp_path), enc.load("quiet.wav", tmp_path)]))
        again = enc(enc.collate([enc.load("x.wav", tmp_path)]))
        plain = logmel(logmel.collate([logmel.load("x.wav", tmp_path)]))
    assert out["pooled"].shape == (2, 4 * 192) and out["grid"].shape == (2, 101, 192)
    assert torch.equal(out["pooled"][:1], again["pooled"])  # deterministic, batch-independent
    assert torch.allclose(out["pooled"][0, :64], plain["pooled"][0, :64])  # raw band means kept first
    # CMVN takes the level out: the normalised grid and the segment means of a quieter copy agree
    real = out["grid_mask"][0].bool()
    assert torch.allclose(out["grid"][0][real], out["grid"][1][real], atol=1e-3)
    assert torch.allclose(out["pooled"][0, 2 * 192 :], out["pooled"][1, 2 * 192 :], atol=1e-3)
    assert not torch.allclose(out["pooled"][0, :192], out["pooled"][1, :192])  # the raw means still see it
    # the two segments are the two halves: their normalised band profiles differ
    seg = out["pooled"][0, 2 * 192 :].reshape(2, 192)[:, :64]
    assert (seg[0] - seg[1]).abs().max() > 0.5
    # options change the identity (so the cache key); the defaults keep theirs
    assert enc.identity_hash() != logmel.identity_hash()
    assert build_encoder("audio", "logmel").identity() == logmel.identity()
    assert "cmvn" not in logmel.identity()["preprocessing"]
    with pytest.raises(ValueError, match="mfcc always has deltas"):
        build_encoder("audio", "mfcc", deltas=True)
    mf = build_encoder("audio", "mfcc", segments=4)
    assert mf.dims == {"pooled": 6 * 60, "grid": 60}


def test_too_short_and_silent_recordings_name_the_file(tmp_path):
    sf.write(tmp_path / "blip.wav", tone(16000, 0.01), 16000)  # 160 samples < n_fft 400
    sf.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "short4.wav", tone(16000, 0.03), 16000)  # 480 samples: 4 frames only with hop 160
    enc = build_encoder("audio", "logmel")
    with pytest.raises(InputError, match=r"blip.wav: recording of 160 samples \(10.0 ms at 16000 Hz\) is shorter"):
        enc.load(tmp_path / "blip.wav")
    with pytest.raises(InputError, match=r"silence.wav: silence-only recording"):
        enc.load(tmp_path / "silence.wav")
    enc.load(tmp_path / "short4.wav")
    with pytest.raises(InputError, match=r"short4.wav: .* expected at least 961 samples \(n_fft 400, 7 segments"):
        build_encoder("audio", "mfcc", segments=7).load(tmp_path / "short4.wav")


def test_audio_cnn_augments_in_training_only_and_seeded(tmp_path):
    sf.write(tmp_path / "x.wav", tone(16000, 0.6, 500), 16000)
    plain = build_encoder("audio", "audio_cnn", channels=(8, 8), seed=1)
    enc = build_encoder("audio", "audio_cnn", channels=(8, 8), seed=1, cmvn=True, augment={"shift": 20})
    assert enc.identity_hash() != plain.identity_hash() and "augment" not in plain.identity()["preprocessing"]
    batch = enc.collate([enc.load("x.wav", tmp_path)] * 2)
    enc.eval()
    with torch.inference_mode():
        a, b = enc(batch), enc(batch)
    assert torch.equal(a["pooled"], b["pooled"])  # eval (extraction): no augmentation
    aug = enc.augment.train()
    torch.manual_seed(0)
    x1, m1 = aug(batch["spec"], batch["mask"])
    torch.manual_seed(0)
    x2, m2 = aug(batch["spec"], batch["mask"])
    assert torch.equal(x1, x2) and torch.equal(m1, m2)  # seeded
    assert not torch.equal(x1, batch["spec"]) and not torch.equal(x1[0], x1[1])  # perturbed, per sample
    assert m1.sum(1).tolist() == batch["mask"].sum(1).tolist()  # a shift moves frames, never drops them
    assert torch.isfinite(x1).all()
    with pytest.raises(ValueError, match="segments is an option of logmel and mfcc"):
        build_encoder("audio", "audio_cnn", segments=2)
