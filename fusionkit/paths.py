"""Where things live: the repository root and the shared real-data folder.

The real data used by tests and benchmarks (``flickr8k-800``, ``fsdd``) lives outside the repository
in ``<repo>/../shared/data``; ``$FUSIONKIT_SHARED_DATA`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "FUSIONKIT_SHARED_DATA"


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``)."""
    return Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """The shared real-data folder, or ``None`` when it is absent.

    ``$FUSIONKIT_SHARED_DATA`` wins when set; otherwise ``<repo>/../shared/data``."""
    env = os.environ.get(SHARED_DATA_ENV)
    candidate = Path(env).expanduser() if env else repo_root().parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


REQUIRE_SHARED_DATA_ENV = "FUSIONKIT_REQUIRE_SHARED_DATA"


def require_shared_data() -> bool:
    """True when tests must FAIL (not skip) without the shared data (``FUSIONKIT_REQUIRE_SHARED_DATA=1``, CI)."""
    return os.environ.get(REQUIRE_SHARED_DATA_ENV, "").strip().lower() in ("1", "true", "yes")
