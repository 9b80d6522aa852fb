import json

import pandas as pd
import pytest

from fusionkit import tracking


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert tracking.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("auto") == "disabled"
    assert tracking.resolve_mode("offline") == "offline"  # an explicit parameter wins over the environment
    with pytest.raises(ValueError, match="expected one of"):
        tracking.resolve_mode("sometimes")


def test_offline_run_files_and_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with tracking.start(
        tmp_path, "04_train", {"epochs": 3, "wandb_api_key": "secret", "path": tmp_path}, group="g1"
    ) as t:
        assert t.mode == "offline"
        t.log({"loss": 0.5}, step=0)
        t.log_table("preds", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
        t.summary({"acc": 0.9})
        wandb_dir = t.wandb_dir
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0] == wandb_dir
    assert list(offline[0].glob("*.wandb")), "offline run has no .wandb data file to sync"
    recs = tracking.read_mirror(tmp_path)
    kinds = [r["kind"] for r in recs]
    assert kinds == ["config", "metrics", "table", "summary", "end"]
    assert recs[0]["data"] == {"epochs": 3, "path": str(tmp_path)}  # the secret-looking key is not logged
    assert recs[-1]["exit_code"] == 0
    assert all(r["step"] == "04_train" and r["group"] == "g1" for r in recs)
    assert (tmp_path / "tables" / "preds.csv").exists()
    assert "secret" not in (tmp_path / "metrics.jsonl").read_text()


def test_disabled_writes_no_wandb_files(tmp_path):
    t = tracking.start(tmp_path, "01_data_prep", {"a": 1}, mode="disabled")
    t.log({"x": 1})
    t.finish()
    assert not (tmp_path / "wandb").exists()
    assert [r["kind"] for r in tracking.read_mirror(tmp_path)] == ["config", "metrics", "end"]


def test_run_is_finished_with_error_code_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with tracking.start(tmp_path, "03_fusion_comparison", mode="offline") as t:
            raise RuntimeError("boom")
    assert t.finished
    last = tracking.read_mirror(tmp_path)[-1]
    assert last["kind"] == "end" and last["exit_code"] == 1


def test_unclosed_runs_are_finished_at_exit(tmp_path):
    t = tracking.start(tmp_path, "02_feature_extraction", mode="disabled")
    tracking._finish_all()
    assert t.finished


def test_corrupt_mirror_names_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "config"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        tracking.read_mirror(tmp_path)
