"""Test-time corruptions of raw inputs, one family per modality (MultiBench's robustness protocol:
``robustness/visual_robust.py``, ``text_robust.py``, ``audio_robust.py``), each at a level in
[0, 1] where 0 leaves the input unchanged and 1 is the strongest corruption. All are seeded.

* image (RGB uint8 array, H x W x 3): ``gaussian_noise`` (std up to 1.0 of the pixel range),
  ``blur`` (Gaussian blur, radius up to 12% of the side), ``occlusion`` (a random square covering
  up to 90% of the area, grey)
* text: ``word_dropout`` (each word dropped with probability level), ``typos`` (each word gets a
  character swapped / dropped / replaced with probability level)
* audio (float waveform): ``white_noise`` at an SNR falling from +40 dB (level 0.1) to -20 dB
  (level 1)
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Raw = object


def _check(level: float) -> float:
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"corruption level {level} outside [0, 1]")
    return float(level)


# ------------------------------------------------------------------------------------------ image
def gaussian_noise(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    level = _check(level)
    if level == 0:
        return img
    noisy = img.astype(np.float32) / 255.0 + rng.normal(0.0, level, img.shape).astype(np.float32)
    return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)


def blur(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    level = _check(level)
    if level == 0:
        return img
    radius = level * 0.12 * max(img.shape[:2])
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def occlusion(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    level = _check(level)
    if level == 0:
        return img
    h, w = img.shape[:2]
    side_h, side_w = int(round(h * np.sqrt(0.9 * level))), int(round(w * np.sqrt(0.9 * level)))
    y = int(rng.integers(0, h - side_h + 1))
    x = int(rng.integers(0, w - side_w + 1))
    out = img.copy()
    out[y : y + side_h, x : x + side_w] = 128
    return out


# ------------------------------------------------------------------------------------------ text
def word_dropout(text: str, level: float, rng: np.random.Generator) -> str:
    level = _check(level)
    words = text.split()
    kept = [w for w in words if rng.random() >= level]
    return " ".join(kept)


def typos(text: str, level: float, rng: np.random.Generator) -> str:
    level = _check(level)
    out = []
    for w in text.split():
        if len(w) > 1 and rng.random() < level:
            i = int(rng.integers(0, len(w) - 1))
            op = int(rng.integers(0, 3))
            if op == 0:  # swap two neighbours
                w = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
            elif op == 1:  # drop a character
                w = w[:i] + w[i + 1 :]
            else:  # replace a character
                w = w[:i] + rng.choice(list(string.ascii_lowercase)) + w[i + 1 :]
        out.append(w)
    return " ".join(out)


# ------------------------------------------------------------------------------------------ audio
def white_noise(wave: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    level = _check(level)
    if level == 0:
        return wave
    snr_db = 40.0 - 60.0 * (level - 0.1) / 0.9 if level >= 0.1 else 40.0 + 200 * (0.1 - level)
    power = float(np.mean(np.asarray(wave, dtype=np.float64) ** 2)) or 1e-8
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), np.shape(wave))
    return (wave + noise).astype(np.float32)


CORRUPTIONS: dict[str, dict[str, Callable[[Raw, float, np.random.Generator], Raw]]] = {
    "image": {"gaussian_noise": gaussian_noise, "blur": blur, "occlusion": occlusion},
    "text": {"word_dropout": word_dropout, "typos": typos},
    "audio": {"white_noise": white_noise},
}

#: the ten test-time levels of the protocol (0.1 ... 1.0); level 0 is the clean input
LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 11))
