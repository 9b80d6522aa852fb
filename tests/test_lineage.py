"""W&B lineage offline: the dataset, the feature cache entry and the model bundle are written as
Artifacts with the offline runs of the notebooks that make them (read back from the runs' own
``.wandb`` files, as ``wandb sync`` reads them), and the runs that consume them record what they
used; online-only paths (linking inputs, ``fusionkit predict wandb:...``) refuse clearly offline."""

import base64
import hashlib
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from fusionkit import cli, lineage, tracking
from fusionkit.bundle import BundleError
from fusionkit.predict import Predictor


def wandb_records(run_folder: Path):
    """The records of an offline run's ``run-*.wandb`` file (W&B's log format: a 7-byte header,
    32 KiB blocks of chunks with a 7-byte header each; every record a protobuf ``Record``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def artifacts(tracker) -> list:
    return [r.artifact for r in wandb_records(tracker.wandb_dir) if r.WhichOneof("record_type") == "artifact"]


def config(tracker) -> dict:
    out = {}
    for r in wandb_records(tracker.wandb_dir):
        if r.WhichOneof("record_type") == "config":
            for item in r.config.update:
                out[item.key] = json.loads(item.value_json)
    return out


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.fixture(scope="module")
def chain(exported_run, tmp_path_factory):
    """01, 02, 04 and 05 of one chain, offline, logging and using the artifacts as the notebooks do."""
    run_dir = tmp_path_factory.mktemp("lineage") / "run"
    ds, index = exported_run["ds"], exported_run["index"]
    out = {}
    with tracking.start(run_dir, "01_data_prep", group="chain-7", mode="offline") as t:
        out["dataset_ref"] = lineage.log_dataset(t, ds)
        out["01"] = t
    with tracking.start(run_dir, "02_feature_extraction", group="chain-7", mode="offline") as t:
        out["used_dataset"] = lineage.use_dataset(t, ds)
        out["features_ref"] = lineage.log_features(t, index)
        out["02"] = t
    with tracking.start(run_dir, "04_train", group="chain-7", mode="offline") as t:
        out["used_features"] = lineage.use_features(t, index)
        out["model_ref"] = lineage.log_model(t, exported_run["bundle"], index.dataset, metadata={"fusion": "gmu"})
        out["04"] = t
    with tracking.start(run_dir, "05_evaluate", group="chain-7", mode="offline") as t:
        out["used_model"] = lineage.use_model(t, index.dataset)
        out["05"] = t
    out["run_dir"] = run_dir
    return out


def test_the_dataset_is_an_artifact_of_01s_offline_run(chain, exported_run):
    ds = exported_run["ds"]
    (art,) = artifacts(chain["01"])
    assert art.type == "dataset" and art.name == f"dataset-{ds.name}" and "chain-7" in art.aliases
    assert json.loads(art.metadata)["manifest_hash"] == ds.manifest_hash()
    files = {c.path: c for c in art.manifest.contents}
    assert {"dataset.json", "manifest.jsonl"} <= set(files)
    for name in ("dataset.json", "manifest.jsonl"):
        assert files[name].digest == md5_b64(ds.root / name)
        # staged inside the run folder, so the offline run folder carries what wandb sync uploads
        staged = Path(files[name].local_path)
        assert (
            staged.is_relative_to(chain["run_dir"] / "wandb") and staged.read_bytes() == (ds.root / name).read_bytes()
        )
    assert chain["dataset_ref"] == f"dataset-{ds.name}:chain-7"


def test_features_reference_the_cache_entry_and_model_carries_the_bundle(chain, exported_run):
    index = exported_run["index"]
    (feat,) = artifacts(chain["02"])
    assert feat.type == "features" and feat.name == f"features-{index.dataset}"
    files = {c.path: c for c in feat.manifest.contents}
    assert files["features.json"].digest == md5_b64(index.path)
    refs = {c.ref for c in feat.manifest.contents if c.ref}
    assert (
        refs == {p.resolve().as_uri() for p in lineage.feature_files(index)} and len(refs) == 3 * 3
    )  # modality x split
    (model,) = artifacts(chain["04"])
    assert model.type == "model" and json.loads(model.metadata)["fusion"] == "gmu"
    names = {c.path for c in model.manifest.contents}
    assert {"model.safetensors", "model.json", "encoders.safetensors"} <= names  # the exported bundle
    assert {c.path: c.digest for c in model.manifest.contents}["model.json"] == md5_b64(
        exported_run["bundle"] / "model.json"
    )


def test_consumers_record_what_they_used(chain):
    assert config(chain["02"])["fusionkit_inputs"] == [{"artifact": chain["dataset_ref"], "type": "dataset"}]
    assert config(chain["04"])["fusionkit_inputs"] == [{"artifact": chain["features_ref"], "type": "features"}]
    assert config(chain["05"])["fusionkit_inputs"] == [{"artifact": chain["model_ref"], "type": "model"}]
    assert chain["used_dataset"] == chain["dataset_ref"] and chain["used_model"] == chain["model_ref"]
    uses = [r for r in tracking.read_mirror(chain["run_dir"]) if r["kind"] == "artifact_use"]
    assert [(u["step"], u["artifact"]) for u in uses] == [
        ("02_feature_extraction", chain["dataset_ref"]), ("04_train", chain["features_ref"]),
        ("05_evaluate", chain["model_ref"]),
    ]  # fmt: skip
    assert all(u["mode"] == "offline" and u["wandb_run"] for u in uses)
    assert not any(r.WhichOneof("record_type") == "use_artifact" for r in wandb_records(chain["05"].wandb_dir))


def test_online_only_paths_refuse_clearly_offline(chain, exported_run, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="after `wandb sync`"):
        tracking.link_inputs(chain["run_dir"])
    with pytest.raises(
        BundleError, match=r"wandb:me/fusionkit/model-x:latest: downloading a W&B artifact needs W&B online"
    ):
        Predictor.load("wandb:me/fusionkit/model-x:latest")
    ds = exported_run["ds"]
    assert cli.main(["predict", "wandb:me/fusionkit/model-x:latest", str(ds.root)]) == 2
    assert "needs W&B online (mode here: offline" in capsys.readouterr().err


def test_disabled_tracking_logs_artifacts_in_the_mirror_only(exported_run, tmp_path):
    with tracking.start(tmp_path, "01_data_prep", group="g", mode="disabled") as t:
        ref = lineage.log_dataset(t, exported_run["ds"])
        lineage.use_dataset(t, exported_run["ds"])
    recs = {r["kind"]: r for r in tracking.read_mirror(tmp_path)}
    assert recs["artifact"]["type"] == "dataset" and recs["artifact_use"]["artifact"] == ref
    assert not (tmp_path / "wandb").exists()


def test_link_inputs_declares_each_offline_input_after_sync(chain):
    calls = []

    class Api:  # the two calls of W&B's public API that link_inputs makes, recorded
        default_entity = "me"

        def run(self, path):
            return SimpleNamespace(use_artifact=lambda art: calls.append((path, art)))

        def artifact(self, name, type):
            return (name, type)

    done = tracking.link_inputs(chain["run_dir"], api=Api())
    uses = [r for r in tracking.read_mirror(chain["run_dir"]) if r["kind"] == "artifact_use"]
    assert calls == [
        (f"me/{u['project']}/{u['wandb_run']}", (f"me/{u['project']}/{u['artifact']}", u["type"])) for u in uses
    ]
    assert len(done) == 3 and {u["wandb_run"] for u in uses} == {chain[s].wandb_run.id for s in ("02", "04", "05")}
