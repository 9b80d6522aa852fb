import math

import pytest
import torch

from fusionkit.model import build_model
from fusionkit.train import SplitData, TrainConfig, _modality_dropout, accuracy, predict, train, train_restarts
from tests.synthetic import label_problem


def _fit(method="concat", **kw):
    data = label_problem()
    torch.manual_seed(0)
    model = build_model(method, {"image": 16, "audio": 16}, 6, hidden=32)
    cfg = TrainConfig(epochs=kw.pop("epochs", 15), batch_size=32, seed=0, **kw)
    res = train(model, data["train"], data["val"], cfg)
    return model, res, data


def test_fused_model_learns_and_best_state_is_restored():
    model, res, data = _fit()
    assert accuracy(predict(model, data["test"])[0], data["test"].labels) > 0.95
    assert res.best_val_acc == pytest.approx(accuracy(predict(model, data["val"])[0], data["val"].labels))
    assert res.best_epoch == max(
        range(len(res.history)), key=lambda i: (res.history[i]["val_acc"], -res.history[i]["val_loss"])
    )


def test_deterministic_with_seed():
    _, a, _ = _fit(epochs=3)
    _, b, _ = _fit(epochs=3)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


def test_early_stopping_stops():
    data = label_problem()
    noise = SplitData(
        {m: torch.randn_like(x) for m, x in data["train"].features.items()}, data["train"].labels, data["train"].ids
    )
    model = build_model("concat", {"image": 16, "audio": 16}, 6, hidden=16)
    res = train(model, noise, data["val"], TrainConfig(epochs=50, patience=3, seed=0))
    assert res.epochs_run < 50
    assert res.epochs_run - 1 - res.best_epoch == 3


def test_sgd_and_class_weights_run():
    model, res, data = _fit(optimizer="sgd", lr=0.05, class_weights=True, epochs=10)
    assert accuracy(predict(model, data["test"])[0], data["test"].labels) > 0.8


def test_nan_features_are_named():
    data = label_problem(n=60)
    bad = data["train"].features["audio"].clone()
    bad[5, 3] = math.nan
    train_bad = SplitData(
        {"image": data["train"].features["image"], "audio": bad}, data["train"].labels, data["train"].ids
    )
    model = build_model("concat", {"image": 16, "audio": 16}, 6)
    with pytest.raises(ValueError, match=r"'audio' has NaN/inf features \(samples \['train5'\]\)"):
        train(model, train_bad, data["val"], TrainConfig(epochs=1))


def test_modality_missing_everywhere_is_an_error():
    data = label_problem(n=60)
    d = data["train"]
    masked = SplitData(d.features, d.labels, d.ids, {"image": torch.zeros(len(d)), "audio": torch.ones(len(d))})
    with pytest.raises(ValueError, match="'image' is missing from every sample"):
        train(build_model("concat", {"image": 16, "audio": 16}, 6), masked, data["val"], TrainConfig(epochs=1))


def test_modality_dropout_never_drops_everything():
    g = torch.Generator().manual_seed(0)
    mask = _modality_dropout(None, ["a", "b", "c"], 5000, 0.9, g)
    stacked = torch.stack([mask[m] for m in "abc"], 1)
    assert (stacked.sum(1) > 0).all()
    assert 0.05 < float(stacked.mean()) < 0.5  # most entries were dropped
    given = {"a": torch.zeros(100), "b": torch.ones(100), "c": torch.ones(100)}
    kept = _modality_dropout(given, ["a", "b", "c"], 100, 0.5, g)
    assert float(kept["a"].sum()) == 0  # a missing modality is never brought back


def test_invalid_config():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam").validate()


def test_restarts_keep_the_model_best_on_validation():
    data = label_problem(noise=2.0)  # noisy enough that the seeds end at different validation accuracies
    cfg = TrainConfig(epochs=2, batch_size=32, seed=0)
    logged = []
    kept = train_restarts(lambda: build_model("concat", {"image": 16, "audio": 16}, 6, hidden=8), data["train"],
                          data["val"], cfg, seeds=[3, 4, 5], log_fn=logged.append)  # fmt: skip
    values = [row["val_acc"] for row in kept.table]
    assert [row["seed"] for row in kept.table] == [3, 4, 5] and len(set(values)) > 1
    assert kept.result.best_value == max(values) and kept.seed == kept.table[values.index(max(values))]["seed"]
    assert [row["kept"] for row in kept.table].count(True) == 1
    assert kept.result.best_value == pytest.approx(accuracy(predict(kept.model, data["val"])[0], data["val"].labels))
    assert logged == kept.result.history  # only the kept training's epochs reach the log
    # one seed: the plain training with that seed
    torch.manual_seed(4)
    alone = train(build_model("concat", {"image": 16, "audio": 16}, 6, hidden=8), data["train"], data["val"],
                  TrainConfig(epochs=2, batch_size=32, seed=4))  # fmt: skip
    one = train_restarts(lambda: build_model("concat", {"image": 16, "audio": 16}, 6, hidden=8), data["train"],
                         data["val"], cfg, seeds=[4])  # fmt: skip
    assert [h["val_loss"] for h in one.result.history] == [h["val_loss"] for h in alone.history]
    with pytest.raises(ValueError, match="at least one seed"):
        train_restarts(lambda: None, data["train"], data["val"], cfg, seeds=[])


def test_restarts_of_a_regression_keep_the_lowest_validation_mse():
    data = label_problem()
    reg = {k: SplitData(v.features, v.labels.float() + 0.5, v.ids) for k, v in data.items()}
    kept = train_restarts(lambda: build_model("concat", {"image": 16, "audio": 16}, 0, hidden=8), reg["train"],
                          reg["val"], TrainConfig(epochs=2, batch_size=32), seeds=[0, 1, 2])  # fmt: skip
    mses = [row["val_mse"] for row in kept.table]
    assert kept.result.monitor == "val_mse" and kept.result.best_value == min(mses)


def test_a_training_checks_its_splits_whole_and_a_nan_in_them_is_named():
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(40, 4, generator=g), "b": torch.randn(40, 3, generator=g)}
    labels = torch.randint(0, 2, (40,), generator=g)
    ok = SplitData(feats, labels, [f"s{i}" for i in range(40)])
    bad_a = feats["a"].clone()
    bad_a[7, 2] = float("nan")
    bad = SplitData({**feats, "a": bad_a}, labels, ok.ids)
    model = build_model("concat", {"a": 4, "b": 3}, 2, hidden=8)
    # the per-batch value check is off inside the loop (values_checked): the whole-split check names the sample
    with pytest.raises(ValueError, match=r"train: modality 'a' has NaN/inf features \(samples \['s7'\]\)"):
        train(model, bad, ok, TrainConfig(epochs=1, batch_size=8))
    with pytest.raises(ValueError, match=r"val: modality 'a' has NaN/inf features"):
        train(model, ok, bad, TrainConfig(epochs=1, batch_size=8))
