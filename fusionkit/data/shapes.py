"""The embedded default dataset: deterministic synthetic *shapes* scenes with an audio tone.

Every sample is a scene of 1-4 coloured shapes (an RGB PNG), five captions describing it, about
five VQA questions about it, and a one-second WAV tone. The files use the same on-disk formats as
the real datasets, so the default run walks the loaders real data walks::

    root/
      dataset.json, manifest.jsonl      fusionkit dataset (fusionkit.data.base); dataset.json is
                                        written last: a folder with one is complete
      images/{id}.png                   RGB scenes, ``image_size`` px
      audio/{id}.wav                    1.0 s, mono, 16 kHz, 16-bit PCM
      scenes.jsonl                      ground truth per sample: shapes (kind, color, size, x, y,
                                        bbox), has_red, tone, f0 ... (for tests and task checks)
      captions.json                     Karpathy-style captions (5 per image)
      annotations/captions_{split}.json COCO-style caption references (pycocoevalcap reads them)
      vqa/questions_{split}.json        VQA v2 questions (Open-Ended)
      vqa/annotations_{split}.json      VQA v2 annotations (10 identical answers each)

Attributes and targets
    ``has_red``: whether the scene holds at least one red shape. Exactly balanced (labels are a
    seeded permutation of ``i % 6``); drawn first, then the scene is built around it (with
    ``has_red = 0`` no shape is red). Visible in the image and in *every* caption.
    ``tone`` (low / mid / high): the pitch band of the audio's fundamental (200-300, 500-700,
    1100-1500 Hz). Audio only: the image never shows it, captions and questions never mention it.
    ``label = 3 * has_red + tone``: the 6-class multimodal target ("no_red/low" ... "red/high").

Accuracy ceilings on ``label`` (:data:`CEILINGS`, also stored in ``dataset.json`` ``info``)
    chance 1/6. image 1/3: the image decides ``has_red`` but holds nothing about ``tone`` (scenes
    are drawn from random streams independent of the tone), so the best one can do is guess the
    tone. text 1/3, exactly: captions never name a colour or shape that is absent, and every
    caption - including the two that may describe only part of the scene - names every red shape,
    so the manifest's caption (one of the five, picked at random) decides ``has_red`` too.
    audio 1/2: the audio decides ``tone`` but nothing about ``has_red``. image+text 1/3 (both
    carry the same bit). Any two modalities including audio ("fused"): 1.0. These hold for the
    whole dataset and, as splits are stratified by label, for every split (up to rounding for
    tiny ``n``).

Captions: at least 3 of the 5 name every shape with its colour (lists, counted groups such as
"two red circles", relations "left of / right of / above / below" between shapes whose colour and
kind identify them); the others may name a subset, always with colours and always including every
red shape. Shape synonyms: circle/disc, square/box, diamond/rhombus; sizes small/little,
large/big. Colours: red, green, blue, yellow, purple, cyan (no orange or pink, which look red).

VQA: per scene about five questions (``questions_per_scene``, at most 10) with unambiguous
answers: colour ("what color is the circle?" - only when one circle), shape ("what shape is the blue object?"), count ("how many red
shapes are there?"), existence ("is there a green star?", yes/no drawn 50/50) and relation
("what is left of the green triangle?" - only when exactly one shape clearly is and no other shape
is borderline). :func:`answer_question` recomputes any question's answer from a scene.

Determinism: every sample draws from its own ``numpy`` generator seeded by (seed, index, stream),
so the same parameters give byte-identical files. Re-running :func:`generate` with the same
parameters on a complete folder returns it untouched; otherwise the dataset is written into a
temporary sibling folder and renamed over ``root``, so ``root`` never holds a half-written
dataset that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from fusionkit.data.base import SPLITS, Dataset, DatasetError, Sample, atomic_write_text, load_dataset, write_dataset
from fusionkit.data.readers import open_image
from fusionkit.progress import progress as progress_bar

__all__ = [
    "CEILINGS",
    "CEILINGS_BY_SUBSET",
    "COLORS",
    "KINDS",
    "LABELS",
    "TONES",
    "TONE_BANDS",
    "answer_question",
    "caption_words",
    "generate",
    "relation",
    "tokenize",
    "validate",
]

NAME = "shapes"
GENERATOR_VERSION = 2
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

# files besides the manifest that a complete dataset holds (relative to the root)
_ENTRIES = {"dataset.json", "manifest.jsonl", "scenes.jsonl", "captions.json", "images", "audio", "annotations", "vqa"}

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


def _params(
    n: int, seed: int, image_size: int, splits: Sequence[float], questions_per_scene: int = 5
) -> dict[str, Any]:
    extra = {} if questions_per_scene == 5 else {"questions_per_scene": int(questions_per_scene)}
    return {
        **extra,
        "generator": f"fusionkit.data.shapes v{GENERATOR_VERSION}",
        "n": int(n),
        "seed": int(seed),
        "image_size": int(image_size),
        "splits": [float(p) for p in splits],
        "sample_rate": SAMPLE_RATE,
        "duration_s": DURATION_S,
    }


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


# ---------------------------------------------------------------------------------- captions
def _desc(rng: np.random.Generator, s: Shape, size_p: float = 0.4) -> str:
    words = ["a"]
    if rng.random() < size_p:
        words.append(_pick(rng, SIZE_WORDS[s["size"]]))
    return " ".join([*words, s["color"], _pick(rng, SHAPE_WORDS[s["kind"]])])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _listing(rng: np.random.Generator, shapes: list[Shape]) -> str:
    return _join([_desc(rng, shapes[i]) for i in rng.permutation(len(shapes))])


def _grouped(rng: np.random.Generator, shapes: list[Shape]) -> str:
    groups = Counter((s["color"], s["kind"]) for s in shapes)
    parts = []
    for (color, kind), c in [list(groups.items())[i] for i in rng.permutation(len(groups))]:
        if c == 1:
            parts.append(_desc(rng, _unique(shapes, color=color, kind=kind)[0]))
        else:
            parts.append(f"{NUMBERS[c]} {color} {PLURALS[_pick(rng, SHAPE_WORDS[kind])]}")
    return _join(parts)


def _pairs(shapes: list[Shape], size: int) -> list[tuple[Shape, str, Shape]]:
    """(a, direction, b): a clearly ``direction`` of b, both identified by colour + kind."""
    ids = [s for s in shapes if len(_unique(shapes, color=s["color"], kind=s["kind"])) == 1]
    return [(a, d, b) for a in ids for b in ids if a is not b for d in DIRECTIONS if relation(a, b, d, size)]


def _rel_text(rng: np.random.Generator, a: Shape, d: str, b: Shape) -> str:
    ref = _desc(rng, b, 0.25)
    if rng.random() < 0.3:  # "... left of the blue box"
        ref = "the" + ref[1:]
    return f"{_desc(rng, a, 0.25)} {_pick(rng, REL_PHRASES[d])} {ref}"


def _cap_list(rng, shapes, size):
    return _listing(rng, shapes) + "."


def _cap_count(rng, shapes, size):
    if len(shapes) == 1:
        return f"{_pick(rng, ['a single shape', 'one shape', 'just one object'])}: {_listing(rng, shapes)}."
    return f"{NUMBERS[len(shapes)]} {_pick(rng, ['shapes', 'objects'])}: {_listing(rng, shapes)}."


def _cap_scene(rng, shapes, size):
    tpl = _pick(
        rng,
        [
            "an image of {}.",
            "a picture showing {}.",
            "{} on a light background.",
            "this image contains {}.",
            "a plain background with {}.",
        ],
    )
    return tpl.format(_listing(rng, shapes))


def _cap_grouped(rng, shapes, size):
    verb = "are" if len(shapes) > 1 else "is"
    tpl = _pick(rng, ["{}.", "{} on a plain background.", f"there {verb} {{}} in the picture."])
    return tpl.format(_grouped(rng, shapes))


def _cap_relation(rng, shapes, size):
    pairs = _pairs(shapes, size)
    if not pairs:
        return None
    a, d, b = _pick(rng, pairs)
    rest = [s for s in shapes if s is not a and s is not b]
    text = _rel_text(rng, a, d, b)
    if rest:
        text += _pick(rng, [", and also {}", ", plus {}", ", next to {}"]).format(_listing(rng, rest))
    return text + "."


_FULL: list[Callable[[np.random.Generator, list[Shape], int], str | None]] = [
    _cap_list,
    _cap_count,
    _cap_scene,
    _cap_grouped,
    _cap_relation,
]


def _cap_partial(rng: np.random.Generator, shapes: list[Shape], size: int) -> str | None:
    """A caption naming only some shapes: always every red one, always with colours."""
    red = [s for s in shapes if s["color"] == "red"]
    others = [s for s in shapes if s["color"] != "red"]
    if not others or len(shapes) < 2:
        return None
    if len(shapes) > 2 and rng.random() < 0.4:  # a relation between two shapes, the red ones among them
        pairs = [(a, d, b) for a, d, b in _pairs(shapes, size) if all(r is a or r is b for r in red)]
        if pairs:
            return _rel_text(rng, *_pick(rng, pairs)) + "."
    keep = [s for s in others if rng.random() < 0.5]
    if len(red) + len(keep) == len(shapes):
        keep = keep[:-1]
    if not red and not keep:
        keep = [_pick(rng, others)]
    sub = red + keep
    tpl = _pick(rng, ["a picture with {}.", "an image with {}.", "a scene including {}.", "{} among other things."])
    return tpl.format(_listing(rng, sub))


def _captions(rng: np.random.Generator, shapes: list[Shape], size: int) -> list[str]:
    caps: list[str] = []  # the first three name every shape with its colour
    for i in rng.permutation(len(_FULL)):
        if len(caps) == 3:
            break
        c = _FULL[i](rng, shapes, size)
        if c is not None and c not in caps:
            caps.append(c)
    for tries in range(40):
        if len(caps) == 3:
            break
        c = _FULL[int(rng.integers(4))](rng, shapes, size)
        if c not in caps or tries >= 20:
            caps.append(c)
    while len(caps) < 5:  # two more, partial or full; unique where the scene allows
        for _ in range(20):
            c = _cap_partial(rng, shapes, size) if rng.random() < 0.5 else None
            c = c or _FULL[int(rng.integers(4))](rng, shapes, size)
            if c not in caps:
                break
        caps.append(c)
    caps = [caps[i] for i in rng.permutation(5)]
    return [c[0].upper() + c[1:] for c in caps]


# ---------------------------------------------------------------------------------------- VQA
def _q_color(rng, shapes, size):
    kinds = [k for k, c in Counter(s["kind"] for s in shapes).items() if c == 1]
    if not kinds:
        return None
    kind = _pick(rng, kinds)
    return f"what color is the {_pick(rng, SHAPE_WORDS[kind])}?", _unique(shapes, kind=kind)[0]["color"]


def _q_shape(rng, shapes, size):
    colors = [k for k, c in Counter(s["color"] for s in shapes).items() if c == 1]
    if not colors:
        return None
    color = _pick(rng, colors)
    noun = _pick(rng, ["object", "shape", "thing"])
    return f"what shape is the {color} {noun}?", _unique(shapes, color=color)[0]["kind"]


def _q_count(rng, shapes, size):
    v = int(rng.integers(3))
    if v == 0:
        return f"how many {_pick(rng, ['shapes', 'objects'])} are there?", str(len(shapes))
    if v == 1:
        color = _pick(rng, shapes)["color"] if rng.random() < 0.7 else _pick(rng, list(COLORS))
        return f"how many {color} shapes are there?", str(len(_unique(shapes, color=color)))
    kind = _pick(rng, shapes)["kind"] if rng.random() < 0.7 else _pick(rng, KINDS)
    return f"how many {PLURALS[_pick(rng, SHAPE_WORDS[kind])]} are there?", str(len(_unique(shapes, kind=kind)))


def _q_exist(rng, shapes, size):
    yes = bool(rng.random() < 0.5)
    v = int(rng.integers(3))
    if v == 0:  # colour + kind
        present = {(s["color"], s["kind"]) for s in shapes}
        pool = sorted(present) if yes else [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
        color, kind = _pick(rng, pool)
        return f"is there a {color} {_pick(rng, SHAPE_WORDS[kind])}?", "yes" if yes else "no"
    if v == 1:  # kind only
        present = {s["kind"] for s in shapes}
        kind = _pick(rng, sorted(present) if yes else [k for k in KINDS if k not in present])
        return f"is there a {_pick(rng, SHAPE_WORDS[kind])}?", "yes" if yes else "no"
    present = {s["color"] for s in shapes}
    color = _pick(rng, sorted(present) if yes else [c for c in COLORS if c not in present])
    return f"is there a {color} {_pick(rng, ['shape', 'object'])}?", "yes" if yes else "no"


def _q_relation(rng, shapes, size):
    options = []
    for ref in shapes:
        if len(_unique(shapes, color=ref["color"], kind=ref["kind"])) != 1:
            continue
        for d in DIRECTIONS:
            hit = _relation_target(shapes, ref, d, size)
            if hit is not None:
                options.append((ref, d, hit))
    if not options:
        return None
    ref, d, hit = _pick(rng, options)
    phrase, word = _pick(rng, REL_PHRASES[d]), _pick(rng, SHAPE_WORDS[ref["kind"]])
    return f"what is {phrase} the {ref['color']} {word}?", hit["kind"]


_QUESTION_TYPES = {
    _q_color: ("what color is the", "other"),
    _q_shape: ("what shape is the", "other"),
    _q_count: ("how many", "number"),
    _q_exist: ("is there a", "yes/no"),
    _q_relation: ("what is", "other"),
}


def _questions(
    rng: np.random.Generator,
    shapes: list[Shape],
    size: int,
    k: int = 5,
    seen: set[str] | None = None,
    cycle: bool = False,
) -> list[dict[str, str]]:
    """Up to ``k`` distinct questions: one of each type first, then counts and existence (``cycle``:
    every type in turn; used for the questions beyond the first five). ``seen``: questions to avoid."""
    out: list[dict[str, str]] = []
    seen = set(seen or ())
    makers = [_q_color, _q_shape, _q_count, _q_exist, _q_relation]
    for i in range(8 * max(k, 5)):
        if len(out) == k:
            break
        if cycle:
            make = makers[i % len(makers)]
        else:
            make = makers[i] if i < len(makers) else (_q_count, _q_exist)[i % 2]
        qa = make(rng, shapes, size)
        if qa is None or qa[0] in seen:
            continue
        qtype, atype = _QUESTION_TYPES[make]
        seen.add(qa[0])
        out.append({"question": qa[0], "answer": qa[1], "question_type": qtype, "answer_type": atype})
    return out


_RE_COLOR = re.compile(r"what color is the (\w+)\?")
_RE_SHAPE = re.compile(r"what shape is the (\w+) (?:object|shape|thing)\?")
_RE_COUNT_ALL = re.compile(r"how many (?:shapes|objects) are there\?")
_RE_COUNT_COLOR = re.compile(r"how many (\w+) shapes are there\?")
_RE_COUNT_KIND = re.compile(r"how many (\w+) are there\?")
_RE_EXIST_COLOR = re.compile(r"is there a (\w+) (?:shape|object)\?")
_RE_EXIST_PAIR = re.compile(r"is there a (\w+) (\w+)\?")
_RE_EXIST_KIND = re.compile(r"is there a (\w+)\?")
_RE_RELATION = re.compile(r"what is (" + "|".join(PHRASE_TO_DIRECTION) + r") the (\w+) (\w+)\?")


def answer_question(shapes: list[Shape], question: str, image_size: int) -> tuple[str, str]:
    """(answer, answer_type) of a generated question about a scene, recomputed from the scene.

    Raises ValueError for a question it does not know or whose answer is ambiguous."""

    def kind_of(word: str) -> str:
        if word not in WORD_TO_KIND:
            raise ValueError(f"unknown shape word {word!r}")
        return WORD_TO_KIND[word]

    def color_of(word: str) -> str:
        if word not in COLORS:
            raise ValueError(f"unknown colour {word!r}")
        return word

    def one(found: list[Shape], what: str) -> Shape:
        if len(found) != 1:
            raise ValueError(f"ambiguous: {len(found)} shapes match {what}")
        return found[0]

    if m := _RE_COLOR.fullmatch(question):
        return one(_unique(shapes, kind=kind_of(m[1])), m[1])["color"], "other"
    if m := _RE_SHAPE.fullmatch(question):
        return one(_unique(shapes, color=color_of(m[1])), m[1])["kind"], "other"
    if _RE_COUNT_ALL.fullmatch(question):
        return str(len(shapes)), "number"
    if m := _RE_COUNT_COLOR.fullmatch(question):
        return str(len(_unique(shapes, color=color_of(m[1])))), "number"
    if m := _RE_COUNT_KIND.fullmatch(question):
        return str(len(_unique(shapes, kind=kind_of(m[1])))), "number"
    if m := _RE_EXIST_COLOR.fullmatch(question):
        return ("yes" if _unique(shapes, color=color_of(m[1])) else "no"), "yes/no"
    if m := _RE_EXIST_PAIR.fullmatch(question):
        return ("yes" if _unique(shapes, color=color_of(m[1]), kind=kind_of(m[2])) else "no"), "yes/no"
    if m := _RE_EXIST_KIND.fullmatch(question):
        return ("yes" if _unique(shapes, kind=kind_of(m[1])) else "no"), "yes/no"
    if m := _RE_RELATION.fullmatch(question):
        ref = one(_unique(shapes, color=color_of(m[2]), kind=kind_of(m[3])), f"{m[2]} {m[3]}")
        hit = _relation_target(shapes, ref, PHRASE_TO_DIRECTION[m[1]], image_size)
        if hit is None:
            raise ValueError(f"no single shape is clearly {m[1]} the {m[2]} {m[3]}")
        return hit["kind"], "other"
    raise ValueError("not a question this generator asks")


# ------------------------------------------------------------------------------------ splits
def _assign_splits(labels: np.ndarray, rng: np.random.Generator, fractions: Sequence[float]) -> list[str]:
    """Stratified, deterministic: within each class (shuffled) the k-th of n_c samples sits at
    u = (k + offset_c) / n_c in [0, 1) and goes to the split whose cumulative fraction covers u.
    Offsets differ per tone, so tiny classes do not all round the same way, and are equal for
    "no_red/t" and "red/t", so every split keeps has_red balanced and independent of the tone."""
    bounds = np.cumsum(fractions)
    out = [""] * len(labels)
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        offset = (c % len(TONES) + 0.5) / len(TONES)
        for k, i in enumerate(idx):
            u = (k + offset) / len(idx)
            out[i] = SPLITS[min(int(np.searchsorted(bounds, u, side="right")), len(SPLITS) - 1)]
    return out


# ---------------------------------------------------------------------------------- generate
def _complete(root: Path, params: dict[str, Any]) -> Dataset | None:
    """The dataset at ``root`` if it is a complete shapes dataset generated with ``params``."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("name") != NAME or (meta.get("info") or {}).get("params") != params:
        return None
    needed = ["scenes.jsonl", "captions.json"] + [
        f"{d}/{p}_{s}.json"
        for s in SPLITS
        for d, p in (("annotations", "captions"), ("vqa", "questions"), ("vqa", "annotations"))
    ]
    if not all((root / f).is_file() for f in needed):
        return None
    try:
        return load_dataset(root)
    except DatasetError:
        return None


def _check_replaceable(root: Path) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder; expected a shapes dataset folder (or nothing)")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _ENTRIES and not p.name.startswith("."))
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            name = json.loads(meta_path.read_text(encoding="utf-8")).get("name")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            name = None
        if name != NAME:
            foreign.append(f"dataset.json (dataset {name!r})")
    if foreign:
        raise DatasetError(
            f"{root}: refusing to replace a folder holding files the shapes generator did not write "
            f"({', '.join(foreign[:5])}); pass another root or remove it"
        )


def generate(
    root: str | os.PathLike,
    n: int = 1200,
    seed: int = 0,
    image_size: int = 128,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
    progress: bool = True,
    questions_per_scene: int = 5,
) -> Dataset:
    """Write the synthetic shapes dataset to ``root`` (see the module docstring) and load it.

    A folder already holding a complete dataset generated with the same parameters is returned
    as is (``overwrite=True`` regenerates it). Anything else at ``root`` that the generator wrote
    (an older or incomplete dataset) is replaced; a folder with foreign files raises DatasetError."""
    root = Path(root)
    if not isinstance(n, int) or n < 1:
        raise DatasetError(f"shapes: n = {n!r}; expected a positive integer")
    if not isinstance(image_size, int) or image_size < 32:
        raise DatasetError(f"shapes: image_size = {image_size!r}; expected an integer >= 32")
    if len(splits) != 3 or any(p < 0 for p in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise DatasetError(f"shapes: splits = {tuple(splits)!r}; expected 3 non-negative fractions summing to 1")
    if not isinstance(questions_per_scene, int) or not 1 <= questions_per_scene <= 10:
        raise DatasetError(
            f"shapes: questions_per_scene = {questions_per_scene!r}; expected an integer from 1 to 10 "
            "(question ids are image_id * 10 + j)"
        )
    params = _params(n, seed, image_size, splits, questions_per_scene)
    if not overwrite and (ds := _complete(root, params)) is not None:
        return ds
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_all(tmp, params, progress)
        _replace_dir(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_dataset(root)


def _replace_dir(tmp: Path, root: Path) -> None:
    if root.exists():
        try:
            os.rmdir(root)  # empty folder: simply take its place
        except OSError:
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.rename(tmp, root)


def _write_all(out: Path, params: dict[str, Any], progress: bool) -> None:
    n, seed, size = params["n"], params["seed"], params["image_size"]
    (out / "images").mkdir(parents=True)
    (out / "audio").mkdir()
    (out / "annotations").mkdir()
    (out / "vqa").mkdir()
    top = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
    labels = top.permutation(np.arange(n) % len(LABELS))
    split_of = _assign_splits(labels, top, params["splits"])
    samples, scenes = [], []
    for i in progress_bar(range(n), enabled=progress, desc="shapes dataset", unit="sample"):
        sid = f"{NAME}_{i:05d}"
        label = int(labels[i])
        has_red, tone = label // 3, label % 3
        r_scene, r_img, r_aud, r_txt = (_rng(seed, i, s) for s in range(4))
        shapes = _layout(r_scene, bool(has_red), size)
        pixels, bg = _render(r_img, shapes, size)
        Image.fromarray(pixels, "RGB").save(out / "images" / f"{sid}.png", format="PNG", compress_level=1)
        wave, audio_meta = _audio(r_aud, TONES[tone])
        sf.write(out / "audio" / f"{sid}.wav", wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        caps = _captions(r_txt, shapes, size)
        qas = _questions(r_txt, shapes, size)[: params.get("questions_per_scene", 5)]
        if params.get("questions_per_scene", 5) > 5:  # the extra ones from their own stream: the rest is unchanged
            seen = {q["question"] for q in qas}
            k = params["questions_per_scene"] - len(qas)
            qas += _questions(_rng(seed, i, 4), shapes, size, k=k, seen=seen, cycle=True)
        for q in qas:  # generation and the independent parser must agree
            got = answer_question(shapes, q["question"], size)
            if got != (q["answer"], q["answer_type"]):  # pragma: no cover - a generator bug
                raise AssertionError(f"{sid}: {q} but the scene answers {got}")
        text = caps[int(r_txt.integers(len(caps)))]
        split = split_of[i]
        samples.append(
            Sample(
                id=sid,
                split=split,
                modalities={"image": f"images/{sid}.png", "text": text, "audio": f"audio/{sid}.wav"},
                targets={"label": label, "has_red": has_red, "tone": tone},
            )
        )
        scenes.append(
            {
                "id": sid,
                "imgid": i,
                "split": split,
                "label": label,
                "has_red": has_red,
                "tone": TONES[tone],
                "audio": audio_meta,
                "background": bg,
                "shapes": shapes,
                "captions": caps,
                "questions": qas,
            }
        )
    _write_scenes(out, scenes)
    _write_captions(out, scenes)
    _write_vqa(out, scenes)
    info = {
        "description": "fusionkit synthetic shapes: coloured-shape scenes, captions, VQA, and an audio tone "
        "(label = 3 * has_red + tone; see fusionkit/data/shapes.py)",
        "params": params,
        "ceilings": CEILINGS,
        "ceilings_by_subset": CEILINGS_BY_SUBSET,
        # which modalities carry each target's information, by construction (the interpretability
        # check compares learned modality weights with this)
        "informative_modalities": INFORMATIVE_MODALITIES,
        "tone_bands_hz": {k: list(v) for k, v in TONE_BANDS.items()},
        "colors": list(COLORS),
        "kinds": list(KINDS),
        "files": {
            "scenes": "scenes.jsonl",
            "captions": "captions.json",
            "coco_captions": "annotations/captions_{split}.json",
            "vqa_questions": "vqa/questions_{split}.json",
            "vqa_annotations": "vqa/annotations_{split}.json",
        },
    }
    write_dataset(out, NAME, MODALITIES, TARGETS, samples, info)  # dataset.json last


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _write_scenes(out: Path, scenes: list[dict[str, Any]]) -> None:
    keep = ("id", "imgid", "split", "label", "has_red", "tone", "audio", "background", "shapes")
    atomic_write_text(out / "scenes.jsonl", "".join(_dump({k: s[k] for k in keep}) for s in scenes))


def _write_captions(out: Path, scenes: list[dict[str, Any]]) -> None:
    images = []
    coco: dict[str, dict[str, list]] = {sp: {"images": [], "annotations": []} for sp in SPLITS}
    for s in scenes:
        i, fn = s["imgid"], f"images/{s['id']}.png"
        sents = [
            {"raw": c, "tokens": tokenize(c), "sentid": i * 5 + j, "imgid": i} for j, c in enumerate(s["captions"])
        ]
        images.append(
            {
                "filename": fn,
                "imgid": i,
                "cocoid": i,
                "split": s["split"],
                "sentids": [x["sentid"] for x in sents],
                "sentences": sents,
            }
        )
        coco[s["split"]]["images"].append({"id": i, "file_name": fn})
        coco[s["split"]]["annotations"] += [{"id": x["sentid"], "image_id": i, "caption": x["raw"]} for x in sents]
    atomic_write_text(out / "captions.json", _dump({"dataset": NAME, "images": images}))
    for sp, d in coco.items():
        info = {"description": f"fusionkit synthetic shapes captions ({sp})", "version": f"{GENERATOR_VERSION}"}
        atomic_write_text(
            out / "annotations" / f"captions_{sp}.json",
            _dump(
                {
                    "info": info,
                    "images": d["images"],
                    "annotations": d["annotations"],
                    "type": "captions",
                    "licenses": [],
                }
            ),
        )


def _write_vqa(out: Path, scenes: list[dict[str, Any]]) -> None:
    qs: dict[str, list] = {sp: [] for sp in SPLITS}
    anns: dict[str, list] = {sp: [] for sp in SPLITS}
    for s in scenes:
        for j, q in enumerate(s["questions"]):
            qid = s["imgid"] * 10 + j
            qs[s["split"]].append({"image_id": s["imgid"], "question": q["question"], "question_id": qid})
            answers = [{"answer": q["answer"], "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
            anns[s["split"]].append(
                {
                    "question_id": qid,
                    "image_id": s["imgid"],
                    "question_type": q["question_type"],
                    "answer_type": q["answer_type"],
                    "multiple_choice_answer": q["answer"],
                    "answers": answers,
                }
            )
    for sp in SPLITS:
        info = {"description": f"fusionkit synthetic shapes VQA ({sp})", "version": f"{GENERATOR_VERSION}"}
        atomic_write_text(
            out / "vqa" / f"questions_{sp}.json",
            _dump(
                {
                    "info": info,
                    "task_type": "Open-Ended",
                    "data_type": NAME,
                    "data_subtype": sp,
                    "license": {},
                    "questions": qs[sp],
                }
            ),
        )
        atomic_write_text(
            out / "vqa" / f"annotations_{sp}.json",
            _dump({"info": info, "data_type": NAME, "data_subtype": sp, "license": {}, "annotations": anns[sp]}),
        )


# ---------------------------------------------------------------------------------- validate
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected a file written by fusionkit.data.shapes.generate")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({e})") from e


def _field(obj: Any, key: str, where: str, typ: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{where}: missing key {key!r}")
    v = obj[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise DatasetError(f"{where}: {key!r} = {v!r}; expected {typ}")
    return v


def _check_caption(raw: str, scene: dict[str, Any], where: str) -> None:
    colors, kinds = caption_words(raw)
    scene_colors = {s["color"] for s in scene["shapes"]}
    scene_kinds = {s["kind"] for s in scene["shapes"]}
    if bad := colors - scene_colors:
        raise DatasetError(
            f"{where}: caption {raw!r} names colour(s) {sorted(bad)} absent from the scene ({sorted(scene_colors)})"
        )
    if bad := kinds - scene_kinds:
        raise DatasetError(
            f"{where}: caption {raw!r} names shape(s) {sorted(bad)} absent from the scene ({sorted(scene_kinds)})"
        )
    if scene["has_red"] and "red" not in colors:
        raise DatasetError(f"{where}: caption {raw!r} omits the scene's red shape; every caption must name it")
    if not colors:
        raise DatasetError(f"{where}: caption {raw!r} names no colour; expected the colour of every shape it names")


def validate(root: str | os.PathLike) -> dict[str, Any]:
    """Re-read everything :func:`generate` wrote and check it is consistent.

    Checks the manifest (via load_dataset), every PNG (opens, RGB, right size), every WAV (rate,
    length, mono), scenes.jsonl against the targets (has_red from the shapes, label = 3 * has_red
    + tone), captions.json and the COCO references (ids, splits, tokens, colour and shape words a
    subset of the scene's, every red shape named), the VQA files (ids, splits, 10 identical
    answers, each answer recomputed from the scene). Raises DatasetError naming the file and the
    record; returns a summary dict."""
    root = Path(root)
    ds = load_dataset(root)
    meta_path = root / "dataset.json"
    params = ds.info.get("params") if isinstance(ds.info, dict) else None
    if ds.name != NAME or not isinstance(params, dict):
        raise DatasetError(f"{meta_path}: name {ds.name!r} / info.params {params!r}; expected a shapes dataset")
    if ds.targets != TARGETS or ds.modalities != MODALITIES:
        raise DatasetError(
            f"{meta_path}: targets/modalities {ds.targets} {ds.modalities}; expected {TARGETS} {MODALITIES}"
        )
    size = params.get("image_size")
    if len(ds) != params.get("n"):
        raise DatasetError(
            f"{root / 'manifest.jsonl'}: {len(ds)} samples; dataset.json info.params says n = {params.get('n')}"
        )
    by_id = {s.id: s for s in ds.samples}

    # scenes.jsonl vs manifest
    scenes_path = root / "scenes.jsonl"
    if not scenes_path.is_file():
        raise DatasetError(f"{scenes_path}: missing; expected one scene per manifest sample")
    scenes: dict[str, dict[str, Any]] = {}
    scene_by_imgid: dict[int, dict[str, Any]] = {}
    for lineno, line in enumerate(scenes_path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{scenes_path}:{lineno}"
        try:
            sc = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e})") from e
        sid = _field(sc, "id", where, str)
        where = f"{where} (id {sid!r})"
        if sid not in by_id or sid in scenes:
            raise DatasetError(f"{where}: id not in manifest.jsonl, or repeated")
        smp = by_id[sid]
        shapes = _field(sc, "shapes", where, list)
        if not 1 <= len(shapes) <= MAX_SHAPES:
            raise DatasetError(f"{where}: {len(shapes)} shapes; expected 1-{MAX_SHAPES}")
        for s in shapes:
            if s.get("color") not in COLORS or s.get("kind") not in KINDS:
                raise DatasetError(f"{where}: shape {s}; expected a colour in {list(COLORS)} and a kind in {KINDS}")
        has_red = int(any(s["color"] == "red" for s in shapes))
        tone = TONES.index(sc.get("tone")) if sc.get("tone") in TONES else None
        expect = {"has_red": has_red, "tone": tone, "label": None if tone is None else 3 * has_red + tone}
        if sc.get("has_red") != has_red or smp.targets != expect or sc.get("label") != expect["label"]:
            raise DatasetError(
                f"{where}: targets in manifest.jsonl {smp.targets} / scene has_red {sc.get('has_red')} "
                f"disagree with the scene's shapes (expected {expect})"
            )
        if sc.get("split") != smp.split:
            raise DatasetError(f"{where}: split {sc.get('split')!r}; manifest.jsonl says {smp.split!r}")
        scenes[sid] = sc
        scene_by_imgid[_field(sc, "imgid", where, int)] = sc
    if missing := set(by_id) - set(scenes):
        raise DatasetError(f"{scenes_path}: no scene for manifest id(s) {sorted(missing)[:5]}")

    # media files
    for smp in ds.samples:
        img_path = ds.path(smp, "image")
        with open_image(img_path, smp.id) as im:
            im.load()
            mode, im_size = im.mode, im.size
        if mode != "RGB" or im_size != (size, size):
            raise DatasetError(f"{img_path} (id {smp.id!r}): {mode} {im_size}; expected RGB ({size}, {size})")
        wav_path = ds.path(smp, "audio")
        try:
            wi = sf.info(str(wav_path))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DatasetError(f"{wav_path} (id {smp.id!r}): not a readable WAV ({e})") from e
        if (wi.samplerate, wi.channels, wi.frames) != (SAMPLE_RATE, 1, int(SAMPLE_RATE * DURATION_S)):
            raise DatasetError(
                f"{wav_path} (id {smp.id!r}): {wi.samplerate} Hz, {wi.channels} ch, {wi.frames} frames; "
                f"expected {SAMPLE_RATE} Hz mono, {int(SAMPLE_RATE * DURATION_S)} frames"
            )

    # captions.json
    cap_path = root / "captions.json"
    caps = _read_json(cap_path)
    if not isinstance(caps, dict) or caps.get("dataset") != NAME or not isinstance(caps.get("images"), list):
        raise DatasetError(f"{cap_path}: expected {{'dataset': 'shapes', 'images': [...]}}")
    captions_of: dict[int, list[str]] = {}
    sentids: set[int] = set()
    for k, img in enumerate(caps["images"]):
        where = f"{cap_path}: images[{k}]"
        fn = _field(img, "filename", where, str)
        where = f"{where} ({fn})"
        imgid = _field(img, "imgid", where, int)
        sc = scene_by_imgid.get(imgid)
        if (
            sc is None
            or fn != f"images/{sc['id']}.png"
            or img.get("split") != sc["split"]
            or img.get("cocoid") != imgid
        ):
            raise DatasetError(
                f"{where}: imgid {imgid} / split {img.get('split')!r} / cocoid {img.get('cocoid')!r} "
                "do not match scenes.jsonl and manifest.jsonl"
            )
        sents = _field(img, "sentences", where, list)
        if len(sents) != 5 or img.get("sentids") != [s.get("sentid") for s in sents]:
            raise DatasetError(f"{where}: expected 5 sentences whose sentids match 'sentids'")
        raws = []
        for j, sent in enumerate(sents):
            w = f"{where} sentence {j} (sentid {sent.get('sentid')})"
            raw = _field(sent, "raw", w, str)
            if sent.get("tokens") != tokenize(raw) or sent.get("imgid") != imgid or sent.get("sentid") in sentids:
                raise DatasetError(f"{w}: tokens/imgid/sentid inconsistent with raw {raw!r} and imgid {imgid}")
            sentids.add(sent["sentid"])
            _check_caption(raw, sc, w)
            raws.append(raw)
        captions_of[imgid] = raws
        smp = by_id[sc["id"]]
        if smp.modalities["text"] not in raws:
            raise DatasetError(
                f"{root / 'manifest.jsonl'} (id {smp.id!r}): text {smp.modalities['text']!r} is not one of "
                f"its captions in {cap_path}"
            )
    if set(captions_of) != set(scene_by_imgid):
        raise DatasetError(
            f"{cap_path}: images {len(captions_of)}; expected one entry per scene ({len(scene_by_imgid)})"
        )

    # COCO references and VQA, per split
    q_count = 0
    answer_types: Counter[str] = Counter()
    question_types: Counter[str] = Counter()
    per_split_q: dict[str, int] = {}
    for sp in SPLITS:
        ids = {i for i, sc in scene_by_imgid.items() if sc["split"] == sp}
        coco_path = root / "annotations" / f"captions_{sp}.json"
        coco = _read_json(coco_path)
        if not isinstance(coco, dict) or coco.get("type") != "captions":
            raise DatasetError(f"{coco_path}: expected a COCO captions object with type 'captions'")
        coco_ids = {
            _field(im, "id", f"{coco_path}: images[{k}]", int)
            for k, im in enumerate(_field(coco, "images", str(coco_path), list))
        }
        if coco_ids != ids:
            raise DatasetError(
                f"{coco_path}: image ids differ from the {sp!r} split of manifest.jsonl "
                f"(extra {sorted(coco_ids - ids)[:5]}, missing {sorted(ids - coco_ids)[:5]})"
            )
        got: dict[int, list[str]] = {}
        for k, a in enumerate(_field(coco, "annotations", str(coco_path), list)):
            w = f"{coco_path}: annotations[{k}] (id {a.get('id') if isinstance(a, dict) else None})"
            got.setdefault(_field(a, "image_id", w, int), []).append(_field(a, "caption", w, str))
        for i in ids:
            if got.get(i) != captions_of[i]:
                raise DatasetError(f"{coco_path}: image_id {i}: captions {got.get(i)} differ from {cap_path}")
        q_path = root / "vqa" / f"questions_{sp}.json"
        a_path = root / "vqa" / f"annotations_{sp}.json"
        qdoc, adoc = _read_json(q_path), _read_json(a_path)
        if not isinstance(qdoc, dict) or qdoc.get("task_type") != "Open-Ended" or qdoc.get("data_subtype") != sp:
            raise DatasetError(
                f"{q_path}: expected a VQA v2 questions object (task_type Open-Ended, data_subtype {sp!r})"
            )
        questions: dict[int, dict[str, Any]] = {}
        for k, q in enumerate(_field(qdoc, "questions", str(q_path), list)):
            w = f"{q_path}: questions[{k}]"
            qid = _field(q, "question_id", w, int)
            if qid in questions or _field(q, "image_id", w, int) not in ids:
                raise DatasetError(
                    f"{w} (question_id {qid}): repeated id, or image_id {q.get('image_id')} not in split {sp!r}"
                )
            _field(q, "question", w, str)
            questions[qid] = q
        seen_a: set[int] = set()
        for k, a in enumerate(_field(adoc, "annotations", str(a_path), list)):
            w = f"{a_path}: annotations[{k}]"
            qid = _field(a, "question_id", w, int)
            w = f"{w} (question_id {qid})"
            q = questions.get(qid)
            if q is None or qid in seen_a or a.get("image_id") != q["image_id"]:
                raise DatasetError(f"{w}: no matching question in {q_path} (or repeated / different image_id)")
            seen_a.add(qid)
            mc = _field(a, "multiple_choice_answer", w, str)
            answers = _field(a, "answers", w, list)
            if (
                len(answers) != 10
                or [x.get("answer") for x in answers] != [mc] * 10
                or [x.get("answer_id") for x in answers] != list(range(1, 11))
            ):
                raise DatasetError(f"{w}: expected 10 answers (answer_id 1..10) all equal to {mc!r}")
            sc = scene_by_imgid[q["image_id"]]
            try:
                expect, atype = answer_question(sc["shapes"], q["question"], size)
            except ValueError as e:
                raise DatasetError(
                    f"{w}: question {q['question']!r} about {sc['id']} has no unambiguous answer ({e})"
                ) from e
            if (mc, a.get("answer_type")) != (expect, atype):
                raise DatasetError(
                    f"{w}: question {q['question']!r} about {sc['id']}: answer {mc!r} ({a.get('answer_type')}); "
                    f"the scene gives {expect!r} ({atype})"
                )
            answer_types[atype] += 1
            question_types[_field(a, "question_type", w, str)] += 1
            if atype == "yes/no":
                answer_types[f"yes/no:{mc}"] += 1
        if seen_a != set(questions):
            raise DatasetError(
                f"{a_path}: no annotation for question ids {sorted(set(questions) - seen_a)[:5]} of {q_path}"
            )
        per_split_q[sp] = len(questions)
        q_count += len(questions)

    summary = ds.summary()
    summary.update(
        {
            "root": str(root),
            "n_images": len(ds),
            "n_audio": len(ds),
            "n_captions": sum(len(v) for v in captions_of.values()),
            "n_questions": q_count,
            "questions_per_split": per_split_q,
            "answer_types": dict(answer_types),
            "question_types": dict(question_types),
            "ceilings": ds.info.get("ceilings"),
        }
    )
    return summary
