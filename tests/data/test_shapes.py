"""Tests for the synthetic shapes dataset (fusionkit.data.shapes)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fusionkit.data import shapes
from fusionkit.data.base import SPLITS, DatasetError, load_dataset

N = 36
SEED = 3
SIZE = 96  # smaller than the default to keep the tests fast; the layout scales with it


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "ds"
    shapes.generate(root, n=N, seed=SEED, image_size=SIZE, progress=False)
    return root


def _scenes(root: Path) -> dict[str, dict]:
    return {s["id"]: s for s in map(json.loads, (root / "scenes.jsonl").read_text().splitlines())}


def _captions(root: Path) -> dict[int, list[str]]:
    doc = json.loads((root / "captions.json").read_text())
    return {im["imgid"]: [s["raw"] for s in im["sentences"]] for im in doc["images"]}


def _mentioned(caption: str) -> Counter:
    """(colour, kind) pairs a caption names, with multiplicity ("two red circles" counts 2)."""
    toks = shapes.tokenize(caption)
    numbers = {v: k for k, v in shapes.NUMBERS.items()}
    out: Counter = Counter()
    for i in range(len(toks) - 1):
        if toks[i] in shapes.COLOR_WORDS and toks[i + 1] in shapes.WORD_TO_KIND:
            count = numbers.get(toks[i - 1], 1) if i > 0 else 1
            out[(toks[i], shapes.WORD_TO_KIND[toks[i + 1]])] += count
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------- determinism, formats
def test_same_seed_gives_identical_bytes_and_other_seed_differs(root, tmp_path):
    again = shapes.generate(tmp_path / "again", n=N, seed=SEED, image_size=SIZE, progress=False).root
    a, b = _all_files(root), _all_files(again)
    assert a.keys() == b.keys()
    for name in (
        "manifest.jsonl",
        "captions.json",
        "scenes.jsonl",
        "dataset.json",
        "vqa/annotations_train.json",
        "images/shapes_00000.png",
        "audio/shapes_00000.wav",
    ):
        assert a[name] == b[name], name
    assert a == b
    other = shapes.generate(tmp_path / "other", n=N, seed=SEED + 1, image_size=SIZE, progress=False).root
    c = _all_files(other)
    for name in ("manifest.jsonl", "captions.json", "images/shapes_00000.png", "audio/shapes_00000.wav"):
        assert a[name] != c[name], name


def test_dataset_json_manifest_and_media(root):
    ds = load_dataset(root)
    assert ds.name == "shapes" and len(ds) == N
    assert ds.modalities == {"image": "image", "text": "text", "audio": "audio"}
    assert ds.targets == {
        "label": shapes.LABELS,
        "has_red": ["no", "yes"],
        "tone": ["low", "mid", "high"],
        "redundant": ["no", "yes"],
        "unique": ["low", "high"],
        "synergy": ["no", "yes"],
        "unreliable": ["off", "on"],
        "mixed": ["no/off", "no/on", "yes/off", "yes/on"],
        "score": [],  # a regression target (test_shapes_regression.py)
    }
    assert shapes.LABELS == ["no_red/low", "no_red/mid", "no_red/high", "red/low", "red/mid", "red/high"]
    assert ds.info["ceilings"] == shapes.CEILINGS
    assert ds.info["target_ceilings"] == shapes.TARGET_CEILINGS
    assert set(ds.info["informative_modalities"]) == set(ds.targets)
    assert ds.info["params"]["n"] == N and ds.info["params"]["seed"] == SEED
    assert [s.id for s in ds.samples] == [f"shapes_{i:05d}" for i in range(N)]
    for s in ds.samples:
        with Image.open(ds.path(s, "image")) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        info = sf.info(str(ds.path(s, "audio")))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")


def test_karpathy_and_coco_caption_files(root):
    doc = json.loads((root / "captions.json").read_text())
    assert doc["dataset"] == "shapes" and len(doc["images"]) == N
    scenes = _scenes(root)
    sentids = []
    for im in doc["images"]:
        sc = scenes[Path(im["filename"]).stem]
        assert im["filename"] == f"images/{sc['id']}.png" and im["imgid"] == sc["imgid"] == im["cocoid"]
        assert im["split"] == sc["split"] and len(im["sentences"]) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"] and s["tokens"] == shapes.tokenize(s["raw"])
            assert all(t == t.lower() and t.isalnum() for t in s["tokens"])
        sentids += im["sentids"]
    assert len(sentids) == len(set(sentids)) == 5 * N

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocotools.coco import COCO

    for split in SPLITS:
        coco = COCO(str(root / "annotations" / f"captions_{split}.json"))
        ids = sorted(coco.getImgIds())
        assert ids == sorted(s["imgid"] for s in scenes.values() if s["split"] == split)
        gts = {i: [a["caption"].lower() for a in coco.imgToAnns[i]] for i in ids}
        assert all(len(v) == 5 for v in gts.values())
        res = {i: [v[0]] for i, v in gts.items()}  # a caption scored against its own references
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
        assert score[0] > 0.99


def test_vqa_files(root):
    scenes = {s["imgid"]: s for s in _scenes(root).values()}
    total, yes_no = 0, Counter()
    for split in SPLITS:
        q = json.loads((root / "vqa" / f"questions_{split}.json").read_text())
        a = json.loads((root / "vqa" / f"annotations_{split}.json").read_text())
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == ("Open-Ended", "shapes", split)
        assert {x["question_id"] for x in q["questions"]} == {x["question_id"] for x in a["annotations"]}
        split_ids = {i for i, s in scenes.items() if s["split"] == split}
        assert {x["image_id"] for x in q["questions"]} == split_ids
        questions = {x["question_id"]: x for x in q["questions"]}
        for ann in a["annotations"]:
            assert ann["answer_type"] in ("yes/no", "number", "other")
            assert [x["answer"] for x in ann["answers"]] == [ann["multiple_choice_answer"]] * 10
            assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] == "yes" for x in ann["answers"])
            question = questions[ann["question_id"]]
            assert question["image_id"] == ann["image_id"]
            sc = scenes[ann["image_id"]]
            assert shapes.answer_question(sc["shapes"], question["question"], SIZE) == (
                ann["multiple_choice_answer"],
                ann["answer_type"],
            )
            if ann["answer_type"] == "yes/no":
                yes_no[ann["multiple_choice_answer"]] += 1
        total += len(q["questions"])
        per_image = Counter(x["image_id"] for x in q["questions"])
        assert all(4 <= c <= 5 for c in per_image.values())
    assert total >= 4.5 * N
    assert yes_no["yes"] > 0 and yes_no["no"] > 0
    assert 0.3 < yes_no["yes"] / sum(yes_no.values()) < 0.7


def test_question_types_all_occur(tmp_path):
    ds = shapes.generate(tmp_path / "d", n=60, seed=0, progress=False)
    summary = shapes.validate(ds.root)
    assert set(summary["question_types"]) == {
        "what color is the",
        "what shape is the",
        "how many",
        "is there a",
        "what is",
    }
    assert summary["n_captions"] == 300 and summary["n_questions"] >= 270


def _questions_by_image(root: Path) -> dict[int, list[tuple[str, str, str]]]:
    """image id -> [(question, answer, answer type)] in question-id order, over every split."""
    out: dict[int, list] = {}
    for split in SPLITS:
        q = json.loads((root / "vqa" / f"questions_{split}.json").read_text())["questions"]
        a = {
            x["question_id"]: x
            for x in json.loads((root / "vqa" / f"annotations_{split}.json").read_text())["annotations"]
        }
        for x in sorted(q, key=lambda x: x["question_id"]):
            ann = a[x["question_id"]]
            out.setdefault(x["image_id"], []).append((x["question"], ann["multiple_choice_answer"], ann["answer_type"]))
    return out


def test_more_questions_per_scene_keep_everything_else_and_the_first_questions(root, tmp_path):
    """``questions_per_scene=10``: up to 10 distinct, correctly answered questions per scene; the
    images, audio, captions, manifest and the first five questions are those of the default dataset."""
    more = tmp_path / "q10"
    shapes.generate(more, n=N, seed=SEED, image_size=SIZE, progress=False, questions_per_scene=10)
    assert _scenes(root) == _scenes(more)
    base, ten = _questions_by_image(root), _questions_by_image(more)
    scenes = {s["imgid"]: s for s in _scenes(more).values()}
    assert base.keys() == ten.keys() == scenes.keys()
    for img, qs in ten.items():
        assert qs[: len(base[img])] == base[img]
        assert len({q for q, _, _ in qs}) == len(qs) <= 10
        for q, answer, atype in qs:
            assert shapes.answer_question(scenes[img]["shapes"], q, SIZE) == (answer, atype)
    assert np.mean([len(q) for q in ten.values()]) >= 8  # most scenes have ten
    for name in ("images", "audio", "annotations", "manifest.jsonl"):
        a, b = root / name, more / name
        assert (_all_files(a) == _all_files(b)) if a.is_dir() else (a.read_bytes() == b.read_bytes())
    assert shapes.validate(more)["n_questions"] == sum(len(q) for q in ten.values())
    for bad in (0, 11, 2.5):
        with pytest.raises(DatasetError, match="questions_per_scene"):
            shapes.generate(tmp_path / "bad", n=4, progress=False, questions_per_scene=bad)


# ------------------------------------------------------------------------------ targets, splits
def test_labels_match_scene(root):
    ds = load_dataset(root)
    scenes = _scenes(root)
    for s in ds.samples:
        sc = scenes[s.id]
        assert s.targets["label"] == 3 * s.targets["has_red"] + s.targets["tone"]
        assert s.targets["has_red"] == int(any(sh["color"] == "red" for sh in sc["shapes"])) == sc["has_red"]
        assert shapes.TONES[s.targets["tone"]] == sc["tone"]
        assert s.split == sc["split"]


def test_has_red_and_tone_balanced(root):
    ds = load_dataset(root)
    assert Counter(s.targets["has_red"] for s in ds.samples) == {0: N // 2, 1: N // 2}
    assert Counter(s.targets["tone"] for s in ds.samples) == {0: N // 3, 1: N // 3, 2: N // 3}
    assert Counter(s.targets["label"] for s in ds.samples) == dict.fromkeys(range(6), N // 6)


def test_splits_disjoint_and_stratified(root):
    ds = load_dataset(root)
    ids = {sp: {s.id for s in ds.split(sp)} for sp in SPLITS}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert set().union(*ids.values()) == {s.id for s in ds.samples}
    per_class = N // 6
    for sp, frac in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        counts = Counter(ds.labels(sp))
        for c in range(6):
            assert abs(counts.get(c, 0) - per_class * frac) < 1 + 1e-9, (sp, c, counts)
    assert all(len(v) > 0 for v in ids.values())


def test_split_assignment_is_exactly_proportional_per_class():
    labels = np.arange(1200) % 6
    out = shapes._assign_splits(labels, np.random.default_rng(0), (0.7, 0.15, 0.15))
    counts = Counter(zip(labels.tolist(), out, strict=True))
    for c in range(6):
        assert (counts[(c, "train")], counts[(c, "val")], counts[(c, "test")]) == (140, 30, 30)
    uneven = shapes._assign_splits(labels, np.random.default_rng(0), (0.5, 0.5, 0.0))
    assert Counter(uneven) == {"train": 600, "val": 600}


# ------------------------------------------------------------------------------------- content
def test_captions_only_name_what_is_in_the_scene(root):
    scenes = {s["imgid"]: s for s in _scenes(root).values()}
    for imgid, caps in _captions(root).items():
        sc = scenes[imgid]
        scene_pairs = Counter((s["color"], s["kind"]) for s in sc["shapes"])
        colors = {s["color"] for s in sc["shapes"]}
        kinds = {s["kind"] for s in sc["shapes"]}
        complete = 0
        for cap in caps:
            named_colors, named_kinds = shapes.caption_words(cap)
            assert named_colors <= colors, (cap, colors)
            assert named_kinds <= kinds, (cap, kinds)
            mentioned = _mentioned(cap)
            assert mentioned and not (mentioned - scene_pairs), (cap, scene_pairs)
            toks = shapes.tokenize(cap)  # every shape word comes right after its colour
            assert all(
                i > 0 and toks[i - 1] in shapes.COLORS for i, t in enumerate(toks) if t in shapes.WORD_TO_KIND
            ), cap
            assert ("red" in named_colors) == bool(sc["has_red"]), cap
            assert not {"low", "mid", "high", "tone", "pitch", "sound"} & set(shapes.tokenize(cap)), cap
            complete += mentioned == scene_pairs
        assert complete >= 3, (caps, scene_pairs)


def test_manifest_text_is_one_of_the_captions(root):
    ds = load_dataset(root)
    caps = _captions(root)
    scenes = _scenes(root)
    positions = []
    for s in ds.samples:
        options = caps[scenes[s.id]["imgid"]]
        assert s.modalities["text"] in options
        positions.append(options.index(s.modalities["text"]))
    assert len(set(positions)) > 2  # picked at random, not always the first


def test_images_show_red_exactly_when_has_red(root):
    ds = load_dataset(root)
    for s in ds.samples:
        px = np.asarray(Image.open(ds.path(s, "image")), dtype=int)
        red = ((px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)).sum()
        if s.targets["has_red"]:
            assert red > 0.005 * SIZE * SIZE, (s.id, red)
        else:
            assert red == 0, (s.id, red)


def test_scene_layout(root):
    for sc in _scenes(root).values():
        assert 1 <= len(sc["shapes"]) <= 4
        boxes = [s["bbox"] for s in sc["shapes"]]
        for s in sc["shapes"]:
            assert s["kind"] in shapes.KINDS and s["color"] in shapes.COLORS
            assert s["side"] >= 0.12 * SIZE
            assert 0 <= s["bbox"][0] and s["bbox"][2] <= SIZE and 0 <= s["bbox"][1] and s["bbox"][3] <= SIZE
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        assert sc["has_red"] or all(s["color"] != "red" for s in sc["shapes"])


def test_audio_pitch_encodes_tone(root):
    ds = load_dataset(root)
    scenes = _scenes(root)
    for s in ds.samples:
        y, sr = sf.read(ds.path(s, "audio"))
        assert sr == 16000 and y.shape == (16000,)
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        peak = np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)]
        lo, hi = shapes.TONE_BANDS[shapes.TONES[s.targets["tone"]]]
        assert lo - 3 <= peak <= hi + 3, (s.id, peak, lo, hi)
        assert abs(peak - scenes[s.id]["audio"]["f0"]) < 3


# ----------------------------------------------------------------------------- answers, relations
SCENE = [
    {"kind": "circle", "color": "red", "x": 20.0, "y": 50.0},
    {"kind": "square", "color": "blue", "x": 60.0, "y": 50.0},
    {"kind": "square", "color": "green", "x": 100.0, "y": 52.0},
]


def test_relation_and_answer_question():
    rel = shapes.relation
    assert rel(SCENE[0], SCENE[1], "left", 128) is True
    assert rel(SCENE[1], SCENE[0], "left", 128) is False
    assert rel(SCENE[0], SCENE[1], "above", 128) is False
    assert rel({"x": 45.0, "y": 35.0}, SCENE[1], "above", 128) is True  # as far up as across
    assert rel({"x": 40.0, "y": 38.0}, SCENE[1], "above", 128) is None  # more across than up: borderline
    assert rel({"x": 57.0, "y": 45.0}, SCENE[1], "above", 128) is None  # within the margin
    ask = shapes.answer_question
    assert ask(SCENE, "what color is the circle?", 128) == ("red", "other")
    assert ask(SCENE, "what color is the disc?", 128) == ("red", "other")
    assert ask(SCENE, "what shape is the green thing?", 128) == ("square", "other")
    assert ask(SCENE, "how many boxes are there?", 128) == ("2", "number")
    assert ask(SCENE, "how many yellow shapes are there?", 128) == ("0", "number")
    assert ask(SCENE, "how many objects are there?", 128) == ("3", "number")
    assert ask(SCENE, "is there a red disc?", 128) == ("yes", "yes/no")
    assert ask(SCENE, "is there a red square?", 128) == ("no", "yes/no")
    assert ask(SCENE, "is there a star?", 128) == ("no", "yes/no")
    assert ask(SCENE, "is there a blue shape?", 128) == ("yes", "yes/no")
    assert ask(SCENE, "what is left of the blue square?", 128) == ("circle", "other")
    assert ask(SCENE, "what is to the right of the blue box?", 128) == ("square", "other")


def test_answer_question_refuses_ambiguity():
    ask = shapes.answer_question
    with pytest.raises(ValueError, match="ambiguous"):
        ask(SCENE, "what color is the square?", 128)  # two squares
    with pytest.raises(ValueError):
        ask(SCENE, "what is left of the green square?", 128)  # both others are left of it
    with pytest.raises(ValueError):
        ask(SCENE, "what is right of the green square?", 128)  # nothing is
    borderline = [*SCENE, {"kind": "star", "color": "yellow", "x": 45.0, "y": 30.0}]  # up-left of the blue square
    with pytest.raises(ValueError, match="clearly"):
        ask(borderline, "what is left of the blue square?", 128)
    with pytest.raises(ValueError):
        ask(SCENE, "what is the meaning of life?", 128)
    with pytest.raises(ValueError):
        ask(SCENE, "is there a orange circle?", 128)


# ------------------------------------------------------------------------------------- validate
def test_validate_passes_on_a_good_dataset(root):
    summary = shapes.validate(root)
    assert summary["n"] == N and summary["n_captions"] == 5 * N
    assert sum(summary["splits"].values()) == N
    assert summary["n_questions"] == sum(summary["questions_per_split"].values()) >= 4.5 * N
    assert summary["class_balance/has_red"]["train"]["yes"] == summary["class_balance/has_red"]["train"]["no"]
    assert set(summary["answer_types"]) >= {"yes/no", "number", "other"}
    assert summary["ceilings"] == shapes.CEILINGS


def _edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_validate_catches_a_caption_naming_an_absent_colour(copy):
    scenes = {s["imgid"]: s for s in _scenes(copy).values()}
    absent = next(c for c in shapes.COLORS if c not in {s["color"] for s in scenes[4]["shapes"]})

    def corrupt(doc):
        sent = doc["images"][4]["sentences"][2]
        sent["raw"] = f"A {absent} {sent['raw']}"
        sent["tokens"] = shapes.tokenize(sent["raw"])

    _edit_json(copy / "captions.json", corrupt)
    with pytest.raises(DatasetError, match=rf"captions\.json.*images\[4\].*sentence 2.*{absent}"):
        shapes.validate(copy)


def test_validate_catches_caption_tokens_out_of_sync(copy):
    _edit_json(copy / "captions.json", lambda d: d["images"][1]["sentences"][0]["tokens"].append("extra"))
    with pytest.raises(DatasetError, match=r"captions\.json.*images\[1\]"):
        shapes.validate(copy)


def test_validate_catches_a_missing_image(copy):
    (copy / "images" / "shapes_00007.png").unlink()
    with pytest.raises(DatasetError, match=r"shapes_00007\.png"):
        shapes.validate(copy)


def test_validate_catches_a_truncated_image_and_a_short_wav(copy):
    png = copy / "images" / "shapes_00003.png"
    good = png.read_bytes()
    png.write_bytes(good[:200])
    with pytest.raises(DatasetError, match=r"shapes_00003\.png"):
        shapes.validate(copy)
    png.write_bytes(good)
    sf.write(copy / "audio" / "shapes_00005.wav", np.zeros(8000), 16000, subtype="PCM_16")
    with pytest.raises(DatasetError, match=r"shapes_00005\.wav.*8000 frames"):
        shapes.validate(copy)


def test_validate_names_an_image_over_the_decompression_bomb_limit(copy, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE // 4)  # every image is 4x the limit: PIL raises
    with pytest.raises(DatasetError, match=r"shapes_\d+\.png \(id 'shapes_\d+'\): refused as a possible decompression"):
        shapes.validate(copy)


def test_validate_catches_a_wrong_vqa_answer(copy):
    def corrupt(doc):
        ann = doc["annotations"][3]
        wrong = "7" if ann["multiple_choice_answer"] != "7" else "8"
        ann["multiple_choice_answer"] = wrong
        for a in ann["answers"]:
            a["answer"] = wrong

    _edit_json(copy / "vqa" / "annotations_train.json", corrupt)
    with pytest.raises(DatasetError, match=r"annotations_train\.json.*annotations\[3\]"):
        shapes.validate(copy)


def test_validate_catches_a_target_that_disagrees_with_the_scene(copy):
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[5])
    row["has_red"] = 1 - row["has_red"]
    row["label"] = 3 * row["has_red"] + row["tone"]
    lines[5] = json.dumps(row)
    (copy / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"scenes\.jsonl:6 \(id 'shapes_00005'\).*manifest"):
        shapes.validate(copy)


def test_validate_catches_a_question_missing_its_annotation(copy):
    _edit_json(copy / "vqa" / "annotations_val.json", lambda d: d["annotations"].pop())
    with pytest.raises(DatasetError, match=r"annotations_val\.json.*no annotation"):
        shapes.validate(copy)


def test_validate_reads_captions_and_vqa_through_the_shared_parsers(copy):
    """validate iterates captions.json, the COCO references and the VQA files with the parsers of
    caption_formats / vqa, so their record rules (and messages) are the loaders' and the tasks'."""
    original = (copy / "vqa" / "annotations_val.json").read_bytes()
    _edit_json(copy / "vqa" / "annotations_val.json", lambda d: d["annotations"].append(dict(d["annotations"][0])))
    with pytest.raises(
        DatasetError,
        match=r"annotations_val\.json: annotations\[\d+\] \(question_id \d+\): question_id annotated twice",
    ):
        shapes.validate(copy)
    (copy / "vqa" / "annotations_val.json").write_bytes(original)
    assert shapes.validate(copy)["n_questions"] > 0
    _edit_json(
        copy / "annotations" / "captions_test.json",
        lambda d: d["annotations"].append({"id": 10**6, "image_id": 10**6, "caption": "x"}),
    )
    with pytest.raises(
        DatasetError, match=r"captions_test\.json: annotations\[\d+\] \(id 1000000\): caption names image_id 1000000"
    ):
        shapes.validate(copy)


# --------------------------------------------------------------------------- regenerate or reuse
def _stamp(root: Path) -> dict[str, tuple[int, int]]:
    return {
        n: ((root / n).stat().st_mtime_ns, (root / n).stat().st_ino)
        for n in (
            "dataset.json",
            "manifest.jsonl",
            "captions.json",
            "images/shapes_00000.png",
            "audio/shapes_00001.wav",
        )
    }


def test_second_call_with_same_params_reuses_the_folder(copy):
    before = _stamp(copy)
    ds = shapes.generate(copy, n=N, seed=SEED, image_size=SIZE, progress=False)
    assert _stamp(copy) == before
    assert len(ds) == N and ds.root == copy
    shapes.generate(copy, n=N, seed=SEED, image_size=SIZE, progress=False, overwrite=True)
    after = _stamp(copy)
    assert all(after[k] != before[k] for k in before)
    shapes.validate(copy)


def test_other_params_regenerate(copy):
    before = _stamp(copy)
    ds = shapes.generate(copy, n=12, seed=SEED, image_size=SIZE, progress=False)
    assert len(ds) == 12 and _stamp(copy) != before
    assert not (copy / "images" / "shapes_00020.png").exists()  # nothing left over from the old dataset
    assert shapes.validate(copy)["n"] == 12


def test_folder_without_dataset_json_is_not_complete(copy):
    (copy / "dataset.json").unlink()  # what a crash before the last write leaves
    before = _stamp_partial(copy)
    shapes.generate(copy, n=N, seed=SEED, image_size=SIZE, progress=False)
    assert (copy / "dataset.json").is_file()
    assert _stamp_partial(copy) != before
    shapes.validate(copy)


def _stamp_partial(root: Path) -> dict[str, tuple[int, int]]:
    return {n: ((root / n).stat().st_mtime_ns, (root / n).stat().st_ino) for n in ("manifest.jsonl", "captions.json")}


def test_folder_missing_a_file_is_not_complete(copy):
    (copy / "vqa" / "questions_test.json").unlink()
    shapes.generate(copy, n=N, seed=SEED, image_size=SIZE, progress=False)
    shapes.validate(copy)
    (copy / "audio" / "shapes_00002.wav").unlink()
    shapes.generate(copy, n=N, seed=SEED, image_size=SIZE, progress=False)
    shapes.validate(copy)


def test_a_crash_leaves_no_half_written_dataset(tmp_path, monkeypatch, copy):
    real = shapes._audio
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(shapes, "_audio", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        shapes.generate(tmp_path / "new", n=N, seed=SEED, progress=False)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".new")] == [".new.lock"]  # its lock stays
    # an existing (older) dataset survives a failed regeneration untouched
    before = _all_files(copy)
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="disk full"):
        shapes.generate(copy, n=N, seed=SEED + 1, image_size=SIZE, progress=False)
    assert _all_files(copy) == before
    assert [p.name for p in copy.parent.iterdir() if p.name.startswith(".copy")] == [".copy.lock"]


def test_refuses_to_replace_a_folder_with_foreign_files(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match=r"mine.*notes\.txt"):
        shapes.generate(root, n=12, progress=False)
    with pytest.raises(DatasetError, match="notes.txt"):
        shapes.generate(root, n=12, progress=False, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(shapes.generate(empty, n=12, progress=False)) == 12


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"image_size": 16}, {"splits": (0.5, 0.5)}, {"splits": (0.7, 0.2, 0.2)}, {"splits": (1.2, -0.1, -0.1)}],
)
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(DatasetError, match="shapes:"):
        shapes.generate(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_prepare_dataset_passes_shapes_options_and_names_unknown_ones(tmp_path):
    from fusionkit import workbook as wb

    ds = wb.prepare_dataset("shapes", tmp_path / "s", n_scenes=8, image_size=64, options={"questions_per_scene": 7},
                            progress=False)  # fmt: skip
    assert max(len(q) for q in _questions_by_image(Path(ds.root)).values()) == 7
    with pytest.raises(DatasetError, match=r"dataset_options \['n'\] are parameters of their own"):
        wb.prepare_dataset("shapes", tmp_path / "t", n_scenes=8, image_size=64, options={"n": 3}, progress=False)
