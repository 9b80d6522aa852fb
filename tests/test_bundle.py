"""fusionkit.bundle: one format for every trained model (safetensors + versioned JSON)."""

import json

import pytest
import torch

from fusionkit import bundle
from fusionkit.bundle import BundleError, ClassifierSpec, load_classifier, save_classifier


def _spec(**kw):
    base = dict(fusion="gmu", in_dims={"audio": 6, "image": 5}, num_classes=3, class_names=["a", "b", "c"],
                target="label", hidden=8, dropout=0.0, train={"best_epoch": 2}, config={"lr": 0.1})  # fmt: skip
    return ClassifierSpec(**{**base, **kw})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    spec = _spec()
    model = spec.build().eval()
    path = save_classifier(tmp_path / "model.safetensors", model, spec)
    return path, model, spec


def test_classifier_round_trip_gives_the_same_outputs(saved):
    path, model, spec = saved
    back, back_spec = load_classifier(path)
    assert back_spec == spec
    x = {"audio": torch.randn(4, 6), "image": torch.randn(4, 5)}
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
        assert not back.training
    doc = json.loads(path.with_suffix(".json").read_text())
    assert (doc["format"], doc["version"], doc["kind"]) == ("fusionkit.model", bundle.VERSION, "classifier")
    assert doc["fusionkit_version"]
    header_len = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: length + JSON header
    assert json.loads(path.read_bytes()[8 : 8 + header_len])


def test_a_bundle_of_an_earlier_fusionkit_still_loads(saved):
    path, model, spec = saved
    meta = path.with_suffix(".json")
    doc = json.loads(meta.read_text())
    for k in ("format", "version", "fusionkit_version", "kind"):
        doc.pop(k)
    meta.write_text(json.dumps(doc))
    back, back_spec = load_classifier(path)
    assert back_spec == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=bundle.VERSION + 1), "made by a newer fusionkit"),
        (lambda d: d.update(format="other"), "not a fusionkit model bundle"),
        (lambda d: d.update(kind="vqa"), "a 'vqa' model, expected a 'classifier' model"),
        (lambda d: d.pop("class_names"), "missing or malformed field 'class_names'"),
        (lambda d: d.update(hidden=16), "does not fit the model its .json describes"),
    ],
)
def test_bad_descriptions_are_refused_naming_the_file(saved, change, message):
    path, _, _ = saved
    meta = path.with_suffix(".json")
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message) as e:
        load_classifier(path)
    assert str(path.parent) in str(e.value)


def test_truncated_or_missing_weights(saved):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"{path}: not a readable safetensors file"):
        load_classifier(path)
    path.unlink()
    with pytest.raises(BundleError, match="not found; train it first"):
        load_classifier(path)


def test_tensors_round_trip_and_leave_no_temporary_file(tmp_path):
    out = bundle.save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0).reshape(2, 3).T})
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    assert torch.equal(bundle.load_tensors(out)["w"], torch.arange(6.0).reshape(2, 3).T)
