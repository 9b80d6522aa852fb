"""The one result type: what callers read and what the task code saves."""

from __future__ import annotations

import json
import math

from fusionkit.training import TrainResult


def test_fields_compat_names_and_json():
    r = TrainResult(history=[{"epoch": 0, "val_acc": 0.5}], monitor="val_acc", best_epoch=0, best_value=0.5,
                    epochs_run=1, train_time_s=0.25)  # fmt: skip
    assert r.best_val_acc == r.best_rsum == r.best_value == 0.5  # the names callers and notebooks use
    d = r.as_dict()
    assert d == {"history": [{"epoch": 0, "val_acc": 0.5}], "monitor": "val_acc", "best_epoch": 0, "best_value": 0.5,
                 "epochs_run": 1, "train_time_s": 0.25}  # fmt: skip
    assert json.loads(json.dumps(d)) == d
    assert math.isnan(TrainResult().best_value) and TrainResult().best_epoch == -1
