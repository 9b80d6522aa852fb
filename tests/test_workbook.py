"""fusionkit.workbook: what 01, 02 and 05 show about the data and the predictions."""

import pytest
import torch

from fusionkit import workbook as wb
from fusionkit.data import shapes
from fusionkit.data.base import DatasetError
from fusionkit.train import SplitData


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("wb") / "shapes", n=30, image_size=32, progress=False)


def test_parameters_are_the_simple_typed_public_globals():
    ns = {"lr": 0.1, "methods": ["a"], "opts": {}, "name": None, "_private": 1, "In": [], "model": object()}
    assert wb.parameters_from(ns) == {"lr": 0.1, "methods": ["a"], "opts": {}, "name": None}


def test_prepare_dataset_generates_shapes_and_refuses_unknown_options(tmp_path):
    ds = wb.prepare_dataset("shapes", tmp_path / "s", n_scenes=12, image_size=32, progress=False)
    assert len(ds) == 12
    with pytest.raises(DatasetError, match=r"shapes: unknown option\(s\) \['colour'\]; expected some of"):
        wb.prepare_dataset("shapes", tmp_path / "t", n_scenes=12, options={"colour": 1}, progress=False)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; expected one of"):
        wb.prepare_dataset("nope", tmp_path / "u")


def test_balance_table_counts_every_sample_once_per_target(ds):
    t = wb.balance_table(ds)
    assert set(t.target) == {k for k, classes in ds.targets.items() if classes}  # not the regression score
    for target in set(t.target):
        sub = t[t.target == target]
        assert sub["count"].sum() == len(ds)
        for split in ("train", "val", "test"):
            assert sub[sub.split == split]["count"].sum() == len(ds.split(split))


def test_captions_and_questions_of_the_dataset(ds):
    caps = wb.captions_by_sample(ds)
    assert set(caps) == {s.id for s in ds.samples} and all(len(c) == 5 for c in caps.values())
    text_mod = next(m for m, k in ds.modalities.items() if k == "text")
    assert all(s.modalities[text_mod] in caps[s.id] for s in ds.samples)
    q = wb.questions_table(ds, n=7)
    assert len(q) == 7 and {"question", "answer", "answer_type"} <= set(q.columns)


def test_feature_stats_flag_non_finite_features():
    data = SplitData({"a": torch.tensor([[1.0, float("nan")], [3.0, 4.0]])}, torch.tensor([0, 1]), ["x", "y"])
    row = wb.feature_stats({"train": data}).iloc[0]
    assert (row["n"], row["dim"], bool(row["finite"])) == (2, 2, False)
    ok = SplitData({"a": torch.tensor([[3.0, 4.0], [0.0, 0.0]])}, torch.tensor([0, 1]), ["x", "y"])
    assert wb.feature_stats({"val": ok}).iloc[0]["mean_norm"] == pytest.approx(2.5)


def test_predictions_table_shows_truth_prediction_confidence_and_weights(ds):
    test = ds.split("test")[:3]
    data = SplitData({}, torch.tensor([s.targets["label"] for s in test]), [s.id for s in test])
    logits = torch.zeros(3, len(ds.targets["label"]))
    logits[torch.arange(3), data.labels] = 5.0
    weights = {"audio": torch.tensor([0.25, 0.5, 1.0])}
    df = wb.predictions_table(ds, data, logits, ds.targets["label"], n=2, weights=weights)
    assert list(df.id) == data.ids[:2]
    assert (df.truth == df.prediction).all() and (df.confidence > 0.9).all()
    assert df.w_audio.tolist() == [0.25, 0.5]
    assert all(p.endswith(".png") for p in df.image)
