"""``fusionkit data interactions RUN``: the interaction profile of a run's cached features, from a
real ``features.json`` (a dataset folder whose two text modalities are numbers, encoded by a toy
encoder registered for the test), with the run's comparison table when it is on the same target."""

import json

import pandas as pd
import pytest
import torch

from fusionkit import encoders
from fusionkit.cli import main
from fusionkit.data.base import Sample, load_dataset, write_dataset
from fusionkit.encoders.base import Encoder
from fusionkit.index import FeatureIndex
from tests.synthetic import interaction_problem


class Numbers(Encoder):
    """A text "encoder" reading the numbers the text is made of."""

    kind, name = "text", "numbers"
    perf = {"cpu": {"batch_size": 256, "channels_last": False, "num_workers": 0}}

    def __init__(self, dim: int = 8):
        super().__init__()
        self._dims = {"pooled": dim}
        self._finish_init()

    def load(self, value, root=None):
        return torch.tensor([float(v) for v in value.split()])

    def forward(self, batch):
        return {"pooled": batch}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with ``features.json``: target ``xor`` is a XOR of the bits the two modalities
    carry (tests/synthetic.py), ``first_bit`` is ``first``'s own bit."""
    tmp = tmp_path_factory.mktemp("interactions")
    data = interaction_problem("synergy", n=300, seed=0)
    samples = []
    for split, d in data.items():
        for i, sid in enumerate(d.ids):
            x = {m: " ".join(f"{v:.4f}" for v in d.features[m][i].tolist()) for m in d.features}
            a = int(d.features["first"][i, :2].sum() > 0)  # not the bit exactly (noise); a second target
            samples.append(Sample(sid, split, x, {"xor": int(d.labels[i]), "first_bit": a}))
    root = write_dataset(tmp / "toy", "toy", {"first": "text", "second": "text"},
                         {"xor": ["even", "odd"], "first_bit": ["no", "yes"]}, samples)  # fmt: skip
    encoders.register_encoder("text", "numbers", Numbers)
    try:
        ds = load_dataset(root)
        run = tmp / "run"
        FeatureIndex.build(ds, {"text": "numbers"}, tmp / "cache", ["pooled"], path=run / "features.json",
                           progress=False)  # fmt: skip
    finally:
        encoders._REGISTRY["text"].pop("numbers")  # no unregister: the registry is module state
    (run / "run.json").write_text(json.dumps({"parameters": {"03_fusion_comparison": {"target": "xor"}}}))
    (run / "tables").mkdir()
    pd.DataFrame({"method": ["tensor", "late"], "is_best": [True, False], "val_accuracy_mean": [0.84, 0.5],
                  "test_accuracy_mean": [0.81, 0.49], "test_accuracy_ci95": [0.02, 0.02], "n_seeds": [3, 3]}
                 ).to_csv(run / "tables" / "comparison_summary.csv", index=False)  # fmt: skip
    return run


def test_prints_the_profile_of_the_run_with_its_comparison(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["data", "interactions", str(run_dir), "--seeds", "2", "--epochs", "20", "--lr", "0.005", "--hidden",
               "32", "--out", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "interactions with target 'xor' of toy (2 classes)" in text  # 03's target, from run.json
    assert "first / second" in text and text.splitlines()[4].split()[-1] == "synergy"
    assert "best fusion (comparison)" in text and "tensor" in text and "best fusion - late" in text
    table = pd.read_csv(out / "interactions.csv")
    assert table["largest"].tolist() == ["synergy"] and table["largest_every_seed"].tolist() == [True]
    assert sorted(pd.read_csv(out / "interactions_per_seed.csv")["seed"]) == [0, 1]
    assert json.loads((out / "interactions.json").read_text())["target"] == "xor"
    assert (out / "interactions.png").stat().st_size > 0


def test_another_target_leaves_the_comparison_out_and_a_features_json_works_too(run_dir, capsys):
    rc = main(["data", "interactions", str(run_dir / "features.json"), "--target", "first_bit", "--seeds", "1",
               "--epochs", "2"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "target 'first_bit'" in text and "best fusion (comparison)" not in text
    assert "is on target 'xor', not 'first_bit': its best method is not shown" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "target 'nope' not in dataset toy"),
        (["--modalities", "first,sound"], "unknown modalities ['sound']; valid: first, second"),
        (["--modalities", "first"], "needs at least two modalities"),
        (["--comparison", "missing.csv"], "comparison table missing.csv does not exist"),
    ],
)
def test_bad_input_fails_with_one_line_naming_what_is_valid(run_dir, capsys, args, message):
    rc = main(["data", "interactions", str(run_dir), "--seeds", "1", "--epochs", "1", *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fusionkit: error:") and message in err
    if args[0] == "--target":
        assert "valid: xor, first_bit" in err


def test_a_folder_without_features_is_refused(tmp_path, capsys):
    assert main(["data", "interactions", str(tmp_path)]) == 2
    assert "features.json does not exist" in capsys.readouterr().err
