"""Fixtures for the real-data loader tests: small raw folders built in tmp from ../shared/data."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import pytest


def flickr_captions(shared: Path) -> dict[str, list[str]]:
    """{image file name: [5 captions]} of the shared Kaggle CSV, in file order."""
    out: dict[str, list[str]] = defaultdict(list)
    with open(shared / "flickr8k-800" / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["image"]].append(row["caption"])
    return dict(out)


@pytest.fixture(scope="module")
def flickr_small(tmp_path_factory, shared_data_module) -> tuple[Path, dict[str, list[str]]]:
    """24 Flickr8k images (copied) with their captions, without any captions file yet."""
    caps = flickr_captions(shared_data_module)
    names = sorted(caps)[:24]
    root = tmp_path_factory.mktemp("flickr_small_src")
    (root / "Flicker8k_Dataset").mkdir()
    for n in names:
        shutil.copyfile(shared_data_module / "flickr8k-800" / "images" / n, root / "Flicker8k_Dataset" / n)
    return root, {n: caps[n] for n in names}


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A private copy of the module's ``root`` fixture dataset, free to corrupt."""
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst
