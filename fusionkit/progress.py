"""Progress bars that stay quiet where they would only be noise.

``FUSIONKIT_NO_PROGRESS=1`` (set by ``fusionkit run`` under CI or ``--no-progress``) turns every
bar off; otherwise tqdm's auto flavour picks a notebook widget or a terminal bar."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    return os.environ.get("FUSIONKIT_NO_PROGRESS", "").lower() not in ("1", "true", "yes")


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled when ``enabled`` is False or the environment says so."""
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)
