"""Shared fixtures. Tests that need ../shared/data skip when it is absent, except where
FUSIONKIT_REQUIRE_SHARED_DATA=1 (CI), where they fail; tests that need a headless Chromium skip
without one, except where FUSIONKIT_REQUIRE_BROWSER=1 (CI), where they fail."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FUSIONKIT_NO_PROGRESS", "1")
os.environ.setdefault("WANDB_SILENT", "true")

from fusionkit.paths import require_shared_data, shared_data_root  # noqa: E402


def shared_data_or_skip():
    """The shared real-data root (../shared/data or $FUSIONKIT_SHARED_DATA); the test skips when
    it is absent, or fails where FUSIONKIT_REQUIRE_SHARED_DATA=1."""
    root = shared_data_root()
    if root is None:
        msg = "real data not found: ../shared/data (or $FUSIONKIT_SHARED_DATA) is absent"
        if require_shared_data():
            pytest.fail(msg + " and FUSIONKIT_REQUIRE_SHARED_DATA=1")
        pytest.skip(msg)
    return root


@pytest.fixture
def shared_data():
    """The shared real-data root (:func:`shared_data_or_skip`)."""
    return shared_data_or_skip()


@pytest.fixture(scope="module")
def shared_data_module():
    """The shared real-data root, module-scoped (:func:`shared_data_or_skip`)."""
    return shared_data_or_skip()


def browser_or_skip():
    """The system's headless Chromium and its driver (:func:`fusionkit.report.browser.find`); the
    test skips without them, or fails where FUSIONKIT_REQUIRE_BROWSER=1."""
    from fusionkit.report import browser

    found = browser.find()
    if found is None:
        if os.environ.get("FUSIONKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(browser.MISSING + " and FUSIONKIT_REQUIRE_BROWSER=1")
        pytest.skip(browser.MISSING)
    return found


@pytest.fixture(scope="session")
def headless_browser():
    """The headless Chromium (:func:`browser_or_skip`)."""
    return browser_or_skip()


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """A tiny trained run folder and its exported bundle (:func:`tests.bundles.exported_run`)."""
    from tests.bundles import exported_run as build

    return build(tmp_path_factory.mktemp("exported_run"))
