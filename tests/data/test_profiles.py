"""The real-data profiles: valid YAML, every key a declared notebook parameter, paths that exist."""

from __future__ import annotations

import pytest

from fusionkit import pipeline
from fusionkit.data import registry
from fusionkit.paths import repo_root


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
