"""The embedded default dataset: deterministic synthetic *shapes* scenes with a sound.

Every sample is a scene of 1-4 coloured shapes (an RGB PNG) on a faintly striped, tinted
background, five captions describing it, about five VQA questions about it, and a one-second WAV
(a tone, a hum, a whistle, a band of hiss). The files use the same on-disk formats as the real
datasets, so the default run walks the loaders real data walks::

    root/
      dataset.json, manifest.jsonl      fusionkit dataset (fusionkit.data.base); dataset.json is
                                        written last: a folder with one is complete
      images/{id}.png                   RGB scenes, ``image_size`` px
      audio/{id}.wav                    1.0 s, mono, 16 kHz, 16-bit PCM
      scenes.jsonl                      ground truth per sample: shapes (kind, color, size, x, y,
                                        bbox), has_red, tone, hiss, signal, marker, corrupted,
                                        faded, what each modality shows, f0 ... (for tests and
                                        task checks; the only place that says which samples are
                                        corrupted)
      captions.json                     Karpathy-style captions (5 per image)
      annotations/captions_{split}.json COCO-style caption references (pycocoevalcap reads them)
      vqa/questions_{split}.json        VQA v2 questions (Open-Ended)
      vqa/annotations_{split}.json      VQA v2 annotations (10 identical answers each)

Attributes
    ``has_red``: whether the scene holds at least one red shape; drawn first, then the scene is
    built around it (with ``has_red = 0`` no shape is red). Visible in the image and in *every*
    caption. ``tone`` (low / mid / high): the pitch band of the sound's fundamental (200-300,
    500-700, 1100-1500 Hz); audio only: the image never shows it, captions and questions never
    mention it. ``hiss`` (low / high): a band of noise at 4.8-5.4 or 5.6-6.2 kHz; audio only.
    ``marker`` (a / b) and ``signal`` (off / on): the signal is written in the session's code,
    ``code = signal XOR marker`` (on = 1, b = 1), and each modality shows the code and the marker
    on cues of its own: the image the code as the stripes (horizontal / vertical) and the marker
    as the background tint (cool / warm), the audio the code as a hum (80-100 / 130-160 Hz) and
    the marker as a whistle (6.7-6.9 / 7.4-7.6 kHz). Read alone, a modality gives the signal as
    code XOR marker. None of these is named in a caption or asked about.
    ``corrupted`` (none / image / audio; 3/5, 1/5, 1/5), unflagged - only ``scenes.jsonl`` says
    which samples: a corrupted image shows the other session's marker (the tint flipped, its
    code intact), a corrupted audio the other code (the hum flipped, its marker intact). Read
    alone, either then gives the wrong signal - misleading - and nothing in it says so; what
    gives it away is the other modality: an image's marker disagreeing with the audio's, or, with
    the markers agreeing, an audio reading that disagrees with the image's.
    ``faded`` (none / image / audio; 3/5, 1/5, 1/5, independent of everything else): a faded
    image has a plain background (no stripes, no tint), a faded audio no hiss; visibly missing.
    All of them are the digits of one balanced design (:func:`~fusionkit.data.shapes_scene.design`),
    shuffled by the seeded permutation that always shuffled the labels: for ``n`` a multiple of
    1200 every combination occurs in exact proportion (balanced, mutually independent); has_red
    and tone stay exactly balanced whenever 6 divides ``n``, as before. The splits deal each label
    class by design block, so each split keeps the new targets balanced too (for 1200 scenes: the
    corruption, hiss and synergy exactly in every split, the signal within 4 samples of half,
    mixed within 2 of a quarter, the fades within 14 of a fifth; a random split of 180 would be off
    by about 7 on a binary target).

Targets (``dataset.json`` ``targets``; what carries them: ``info["informative_modalities"]``)
    ``label = 3 * has_red + tone`` (6 classes, "no_red/low" ... "red/high"), ``has_red``, ``tone``,
    and one target per kind of interaction (``info["interaction_targets"]``):
    ``redundant`` = has_red: the same bit in the image and in the caption.
    ``unique`` = hiss: in the audio only.
    ``synergy`` = has_red XOR (hiss is high): in no modality alone, only in image (or caption) and
    audio together.
    ``unreliable`` = signal: in the image and in the audio, each wrong on an unflagged fifth.
    ``mixed`` = 2 * synergy + unreliable (4 classes "no/off" ... "yes/on"): synergy, redundancy
    (has_red in image and caption, the signal in image and audio), uniqueness (hiss) and the
    unreliable modalities at once.

Accuracy ceilings (:data:`~fusionkit.data.shapes_scene.TARGET_CEILINGS`, ``info["target_ceilings"]``;
``label``'s also as ``info["ceilings"]`` / ``["ceilings_by_subset"]``)
    What the best possible classifier scores given each modality, each pair and all three
    (``fused``), and what additive late fusion can reach (``late``: the minimiser of the
    population cross-entropy over sums of one logit vector per modality - what training a sum of
    per-modality logits converges to). They follow from the design, since each modality's file is
    a function of these attributes and of random streams independent of them (the scene's layout
    depends on has_red only, a caption on the layout only, the manifest's caption is picked at
    random among the five); with R = 1/5 (corrupted) and F = 1/5 (faded):

    ============  ======  =====  ====  =====  ==========  ===========  ==========  ====  =====
    target        chance  image  text  audio  image+text  audio+image  audio+text  late  fused
    ============  ======  =====  ====  =====  ==========  ===========  ==========  ====  =====
    label         1/6     1/3    1/3   1/2    1/3         1            1           1     1
    has_red       1/2     1      1     1/2    1           1            1           1     1
    tone          1/3     1/3    1/3   1      1/3         1            1           1     1
    redundant     1/2     1      1     1/2    1           1            1           1     1
    unique        1/2     1/2    1/2   0.90   1/2         0.90         0.90        0.90  0.90
    synergy       1/2     1/2    1/2   1/2    1/2         0.90         0.90        1/2   0.90
    unreliable    1/2     0.74   1/2   0.80   0.74        0.96         0.80        0.80  0.96
    mixed         1/4     0.37   1/4   0.40   0.37        0.86         0.72        0.40  0.86
    ============  ======  =====  ====  =====  ==========  ===========  ==========  ====  =====

    ``label``: the image and every caption decide has_red (captions never name a colour or shape
    that is absent and every caption, the partial ones too, names every red shape) but hold
    nothing about the tone, so the tone is a guess: 1/3; the audio decides the tone, has_red is a
    guess: 1/2; any pair with the audio: 1. It is additive - the posterior factors into
    p(has_red | image or text) p(tone | audio) - so late fusion reaches 1 too; so do has_red
    (image, text) and tone (audio), and ``redundant`` (= has_red): either of image and caption
    alone reaches its ceiling, the audio knows nothing of it.
    ``unique`` (hiss): only the audio carries it, and only when it is not faded: 1 - F/2 = 0.90
    (a faded hiss is a guess), from the audio alone, any pair with it and late fusion alike.
    ``synergy``: has_red and hiss are independent and balanced, so no single modality (nor image
    and caption together) says anything about their XOR: 1/2. Together, has_red (image or
    caption) with the hiss gives it, except for a faded hiss: 1 - F/2 = 0.90. Late fusion: 1/2.
    A sum of per-modality logits f(image) + g(audio) [+ h(text)] cannot represent an XOR of a
    bit of one modality with a bit of another (concat.py's docstring: at most 3 of the 4 cells, a
    decision rule no cross-entropy training picks): the population cross-entropy is convex in
    (f, g), and unchanged under f -> -f, g(hiss) -> -g(1 - hiss) and under f(has_red) ->
    -f(1 - has_red), g -> -g (each maps the data's distribution onto itself); averaging any
    minimiser over these maps gives one that is no worse and is constant - the logits carry
    nothing, every prediction is at chance.
    ``unreliable``: a modality read alone (code XOR marker) is wrong exactly when it is
    corrupted: the audio 1 - R = 0.80; the image the same when not faded, a guess when faded:
    (1 - F)(1 - R) + F/2 = 0.74; the caption knows nothing of it (1/2) and adds nothing to either.
    Image and audio together: when the image's marker (tint) disagrees with the audio's
    (whistle), the image is the corrupted one and the audio's reading is right; when they agree
    the image's reading is right (only the audio can then be corrupted). Equivalently, the
    image's code (stripes) read with the audio's marker (whistle) is right on every sample - the
    two cues no corruption touches. Wrong only when the image is faded (no code, no marker) and
    the audio corrupted: 1 - F R = 0.96. Late fusion: each modality's own evidence is its
    reading, right 4/5 of the time whichever it is (a corruption is independent of what a
    modality shows), so a sum of per-modality logits can only side with one of two disagreeing
    readings, the same one whatever the markers: 0.80 (the audio's, which no fade hides).
    Why the markers: a corruption a modality shows by itself (noise, a visible artefact) would
    not defeat late fusion - its own logits can fall silent on a visibly corrupted input, and the
    sum is then exactly the Bayes rule, as long as the modalities are independent given the
    target. A sum of per-modality logits loses only where a modality's reliability shows in
    another modality; here, in the disagreement of the markers.
    ``mixed``: its two bits rest on disjoint evidence (the XOR on has_red and the hiss, the signal
    on stripes, tint, hum and whistle), linked only by the fade, which hides the image's cues or
    the hiss, never both: image alone 0.74/2 = 0.37, audio alone 0.80/2 = 0.40 (neither knows the
    XOR), caption 1/4; audio + caption 0.90 x 0.80 = 0.72; image + audio
    and all three: 1 - F/2 - F R = 0.86 (hiss faded: the XOR is a guess; image faded: the signal
    is wrong if the audio is corrupted). Late fusion: its XOR half at chance, its signal half at
    0.80: 0.40.
    Every fused ceiling of synergy, unreliable and mixed is at least 15 points above every single
    modality's. They hold exactly for a dataset of a multiple of 1200 scenes, and for each of its
    splits up to the few samples of imbalance above; ``tests/data/test_shapes_targets.py``
    recomputes every one from the design's cells.

Regression target ``score`` and tabular modality ``record`` (``generate(..., tabular=True)``)
    ``score = has_red + 0.5 tone + 0.5 z + 0.25 (site - 1) + e`` (``tone`` 0, 1, 2; ``e`` normal
    with sd 0.2), a regression target (``targets["score"] == []``) in every shapes dataset. The
    record (a tabular modality; with ``tabular=False`` it is not written and its parts are noise
    to every model) holds ``dose`` = 10 + 2 z mg (z standard normal), ``site`` (north / south /
    east: site 0, 1, 2) and ``age`` (20-80, missing for a tenth of the samples), a distractor.
    All of them draw from the scene's own stream 7, so the other files are unchanged.
    R^2 ceilings (:func:`~fusionkit.data.shapes_scene.score_ceilings`, ``info["r2_ceilings"]``):
    the parts are independent, so E[score | modalities] is the sum of the parts those modalities
    show and its R^2 the share of the variance they hold. The variances: has_red 1/4 (image and
    caption), 0.5 tone 1/6 (audio), 0.5 z 1/4 and 0.25 (site - 1) 1/24 (the record), e 1/25; in
    all V = 0.7483. So R^2 = 0.334 for the image or the caption alone, 0.223 for the audio, 0.390
    for the record; 0.557 for image (or caption) + audio, 0.612 audio + record, 0.724 image +
    record; 0.557 for image + caption + audio, 0.947 with the record too. The score is a sum of
    one part per modality, so late fusion reaches the fused ceiling (0.557 without the record,
    0.947 with it). The population numbers: a split of 180 samples has its own variance of z,
    a few points off. ``tests/data/test_shapes_regression.py`` recomputes them from the record.

Difficulty: the cues are faint (stripes of 3-5 levels, a 12-18 level tint, a whistle and a hum
20-40 dB below the tone, hiss about as loud as the background noise), the fades and the corruption
are the noise;
the ceilings above are what an ideal observer reaches, what the frozen encoders and a classifier
trained on 840 samples reach is lower and differs by fusion family (``docs/datasets.md``).

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
so the same parameters give byte-identical files. Generator version 3 (the interaction targets)
keeps version 2's labels, layouts, captions and questions for every seed: the background cues
and the sound's cues draw from streams of their own. Re-running :func:`generate` with the same
parameters on a complete folder returns it untouched; otherwise (another version included) the
dataset is written into a temporary sibling folder and renamed over ``root``, so ``root`` never
holds a half-written dataset that looks complete.

Modules: the vocabulary, the attribute design, the targets and their ceilings, the scene layout,
drawing and sound synthesis, and reading the cues back from the files are
:mod:`fusionkit.data.shapes_scene`; captions, questions and answers :mod:`fusionkit.data.shapes_text`;
:func:`validate` is :mod:`fusionkit.data.shapes_validate`; this module generates and writes the
dataset, the Karpathy / COCO captions and the VQA v2 files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from fusionkit.data.base import (
    SPLITS,
    Dataset,
    DatasetError,
    Sample,
    atomic_write_text,
    dataset_lock,
    load_dataset,
    write_dataset,
)
from fusionkit.data.shapes_scene import (
    CEILINGS,
    CEILINGS_BY_SUBSET,
    COLOR_WORDS,
    COLORS,
    CORRUPTED,
    CORRUPTIONS,
    DESIGN_PERIOD,
    DURATION_S,
    FADED,
    FADES,
    HISS,
    HISS_BANDS,
    HUM_BANDS,
    INFORMATIVE_MODALITIES,
    INTERACTION_TARGETS,
    KINDS,
    LABELS,
    MARKERS,
    NAME,
    NUMBERS,
    SAMPLE_RATE,
    SCORE,
    SIGNALS,
    STRIPES,
    TABULAR,
    TABULAR_COLUMNS,
    TARGET_CEILINGS,
    TARGETS,
    TINTS,
    TONE_BANDS,
    TONES,
    WHISTLE_BANDS,
    WORD_TO_KIND,
    _audio,
    _layout,
    _render,
    _rng,
    caption_words,
    design,
    layout,
    measure_audio_cues,
    measure_image_cues,
    relation,
    score_and_record,
    score_ceilings,
    score_oracle_r2,
    shown,
    target_ceilings,
    targets_of,
    tokenize,
)
from fusionkit.data.shapes_text import _captions, _questions, answer_question
from fusionkit.data.shapes_validate import validate
from fusionkit.progress import progress as progress_bar

__all__ = [
    "CEILINGS",
    "CEILINGS_BY_SUBSET",
    "COLORS",
    "COLOR_WORDS",
    "CORRUPTED",
    "CORRUPTIONS",
    "HISS",
    "INFORMATIVE_MODALITIES",
    "INTERACTION_TARGETS",
    "KINDS",
    "LABELS",
    "MARKERS",
    "NUMBERS",
    "SCORE",
    "SIGNALS",
    "TABULAR",
    "TABULAR_COLUMNS",
    "TARGETS",
    "TARGET_CEILINGS",
    "TONES",
    "TONE_BANDS",
    "WORD_TO_KIND",
    "answer_question",
    "caption_words",
    "design",
    "generate",
    "measure_audio_cues",
    "measure_image_cues",
    "relation",
    "score_ceilings",
    "score_oracle_r2",
    "shown",
    "target_ceilings",
    "targets_of",
    "tokenize",
    "validate",
]

GENERATOR_VERSION = 4  # 4: the regression target score and the tabular record (3: the interaction targets)

# files besides the manifest that a complete dataset holds (relative to the root)
_ENTRIES = {"dataset.json", "manifest.jsonl", "scenes.jsonl", "captions.json", "images", "audio", "annotations", "vqa"}


def _params(
    n: int,
    seed: int,
    image_size: int,
    splits: Sequence[float],
    questions_per_scene: int = 5,
    fades: bool = True,
    tabular: bool = False,
) -> dict[str, Any]:
    extra = {} if questions_per_scene == 5 else {"questions_per_scene": int(questions_per_scene)}
    if not fades:
        extra["fades"] = False
    if tabular:
        extra["tabular"] = True
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


# ------------------------------------------------------------------------------------ splits
def _assign_splits(
    labels: np.ndarray, rng: np.random.Generator, fractions: Sequence[float], order: np.ndarray | None = None
) -> list[str]:
    """Stratified, deterministic: within each class (shuffled) the k-th of n_c samples sits at
    u = (k + offset_c) / n_c in [0, 1) and goes to the split whose cumulative fraction covers u.
    Offsets differ per tone, so tiny classes do not all round the same way, and are equal for
    "no_red/t" and "red/t", so every split keeps has_red balanced and independent of the tone.

    ``order`` (the design's ``block`` per sample, :func:`~fusionkit.data.shapes_scene.design`):
    within a class the shuffled samples are then dealt block by block - every block once (from a
    seeded starting block), then again - so each split, a contiguous run of that order, holds
    consecutive blocks and with them hiss, signal, marker and corruption state in their design
    proportions (exactly, for n a multiple of 240)."""
    bounds = np.cumsum(fractions)
    period = DESIGN_PERIOD // 6
    out = [""] * len(labels)
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        if order is not None:
            start = int(rng.integers(period))
            seen: Counter[int] = Counter()
            keys = []
            for i in idx:
                b = int(order[i]) % period
                keys.append(seen[b] * period + (b - start) % period)
                seen[b] += 1
            idx = idx[np.argsort(keys, kind="stable")]
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
    fades: bool = True,
    tabular: bool = False,
) -> Dataset:
    """Write the synthetic shapes dataset to ``root`` (see the module docstring) and load it.

    A folder already holding a complete dataset generated with the same parameters is returned
    as is (``overwrite=True`` regenerates it). Anything else at ``root`` that the generator wrote
    (an older or incomplete dataset) is replaced; a folder with foreign files raises DatasetError.
    The folder's lock (:func:`~fusionkit.data.base.dataset_lock`) is held throughout: a second
    process generating the same folder waits, then returns the first one's dataset."""
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
    if not isinstance(fades, bool):
        raise DatasetError(f"shapes: fades = {fades!r}; expected True or False")
    if not isinstance(tabular, bool):
        raise DatasetError(f"shapes: tabular = {tabular!r}; expected True or False")
    params = _params(n, seed, image_size, splits, questions_per_scene, fades, tabular)
    with dataset_lock(root):
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
    # the design shuffled by the permutation that always shuffled the labels (labels unchanged)
    order = top.permutation(n)
    attrs = {k: v[order] for k, v in design(n, params.get("fades", True)).items()}
    labels = 3 * attrs["has_red"] + attrs["tone"]
    split_of = _assign_splits(labels, top, params["splits"], order=attrs["block"])
    samples, scenes = [], []
    for i in progress_bar(range(n), enabled=progress, desc="shapes dataset", unit="sample"):
        sid = f"{NAME}_{i:05d}"
        has_red, tone = int(attrs["has_red"][i]), int(attrs["tone"][i])
        hiss, signal, marker = int(attrs["hiss"][i]), int(attrs["signal"][i]), int(attrs["marker"][i])
        corrupted, faded = CORRUPTIONS[int(attrs["corruption"][i])], FADES[int(attrs["fade"][i])]
        show = shown(marker, signal, corrupted)
        targets: dict[str, int | float] = dict(targets_of(has_red, tone, hiss, signal))
        targets[SCORE], record = score_and_record(has_red, tone, _rng(seed, i, 7))
        r_scene, r_img, r_aud, r_txt = (_rng(seed, i, s) for s in range(4))
        r_img_cue, r_aud_cue = _rng(seed, i, 5), _rng(seed, i, 6)  # stream 4: the extra questions
        shapes = _layout(r_scene, bool(has_red), size)
        pixels, bg, cues = _render(
            r_img, shapes, size, show["image"]["code"], show["image"]["marker"], r_img_cue, faded == "image"
        )
        Image.fromarray(pixels, "RGB").save(out / "images" / f"{sid}.png", format="PNG", compress_level=1)
        wave, audio_meta = _audio(
            r_aud, TONES[tone], HISS[hiss], show["audio"]["code"], show["audio"]["marker"], r_aud_cue, faded == "audio"
        )
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
                modalities={
                    "image": f"images/{sid}.png",
                    "text": text,
                    "audio": f"audio/{sid}.wav",
                    **({TABULAR: record} if params.get("tabular") else {}),
                },
                targets=targets,
            )
        )
        scenes.append(
            {
                "id": sid,
                "imgid": i,
                "split": split,
                "label": targets["label"],
                "has_red": has_red,
                "tone": TONES[tone],
                "hiss": HISS[hiss],
                "signal": SIGNALS[signal],
                "marker": MARKERS[marker],
                SCORE: targets[SCORE],
                TABULAR: record,
                "corrupted": corrupted,
                "faded": faded,
                "shown": show,
                "image_cues": cues,
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
        "description": "fusionkit synthetic shapes: coloured-shape scenes, captions, VQA, and a sound "
        "(label = 3 * has_red + tone; targets by interaction type redundant, unique, synergy, unreliable, mixed; "
        "see fusionkit/data/shapes.py)",
        "params": params,
        "ceilings": CEILINGS,  # of label
        "ceilings_by_subset": CEILINGS_BY_SUBSET,  # of label
        # of every target (chance, each modality, pairs, late, fused)
        "target_ceilings": target_ceilings(FADED["image"] if params.get("fades", True) else 0.0),
        "interaction_targets": list(INTERACTION_TARGETS),
        # the regression target's R^2 ceilings (each subset of the modalities, late, fused)
        "r2_ceilings": {SCORE: score_ceilings(bool(params.get("tabular")))},
        # which modalities carry each target's information, by construction (the interpretability
        # check compares learned modality weights with this)
        "informative_modalities": {
            **INFORMATIVE_MODALITIES,
            SCORE: sorted(["audio", "image", "text", *([TABULAR] if params.get("tabular") else [])]),
        },
        "corrupted_fraction": CORRUPTED,  # unflagged: only scenes.jsonl says which samples
        # the image's background cues or the audio's hiss left out
        "faded_fraction": FADED if params.get("fades", True) else dict.fromkeys(FADED, 0.0),
        "tone_bands_hz": {k: list(v) for k, v in TONE_BANDS.items()},
        "hiss_bands_hz": {k: list(v) for k, v in HISS_BANDS.items()},
        # the signal in the session's code (code = signal XOR marker), as each modality shows it
        "code": {"image": {"stripes": list(STRIPES)}, "audio": {"hum_hz": [list(b) for b in HUM_BANDS]}},
        "marker": {"image": {"tint": list(TINTS)}, "audio": {"whistle_hz": [list(b) for b in WHISTLE_BANDS]}},
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
    modalities, targets, tabular = layout(bool(params.get("tabular")))
    write_dataset(out, NAME, modalities, targets, samples, info, tabular=tabular)  # dataset.json last


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _write_scenes(out: Path, scenes: list[dict[str, Any]]) -> None:
    keep = (
        "id",
        "imgid",
        "split",
        "label",
        "has_red",
        "tone",
        "hiss",
        "signal",
        "marker",
        "corrupted",
        "faded",
        SCORE,
        TABULAR,
        "shown",
        "image_cues",
        "audio",
        "background",
        "shapes",
    )
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
