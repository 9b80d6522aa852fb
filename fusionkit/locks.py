"""File locks between processes, for files that several processes may write.

::

    with file_lock(entry.with_suffix(".lock"), "feature cache entry train-pooled"):
        ...  # check again whether another process made it while this one waited, else make it

A thin layer over the ``filelock`` package (``flock`` on Linux and macOS: the kernel releases the
lock when its holder dies, even by ``kill -9``, so a lock is never stale). The lock file stays in
place after release (waiters share its inode); it is empty and may be deleted when no fusionkit
process runs. What fusionkit locks, one lock per thing that is written (never one global lock, so
that work on different things runs side by side; docs/architecture.md, rules):

* a feature cache entry (``{split}-{output}.lock`` next to it; ``fusionkit.features``), and the
  encoder folder's ``skipped.json`` and the cache's ``extractions.jsonl`` while they are updated;
* a dataset folder while it is prepared (``.{name}.lock`` next to it; ``fusionkit.data``), also the
  derived datasets of the tasks in the cache;
* a run folder while ``fusionkit run`` runs it (``.run.lock`` in it; ``fusionkit.pipeline``).

A process that has to wait says so once on stderr, naming the lock and what it protects. Within a
process the lock is reentrant (the same thread may take it again); other threads wait like other
processes do.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["LockBusy", "file_lock"]


class LockBusy(RuntimeError):
    """``file_lock(..., wait=False)`` found the lock held by another process."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the lock file ``path`` (created with its folder if missing) for the block.

    ``what`` names what it protects, for the message printed when another process holds it.
    ``wait=False``: raise :class:`LockBusy` instead of waiting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise LockBusy(f"{what} is in use by another process (lock {path})") from None
        print(f"[fusionkit] waiting for another process to finish with {what} (lock {path})",
              file=sys.stderr, flush=True)  # fmt: skip
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
