"""Fixtures shared by the task tests: a tiny synthetic shapes dataset on disk (real file formats)
and the MiniLM caption tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusionkit.data import shapes


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task_shapes") / "ds"
    shapes.generate(root, n=30, seed=5, image_size=64, progress=False)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """The task tests train tiny models: one intra-op thread is as fast and does not fight the
    other processes on a shared machine for cores (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
