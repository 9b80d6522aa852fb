"""The shapes dataset's scenes (:mod:`fusionkit.data.shapes`): the vocabulary (colours, shape
kinds and their words, sizes, relations, tones), the scene attributes and their balanced design,
the targets and their accuracy ceilings, the seeded layout of 1-4 shapes, drawing a scene as an RGB
image (with its background cues), and synthesising its one-second sound (tone and audio cues).
Every function draws from the generator it is given, so a scene depends only on its seed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

NAME = "shapes"
SAMPLE_RATE = 16_000
DURATION_S = 1.0

# ------------------------------------------------------------------ attributes beyond the shapes
# (fusionkit/data/shapes.py's docstring, "Attributes", says what each one is for)
HISS = ("low", "high")  # audio only: a band of noise, low or high
HISS_BANDS: dict[str, tuple[float, float]] = {"low": (4800.0, 5400.0), "high": (5600.0, 6200.0)}
MARKERS = ("a", "b")  # the session marker
SIGNALS = ("off", "on")  # written in the session's code: code = signal XOR marker (on = 1, b = 1)
# each modality shows the code and the marker, on cues of its own (index: the bit)
STRIPES = ("horizontal", "vertical")  # image, the code: faint background stripes
TINTS = ("cool", "warm")  # image, the marker: the background's tint
HUM_BANDS: tuple[tuple[float, float], ...] = ((80.0, 100.0), (130.0, 160.0))  # audio, the code: a steady hum
WHISTLE_BANDS: tuple[tuple[float, float], ...] = ((6700.0, 6900.0), (7400.0, 7600.0))  # audio, the marker
CORRUPTIONS = ("none", "image", "audio")
#: fraction of the samples whose image, or (other samples) whose audio, is corrupted, unflagged
CORRUPTED = {"image": 1 / 5, "audio": 1 / 5}
FADES = ("none", "image", "audio")
#: fraction of the samples whose image background cues faded out (no stripes, no tint), or
#: (other samples) whose hiss dropped out: visibly missing, independent of the corruption
FADED = {"image": 1 / 5, "audio": 1 / 5}
#: the state (0 none, 1 image, 2 audio) of each of 5 consecutive values of a design digit
_LEVELS = (0, 1, 0, 2, 0)
#: one period of the balanced design: 2 (has_red) x 3 (tone) x 200 blocks; a block's q % 8 gives
#: hiss, signal and marker, q % 5 the corruption and (q // 5) % 5 the fade (8 and 25 are coprime)
DESIGN_PERIOD = 1200

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
MIXED = [f"{x}/{s}" for x in ("no", "yes") for s in SIGNALS]
TARGETS = {
    "label": LABELS,
    "has_red": ["no", "yes"],
    "tone": list(TONES),
    "redundant": ["no", "yes"],
    "unique": list(HISS),
    "synergy": ["no", "yes"],
    "unreliable": list(SIGNALS),
    "mixed": MIXED,
}
#: the targets by interaction type (shapes.py's docstring derives their ceilings)
INTERACTION_TARGETS = ("redundant", "unique", "synergy", "unreliable", "mixed")
MODALITIES = {"image": "image", "text": "text", "audio": "audio"}

# Accuracy ceilings (derived in shapes.py's docstring). ``label``'s stay where they always were:
CEILINGS: dict[str, float] = {"chance": 1 / 6, "image": 1 / 3, "text": 1 / 3, "audio": 1 / 2, "fused": 1.0}
CEILINGS_BY_SUBSET: dict[str, float] = {
    "image": 1 / 3,
    "text": 1 / 3,
    "audio": 1 / 2,
    "image+text": 1 / 3,
    "audio+image": 1.0,
    "audio+text": 1.0,
    "audio+image+text": 1.0,
}
#: the columns of :data:`TARGET_CEILINGS`: chance, each single modality, each pair, additive late
#: fusion (``late``: what the population cross-entropy minimiser over sums of per-modality logits
#: scores) and full fusion (``fused``: every modality, any function of them)
CEILING_KEYS = ("chance", "image", "text", "audio", "image+text", "audio+image", "audio+text", "late", "fused")


def target_ceilings(faded: float = FADED["image"]) -> dict[str, dict[str, float]]:
    """Every target's accuracy ceilings (columns :data:`CEILING_KEYS`) when a fraction ``faded`` of
    the images and another of the sounds are faded (0: ``generate(..., fades=False)``); derived in
    shapes.py's docstring, recomputed from the design's cells by tests/data/test_shapes_targets.py."""
    r, f = CORRUPTED["image"], faded  # the formulas take the image's and the audio's rates equal
    ui = (1 - f) * (1 - r) + f / 2  # unreliable, image alone: faded -> a guess, else wrong if corrupted
    uf = 1 - f * r  # unreliable, image + audio: wrong only if the image faded and the audio is corrupted
    rows = {
        "label": (1 / 6, 1 / 3, 1 / 3, 1 / 2, 1 / 3, 1.0, 1.0, 1.0, 1.0),
        "has_red": (1 / 2, 1.0, 1.0, 1 / 2, 1.0, 1.0, 1.0, 1.0, 1.0),
        "tone": (1 / 3, 1 / 3, 1 / 3, 1.0, 1 / 3, 1.0, 1.0, 1.0, 1.0),
        "redundant": (1 / 2, 1.0, 1.0, 1 / 2, 1.0, 1.0, 1.0, 1.0, 1.0),
        "unique": (1 / 2, 1 / 2, 1 / 2, 1 - f / 2, 1 / 2, 1 - f / 2, 1 - f / 2, 1 - f / 2, 1 - f / 2),
        "synergy": (1 / 2, 1 / 2, 1 / 2, 1 / 2, 1 / 2, 1 - f / 2, 1 - f / 2, 1 / 2, 1 - f / 2),
        "unreliable": (1 / 2, ui, 1 / 2, 1 - r, ui, uf, 1 - r, 1 - r, uf),
        "mixed": (
            1 / 4,
            ui / 2,
            1 / 4,
            (1 - r) / 2,
            ui / 2,
            1 - f / 2 - f * r,
            (1 - f / 2) * (1 - r),
            (1 - r) / 2,
            1 - f / 2 - f * r,
        ),
    }
    return {t: dict(zip(CEILING_KEYS, row, strict=True)) for t, row in rows.items()}


assert CORRUPTED["image"] == CORRUPTED["audio"] and FADED["image"] == FADED["audio"]  # target_ceilings' formulas
#: every target's accuracy ceilings with the default fades
TARGET_CEILINGS = target_ceilings()
#: which modalities carry each target's information, by construction (the interpretability check
#: compares learned modality weights with this; synergy and mixed need two of them at once, so
#: every modality that holds a part is listed)
INFORMATIVE_MODALITIES = {
    "has_red": ["image", "text"],
    "tone": ["audio"],
    "label": ["audio", "image", "text"],
    "redundant": ["image", "text"],
    "unique": ["audio"],
    "synergy": ["audio", "image", "text"],
    "unreliable": ["audio", "image"],
    "mixed": ["audio", "image", "text"],
}

# The regression target ``score`` and the tabular modality ``record`` (shapes.py's docstring
# derives the R^2 ceilings): score = has_red + TONE_W * tone + DOSE_W * z + SITE_W * (site - 1) + noise,
# where the record's ``dose`` is 10 + 2 z mg (z standard normal), ``site`` one of SITES and ``age`` a
# distractor that is missing for a tenth of the samples.
SCORE = "score"
TABULAR = "record"
SITES = ("north", "south", "east")
TONE_W, DOSE_W, SITE_W, SCORE_NOISE_SD = 0.5, 0.5, 0.25, 0.2
AGE_MISSING = 0.1
#: the record's columns (``dataset.json``'s ``tabular`` entry)
TABULAR_COLUMNS: dict[str, dict[str, Any]] = {
    "dose": {"type": "numeric", "missing": False},
    "site": {"type": "categorical", "missing": False},
    "age": {"type": "numeric", "missing": True},
}
#: each part of the score's variance (population), and which modalities show it
SCORE_PARTS: dict[str, tuple[float, tuple[str, ...]]] = {
    "has_red": (1 / 4, ("image", "text")),  # Bernoulli(1/2): variance 1/4
    "tone": (TONE_W**2 * 2 / 3, ("audio",)),  # uniform on {0, 1, 2}: variance 2/3
    "dose": (DOSE_W**2, (TABULAR,)),
    "site": (SITE_W**2 * 2 / 3, (TABULAR,)),
    "noise": (SCORE_NOISE_SD**2, ()),
}


def score_ceilings(tabular: bool = False) -> dict[str, float]:
    """The R^2 of the best predictor of ``score`` given each non-empty subset of the modalities
    (keys ``"audio+image"`` ..., sorted names), ``late`` and ``fused``. The parts are independent
    and the score is their sum, so E[score | modalities] is the sum of the parts they show and its
    R^2 the share of the variance those parts hold; the sum is additive, so late fusion (a sum of
    one prediction per modality) reaches the fused ceiling. Without the record (``tabular=False``)
    the dose and the site are noise to every model."""
    mods = sorted(["audio", "image", "text", *([TABULAR] if tabular else [])])
    total = sum(v for v, _ in SCORE_PARTS.values())
    out: dict[str, float] = {"chance": 0.0}
    for k in range(1, len(mods) + 1):
        for sub in combinations(mods, k):  # mods sorted: each subset's names sorted
            out["+".join(sub)] = sum(v for v, shown in SCORE_PARTS.values() if set(shown) & set(sub)) / total
    out["late"] = out["fused"] = out["+".join(mods)]
    return out


def layout(tabular: bool = False) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any] | None]:
    """The dataset's modalities, targets (``score``: ``[]``, a regression target) and tabular
    columns (``dataset.json``), with or without the record."""
    modalities = {**MODALITIES, **({TABULAR: "tabular"} if tabular else {})}
    return modalities, {**TARGETS, SCORE: []}, ({TABULAR: TABULAR_COLUMNS} if tabular else None)


def score_parts(scene: dict[str, Any]) -> dict[str, float]:
    """The weighted parts of a scene's ``score`` (:data:`SCORE_PARTS` but the noise), read back
    from the scene (a row of ``scenes.jsonl``: ``has_red``, ``tone``, ``record``)."""
    tone = TONES.index(scene["tone"]) if isinstance(scene["tone"], str) else scene["tone"]
    rec = scene[TABULAR]
    return {
        "has_red": float(scene["has_red"]),
        "tone": TONE_W * tone,
        "dose": DOSE_W * (rec["dose"] - 10.0) / 2.0,
        "site": SITE_W * (SITES.index(rec["site"]) - 1),
    }


def score_residual(scene: dict[str, Any]) -> float:
    """What of a scene's ``score`` its parts do not explain: the noise (sd :data:`SCORE_NOISE_SD`)."""
    return float(scene[SCORE] - sum(score_parts(scene).values()))


def score_oracle_r2(scenes: Sequence[dict[str, Any]], modalities: Sequence[str]) -> float:
    """The R^2 on ``scenes`` (rows of ``scenes.jsonl``) of the best predictor given
    ``modalities``: the sum of the parts they show (:func:`score_parts`), plus a constant. Over
    many scenes it tends to :func:`score_ceilings`; on one split it is that split's own ceiling
    (its variance of the dose and the noise differs from the population's by a few points)."""
    y = np.array([float(s[SCORE]) for s in scenes])
    shown = [p for p, (_, where) in SCORE_PARTS.items() if set(where) & set(modalities)]
    pred = np.array([sum(v for p, v in score_parts(s).items() if p in shown) for s in scenes])
    return float(1 - (y - pred).var() / y.var())


def score_and_record(has_red: int, tone: int, rng: np.random.Generator) -> tuple[float, dict[str, Any]]:
    """A scene's ``score`` and its tabular ``record`` (drawn from ``rng``, the scene's own stream)."""
    z, site = float(rng.standard_normal()), int(rng.integers(len(SITES)))
    age = int(rng.integers(20, 81))
    age_missing = bool(rng.random() < AGE_MISSING)
    noise = float(rng.standard_normal()) * SCORE_NOISE_SD
    score = has_red + TONE_W * tone + DOSE_W * z + SITE_W * (site - 1) + noise
    record = {"dose": round(10.0 + 2.0 * z, 4), "site": SITES[site], "age": None if age_missing else age}
    return round(score, 6), record


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


# ------------------------------------------------------------------------------------ design
def design(n: int, fades: bool = True) -> dict[str, np.ndarray]:
    """The balanced attribute design of samples ``0 .. n-1``, before :func:`shapes.generate`
    shuffles it (one seeded permutation of the samples, the same one that always shuffled the
    labels): for ``j = i % 1200``, ``tone = j % 3``, ``has_red = (j // 3) % 2`` (so ``label = j % 6``,
    exactly as before), and for the block ``q = j // 6``: ``hiss``, ``signal`` and ``marker`` are
    the three bits of ``q % 8``, the corruption state is level ``q % 5`` and the fade level
    ``(q // 5) % 5`` of (none, image, none, audio, none). ``q % 8`` and ``q % 25`` run through all
    200 pairs in every 200 consecutive blocks (Chinese remainder), so every 1200 samples hold each
    combination of the attributes in exact proportion: for ``n`` a multiple of 1200 they are
    exactly balanced and mutually independent (corruption and fade 3 : 1 : 1 each). For other
    ``n``, ``has_red`` and ``tone`` stay exactly balanced whenever 6 divides ``n`` (as before), the
    corruption and the fade are exact whenever 150 divides ``n`` (the smoke profile's 150 scenes:
    one cycle of ``q % 25``); otherwise the corruption is off by at most one block of 6 samples, the
    fade by one run of 5 blocks (30), and each bit by a few blocks (hiss by one, signal by two,
    marker by four). ``block`` (``q``) orders the samples of a class when the splits
    are assigned, so every split keeps the new targets balanced too. ``fades=False``: no fades."""
    j = np.arange(n) % DESIGN_PERIOD
    q = j // 6
    bits = q % 8
    levels = np.array(_LEVELS)
    return {
        "has_red": (j // 3) % 2,
        "tone": j % 3,
        "hiss": bits & 1,
        "signal": (bits >> 1) & 1,
        "marker": (bits >> 2) & 1,
        "corruption": levels[q % 5],
        "fade": levels[(q // 5) % 5] if fades else np.zeros_like(q),
        "block": q,
    }


def targets_of(has_red: int, tone: int, hiss: int, signal: int) -> dict[str, int]:
    """Every target of a scene from its attributes (indices into :data:`TARGETS`' classes)."""
    synergy = int(has_red) ^ int(hiss)
    return {
        "label": 3 * int(has_red) + int(tone),
        "has_red": int(has_red),
        "tone": int(tone),
        "redundant": int(has_red),
        "unique": int(hiss),
        "synergy": synergy,
        "unreliable": int(signal),
        "mixed": 2 * synergy + int(signal),
    }


def shown(marker: int, signal: int, corruption: str) -> dict[str, dict[str, Any]]:
    """What the image and the audio show: each the code (``signal XOR marker``) and the marker
    (bits), and the signal it reads alone (``code XOR marker``, a name). Clean, the truth. A
    corrupted image shows the other session's marker (its code intact), a corrupted audio the
    wrong code (its marker intact): read alone, either gives the wrong signal and nothing in it
    says so. What no corruption touches: the image's code and the audio's marker."""
    code = signal ^ marker
    marker_i, code_a = marker ^ int(corruption == "image"), code ^ int(corruption == "audio")
    return {
        "image": {"code": code, "marker": marker_i, "signal": SIGNALS[code ^ marker_i]},
        "audio": {"code": code_a, "marker": marker, "signal": SIGNALS[code_a ^ marker]},
    }


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


def _background(
    rng: np.random.Generator, bg: list[int], size: int, code: int, marker: int, faded: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """The background at ``SUPERSAMPLE`` x ``size``: the colour ``bg`` tinted by ``delta`` levels,
    warm (red up, blue down) or cool (the reverse) by ``TINTS[marker]``, with faint square-wave
    stripes of ``amplitude`` levels and ``period`` px, ``STRIPES[code]``; ``faded``: plain ``bg``
    (no tint, no stripes; the draws are made all the same). Draws only from ``rng`` (the
    image-cue stream)."""
    delta = float(rng.uniform(12.0, 18.0))
    amplitude = float(rng.uniform(3.0, 5.0))
    period = float(rng.uniform(6.0, 10.0))  # px of the image
    phase = float(rng.uniform(0.0, 2 * math.pi))
    sign = 0.0 if faded else 1.0 if TINTS[marker] == "warm" else -1.0
    color = np.array(bg, dtype=np.float64) + sign * delta * np.array([1.0, 0.0, -1.0])
    side = size * SUPERSAMPLE
    coord = (np.arange(side) + 0.5) / SUPERSAMPLE
    wave = (0.0 if faded else amplitude) * np.sign(np.sin(2 * math.pi * coord / period + phase))
    # one line of pixels (side x RGB), repeated along rows or columns: the same values as the full
    # image computed pixel by pixel, at a fraction of the cost
    line = np.clip(np.rint(color[None, :] + wave[:, None]), 0, 255).astype(np.uint8)
    line = line[:, None, :] if STRIPES[code] == "horizontal" else line[None, :, :]  # varies along rows or columns
    meta = {
        "stripes": None if faded else STRIPES[code],
        "tint": None if faded else TINTS[marker],
        "stripe_period": round(period, 3),
        "stripe_amplitude": round(amplitude, 3),
        "tint_delta": round(delta, 3),
    }
    return np.ascontiguousarray(np.broadcast_to(line, (side, side, 3))), meta


def _render(
    rng: np.random.Generator,
    shapes: list[Shape],
    size: int,
    code: int = 0,
    marker: int = 0,
    cue_rng: np.random.Generator | None = None,
    faded: bool = False,
) -> tuple[np.ndarray, list[int], dict[str, Any]]:
    """The scene's RGB pixels, its base background colour and its background cues (what
    :func:`_background` drew for ``code`` and ``marker``, from ``cue_rng``; the shapes, colours
    and pixel noise still draw from ``rng`` exactly as before the cues existed)."""
    base = int(rng.integers(222, 248))
    bg = [int(np.clip(base + t, 0, 255)) for t in rng.integers(-6, 7, 3)]
    ss = SUPERSAMPLE
    back, cues = _background(
        cue_rng if cue_rng is not None else np.random.default_rng(0), bg, size, code, marker, faded
    )
    img = Image.fromarray(back, "RGB")
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
    return np.clip(arr, 0, 255).astype(np.uint8), bg, cues


def _band_noise(rng: np.random.Generator, lo: float, hi: float, n: int, rms: float) -> np.ndarray:
    """White noise from ``rng`` band-limited to ``lo``-``hi`` Hz (FFT mask), scaled to ``rms``."""
    spec = np.fft.rfft(rng.normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(freqs < lo) | (freqs > hi)] = 0
    y = np.fft.irfft(spec, n)
    return rms * y / max(float(np.sqrt(np.mean(y**2))), 1e-12)


def _audio(
    rng: np.random.Generator,
    tone: str,
    hiss: str = "low",
    code: int = 0,
    marker: int = 0,
    cue_rng: np.random.Generator | None = None,
    faded: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The one-second sound: the tone (drawn from ``rng`` exactly as before the audio cues
    existed) plus three steady cues from ``cue_rng``, all quieter than the tone and below its
    fundamental (200 Hz) or above its third harmonic (4.5 kHz): a hum in ``HUM_BANDS[code]``, a
    whistle in ``WHISTLE_BANDS[marker]`` and a band of hiss (``hiss``: 4.8-5.4 or 5.6-6.2 kHz),
    which ``faded`` leaves out. Every cue's draws are made whatever the values."""
    rnd = cue_rng if cue_rng is not None else np.random.default_rng(0)
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
    tones = {}
    for name, (lo_c, hi_c), level in (
        ("hum", HUM_BANDS[code], (0.004, 0.008)),
        ("whistle", WHISTLE_BANDS[marker], (0.008, 0.014)),
    ):
        f, a, ph = float(rnd.uniform(lo_c, hi_c)), float(rnd.uniform(*level)), float(rnd.uniform(0, 2 * np.pi))
        y = y + a * np.sin(2 * np.pi * f * t + ph)
        tones[f"{name}_hz"] = round(f, 3)
    hiss_rms = float(rnd.uniform(0.006, 0.012))
    y = y + (0.0 if faded else 1.0) * _band_noise(rnd, *HISS_BANDS[hiss], len(t), hiss_rms)
    meta = {
        "f0": round(f0, 3),
        "onset_s": round(onset, 4),
        "duration_s": round(dur, 4),
        **tones,
        "hiss": None if faded else hiss,
        "hiss_rms": 0.0 if faded else round(hiss_rms, 5),
    }
    return np.clip(y, -1, 1).astype(np.float32), meta


# ------------------------------------------------------------------ reading the cues back
#: :func:`measure_image_cues`' stripe contrast above which an image has stripes, and
#: :func:`measure_audio_cues`' hiss band energy ratio above which a clip has hiss (what the
#: generator's output measures, with and without: tests/data/test_shapes_targets.py)
STRIPE_CONTRAST, HISS_RATIO = 1.0, 2.5


def measure_image_cues(pixels: np.ndarray) -> dict[str, Any]:
    """What an image's raw pixels show of the background cues, measured (for validation), on the
    background pixels (within 20 levels of the light pixels' median colour in every channel: no
    shape colour or outline passes): the tint from their mean red minus blue; the stripes from the
    mean variance of the background within each row and within each column: stripes run along
    the lines they are constant on, so horizontal ones leave rows flat and vertical ones columns
    (``stripe_contrast``: how much larger the other direction's variance is, in levels squared)."""
    px = np.asarray(pixels, dtype=np.float64)
    light = px.min(axis=-1) > 175
    centre = np.median(px[light], axis=0) if light.any() else np.full(3, 230.0)
    back = (np.abs(px - centre) < 20).all(axis=-1)
    gray = px.mean(axis=-1)

    def within(axis: int) -> float:  # mean variance of the background along ``axis`` (1: within rows)
        n = back.sum(axis=axis)
        s1 = np.where(back, gray, 0).sum(axis=axis)
        s2 = np.where(back, gray**2, 0).sum(axis=axis)
        keep = n >= 8
        if not keep.any():
            return 0.0
        var = s2[keep] / n[keep] - (s1[keep] / n[keep]) ** 2
        return float(np.average(var, weights=n[keep]))

    rows, cols = within(1), within(0)
    tint = "warm" if float(np.mean(px[..., 0][back] - px[..., 2][back])) > 0 else "cool"
    return {"stripes": "horizontal" if rows < cols else "vertical", "tint": tint, "stripe_contrast": abs(rows - cols)}


def measure_audio_cues(wave: np.ndarray) -> dict[str, Any]:
    """What a clip's raw samples show of the audio cues, measured (for validation): the hum's and
    the whistle's frequencies (the spectral peaks in 60-180 Hz and 6.6-7.7 kHz), which hiss band
    holds more energy and how many times more (``hiss_ratio``)."""
    y = np.asarray(wave, dtype=np.float64)
    mag = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)

    def peak(lo: float, hi: float) -> float:
        band = (freqs >= lo) & (freqs <= hi)
        return float(freqs[band][np.argmax(mag[band])])

    energy = {h: float(np.sum(mag[(freqs >= lo) & (freqs <= hi)] ** 2)) for h, (lo, hi) in HISS_BANDS.items()}
    hiss = max(energy, key=energy.get)
    return {
        "hum_hz": peak(60, 180),
        "whistle_hz": peak(6600, 7700),
        "hiss": hiss,
        "hiss_ratio": energy[hiss] / max(min(energy.values()), 1e-12),
    }
