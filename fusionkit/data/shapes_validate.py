"""Validation of a generated shapes dataset (:func:`validate`, re-exported by
:mod:`fusionkit.data.shapes`, whose docstring documents what is checked against): it re-reads
every file :func:`fusionkit.data.shapes.generate` wrote and checks it against the scenes, the
attribute design and the cues measured in the raw images and sounds."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from fusionkit.data.base import SPLITS, DatasetError, load_dataset
from fusionkit.data.caption_formats import coco_images, karpathy_images
from fusionkit.data.problems import Problems
from fusionkit.data.readers import open_image, read_json
from fusionkit.data.shapes_scene import (
    COLORS,
    CORRUPTIONS,
    DOSE_W,
    DURATION_S,
    FADES,
    HISS,
    HISS_RATIO,
    HUM_BANDS,
    KINDS,
    MARKERS,
    MAX_SHAPES,
    NAME,
    SAMPLE_RATE,
    SCORE,
    SCORE_NOISE_SD,
    SIGNALS,
    SITE_W,
    SITES,
    STRIPE_CONTRAST,
    STRIPES,
    TABULAR,
    TABULAR_COLUMNS,
    TINTS,
    TONE_W,
    TONES,
    WHISTLE_BANDS,
    caption_words,
    design,
    layout,
    measure_audio_cues,
    measure_image_cues,
    score_residual,
    shown,
    targets_of,
    tokenize,
)
from fusionkit.data.shapes_text import answer_question
from fusionkit.data.vqa import VQAFile, read_vqa_file, vqa_annotations, vqa_questions

__all__ = ["validate"]


# ---------------------------------------------------------------------------------- validate
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected a file written by fusionkit.data.shapes.generate")
    return read_json(path)


def _vqa_file(path: Path, key: str) -> VQAFile | None:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected a file written by fusionkit.data.shapes.generate")
    return read_vqa_file(path, key)


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


def _check_score(sc: dict[str, Any], smp: Any, where: str, tabular: bool) -> None:
    """The regression target: the manifest's score is the scene's, the record (when written) the
    scene's, and the score is its parts plus a noise of at most 6 sd."""
    rec = sc.get(TABULAR)
    if not isinstance(rec, dict) or sorted(rec) != sorted(TABULAR_COLUMNS) or rec.get("site") not in SITES:
        raise DatasetError(f"{where}: record {rec!r}; expected {list(TABULAR_COLUMNS)} with a site in {list(SITES)}")
    if smp.targets.get(SCORE) != sc.get(SCORE):
        raise DatasetError(
            f"{where}: score {smp.targets.get(SCORE)!r} in manifest.jsonl, {sc.get(SCORE)!r} in the scene"
        )
    if tabular and smp.modalities.get(TABULAR) != rec:
        raise DatasetError(f"{where}: record {smp.modalities.get(TABULAR)!r} in manifest.jsonl, {rec!r} in the scene")
    if abs(score_residual(sc)) > 6 * SCORE_NOISE_SD:
        raise DatasetError(
            f"{where}: score {sc.get(SCORE)!r} is {score_residual(sc):+.3f} away from has_red + {TONE_W} tone + "
            f"{DOSE_W} z + {SITE_W} (site - 1); expected a noise of sd {SCORE_NOISE_SD}"
        )


def validate(root: str | os.PathLike) -> dict[str, Any]:
    """Re-read everything :func:`~fusionkit.data.shapes.generate` wrote and check it is consistent.

    Checks the manifest (via load_dataset), scenes.jsonl against the targets (has_red from the
    shapes; every target recomputed from has_red, tone, hiss and signal; what each modality shows
    recomputed from marker, signal and the corruption, the recorded cues from that and the fade),
    the scenes' attribute combinations against the balanced design for their number, every PNG
    (opens, RGB, right size; the stripes and the tint measured in its pixels, or their absence
    when faded), every WAV (rate, length, mono; the hum, the whistle and the hiss measured in its
    samples), captions.json and the COCO references (ids, splits, tokens, colour and shape words a
    subset of the scene's, every red shape named), the VQA files (ids, splits, 10 identical
    answers, each answer recomputed from the scene). Raises DatasetError naming the file and the
    record; returns a summary dict."""
    raise_all = Problems("raise")  # the shared parsers raise at the first malformed record
    root = Path(root)
    ds = load_dataset(root)
    meta_path = root / "dataset.json"
    params = ds.info.get("params") if isinstance(ds.info, dict) else None
    if ds.name != NAME or not isinstance(params, dict):
        raise DatasetError(f"{meta_path}: name {ds.name!r} / info.params {params!r}; expected a shapes dataset")
    modalities, targets, tabular = layout(bool(params.get("tabular")))
    if ds.targets != targets or ds.modalities != modalities or (ds.tabular or None) != tabular:
        raise DatasetError(
            f"{meta_path}: targets/modalities/tabular {ds.targets} {ds.modalities} {ds.tabular}; expected "
            f"{targets} {modalities} {tabular}"
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
    design_cells: Counter[tuple[int, ...]] = Counter()
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
        values = {k: sc.get(k) for k in ("hiss", "signal", "marker", "corrupted", "faded")}
        choices = {"hiss": HISS, "signal": SIGNALS, "marker": MARKERS, "corrupted": CORRUPTIONS, "faded": FADES}
        if tone is None or any(values[k] not in choices[k] for k in choices):
            raise DatasetError(
                f"{where}: tone {sc.get('tone')!r} / {values}; expected a tone in {list(TONES)} and "
                + ", ".join(f"{k} in {list(v)}" for k, v in choices.items())
            )
        hiss, signal, marker = (
            HISS.index(values["hiss"]),
            SIGNALS.index(values["signal"]),
            MARKERS.index(values["marker"]),
        )
        expect = targets_of(has_red, tone, hiss, signal)
        classes = {k: v for k, v in smp.targets.items() if k != SCORE}
        if sc.get("has_red") != has_red or classes != expect or sc.get("label") != expect["label"]:
            raise DatasetError(
                f"{where}: targets in manifest.jsonl {smp.targets} / scene has_red {sc.get('has_red')} "
                f"disagree with the scene's shapes, tone, hiss and signal (expected {expect})"
            )
        _check_score(sc, smp, where, tabular is not None)
        show = shown(marker, signal, values["corrupted"])
        image_faded, audio_faded = values["faded"] == "image", values["faded"] == "audio"
        cues, audio = sc.get("image_cues") or {}, sc.get("audio") or {}
        hum, whistle = HUM_BANDS[show["audio"]["code"]], WHISTLE_BANDS[show["audio"]["marker"]]
        want_cues = (None, None) if image_faded else (STRIPES[show["image"]["code"]], TINTS[show["image"]["marker"]])
        if (
            sc.get("shown") != show
            or (cues.get("stripes"), cues.get("tint")) != want_cues
            or audio.get("hiss") != (None if audio_faded else values["hiss"])
            or not hum[0] <= (audio.get("hum_hz") or 0) <= hum[1]
            or not whistle[0] <= (audio.get("whistle_hz") or 0) <= whistle[1]
        ):
            raise DatasetError(
                f"{where}: shown {sc.get('shown')} / image_cues {cues} / audio {audio} disagree with marker "
                f"{values['marker']!r}, signal {values['signal']!r}, hiss {values['hiss']!r}, corrupted "
                f"{values['corrupted']!r} and faded {values['faded']!r} (code = signal XOR marker: stripes and hum; "
                f"marker: tint and whistle; a corrupted image shows the other marker, a corrupted audio the other "
                f"code; a faded image has no stripes or tint, a faded audio no hiss; expected shown {show})"
            )
        design_cells[
            (has_red, tone, hiss, signal, marker, CORRUPTIONS.index(values["corrupted"]), FADES.index(values["faded"]))
        ] += 1
        if sc.get("split") != smp.split:
            raise DatasetError(f"{where}: split {sc.get('split')!r}; manifest.jsonl says {smp.split!r}")
        scenes[sid] = sc
        scene_by_imgid[_field(sc, "imgid", where, int)] = sc
    if missing := set(by_id) - set(scenes):
        raise DatasetError(f"{scenes_path}: no scene for manifest id(s) {sorted(missing)[:5]}")
    plan = design(len(ds), params.get("fades", True))
    keys = ("has_red", "tone", "hiss", "signal", "marker", "corruption", "fade")
    expected_cells = Counter(zip(*(plan[k].tolist() for k in keys), strict=True))
    if design_cells != expected_cells:
        off = sorted((expected_cells - design_cells) + (design_cells - expected_cells))[:3]
        raise DatasetError(
            f"{scenes_path}: the scenes' (has_red, tone, hiss, signal, marker, corrupted, faded) combinations are not "
            f"those of the balanced design for n = {len(ds)} (fusionkit.data.shapes_scene.design); e.g. {off}"
        )

    # media files, and the cues they show (corrupted samples included)
    for smp in ds.samples:
        sc = scenes[smp.id]
        img_path = ds.path(smp, "image")
        with open_image(img_path, smp.id) as im:
            im.load()
            mode, im_size = im.mode, im.size
            pixels = np.asarray(im) if mode == "RGB" else None
        if mode != "RGB" or im_size != (size, size):
            raise DatasetError(f"{img_path} (id {smp.id!r}): {mode} {im_size}; expected RGB ({size}, {size})")
        got, want = measure_image_cues(pixels), sc["image_cues"]
        striped = got["stripe_contrast"] > STRIPE_CONTRAST
        if striped != (want["stripes"] is not None) or (
            striped and (got["stripes"], got["tint"]) != (want["stripes"], want["tint"])
        ):
            raise DatasetError(
                f"{img_path} (id {smp.id!r}): the pixels show "
                + (f"{got['stripes']} stripes and a {got['tint']} tint" if striped else "no stripes")
                + "; scenes.jsonl says "
                + (f"{want['stripes']} and {want['tint']}" if want["stripes"] else "faded (no stripes, no tint)")
            )
        wav_path = ds.path(smp, "audio")
        try:
            wi = sf.info(str(wav_path))
            wave = sf.read(str(wav_path), dtype="float64")[0]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DatasetError(f"{wav_path} (id {smp.id!r}): not a readable WAV ({e})") from e
        if (wi.samplerate, wi.channels, wi.frames) != (SAMPLE_RATE, 1, int(SAMPLE_RATE * DURATION_S)):
            raise DatasetError(
                f"{wav_path} (id {smp.id!r}): {wi.samplerate} Hz, {wi.channels} ch, {wi.frames} frames; "
                f"expected {SAMPLE_RATE} Hz mono, {int(SAMPLE_RATE * DURATION_S)} frames"
            )
        heard = measure_audio_cues(wave)
        hum, whistle = HUM_BANDS[sc["shown"]["audio"]["code"]], WHISTLE_BANDS[sc["shown"]["audio"]["marker"]]
        hiss = heard["hiss"] if heard["hiss_ratio"] > HISS_RATIO else None
        if (
            hiss != sc["audio"]["hiss"]
            or not hum[0] - 2 <= heard["hum_hz"] <= hum[1] + 2
            or not whistle[0] - 2 <= heard["whistle_hz"] <= whistle[1] + 2
        ):
            raise DatasetError(
                f"{wav_path} (id {smp.id!r}): the samples show {hiss or 'no'} hiss, a hum at {heard['hum_hz']:g} Hz "
                f"and a whistle at {heard['whistle_hz']:g} Hz; scenes.jsonl says {sc['audio']['hiss'] or 'no'} hiss, "
                f"a hum in {hum[0]:g}-{hum[1]:g} Hz and a whistle in {whistle[0]:g}-{whistle[1]:g} Hz"
            )

    # captions.json
    cap_path = root / "captions.json"
    caps = _read_json(cap_path)
    if not isinstance(caps, dict) or caps.get("dataset") != NAME or not isinstance(caps.get("images"), list):
        raise DatasetError(f"{cap_path}: expected {{'dataset': 'shapes', 'images': [...]}}")
    captions_of: dict[int, list[str]] = {}
    sentids: set[int] = set()
    for im in karpathy_images(cap_path, raise_all, caps):
        img, fn, where = im.raw, im.filename, im.where
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
        coco_imgs = coco_images(coco_path, raise_all, coco)
        coco_ids = {im.id for im in coco_imgs}
        if coco_ids != ids:
            raise DatasetError(
                f"{coco_path}: image ids differ from the {sp!r} split of manifest.jsonl "
                f"(extra {sorted(coco_ids - ids)[:5]}, missing {sorted(ids - coco_ids)[:5]})"
            )
        got = {im.id: [c for c, _ in im.captions] for im in coco_imgs if im.captions}
        for i in ids:
            if got.get(i) != captions_of[i]:
                raise DatasetError(f"{coco_path}: image_id {i}: captions {got.get(i)} differ from {cap_path}")
        q_path = root / "vqa" / f"questions_{sp}.json"
        a_path = root / "vqa" / f"annotations_{sp}.json"
        qf, af = _vqa_file(q_path, "questions"), _vqa_file(a_path, "annotations")
        if qf is None or qf.doc.get("task_type") != "Open-Ended" or qf.subtype != sp:
            raise DatasetError(
                f"{q_path}: expected a VQA v2 questions object (task_type Open-Ended, data_subtype {sp!r})"
            )
        if af is None:
            raise DatasetError(f"{a_path}: expected a VQA v2 annotations object {{'annotations': [...]}}")
        questions: dict[int, dict[str, Any]] = {}
        for vq in vqa_questions(qf, raise_all):
            qid, w = vq.question_id, vq.where
            if qid in questions or vq.image_id not in ids:
                raise DatasetError(f"{w}: repeated id, or image_id {vq.image_id} not in split {sp!r}")
            questions[qid] = vq.raw
        seen_a: set[int] = set()
        for ann in vqa_annotations(af, raise_all):
            a, qid, w = ann.raw, ann.question_id, ann.where
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
