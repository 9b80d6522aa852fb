"""The shapes dataset's text (:mod:`fusionkit.data.shapes`): five captions per scene (lists,
counted groups, relations, partial descriptions that always name every red shape) and the VQA
questions with their answers; :func:`answer_question` recomputes any question's answer from a
scene."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from fusionkit.data.shapes_scene import (
    COLORS,
    DIRECTIONS,
    KINDS,
    NUMBERS,
    PHRASE_TO_DIRECTION,
    PLURALS,
    REL_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
    WORD_TO_KIND,
    Shape,
    _pick,
    _relation_target,
    _unique,
    relation,
)


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
