"""The tabular modality: a manifest's column group, its encoder (fitted on the training split only),
the cache and the feature index carrying the fitted statistics as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusionkit.compare import run
from fusionkit.data import registry
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.encoders import build_encoder
from fusionkit.encoders.base import InputError
from fusionkit.features import FITTED, extract_features, read_feature_set
from fusionkit.index import FeatureIndex
from fusionkit.train import TrainConfig

COLUMNS = {"age": {"type": "numeric", "missing": False}, "sex": {"type": "categorical", "missing": False},
           "bp": {"type": "numeric", "missing": True}}  # fmt: skip


def _patients(root: Path, n: int = 300, seed: int = 0, unseen: int = 0) -> Path:
    """score = 0.1 (age - 50) + [sex = m] + 0.5 e: R^2 ceiling from the record 1.25 / 1.5; bp is
    noise and missing on every 10th row; ``unseen`` test rows have a sex the training split lacks."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,caption,age,sex,bp,score,split"]
    for i in range(n):
        age, male = rng.normal(50, 10), rng.integers(0, 2)
        score = 0.1 * (age - 50) + male + 0.5 * rng.normal()
        split = ["train", "train", "train", "val", "test"][i % 5]
        sex = "x" if split == "test" and i // 5 < unseen else "mf"[male]
        bp = "" if i % 10 == 0 else f"{rng.normal(120, 15):.1f}"
        rows.append(f"p{i},visit {i},{age:.2f},{sex},{bp},{score:.4f},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_fit_uses_the_training_records_only_and_encodes_as_documented():
    enc = build_encoder("tabular")
    train = [{"age": 20.0, "sex": "f", "bp": None}, {"age": 40.0, "sex": "m", "bp": 100.0}]
    enc.fit(train, COLUMNS)
    assert enc.layout() == ["age", "sex=f", "sex=m", "sex=<unknown>", "bp", "bp:present", "const:+1", "const:-1"]
    assert enc.dims == {"pooled": 8, "grid": 8}
    x = enc.load({"age": 50.0, "sex": "m", "bp": None}).tolist()
    assert x == [2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, -1.0]  # (50 - 30) / 10; bp imputed (0) and masked
    assert enc.load({"age": 30.0, "sex": "q", "bp": 100.0}).tolist()[1:4] == [0.0, 0.0, 1.0]  # unseen -> unknown
    assert enc.split_notes([{"age": 1.0, "sex": "q", "bp": None}]) == {
        "unknown_categories": {"sex": 1}, "missing_values": {"bp": 1}
    }  # fmt: skip
    with pytest.raises(InputError, match=r"record lacks tabular column\(s\) \['bp'\]"):
        enc.load({"age": 1.0, "sex": "f"})
    with pytest.raises(InputError, match="'age' = inf; expected a finite number"):
        enc.load({"age": float("inf"), "sex": "f", "bp": 1.0})
    with pytest.raises(InputError, match="'sex' is missing; it was not declared"):
        enc.load({"age": 1.0, "sex": None, "bp": 1.0})
    again = build_encoder("tabular").load_fitted(json.loads(json.dumps(enc.fitted())))
    assert again.matches(enc.identity()) and again.load({"age": 50.0, "sex": "m", "bp": None}).tolist() == x
    other = build_encoder("tabular").fit([{"age": 0.0, "sex": "f", "bp": 1.0}, *train], COLUMNS)
    assert not other.matches(enc.identity())  # other statistics: another cache entry


def test_manifest_tabular_option_and_its_bad_input(tmp_path):
    src = _patients(tmp_path / "src", n=20)
    ds = registry.prepare("manifest", tmp_path / "ds", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    assert ds.modalities == {"caption": "text", "record": "tabular"} and ds.targets == {
        "score": []
    }  # columns not targets
    assert ds.tabular == {"record": COLUMNS}
    first = next(s for s in ds.samples if s.id == "p0").modalities["record"]
    assert set(first) == {"age", "sex", "bp"} and first["bp"] is None and isinstance(first["age"], float)
    assert load_dataset(ds.root).tabular == ds.tabular
    with pytest.raises(DatasetError, match=r"manifest\.csv:2 \(id 'p0'\): tabular column 'bp' of 'record' is missing"):
        registry.prepare("manifest", tmp_path / "d2", source_dir=src, tabular="record=age,sex,bp", progress=False)
    text = (src / "manifest.csv").read_text().splitlines()
    fields = text[3].split(",")
    fields[2] = "inf"
    text[3] = ",".join(fields)
    (src / "manifest.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(
        DatasetError, match=r"manifest\.csv:4 \(id 'p2'\): tabular column 'age' of 'record' = 'inf' \(inf\)"
    ):
        registry.prepare("manifest", tmp_path / "d3", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    fields[2] = "NaN"  # a NaN in a column not declared as allowed to be missing
    text[3] = ",".join(fields)
    (src / "manifest.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=r"manifest\.csv:4 \(id 'p2'\): tabular column 'age' of 'record' is missing"):
        registry.prepare("manifest", tmp_path / "d3", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    with pytest.raises(DatasetError, match=r"tabular column\(s\) \['chol'\] of 'record' not found"):
        registry.prepare("manifest", tmp_path / "d4", source_dir=src, tabular="record=age,chol", progress=False)
    with pytest.raises(DatasetError, match=r"tabular option: 'age:float'"):
        registry.prepare("manifest", tmp_path / "d5", source_dir=src, tabular="record=age:float", progress=False)
    # a dataset folder whose record lacks a column is refused when read
    man = ds.root / "manifest.jsonl"
    man.write_text(man.read_text().replace('"sex": "m", ', "", 1), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"tabular modality 'record' lacks column\(s\) \['sex'\]"):
        load_dataset(ds.root)


def test_cached_with_its_fitted_state_and_unseen_categories_counted(tmp_path):
    src = _patients(tmp_path / "src", n=60, unseen=3)
    ds = registry.prepare("manifest", tmp_path / "ds", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    with pytest.warns(RuntimeWarning, match=r"categories the training split lacks.*\{'sex': 3\}"):
        index = FeatureIndex.build(ds, {}, tmp_path / "cache", ["pooled"], path=tmp_path / "f.json", progress=False)
    entry = FeatureIndex.read(tmp_path / "f.json").modality("record")
    train_ages = [s.modalities["record"]["age"] for s in ds.split("train")]
    assert entry.fitted["columns"]["age"]["mean"] == pytest.approx(np.mean(train_ages))  # train only
    assert entry.fitted["columns"]["sex"]["categories"] == ["f", "m"]
    assert entry.notes["test"]["unknown_categories"] == {"sex": 3} and "unknown_categories" in entry.notes["train"]
    folder = Path(entry.file("pooled", "test")).parent
    assert json.loads((folder / FITTED).read_text()) == entry.fitted  # JSON beside the features
    assert read_feature_set(entry.file("pooled", "val")).meta["fitted"] == entry.fitted
    assert index.encoders()["record"].fitted() == entry.fitted
    # warm cache: the same entry, nothing recomputed
    fs = extract_features(ds, "record", split="test", cache_dir=tmp_path / "cache", progress=False)
    assert str(fs.path) == entry.file("pooled", "test")


def test_a_regression_on_the_tabular_modality_reaches_its_r2_ceiling(tmp_path):
    src = _patients(tmp_path / "src", n=800, seed=1)
    ds = registry.prepare("manifest", tmp_path / "ds", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    index = FeatureIndex.build(ds, {}, tmp_path / "cache", ["pooled"], path=tmp_path / "f.json", progress=False)
    splits, names = index.splits(target="score")
    assert names == [] and sorted(splits["train"].features) == ["record"]  # no text encoder given: left out
    res = run(["concat"], splits, TrainConfig(epochs=30, batch_size=64), 0, seeds=[0, 1], hidden=32,
              show_progress=False)  # fmt: skip
    s = res.summary.set_index("method")
    assert s.loc["unimodal:record", "test_r2_mean"] == pytest.approx(1.25 / 1.5, abs=0.07)
