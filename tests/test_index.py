"""fusionkit.index: the feature index 02 hands to 03/04/05, read back exactly, old files loading,
newer and malformed ones refused with the file and the field named."""

import json

import pytest
import torch

from fusionkit.data import shapes
from fusionkit.index import LEGACY_VERSION, VERSION, FeatureIndex, FeatureIndexError


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    ds = shapes.generate(tmp / "shapes", n=40, image_size=32, progress=False)
    path = tmp / "features.json"
    index = FeatureIndex.build(ds, {"audio": "logmel"}, tmp / "cache", ["pooled"], path=path, progress=False)
    return ds, path, index


def test_written_index_reads_back_equal_and_versioned(indexed):
    ds, path, index = indexed
    doc = json.loads(path.read_text())
    assert doc["format"] == "fusionkit.feature_index" and doc["version"] == VERSION
    back = FeatureIndex.read(path)
    assert back == index
    assert back.path == path
    assert back.manifest_hash == ds.manifest_hash() and back.targets == ds.targets
    assert sorted(back.modalities) == ["audio"] and back.modalities["audio"].encoder == "logmel"


def test_splits_align_features_with_the_dataset_labels(indexed):
    ds, path, _ = indexed
    splits, class_names = FeatureIndex.read(path).splits(target="tone")
    assert class_names == ds.targets["tone"]
    for split, data in splits.items():
        samples = ds.split(split)
        assert data.ids == [s.id for s in samples]
        assert data.labels.tolist() == [s.targets["tone"] for s in samples]
        assert data.features["audio"].shape[0] == len(samples) and torch.isfinite(data.features["audio"]).all()
    with pytest.raises(KeyError, match="target 'nope' not in dataset"):
        FeatureIndex.read(path).splits(target="nope")


def test_an_index_without_version_from_an_earlier_fusionkit_still_loads(indexed, tmp_path):
    _, path, index = indexed
    doc = json.loads(path.read_text())
    del doc["format"], doc["version"]
    old = tmp_path / "features.json"
    old.write_text(json.dumps(doc))
    back = FeatureIndex.read(old)
    assert back == index and LEGACY_VERSION < VERSION
    splits, _ = back.splits(target="label")
    assert set(splits) == {"train", "val", "test"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=VERSION + 1), "made by a newer fusionkit"),
        (lambda d: d.update(format="something.else"), "not a fusionkit feature index"),
        (lambda d: d.pop("cache_dir"), "field 'cache_dir' missing"),
        (lambda d: d["modalities"]["audio"].pop("kind"), "modalities.audio: missing or malformed field 'kind'"),
        (lambda d: d.update(tasks=[1]), "field 'tasks' must be an object"),
    ],
)
def test_bad_index_files_name_the_file_and_the_field(indexed, tmp_path, change, message):
    _, path, _ = indexed
    doc = json.loads(path.read_text())
    change(doc)
    bad = tmp_path / "features.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(FeatureIndexError, match=message) as e:
        FeatureIndex.read(bad)
    assert str(bad) in str(e.value)


def test_missing_or_garbled_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 02_feature_extraction first"):
        FeatureIndex.read(tmp_path / "absent.json")
    garbled = tmp_path / "features.json"
    garbled.write_text("{not json")
    with pytest.raises(FeatureIndexError, match=f"{garbled}:1:2: not valid JSON"):
        FeatureIndex.read(garbled)


def test_an_output_that_was_not_cached_is_named(indexed):
    _, path, _ = indexed
    with pytest.raises(FeatureIndexError, match="no cached 'grid' features of audio for split 'train'"):
        FeatureIndex.read(path).splits(target="label", output="grid")
    with pytest.raises(FeatureIndexError, match="no features for modality 'image'"):
        FeatureIndex.read(path).splits(target="label", modalities=["image"])


def test_encoders_are_rebuilt_and_checked_by_identity(indexed, tmp_path):
    _, path, index = indexed
    assert set(FeatureIndex.read(path).encoders()) == {"audio"}
    other = FeatureIndex.read(path)
    other.modalities["audio"].identity = {**other.modalities["audio"].identity, "n_mels": -1}
    other.write(tmp_path / "features.json")
    with pytest.raises(FeatureIndexError, match="differs from the one that made the cache"):
        FeatureIndex.read(tmp_path / "features.json").encoders()


def test_write_leaves_no_temporary_file_and_keeps_the_tasks_entry(indexed, tmp_path):
    _, path, index = indexed
    copy = FeatureIndex.read(path)
    copy.tasks = {"version": 1, "status": {}}
    out = copy.write(tmp_path / "features.json")
    assert [p.name for p in tmp_path.iterdir()] == ["features.json"]  # no temporary file left behind
    assert FeatureIndex.read(out).tasks == {"version": 1, "status": {}}


def test_by_target_gives_each_target_its_own_labels_and_class_count(indexed):
    ds, path, _ = indexed
    index = FeatureIndex.read(path)
    per_target = index.by_target(["tone", "has_red"])
    assert list(per_target) == ["tone", "has_red"]
    for target, (splits, n_classes) in per_target.items():
        assert n_classes == len(ds.targets[target])
        for split, data in splits.items():
            assert data.labels.tolist() == [s.targets[target] for s in ds.split(split)]
    with pytest.raises(KeyError, match="target 'nope' not in dataset"):
        index.by_target(["tone", "nope"])


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A manifest of 12 tones (3 pitches = the label) by 4 speakers (``group``), audio only."""
    import numpy as np
    import soundfile as sf

    from fusionkit.data import registry

    root = tmp_path_factory.mktemp("grouped")
    rows = ["id,audio,label,group"]
    for i in range(12):
        t = np.arange(8000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * (i % 3) + 15 * (i // 3)) * t)
        sf.write(root / f"c{i}.wav", wave.astype(np.float32), 16000)
        rows.append(f"s{i:02d},c{i}.wav,{'abc'[i % 3]},spk{i // 3}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = registry.prepare("manifest", root / "ds", source_dir=root / "manifest.csv", progress=False)
    cache = root / "cache"
    index = FeatureIndex.build(ds, {"audio": "logmel"}, cache, ["pooled"], path=root / "features.json", progress=False,
                               options={"audio": {"cmvn": True, "segments": 2}})  # fmt: skip
    return ds, index


def test_by_fold_resplits_by_group_and_options_are_recorded(grouped):
    ds, index = grouped
    assert index.modalities["audio"].options == {"cmvn": True, "segments": 2}
    assert index.modalities["audio"].dims["pooled"] == [4 * 64]
    again = FeatureIndex.read(index.path)
    assert again.modalities["audio"].options == {"cmvn": True, "segments": 2}
    assert set(again.encoders()) == {"audio"}  # rebuilt with its options: the identity matches
    folds, fold_list = index.by_fold("label")
    assert [f.test for f in fold_list] == ["spk0", "spk1", "spk2", "spk3"]
    group_of = ds.groups()
    for f in fold_list:
        splits, n = folds[f.name]
        assert n == 3 and {group_of[i] for i in splits["test"].ids} == {f.test}
        assert {group_of[i] for i in splits["val"].ids} == {f.val}
        assert {group_of[i] for i in splits["train"].ids} == set(f.train)
    anchors = index.anchors_by_fold({"audio": {"encoder": "mfcc", "options": {"segments": 4}}, "image": {}}, "label")
    assert list(anchors) == ["audio_mfcc_lr"]  # no image modality here: left out
    splits, modality = anchors["audio_mfcc_lr"]["test=spk0"]
    assert modality == "audio" and splits["train"].features["audio"].shape[1] == 6 * 60


def test_by_fold_without_groups_is_refused(indexed):
    from fusionkit.data.base import DatasetError

    with pytest.raises(DatasetError, match="no sample has a group"):
        indexed[2].by_fold("label")


def test_also_computes_the_task_grids_in_the_same_pass(tmp_path):
    """02 asks the build for the image grids the tasks read (``also``): they land in the cache,
    not in the index, from the one pass that made the pooled vectors - the tasks' extraction then
    finds them there and encodes no image again."""
    from fusionkit.features import extractions
    from fusionkit.tasks import features as task_features

    ds = shapes.generate(tmp_path / "shapes", n=40, image_size=32, progress=False)
    assert task_features.shared_outputs(ds, ["captioning", "retrieval"]) == {"image": ["grid"]}
    assert task_features.shared_outputs(ds, ["retrieval"]) == {} and task_features.shared_outputs(ds, []) == {}
    also = task_features.shared_outputs(ds, ["captioning"])
    path = tmp_path / "features.json"
    index = FeatureIndex.build(ds, {"image": "color_histogram"}, tmp_path / "cache", ["pooled"], path=path,
                               progress=False, also=also)  # fmt: skip
    assert set(index.modalities["image"].files) == {"pooled"}, "the index records only its own outputs"
    image_passes = [r for r in extractions(tmp_path / "cache") if r["entry"].split("/")[1] == "image"]
    assert sorted(r["entry"].rsplit("-", 1)[1] for r in image_passes) == ["grid"] * 3 + ["pooled"] * 3
    task_features.extract_task_features(ds, path, ["captioning"], tmp_path / "cache", progress=False)
    after = [r for r in extractions(tmp_path / "cache") if r["entry"].split("/")[1] == "image"]
    assert after == image_passes, "the tasks' image grids came from the cache"
    feats = FeatureIndex.read(path).to_dict()["tasks"]["features"]["images"]
    assert "grid" in feats["files"]  # (pooled from its own file: the histogram's pooled vector is no grid mean)
