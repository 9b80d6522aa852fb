"""AV-digits: spoken digits (FSDD) paired with handwritten digits (scikit-learn), AV-MNIST style.

Sources
    audio: Free Spoken Digit Dataset recordings ``{digit}_{speaker}_{index}.wav`` anywhere under
    ``source_dir`` (``recordings/`` in the release; ``fusionkit data download fsdd``). The speakers
    are read from the file names - no fixed list. Every recording becomes one sample.
    image: scikit-learn's ``load_digits()`` (1,797 8x8 images with 16 grey levels, shipped with
    scikit-learn, offline).

Pairing (seeded)
    Every recording is paired with a handwritten image of the same digit. The images are first
    divided among the splits (per digit, in proportion to the recordings of that digit in each
    split), so no image appears in two splits; within a split and digit the recordings take the
    split's images in a seeded random order, cycling when there are more recordings than images
    (about 1.4 uses per image with all of FSDD).

Splits, ``split=``
    "speaker" (default): the ``test_speakers`` (default: the alphabetically first speaker, e.g.
    ``jackson``) are held out for test - a test speaker never appears in train or val. Validation
    (``val_split="speaker"``, the default): the ``val_speakers`` when given, else one speaker held
    out too - the one after the first test speaker in alphabetical order, rotating (``lucas`` for
    ``jackson``) - so early stopping and every choice made on validation reward generalising to a
    new voice, not memorising the training voices; it needs 3 speakers or more. Every sample's
    ``group`` is its speaker (``fusionkit.data.groups``: the leave-one-speaker-out protocol re-splits
    by it). ``val_split="takes"`` (the earlier default): a seeded ``val_fraction`` of the takes of
    every train speaker and digit (the validation split then shares the training voices; no groups).
    "fsdd_official": FSDD's own split - takes 0-4 of every speaker and digit are test; val is a
    seeded ``val_fraction`` of the other takes, the rest train (speakers are shared across splits).

Degrading the image (so that neither modality alone is enough)
    The 8x8 image x in [0, 1] is, in order: projected on its first ``image_pca`` principal
    components (fitted on the train-split images; 0 = off), given Gaussian pixel noise of standard
    deviation ``image_noise`` (a fresh draw per sample, seeded; 0 = off), clipped to [0, 1] and
    upscaled to ``image_size`` px (bilinear) as an RGB PNG. With the defaults (noise 0.6, no PCA)
    a logistic regression on the 64 pixels reaches about 60 % test accuracy (97 % clean); a
    log-mel + logistic regression audio model about 55 % on the held-out speaker ``jackson``: the
    fused model has room to beat both. ``audio_snr_db`` (default None = off) adds white noise at
    that signal-to-noise ratio to the audio as well.

Files (media written into the processed folder: ``media_root`` is the dataset folder itself)
    ``images/{id}.png``; ``audio/{id}.wav`` - the recording copied byte for byte (or re-written
    with noise when ``audio_snr_db`` is set); ``recordings.jsonl`` - per sample: id, digit,
    speaker, take, split, source file (relative to ``source_dir``), sklearn image index.
    Sample id: the recording's stem, ``{digit}_{speaker}_{index}``. Target ``digit`` ("0" ... "9").

Validation: file names that do not follow ``{digit}_{speaker}_{index}.wav`` (warning, ignored),
0-byte files, files that are not RIFF/WAVE (an MP3 renamed to .wav is named as such), unreadable
or empty audio, duplicate recordings (same digit, speaker and take in two folders), unknown
test/val speakers, a split without recordings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data.base import SPLITS, Built, DatasetError, Sample
from fusionkit.data.problems import Problems
from fusionkit.data.readers import check_wav, safe_media_path
from fusionkit.progress import progress as _progress

__all__ = ["DIGITS", "parse_recordings", "scan"]

DIGITS = [str(d) for d in range(10)]
_NAME = re.compile(r"(\d)_([A-Za-z0-9-]+)_(\d+)\.wav")
SPLIT_MODES = ("speaker", "fsdd_official")


def parse_recordings(source: Path, problems: Problems) -> list[dict[str, Any]]:
    """The FSDD recordings under ``source``: [{path, digit, speaker, take, where}] (sorted by path)."""
    recs: list[dict[str, Any]] = []
    seen: dict[tuple[int, str, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n != "__MACOSX")
        for fn in sorted(filenames):
            if fn.startswith(".") or not fn.lower().endswith(".wav"):
                continue
            rel = (Path(dirpath) / fn).relative_to(source).as_posix()
            m = _NAME.fullmatch(fn)
            if not m:
                problems.warn("malformed", rel, "file name is not {digit}_{speaker}_{index}.wav; ignored")
                continue
            key = (int(m.group(1)), m.group(2), int(m.group(3)))
            if key in seen:
                problems.error("duplicate", rel, f"recording {fn} also at {seen[key]}", file=rel)
                continue
            seen[key] = rel
            recs.append({"path": rel, "digit": key[0], "speaker": key[1], "take": key[2], "where": str(source / rel)})
    return sorted(recs, key=lambda r: r["path"])


def _pick_val(recs: list[dict[str, Any]], fraction: float, rng: np.random.Generator) -> set[str]:
    """A seeded ``fraction`` of the takes of every (speaker, digit)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        groups[(r["speaker"], r["digit"])].append(r)
    out: set[str] = set()
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda r: r["take"])
        k = round(len(g) * fraction)
        if fraction > 0 and len(g) > 1:
            k = max(k, 1)  # small runs (max_takes) still get a val take per speaker and digit
        out.update(g[i]["path"] for i in rng.permutation(len(g))[:k])
    return out


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    split: str = "speaker",
    test_speakers: Sequence[str] | str | None = None,
    val_speakers: Sequence[str] | str | None = None,
    val_fraction: float = 0.1,
    val_split: str = "speaker",
    speakers: Sequence[str] | str | None = None,
    max_takes: int | None = None,
    image_size: int = 32,
    image_noise: float = 0.6,
    image_pca: int = 0,
    audio_snr_db: float | None = None,
) -> Built:
    """AV-digits (module docstring).

    ``split``: "speaker" or "fsdd_official". ``test_speakers`` / ``val_speakers``: speaker names
    (a list or a comma-separated string) held out for test / val (split="speaker").
    ``val_fraction``: share of the takes per speaker and digit used for val when no val speakers
    are named and ``val_split`` = "takes" (and under "fsdd_official"). ``val_split``: "speaker"
    (a held-out validation speaker when ``val_speakers`` is not given) or "takes". ``speakers``: use only these speakers.
    ``max_takes``: use only takes < max_takes of each speaker and digit (small runs).
    ``image_size``: side of the PNG in pixels. ``image_noise``: std of the Gaussian pixel noise
    (pixels in [0, 1]). ``image_pca``: keep this many principal components (0 = off).
    ``audio_snr_db``: add white noise to the audio at this SNR (None = off)."""
    from sklearn.datasets import load_digits

    if val_split not in ("speaker", "takes"):
        raise DatasetError(f"avdigits: val_split = {val_split!r}; expected 'speaker' or 'takes'")
    if split not in SPLIT_MODES:
        raise DatasetError(f"avdigits: split = {split!r}; expected one of {SPLIT_MODES}")
    if not isinstance(image_size, int) or image_size < 8:
        raise DatasetError(f"avdigits: image_size = {image_size!r}; expected an integer >= 8")
    if image_noise < 0 or not 0 <= val_fraction < 1 or not isinstance(image_pca, int) or not 0 <= image_pca <= 64:
        raise DatasetError(
            f"avdigits: image_noise = {image_noise!r} (expected >= 0), val_fraction = {val_fraction!r} "
            f"(expected in [0, 1)), image_pca = {image_pca!r} (expected an integer in [0, 64])"
        )
    if source.is_file():
        raise DatasetError(f"avdigits: source_dir {source} is a file; expected the FSDD folder (with recordings/)")

    def names(v: Sequence[str] | str | None) -> list[str] | None:
        if v is None or v == "":
            return None
        return [s.strip() for s in v.split(",")] if isinstance(v, str) else [str(s) for s in v]

    recs = parse_recordings(source, problems)
    if not recs:
        raise DatasetError(
            f"{source}: no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav); expected the FSDD folder "
            "(`fusionkit data download fsdd --to data/raw`)"
        )
    all_speakers = sorted({r["speaker"] for r in recs})
    only = names(speakers)
    if only:
        unknown = sorted(set(only) - set(all_speakers))
        if unknown:
            raise DatasetError(f"avdigits: speakers {unknown} not found; the recordings have {all_speakers}")
        recs = [r for r in recs if r["speaker"] in only]
    if max_takes is not None:
        recs = [r for r in recs if r["take"] < max_takes]
    # ------------------------------------------------------------------ check the files
    good = []
    info_of: dict[str, dict[str, Any]] = {}
    for r in _progress(recs, enabled=progress, desc="avdigits: checking recordings", unit="wav"):
        try:
            safe_media_path(source, r["path"], r["where"])
            info_of[r["path"]] = check_wav(source / r["path"])
        except DatasetError as exc:
            msg = str(exc)
            kind = "unsafe_path" if "escapes" in msg else "corrupt"
            problems.error(
                kind,
                r["where"],
                msg[len(r["where"]) + 2 :] if msg.startswith(r["where"] + ": ") else msg,
                file=r["path"],
            )
            continue
        good.append(r)
    recs = good
    if not recs:
        return Built(
            name="avdigits",
            format="fsdd",
            modalities={"image": "image", "audio": "audio"},
            targets={"digit": DIGITS},
            samples=[],
        )
    speakers_now = sorted({r["speaker"] for r in recs})
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(404,)))
    # ------------------------------------------------------------------ splits
    split_of: dict[str, str] = {}
    tests = vals = None
    grouped = split == "speaker"
    if split == "speaker":
        tests = names(test_speakers) or speakers_now[:1]
        vals = names(val_speakers) or []
        if not vals and val_split == "speaker":
            others = [s for s in speakers_now if s not in tests]
            if len(others) < 2:
                raise DatasetError(
                    f"avdigits: a held-out validation speaker needs 3 speakers or more (test, validation, train); the "
                    f"recordings have {len(speakers_now)}: {speakers_now} (test {tests}). Add speakers, or pass "
                    "val_split='takes' to validate on the training speakers' takes"
                )
            after = [s for s in speakers_now if s > tests[0] and s in others]
            vals = [(after or others)[0]]
        unknown = sorted((set(tests) | set(vals)) - set(speakers_now))
        if unknown:
            raise DatasetError(f"avdigits: test/val speakers {unknown} not among the speakers {speakers_now}")
        if set(tests) & set(vals):
            raise DatasetError(f"avdigits: speakers {sorted(set(tests) & set(vals))} are both test and val speakers")
        if not set(speakers_now) - set(tests) - set(vals):
            raise DatasetError(f"avdigits: no train speaker left (speakers {speakers_now}, test {tests}, val {vals})")
        rest = [r for r in recs if r["speaker"] not in tests and r["speaker"] not in vals]
        val_paths = _pick_val(rest, val_fraction, rng) if not vals else set()
        grouped = bool(vals)  # with validation takes of the train speakers, a speaker is in two splits
        for r in recs:
            sp = (
                "test"
                if r["speaker"] in tests
                else "val"
                if r["speaker"] in vals or r["path"] in val_paths
                else "train"
            )
            split_of[r["path"]] = sp
    else:
        rest = [r for r in recs if r["take"] > 4]
        val_paths = _pick_val(rest, val_fraction, rng)
        for r in recs:
            split_of[r["path"]] = "test" if r["take"] <= 4 else "val" if r["path"] in val_paths else "train"
    # ------------------------------------------------------------------ images per split, pairing
    digits = load_digits()
    imgs = digits.images.astype(np.float32) / 16.0
    labels = digits.target
    img_split: dict[int, str] = {}
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        idx = idx[rng.permutation(len(idx))]
        need = {sp: sum(1 for r in recs if r["digit"] == d and split_of[r["path"]] == sp) for sp in SPLITS}
        total = sum(need.values())
        if total == 0:
            continue
        active = [sp for sp in SPLITS if need[sp]]
        alloc = {sp: max(1, int(len(idx) * need[sp] / total)) for sp in active}
        while sum(alloc.values()) > len(idx):  # pragma: no cover - only with tiny image sets
            big = max(alloc, key=lambda s: alloc[s])
            alloc[big] -= 1
        alloc[active[0]] += len(idx) - sum(alloc.values())
        pos = 0
        for sp in active:
            for i in idx[pos : pos + alloc[sp]]:
                img_split[int(i)] = sp
            pos += alloc[sp]
    pairs: dict[str, int] = {}
    for sp in SPLITS:
        for d in range(10):
            pool = sorted(i for i, s in img_split.items() if s == sp and labels[i] == d)
            rs = [r for r in recs if r["digit"] == d and split_of[r["path"]] == sp]
            if not rs:
                continue
            pool = [pool[i] for i in rng.permutation(len(pool))]
            for k, r in enumerate(rs[i] for i in rng.permutation(len(rs))):
                pairs[r["path"]] = pool[k % len(pool)]
    # ------------------------------------------------------------------ degradation
    flat = imgs.reshape(len(imgs), -1)
    pca_note = None
    if image_pca:
        from sklearn.decomposition import PCA

        train_imgs = sorted(i for i, s in img_split.items() if s == "train") or list(range(len(imgs)))
        pca = PCA(n_components=image_pca, random_state=0).fit(flat[train_imgs])
        flat = pca.inverse_transform(pca.transform(flat)).astype(np.float32)
        pca_note = round(float(pca.explained_variance_ratio_.sum()), 4)
    base_imgs = flat.reshape(-1, 8, 8)
    samples: list[Sample] = []
    rows: list[dict[str, Any]] = []
    order = sorted(recs, key=lambda r: (SPLITS.index(split_of[r["path"]]), r["speaker"], r["digit"], r["take"]))
    for r in order:
        sid = Path(r["path"]).stem
        sp = split_of[r["path"]]
        samples.append(
            Sample(
                sid,
                sp,
                {"image": f"images/{sid}.png", "audio": f"audio/{sid}.wav"},
                {"digit": r["digit"]},
                r["speaker"] if grouped else None,
            )
        )
        rows.append(
            {
                "id": sid,
                "digit": r["digit"],
                "speaker": r["speaker"],
                "take": r["take"],
                "split": sp,
                "source": r["path"],
                "image_index": pairs[r["path"]],
                "duration_s": round(info_of[r["path"]]["duration"], 4),
            }
        )
    params = {
        "image_size": image_size,
        "image_noise": float(image_noise),
        "image_pca": image_pca,
        "audio_snr_db": audio_snr_db,
    }

    def write_media(out: Path, show: bool) -> None:
        from PIL import Image

        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        for n, row in enumerate(_progress(rows, enabled=show, desc="avdigits: writing images + audio", unit="sample")):
            g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(405, n)))
            x = base_imgs[row["image_index"]]
            if image_noise:
                x = x + g.normal(0.0, image_noise, x.shape).astype(np.float32)
            x = np.clip(x, 0.0, 1.0)
            im = Image.fromarray(np.rint(x * 255).astype(np.uint8), "L").resize(
                (image_size, image_size), Image.BILINEAR
            )
            im.convert("RGB").save(out / "images" / f"{row['id']}.png", format="PNG", compress_level=1)
            src = source / row["source"]
            dst = out / "audio" / f"{row['id']}.wav"
            if audio_snr_db is None:
                shutil.copyfile(src, dst)
            else:
                import soundfile as sf

                wave, sr = sf.read(str(src), dtype="float32", always_2d=False)
                power = float(np.mean(wave**2)) or 1e-12
                noise = g.normal(0.0, np.sqrt(power / 10 ** (audio_snr_db / 10)), wave.shape).astype(np.float32)
                sf.write(str(dst), np.clip(wave + noise, -1, 1), sr, subtype="PCM_16", format="WAV")

    split_speakers = {sp: sorted({r["speaker"] for r in recs if split_of[r["path"]] == sp}) for sp in SPLITS}
    stats = {
        "recordings": len(recs),
        "speakers": speakers_now,
        "speakers_per_split": {sp: ", ".join(v) for sp, v in split_speakers.items()},
        "split_policy": split,
        "images_used": len(set(pairs.values())),
        "image_uses_per_image": round(len(pairs) / max(len(set(pairs.values())), 1), 3),
        "sample_rates": dict(Counter(str(i["samplerate"]) for i in info_of.values() if i)),
    }
    info = {
        "description": "AV-digits: FSDD spoken digits paired by label with degraded sklearn 8x8 handwritten digits "
        "(fusionkit.data.avdigits)",
        "task": "classification",
        "split_policy": split,
        "test_speakers": tests,
        "val_speakers": vals or None,
        "groups": "speaker" if grouped else None,
        "speakers_per_split": split_speakers,
        "degradation": params,
        "pca_explained_variance": pca_note,
        "ceilings": {"chance": 0.1},
        "files": {"recordings": "recordings.jsonl"},
        "licences": {
            "audio": "FSDD, CC BY-SA 4.0 (github.com/Jakobovski/free-spoken-digit-dataset)",
            "image": "scikit-learn digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)",
        },
    }
    return Built(
        name="avdigits",
        format="fsdd",
        modalities={"image": "image", "audio": "audio"},
        targets={"digit": list(DIGITS)},
        samples=samples,
        info=info,
        media_root=None,
        files={"recordings.jsonl": "\n".join(json.dumps(r) for r in rows) + "\n"},
        writers=[write_media],
        stats=stats,
    )
