"""Flickr8k (three formats), Flickr30k, COCO captions and image folders as image-caption matching."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from fusionkit.data import registry
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.data.captions import _norm, negatives
from fusionkit.data.problems import Problems, Report
from fusionkit.data.validate import check

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def f8(tmp_path_factory, shared_data_module):
    """flickr8k-800 prepared with the defaults (hard negatives)."""
    out = tmp_path_factory.mktemp("f8") / "flickr8k"
    ds = registry.prepare("flickr8k", out, source_dir=shared_data_module / "flickr8k-800", progress=False)
    return ds


def _by_image(ds):
    out = defaultdict(list)
    for s in ds.samples:
        out[s.modalities["image"]].append(s)
    return out


def test_flickr8k_800_kaggle_csv_split_and_balance(f8, shared_data_module):
    ds = f8
    assert ds.name == "flickr8k" and ds.modalities == {"image": "image", "text": "text"}
    assert ds.targets == {"match": ["no", "yes"]}
    assert ds.media_root == (shared_data_module / "flickr8k-800").resolve()
    imgs = _by_image(ds)
    per_split = Counter(ss[0].split for ss in imgs.values())
    assert dict(per_split) == {"train": 600, "val": 100, "test": 100}  # fixed seeded split of the images
    for path, ss in imgs.items():
        assert len({s.split for s in ss}) == 1, f"{path} in two splits"
        assert Counter(s.targets["match"] for s in ss) == {0: 2, 1: 2}  # every image equally yes / no
    assert ds.info["split_policy"] == "random" and ds.info["format"] == "kaggle-csv"
    bal = ds.summary()["class_balance/match"]
    for sp in ("train", "val", "test"):
        assert bal[sp]["no"] == bal[sp]["yes"] > 0
    rep = Report.load(ds.root)
    assert rep.ok and rep.stats["images"] == 800 and rep.stats["captions"] == 4000
    assert json.loads((ds.root / "skipped.json").read_text()) == []


def test_flickr8k_negatives_are_captions_of_other_images_of_the_same_split(f8, shared_data_module):
    from tests.data.conftest import flickr_captions

    caps = flickr_captions(shared_data_module)
    owner = defaultdict(set)
    for img, cs in caps.items():
        for c in cs:
            owner[_norm(c)].add(img)
    split_of = {s.modalities["image"]: s.split for s in f8.samples}
    text_balance = Counter()
    for s in f8.samples:
        img = Path(s.modalities["image"]).name
        owners = owner[_norm(s.modalities["text"])]
        if s.targets["match"] == 1:
            assert img in owners
            text_balance[s.modalities["text"]] += 1
        else:
            assert img not in owners, s
            assert any(split_of[f"images/{o}"] == s.split for o in owners)
            text_balance[s.modalities["text"]] -= 1
    assert set(text_balance.values()) == {0}  # every caption is as often a negative as a positive


def test_hard_negatives_are_closer_than_random(f8, shared_data_module, tmp_path):
    rnd = registry.prepare(
        "flickr8k",
        tmp_path / "rnd",
        source_dir=shared_data_module / "flickr8k-800",
        negatives="random",
        progress=False,
        check_media="none",
    )
    hard_cos = f8.info["mean_negative_tfidf_cosine"]["train"]
    rnd_cos = rnd.info["mean_negative_tfidf_cosine"]["train"]
    assert hard_cos > 3 * rnd_cos and hard_cos > 0.2
    # the positives (image, caption) are the same pairs; only the negatives differ
    pos = lambda ds: sorted((s.modalities["image"], s.modalities["text"]) for s in ds.samples if s.targets["match"])  # noqa: E731
    assert pos(rnd) == pos(f8)


def test_caption_reference_files(f8):
    from pycocotools.coco import COCO

    doc = json.loads((f8.root / "captions.json").read_text())
    assert len(doc["images"]) == 800 and sum(len(i["sentences"]) for i in doc["images"]) == 4000
    splits = {i["filename"]: i["split"] for i in doc["images"]}
    assert all(splits[s.modalities["image"]] == s.split for s in f8.samples)
    for sp, n in (("train", 600), ("val", 100), ("test", 100)):
        coco = COCO(str(f8.root / "annotations" / f"captions_{sp}.json"))
        assert len(coco.getImgIds()) == n and len(coco.getAnnIds()) == 5 * n


def test_prepare_reuses_complete_folder_and_rebuilds_on_change(f8, shared_data_module, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(shared_data_module / "flickr8k-800", src)
    out = tmp_path / "out"
    a = registry.prepare("flickr8k", out, source_dir=src, check_media="none", progress=False)
    stamp, manifest = (out / "dataset.json").stat().st_mtime_ns, (out / "manifest.jsonl").read_bytes()
    registry.prepare("flickr8k", out, source_dir=src, check_media="none", progress=False)
    assert (out / "dataset.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    c = registry.prepare("flickr8k", out, source_dir=src, check_media="none", seed=1, progress=False)
    assert (out / "manifest.jsonl").read_bytes() != manifest and c.info["seed"] == 1
    assert c.info["fingerprint"] != a.info["fingerprint"]
    with open(src / "captions.txt", "a", encoding="utf-8") as f:  # the raw data changed: rebuilt
        f.write("1000268201_693b08cb0e.jpg,A sixth caption .\n")
    d = registry.prepare("flickr8k", out, source_dir=src, check_media="none", seed=1, progress=False)
    assert d.info["fingerprint"] != c.info["fingerprint"]
    assert Report.load(out).stats["captions"] == 4001


def test_same_seed_same_manifest(f8, shared_data_module, tmp_path):
    again = registry.prepare(
        "flickr8k", tmp_path / "again", source_dir=shared_data_module / "flickr8k-800", progress=False
    )
    assert (again.root / "manifest.jsonl").read_bytes() == (f8.root / "manifest.jsonl").read_bytes()


# ------------------------------------------------------------------------- the other formats
def _token_files(root: Path, caps: dict[str, list[str]]) -> None:
    lines = [f"{n}#{k}\t{c}" for n, cs in caps.items() for k, c in enumerate(cs)]
    lines.append("2258277193_586949ec62.jpg.1#0\tA stray caption of no image .")  # the real file has this
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = list(caps)
    for fn, part in (("trainImages", names[:16]), ("devImages", names[16:20]), ("testImages", names[20:])):
        (root / f"Flickr_8k.{fn}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")


def test_flickr8k_token_file_with_official_split(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = shutil.copytree(src_small, tmp_path / "src")
    _token_files(src, caps)
    ds = registry.prepare("flickr8k", tmp_path / "out", source_dir=src, pairs_per_image=1, progress=False)
    assert ds.info["format"] == "flickr-token" and ds.info["split_policy"] == "official"
    names = list(caps)
    split_of = {Path(s.modalities["image"]).name: s.split for s in ds.samples}
    assert {n for n, sp in split_of.items() if sp == "train"} == set(names[:16])
    assert {n for n, sp in split_of.items() if sp == "val"} == set(names[16:20])
    assert all(s.modalities["image"].startswith("Flicker8k_Dataset/") for s in ds.samples)
    rep = Report.load(ds.root)
    assert rep.ok and rep.stats["unsplit_images"] == 1  # the stray entry is in no split: not an error
    with pytest.raises(DatasetError, match="split='karpathy' but no dataset_flickr8k.json"):
        registry.prepare("flickr8k", tmp_path / "k", source_dir=src, split="karpathy", progress=False)


def test_flickr8k_karpathy_json(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = shutil.copytree(src_small, tmp_path / "src")
    names = list(caps)
    images, sid = [], 0
    for i, n in enumerate(names):
        sp = "train" if i < 14 else "restval" if i < 16 else "val" if i < 20 else "test"
        sents = [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": sid + k} for k, c in enumerate(caps[n])]
        sid += len(sents)
        images.append(
            {"filename": n, "imgid": i, "split": sp, "sentences": sents, "sentids": [s["sentid"] for s in sents]}
        )
    (src / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}), encoding="utf-8")
    ds = registry.prepare("flickr8k", tmp_path / "out", source_dir=src, progress=False)
    assert ds.info["format"] == "karpathy-json" and ds.info["split_policy"] == "karpathy"
    per = Counter(s.split for s in ds.samples)
    assert per == {"train": 16 * 4, "val": 4 * 4, "test": 4 * 4}  # restval counts as train
    # Kaggle CSV next to it: its captions, Karpathy's split
    (src / "captions.txt").write_text(
        "image,caption\n" + "".join(f'{n},"{c}"\n' for n in names for c in caps[n]), encoding="utf-8"
    )
    ds2 = registry.prepare("flickr8k", tmp_path / "out2", source_dir=src, progress=False)
    assert ds2.info["format"] == "kaggle-csv" and ds2.info["split_policy"] == "karpathy"
    assert Counter(s.split for s in ds2.samples) == per


def test_coco_captions_json_official_and_karpathy(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    names = list(caps)
    docs = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
    aid = 0
    for i, n in enumerate(names):
        part = "train" if i < 16 else "val"
        cid = 1000 + i
        fn = f"COCO_{part}2014_{cid:012d}.jpg"
        (src / f"{part}2014").mkdir(exist_ok=True)
        shutil.copyfile(src_small / "Flicker8k_Dataset" / n, src / f"{part}2014" / fn)
        docs[part]["images"].append({"id": cid, "file_name": fn})
        for c in caps[n]:
            docs[part]["annotations"].append({"id": aid, "image_id": cid, "caption": c})
            aid += 1
    for part, d in docs.items():
        (src / "annotations" / f"captions_{part}2014.json").write_text(json.dumps(d), encoding="utf-8")
    ds = registry.prepare("coco", tmp_path / "out", source_dir=src, progress=False)
    assert ds.info["split_policy"] == "official"
    imgs = {s.modalities["image"]: s.split for s in ds.samples}
    assert sum(1 for p, sp in imgs.items() if sp == "train") == 16
    assert all(p.startswith("train2014/") for p, sp in imgs.items() if sp == "train")
    assert Counter(sp for p, sp in imgs.items() if p.startswith("val2014/")) == {"val": 4, "test": 4}
    # with a Karpathy split file, that split wins and the COCO id links the two
    kimgs = []
    for i, n in enumerate(names):
        part = "train" if i < 16 else "val"
        kimgs.append(
            {
                "filepath": f"{part}2014",
                "filename": f"COCO_{part}2014_{1000 + i:012d}.jpg",
                "cocoid": 1000 + i,
                "split": "test" if i < 6 else "val" if i < 10 else "restval",
                "sentences": [{"raw": c} for c in caps[n]],
            }
        )
    (src / "dataset_coco.json").write_text(json.dumps({"images": kimgs}), encoding="utf-8")
    ds2 = registry.prepare("coco", tmp_path / "out2", source_dir=src, progress=False)
    assert ds2.info["split_policy"] == "karpathy"
    assert Counter(s.split for s in ds2.samples) == {"test": 24, "val": 16, "train": 56}
    refs = json.loads((ds2.root / "captions.json").read_text())
    assert {im["original_id"] for im in refs["images"]} == set(range(1000, 1024))
    ds3 = registry.prepare("coco", tmp_path / "out3", source_dir=src, captions="karpathy", progress=False)
    assert ds3.info["format"] == "karpathy-json" and len(ds3) == len(ds2)
    # an annotation for an image id the file does not list, and an image listed twice
    docs["train"]["annotations"].append({"id": 99999, "image_id": 4242, "caption": "orphan"})
    docs["train"]["images"].append(dict(docs["train"]["images"][0]))
    (src / "annotations" / "captions_train2014.json").write_text(json.dumps(docs["train"]), encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"captions_train2014\.json: images\[16\] \(id 1000\): image id 1000 appears twice"
    ):
        registry.prepare("coco", tmp_path / "out4", source_dir=src, progress=False)
    rep = check(src, name="coco")
    assert Counter(i.kind for i in rep.errors) == {"duplicate": 1, "unmatched": 1}
    assert any("names image_id 4242, which is not in the 'images' list" in i.message for i in rep.errors)


def test_flickr30k_token_and_imagefolder(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = shutil.copytree(src_small, tmp_path / "f30k")
    (src / "results_20130124.token").write_text(
        "".join(f"{n}#{k}\t{c}\n" for n, cs in caps.items() for k, c in enumerate(cs)), encoding="utf-8"
    )
    ds = registry.prepare(
        "flickr30k", tmp_path / "out", source_dir=src, split_fractions=(0.5, 0.25, 0.25), progress=False
    )
    assert ds.name == "flickr30k" and Counter(s.split for s in ds.samples) == {"train": 48, "val": 24, "test": 24}
    folder = shutil.copytree(src_small / "Flicker8k_Dataset", tmp_path / "pics")
    lines = [
        json.dumps({"image": n, "caption": c, "split": "test" if i < 4 else "train"})
        for i, n in enumerate(caps)
        for c in caps[n][:2]
    ]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds2 = registry.prepare("imagefolder", tmp_path / "out2", source_dir=folder, negatives="random", progress=False)
    assert Counter(s.split for s in ds2.samples)["test"] == 4 * 4
    assert registry.detect(folder)[0] == "imagefolder"


# ---------------------------------------------------------------------------------- bad input
def _kaggle(src: Path, rows: list[tuple[str, str]]) -> None:
    (src / "captions.txt").write_text("image,caption\n" + "".join(f'{i},"{c}"\n' for i, c in rows), encoding="utf-8")


def test_missing_corrupt_empty_and_unsafe_entries(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = shutil.copytree(src_small, tmp_path / "src")
    rows = [(n, c) for n in caps for c in caps[n]]
    (src / "Flicker8k_Dataset" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows += [("missing.jpg", "A caption of an image that is not there ."), ("corrupt.jpg", "A broken file .")]
    rows += [("../../etc/passwd", "An escape attempt ."), (list(caps)[0], "   ")]
    _kaggle(src, rows)
    with pytest.raises(DatasetError, match=r"captions\.txt:125: empty caption for image '1000268201_693b08cb0e\.jpg'"):
        registry.prepare("flickr8k", tmp_path / "out", source_dir=src, progress=False)
    _kaggle(src, rows[:-1])
    with pytest.raises(DatasetError, match=r"captions\.txt:122: image file 'missing\.jpg' not found under"):
        registry.prepare("flickr8k", tmp_path / "out", source_dir=src, progress=False)
    _kaggle(src, rows)
    assert not (tmp_path / "out" / "dataset.json").exists()  # nothing left that looks valid
    ds = registry.prepare("flickr8k", tmp_path / "out", source_dir=src, on_error="skip", progress=False)
    rep = Report.load(ds.root)
    kinds = Counter(i.kind for i in rep.skipped)
    assert kinds == {"missing_file": 1, "corrupt": 1, "unsafe_path": 1, "empty_caption": 1}
    skipped = json.loads((ds.root / "skipped.json").read_text())
    assert {s["kind"] for s in skipped} == set(kinds) and all("captions.txt:" in s["where"] for s in skipped)
    assert len({s.modalities["image"] for s in ds.samples}) == 24
    # `fusionkit data check` on the raw folder lists the same problems as errors
    rc = check(src)
    assert not rc.ok and Counter(i.kind for i in rc.errors) == kinds


def test_duplicate_and_malformed_karpathy_entries(flickr_small, tmp_path):
    src_small, caps = flickr_small
    src = shutil.copytree(src_small, tmp_path / "src")
    n0 = list(caps)[0]
    images = [{"filename": n, "split": "train", "sentences": [{"raw": c} for c in caps[n]]} for n in caps]
    images.append({"filename": n0, "split": "test", "sentences": [{"raw": "again"}]})
    images.append({"filename": "x.jpg", "split": "holdout", "sentences": []})
    images.append({"filepath": "/etc", "filename": "passwd", "split": "train", "sentences": [{"raw": "x"}]})
    (src / "dataset_flickr8k.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"images\[24\] \({n0}\): image '{n0}' appears twice"):
        registry.prepare("flickr8k", tmp_path / "out", source_dir=src, progress=False)
    rep = check(src)
    assert Counter(i.kind for i in rep.errors) == {"duplicate": 1, "malformed": 1, "unsafe_path": 1}
    assert any("split 'holdout'; expected train/restval/val/test" in i.message for i in rep.errors)
    assert any("absolute path '/etc/passwd' refused" in i.message for i in rep.errors)


def test_header_without_caption_column(flickr_small, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "captions.txt").write_text("photo;words\na.jpg;x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"captions\.txt:1: header \['photo', 'words'\]; expected an image column"):
        registry.prepare("flickr8k", tmp_path / "out", source_dir=src, progress=False)


def test_negatives_never_use_an_images_own_caption():
    rng = np.random.default_rng(0)
    caps = ["a dog runs", "a dog runs", "a cat sleeps", "a red car", "a dog runs fast", "two birds"]
    img_of = [0, 1, 2, 3, 4, 5]
    own = [{_norm(c)} for c in caps]
    own[1] = {_norm("a dog runs"), _norm("puppy")}
    for mode in ("hard", "random"):
        perm, cos = negatives(caps, img_of, own, mode, rng)
        assert sorted(perm.tolist()) == list(range(6))
        for k, j in enumerate(perm):
            assert img_of[j] != img_of[k] and _norm(caps[j]) not in own[img_of[k]]
    with pytest.raises(DatasetError, match="at least 2 images"):
        negatives(caps[:2], [0, 0], [set(caps[:2])], "hard", rng)


def test_problems_modes():
    p = Problems("skip")
    p.error("missing_file", "f:1", "gone")
    assert p.issues[0].severity == "skipped"
    with pytest.raises(DatasetError, match="f:2: gone"):
        Problems("raise").error("missing_file", "f:2", "gone")
    with pytest.raises(DatasetError, match="on_error"):
        Problems("ignore")


def test_processed_folder_check_lists_every_problem(f8, tmp_path):
    dst = shutil.copytree(f8.root, tmp_path / "copy")
    lines = (dst / "manifest.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines[:6]]
    rows[1]["image"] = "images/nope.jpg"
    rows[2]["image"] = "../../etc/passwd"
    rows[3]["match"] = 7
    rows[4]["id"] = rows[0]["id"]
    rows[5]["text"] = ""
    (dst / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    rep = check(dst)
    assert not rep.ok
    assert Counter(i.kind for i in rep.issues) == {
        "missing_file": 1,
        "unsafe_path": 1,
        "malformed": 2,
        "duplicate": 1,
        "empty_caption": 1,
    }
    with pytest.raises(DatasetError):
        load_dataset(dst)
