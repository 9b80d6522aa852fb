import numpy as np
import pytest

from fusionkit import perturb


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(perturb.CORRUPTIONS["image"]))
def test_image_corruptions_grow_with_level_and_are_seeded(img, name):
    fn = perturb.CORRUPTIONS["image"][name]
    assert np.array_equal(fn(img, 0.0, np.random.default_rng(1)), img)
    diffs = [np.abs(fn(img, lv, np.random.default_rng(1)).astype(int) - img).mean() for lv in (0.2, 0.6, 1.0)]
    assert diffs[0] > 0 and diffs[0] < diffs[1] <= diffs[2] + 1e-9
    a, b = fn(img, 0.5, np.random.default_rng(3)), fn(img, 0.5, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == img.shape


def test_text_corruptions():
    text = "a large red circle is left of a small blue square"
    rng = np.random.default_rng
    assert perturb.word_dropout(text, 0.0, rng(0)) == text
    assert perturb.word_dropout(text, 1.0, rng(0)) == ""
    kept = len(perturb.word_dropout(text, 0.5, rng(0)).split())
    assert 0 < kept < len(text.split())
    assert perturb.typos(text, 0.0, rng(0)) == text
    typo = perturb.typos(text, 1.0, rng(0))
    changed = sum(a != b for a, b in zip(typo.split(), text.split()))
    assert changed >= 6
    assert perturb.typos(text, 0.7, rng(5)) == perturb.typos(text, 0.7, rng(5))


def test_white_noise_snr():
    t = np.linspace(0, 1, 16000, endpoint=False)
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for level, snr in ((0.1, 40.0), (1.0, -20.0)):
        noisy = perturb.white_noise(wave, level, np.random.default_rng(0))
        measured = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
        assert abs(measured - snr) < 0.5
    assert np.array_equal(perturb.white_noise(wave, 0.0, np.random.default_rng(0)), wave)


def test_level_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        perturb.blur(np.zeros((8, 8, 3), np.uint8), 1.5, np.random.default_rng(0))


def test_ten_levels():
    assert len(perturb.LEVELS) == 10 and perturb.LEVELS[0] == 0.1 and perturb.LEVELS[-1] == 1.0
