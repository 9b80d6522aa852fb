"""fusionkit export / predict: a run's model as a bundle that runs on new raw files without the
run folder, agreeing with the model on the cached features; bad rows skipped and named, bad
bundles refused with the file named."""

import csv
import json
import shutil

import pytest
import torch

from fusionkit import bundle, cli
from fusionkit.bundle import BundleError, ClassifierSpec, save_classifier
from fusionkit.export import export_run
from fusionkit.predict import Predictor, read_inputs, single_inputs
from fusionkit.train import SplitData, predict
from tests.bundles import train_model


def _manifest(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _test_rows(ds, drop=()):
    rows = []
    for s in ds.split("test"):
        rows.append({"id": s.id, **{m: v for m, v in s.modalities.items() if m not in drop}, "label": 0})
    return rows


def test_bundle_describes_model_encoders_data_and_metrics(exported_run):
    doc = json.loads((exported_run["bundle"] / "model.json").read_text())
    assert doc["version"] == bundle.VERSION == 2 and doc["kind"] == "classifier"
    assert sorted(doc["encoders"]) == ["audio", "image", "text"]
    assert doc["encoders"]["image"]["weights"] == "bundle"  # random init: its state travels inside
    assert doc["encoders"]["text"]["weights"] == "machine" and doc["encoders"]["audio"]["weights"] == "none"
    assert doc["dataset"]["name"] == exported_run["ds"].name and doc["dataset"]["target_kind"] == "classification"
    assert doc["metrics"]["test_accuracy"] == 0.5 and doc["class_names"] == exported_run["names"]
    assert (exported_run["bundle"] / bundle.ENCODER_WEIGHTS).is_file()


def test_predictions_from_raw_files_agree_with_the_model_on_cached_features(exported_run, tmp_path):
    # the bundle alone: no run folder, no feature cache
    moved = tmp_path / "bundle"
    shutil.copytree(exported_run["bundle"], moved)
    ds = exported_run["ds"]
    manifest = _manifest(ds.root / "new.csv", _test_rows(ds), ["id", "image", "text", "audio", "label"])
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(moved), str(manifest), "--out", str(out), "--device", "cpu"]) == 0
    with open(out) as f:
        got = list(csv.DictReader(f))
    test, names = exported_run["test"], exported_run["names"]
    assert [r["id"] for r in got] == test.ids
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in names] for r in got])
    assert torch.allclose(probs, exported_run["probs"], atol=1e-5, rtol=0)
    assert [r["prediction"] for r in got] == [names[i] for i in exported_run["probs"].argmax(1).tolist()]
    for m in ("audio", "image", "text"):  # gmu's per-modality gates
        assert torch.allclose(torch.tensor([float(r[f"weight_{m}"]) for r in got]), exported_run["weights"][m].reshape(len(got), -1).mean(1), atol=1e-5)  # fmt: skip
    assert all(r["missing"] == "" for r in got)


def test_a_missing_modality_goes_through_the_mask_and_is_stated(exported_run):
    ds = exported_run["ds"]
    manifest = _manifest(ds.root / "noaudio.csv", _test_rows(ds, drop=("audio",)), ["id", "image", "text", "label"])
    p = exported_run["predictor"]
    res = p.predict(read_inputs(manifest, p))
    assert [r["missing"] for r in res.records] == [["audio"]] * len(res.records)
    test = exported_run["test"]
    mask = {m: torch.ones(len(test)) for m in test.features}
    mask["audio"] = torch.zeros(len(test))
    feats = dict(test.features, audio=torch.zeros_like(test.features["audio"]))
    logits, _ = predict(exported_run["model"], SplitData(feats, test.labels, test.ids), mask=mask)
    probs = torch.tensor([[r["probabilities"][c] for c in exported_run["names"]] for r in res.records])
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-5, rtol=0)


def test_bad_rows_are_named_and_skipped_and_the_others_written(exported_run, tmp_path, capsys):
    ds = exported_run["ds"]
    rows = _test_rows(ds)
    (ds.root / "not_an_image.jpg").write_text("this is text, not a JPEG")
    rows[0]["image"] = "not_an_image.jpg"
    rows[1]["image"] = "../outside.jpg"
    rows[2]["text"] = ""
    manifest = _manifest(ds.root / "bad.csv", rows, ["id", "image", "text", "audio", "label"])
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(exported_run["bundle"]), str(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    for r, what in zip(rows[:3], ("not_an_image.jpg", "escapes", "empty text"), strict=True):
        assert f"id {r['id']!r}" in err and what in err
    assert f"{manifest}:2" in err  # file and line
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows[3:]]
    assert all(set(g["probabilities"]) == set(exported_run["names"]) for g in got)


def test_unknown_columns_and_untrained_modalities_are_refused(exported_run, capsys, tmp_path):
    ds = exported_run["ds"]
    rows = [dict(r, depth=1) for r in _test_rows(ds)]
    manifest = _manifest(ds.root / "extra.csv", rows, ["id", "image", "text", "audio", "label", "depth"])
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(exported_run["bundle"]), str(manifest), "--out", str(out)]) == 2
    assert "column(s) ['depth'] unknown to the model" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="not trained on a tabular modality"):
        exported_run["predictor"].modality_of("tabular")


def test_single_inputs(exported_run):
    s = exported_run["ds"].split("test")[0]
    root = exported_run["ds"].root
    p = exported_run["predictor"]
    res = p.predict(single_inputs(p, image=str(root / s.modalities["image"]), text=s.modalities["text"],
                                  audio=str(root / s.modalities["audio"])))  # fmt: skip
    i = exported_run["test"].ids.index(s.id)
    assert res.records[0]["prediction"] == exported_run["names"][int(exported_run["probs"][i].argmax())]
    with pytest.raises(ValueError, match="no input given"):
        single_inputs(p, image=None)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "model.json").write_text(json.dumps({**json.loads((b / "model.json").read_text()), "version": 99})), "made by a newer fusionkit"),
        (lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:100]), "not a readable safetensors file"),
        (lambda b: (b / bundle.ENCODER_WEIGHTS).write_bytes((b / bundle.ENCODER_WEIGHTS).read_bytes()[:-64] + b"\0" * 64), "corrupted"),
        (lambda b: (b / "model.json").write_text("{not json"), "model.json"),
        (lambda b: (b / "model.json").write_text(json.dumps({**json.loads((b / "model.json").read_text()), "encoders": {}})), "no encoders recorded"),
        (lambda b: (b / "model.json").write_text(json.dumps(_with_text_encoder(json.loads((b / "model.json").read_text()), "hf:/nonexistent/model"))), "neither inside the bundle nor on this machine"),
    ],
)  # fmt: skip
def test_bad_bundles_are_refused_naming_the_file(exported_run, tmp_path, damage, message):
    b = tmp_path / "b"
    shutil.copytree(exported_run["bundle"], b)
    damage(b)
    with pytest.raises(BundleError, match=message) as e:
        Predictor.load(b)
    assert str(b) in str(e.value)


def _with_text_encoder(doc, name):
    doc["encoders"]["text"]["encoder"] = name
    return doc


def test_a_04_bundle_without_encoders_asks_for_an_export(exported_run):
    with pytest.raises(BundleError, match="fusionkit export RUN"):
        Predictor.load(exported_run["run"])


def test_standalone_bundle_carries_the_pretrained_weights(exported_run, tmp_path):
    out = export_run(exported_run["run"], tmp_path / "standalone", standalone=True).parent
    doc = json.loads((out / "model.json").read_text())
    assert (
        doc["encoders"]["text"]["weights"] == "folder" and (out / "encoders" / "text" / "model.safetensors").is_file()
    )
    p = Predictor.load(out)
    res = p.predict(read_inputs(exported_run["ds"].root, p, split="test"))
    probs = torch.tensor([[r["probabilities"][c] for c in exported_run["names"]] for r in res.records])
    assert torch.allclose(probs, exported_run["probs"], atol=1e-5, rtol=0)


def test_a_regression_bundle_predicts_in_the_targets_units(exported_run, tmp_path):
    splits, _ = exported_run["index"].splits(target="label", modalities=["audio"])
    for d in splits.values():
        d.labels = d.labels.float() * 10 + 5  # a number to predict
    model, in_dims = train_model(splits, 0, method="concat")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(exported_run["run"] / "features.json", run_dir / "features.json")
    spec = ClassifierSpec(fusion="concat", in_dims=in_dims, num_classes=0, class_names=[], target="score", hidden=16)
    save_classifier(run_dir / "model.safetensors", model, spec)
    out = export_run(run_dir, tmp_path / "bundle").parent
    doc = json.loads((out / "model.json").read_text())
    assert doc["dataset"]["target_kind"] == "regression" and doc["dataset"]["target_scale"]["std"] > 1
    p = Predictor.load(out)
    res = p.predict(read_inputs(exported_run["ds"].root, p, split="test"))
    want, _ = predict(model, splits["test"])
    got = torch.tensor([r["prediction"] for r in res.records])
    assert torch.allclose(got, want[:, 0], atol=1e-4) and "probabilities" not in res.records[0]


def test_export_refuses_a_task_the_run_did_not_train(exported_run, tmp_path, capsys):
    assert cli.main(["export", str(exported_run["run"]), "--out", str(tmp_path / "x"), "--task", "captioning"]) == 2
    assert "no trained captioning models in the run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_tabular_column_absent_at_prediction_time_is_named(tmp_path):
    from fusionkit.data import registry
    from fusionkit.data.base import DatasetError
    from fusionkit.index import FeatureIndex
    from tests.encoders.test_tabular_encoder import _patients

    src = _patients(tmp_path / "src", n=40)
    ds = registry.prepare("manifest", tmp_path / "ds", source_dir=src, tabular="record=age,sex,bp?", progress=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    index = FeatureIndex.build(ds, {}, tmp_path / "cache", ["pooled"], path=run_dir / "features.json", progress=False)
    splits, _ = index.splits(target="score", modalities=["record"])
    model, in_dims = train_model(splits, 0, method="concat")
    spec = ClassifierSpec(fusion="concat", in_dims=in_dims, num_classes=0, class_names=[], target="score", hidden=16)
    save_classifier(run_dir / "model.safetensors", model, spec)
    p = Predictor.load(export_run(run_dir, tmp_path / "bundle").parent, device="cpu")
    rows = [{"id": f"n{i}", "age": 40 + i, "sex": "mf"[i % 2], "bp": ""} for i in range(3)]
    full = p.predict(read_inputs(_manifest(tmp_path / "full.csv", rows, ["id", "age", "sex", "bp"]), p))
    assert len(full.records) == 3 and all(r["missing"] == [] for r in full.records)
    no_sex = _manifest(
        tmp_path / "no_sex.csv", [{k: v for k, v in r.items() if k != "sex"} for r in rows], ["id", "age", "bp"]
    )
    with pytest.raises(DatasetError, match=r"no_sex\.csv: tabular column\(s\) \['sex'\] of 'record' absent"):
        read_inputs(no_sex, p)
    rows[1]["sex"] = "x"  # a category the training split lacks: read as unknown, counted
    res = p.predict(read_inputs(_manifest(tmp_path / "unseen.csv", rows, ["id", "age", "sex", "bp"]), p))
    assert len(res.records) == 3 and res.unknown == {"record": {"sex": 1}} and full.unknown == {}
    no_bp = _manifest(
        tmp_path / "no_bp.csv", [{k: v for k, v in r.items() if k != "bp"} for r in rows], ["id", "age", "sex"]
    )
    assert len(p.predict(read_inputs(no_bp, p)).records) == 3  # bp was declared as allowed to be missing


def test_rows_sharing_a_file_or_text_encode_it_once_and_each_get_its_result(exported_run, monkeypatch, tmp_path):
    """A manifest of pairs repeats its images (flickr8k's 4 captions per image): each distinct file
    and text is decoded and encoded once, every row still gets the features of its own inputs -
    the same predictions as the rows one by one - and a bad file shared by rows skips each of them."""
    import fusionkit.predict as pred

    ds = exported_run["ds"]
    rows = _test_rows(ds)[:3]
    repeated = [{**r, "id": f"{r['id']}-{k}"} for k in range(3) for r in rows]  # 9 rows, 3 distinct inputs each
    manifest = _manifest(ds.root / "pairs.csv", repeated, ["id", "image", "text", "audio", "label"])
    seen = []
    encode = pred.encode_records
    monkeypatch.setattr(pred, "encode_records", lambda enc, vals, *a, **k: seen.append(len(vals)) or encode(enc, vals, *a, **k))  # fmt: skip
    p = exported_run["predictor"]
    res = p.predict(read_inputs(manifest, p))
    assert seen == [3, 3, 3], "one encoding per distinct file / text, per modality"
    alone = p.predict(read_inputs(_manifest(ds.root / "three.csv", rows, ["id", "image", "text", "audio", "label"]), p))
    by_id = {r["id"]: r["probabilities"] for r in alone.records}
    assert [r["id"] for r in res.records] == [r["id"] for r in repeated]
    for r in res.records:
        want = by_id[r["id"].rsplit("-", 1)[0]]
        assert all(abs(r["probabilities"][c] - want[c]) < 1e-6 for c in want)
    (ds.root / "broken.jpg").write_text("not a JPEG")
    bad = [{**r, "image": "broken.jpg"} if r["id"].startswith(rows[0]["id"]) else r for r in repeated]
    res = p.predict(
        read_inputs(_manifest(ds.root / "bad_pairs.csv", bad, ["id", "image", "text", "audio", "label"]), p)
    )
    skipped = sorted(i.record for i in res.issues)
    assert skipped == sorted(r["id"] for r in bad if r["image"] == "broken.jpg") and len(res.records) == 6
