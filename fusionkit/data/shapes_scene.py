"""The shapes dataset's scenes (:mod:`fusionkit.data.shapes`): the vocabulary (colours, shape
kinds and their words, sizes, relations, tones), the targets and their accuracy ceilings, the
seeded layout of 1-4 shapes, drawing a scene as an RGB image, and synthesising its one-second
tone. Every function draws from the generator it is given, so a scene depends only on its seed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_RATE = 16_000
DURATION_S = 1.0

CEILINGS: dict[str, float] = {"chance": 1 / 6, "image": 1 / 3, "text": 1 / 3, "audio": 1 / 2, "fused": 1.0}
INFORMATIVE_MODALITIES = {"has_red": ["image", "text"], "tone": ["audio"], "label": ["audio", "image", "text"]}
CEILINGS_BY_SUBSET: dict[str, float] = {
    "image": 1 / 3,
    "text": 1 / 3,
    "audio": 1 / 2,
    "image+text": 1 / 3,
    "audio+image": 1.0,
    "audio+text": 1.0,
    "audio+image+text": 1.0,
}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 25),
    "purple": (135, 55, 185),
    "cyan": (25, 185, 205),
}
# Colour words that must never appear in a caption unless that colour is in the scene (the
# generator only uses COLORS; the rest are here so a corrupted caption is caught).
COLOR_WORDS = frozenset(COLORS) | frozenset(
    "orange pink white black gray grey brown violet magenta turquoise teal gold silver beige maroon navy lime".split()
)
KINDS = ("circle", "square", "triangle", "diamond", "star")
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
}
PLURALS = {
    "circle": "circles",
    "disc": "discs",
    "square": "squares",
    "box": "boxes",
    "triangle": "triangles",
    "diamond": "diamonds",
    "rhombus": "rhombuses",
    "star": "stars",
}
WORD_TO_KIND = {w: k for k, ws in SHAPE_WORDS.items() for w in ws} | {
    PLURALS[w]: k for k, ws in SHAPE_WORDS.items() for w in ws
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}

TONES = ("low", "mid", "high")
TONE_BANDS: dict[str, tuple[float, float]] = {"low": (200.0, 300.0), "mid": (500.0, 700.0), "high": (1100.0, 1500.0)}
LABELS = [f"{r}/{t}" for r in ("no_red", "red") for t in TONES]
TARGETS = {"label": LABELS, "has_red": ["no", "yes"], "tone": list(TONES)}
MODALITIES = {"image": "image", "text": "text", "audio": "audio"}

SMALL_SIDE = (0.17, 0.21)  # fraction of the image side (>= 12 %, so red stays salient at 224 px)
LARGE_SIDE = (0.28, 0.34)
MAX_SHAPES = 4
REL_MARGIN = 0.06  # fraction of the image side a centre must lie beyond to count for a relation
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges

# direction -> unit vector in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}
REL_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
PHRASE_TO_DIRECTION = {p: d for d, ps in REL_PHRASES.items() for p in ps}


Shape = dict[str, Any]


# ----------------------------------------------------------------------------------- helpers
def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped (the Karpathy ``tokens`` field)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def caption_words(text: str) -> tuple[set[str], set[str]]:
    """(colour words, shape kinds) named in ``text``; shape synonyms map to their kind."""
    toks = tokenize(text)
    return {t for t in toks if t in COLOR_WORDS}, {WORD_TO_KIND[t] for t in toks if t in WORD_TO_KIND}


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream)))


def relation(a: Shape, b: Shape, direction: str, image_size: int) -> bool | None:
    """Is shape ``a`` clearly ``direction`` (left/right/above/below) of shape ``b``?

    True: its centre lies more than ``REL_MARGIN`` of the image side beyond b's along the
    direction, and at least as far along it as across it. False: clearly not (behind b, or at
    most 0.4x as far along as across). None: borderline - never used in a caption or question."""
    ux, uy = DIRECTIONS[direction]
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    along = dx * ux + dy * uy
    across = abs(dx * uy - dy * ux)
    if along > REL_MARGIN * image_size and along >= across:
        return True
    if along <= 0.4 * across:
        return False
    return None


def _unique(shapes: list[Shape], **attrs: str) -> list[Shape]:
    return [s for s in shapes if all(s[k] == v for k, v in attrs.items())]


def _relation_target(shapes: list[Shape], ref: Shape, direction: str, image_size: int) -> Shape | None:
    """The one shape clearly ``direction`` of ``ref`` when every other shape is clearly not."""
    states = [(s, relation(s, ref, direction, image_size)) for s in shapes if s is not ref]
    if any(st is None for _, st in states):
        return None
    hits = [s for s, st in states if st]
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------------------------ scenes
def _layout(rng: np.random.Generator, has_red: bool, size: int) -> list[Shape]:
    k = int(rng.integers(1, MAX_SHAPES + 1))
    colors = list(COLORS) if has_red else [c for c in COLORS if c != "red"]
    for attempt in range(40):
        force_small = attempt >= 20
        cols = [_pick(rng, colors) for _ in range(k)]
        if has_red:
            cols[0] = "red"
        shapes: list[Shape] = []
        for col in cols:
            kind = _pick(rng, KINDS)
            large = (not force_small) and bool(rng.random() < 0.5)
            lo, hi = LARGE_SIDE if large else SMALL_SIDE
            side = round(float(rng.uniform(lo, hi)) * size, 2)
            placed = None
            for _ in range(100):
                half = side / 2
                x = round(float(rng.uniform(half + 1, size - half - 1)), 2)
                y = round(float(rng.uniform(half + 1, size - half - 1)), 2)
                box = [round(x - half, 2), round(y - half, 2), round(x + half, 2), round(y + half, 2)]
                if all(
                    box[2] + 1 <= o[0] or o[2] + 1 <= box[0] or box[3] + 1 <= o[1] or o[3] + 1 <= box[1]
                    for o in (s["bbox"] for s in shapes)
                ):
                    placed = {
                        "kind": kind,
                        "color": col,
                        "size": "large" if large else "small",
                        "x": x,
                        "y": y,
                        "side": side,
                        "bbox": box,
                    }
                    break
            if placed is None:
                break
            shapes.append(placed)
        if len(shapes) == k:
            return [shapes[i] for i in rng.permutation(k)]
    raise RuntimeError(f"could not place {k} shapes in a {size} px image")  # pragma: no cover


def _polygon(kind: str, x: float, y: float, side: float) -> list[tuple[float, float]]:
    h = side / 2
    if kind == "triangle":
        return [(x, y - h), (x + h, y + h), (x - h, y + h)]
    if kind == "diamond":
        return [(x, y - h), (x + h, y), (x, y + h), (x - h, y)]
    if kind == "star":
        pts = []
        for i in range(10):
            r = h if i % 2 == 0 else 0.5 * h
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((x + r * math.cos(a), y + r * math.sin(a)))
        return pts
    raise ValueError(kind)


def _render(rng: np.random.Generator, shapes: list[Shape], size: int) -> tuple[np.ndarray, list[int]]:
    base = int(rng.integers(222, 248))
    bg = [int(np.clip(base + t, 0, 255)) for t in rng.integers(-6, 7, 3)]
    ss = SUPERSAMPLE
    img = Image.new("RGB", (size * ss, size * ss), tuple(bg))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        fill = tuple(
            int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[s["color"]], rng.integers(-10, 11, 3), strict=True)
        )
        outline = tuple(int(c * 0.55) for c in fill)
        x, y, side = s["x"] * ss, s["y"] * ss, s["side"] * ss
        if s["kind"] == "circle":
            draw.ellipse([x - side / 2, y - side / 2, x + side / 2, y + side / 2], fill=fill, outline=outline, width=ss)
        elif s["kind"] == "square":
            draw.rectangle(
                [x - side / 2, y - side / 2, x + side / 2, y + side / 2], fill=fill, outline=outline, width=ss
            )
        else:
            draw.polygon(_polygon(s["kind"], x, y, side), fill=fill, outline=outline, width=ss)
    arr = np.asarray(img.reduce(ss), dtype=np.int16)
    arr = arr + np.rint(rng.normal(0.0, 3.0, arr.shape)).astype(np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8), bg


def _audio(rng: np.random.Generator, tone: str) -> tuple[np.ndarray, dict[str, float]]:
    lo, hi = TONE_BANDS[tone]
    f0 = float(rng.uniform(lo, hi))
    onset = float(rng.uniform(0.0, 0.3))
    dur = float(min(rng.uniform(0.4, 0.7), 0.98 - onset))
    attack, release = float(rng.uniform(0.01, 0.04)), float(rng.uniform(0.03, 0.08))
    h2, h3 = float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.05, 0.25))
    phases = rng.uniform(0, 2 * np.pi, 3)
    amp = float(rng.uniform(0.3, 0.6))
    t = np.arange(int(SAMPLE_RATE * DURATION_S)) / SAMPLE_RATE
    wave = (
        np.sin(2 * np.pi * f0 * t + phases[0])
        + h2 * np.sin(2 * np.pi * 2 * f0 * t + phases[1])
        + h3 * np.sin(2 * np.pi * 3 * f0 * t + phases[2])
    )
    rel = t - onset
    env = np.clip(rel / attack, 0, 1) * np.clip((dur - rel) / release, 0, 1)
    env *= np.exp(-1.5 * np.clip(rel, 0, None))  # gentle decay
    y = amp * env * wave / (1 + h2 + h3) + rng.normal(0.0, 0.01, t.shape)
    meta = {"f0": round(f0, 3), "onset_s": round(onset, 4), "duration_s": round(dur, 4)}
    return np.clip(y, -1, 1).astype(np.float32), meta
