"""The real-data profiles: valid YAML, every key a declared notebook parameter, paths that exist."""

from __future__ import annotations

import pytest

from fusionkit import pipeline
from fusionkit.data import registry
from fusionkit.paths import repo_root
from fusionkit.tasks.vqa.task import DEFAULTS


@pytest.mark.parametrize("name, target", [("avdigits", "digit"), ("flickr8k", "match")])
def test_profile_parameters_are_declared(name, target):
    prof = pipeline.load_profile(name)
    params = pipeline.build_parameters(prof, {})  # raises on an undeclared key or a wrong type
    prep = params["01_data_prep"]
    assert prep["dataset"] == name and name in registry.available()
    assert prep["dataset_dir"] == str(
        (repo_root() / f"data/processed/{'avdigits' if name == 'avdigits' else 'flickr8k-800'}").resolve()
    )
    assert prep["source_dir"].endswith(("shared/data/fsdd", "shared/data/flickr8k-800"))
    assert params["03_fusion_comparison"]["target"] == target and params["03_fusion_comparison"]["n_seeds"] == 5


def test_vqarad_profile_runs_the_vqa_task_with_baselines():
    params = pipeline.build_parameters(pipeline.load_profile("vqarad"), {})
    prep = params["01_data_prep"]
    assert prep["dataset"] == "vqarad" and prep["source_dir"].endswith("shared/data/vqa-rad")
    assert params["02_feature_extraction"]["image_encoder"] == "efficientnet_lite0"
    assert params["03_fusion_comparison"]["target"] == "answer"
    vqa = params["04_train"]["task_options"]["vqa"]
    assert params["04_train"]["tasks"] == ["vqa"] and len(vqa["methods"]) >= 3 and vqa["baselines"] is True
    assert set(vqa) <= set(DEFAULTS)  # train_task refuses unknown options
