"""Progress of the long loops: bars in a terminal or a notebook, plain occasional lines in logs.

``FUSIONKIT_PROGRESS`` chooses (``fusionkit run`` sets it for its kernels):

- ``bars`` (the default): tqdm's auto flavour, a notebook widget or a terminal bar;
- ``lines``: no bar; a loop that runs longer than ``FUSIONKIT_PROGRESS_INTERVAL`` seconds (30)
  prints one plain line that often (``desc: 120/500 (24%), 0:31 so far, about 1:38 left``) and
  one when it ends; a shorter loop prints nothing. What ``fusionkit run`` gives its kernels when
  its output is not a terminal or ``CI`` is set, so that CI logs carry no bar redraws;
- ``off``: nothing (``--no-progress``; ``FUSIONKIT_NO_PROGRESS=1`` too).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm

MODES = ("bars", "lines", "off")
INTERVAL = 30.0  # seconds between two plain lines


def asked_mode() -> str | None:
    """The mode the environment asks for, or None when it does not say."""
    mode = os.environ.get("FUSIONKIT_PROGRESS", "").strip().lower()
    if mode in MODES:
        return mode
    if os.environ.get("FUSIONKIT_NO_PROGRESS", "").lower() in ("1", "true", "yes"):
        return "off"
    return None


def progress_mode() -> str:
    return asked_mode() or "bars"


def progress_enabled() -> bool:
    return progress_mode() != "off"


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``; plain :class:`Lines` when the environment asks for lines;
    disabled when ``enabled`` is False or the environment says ``off``."""
    mode = progress_mode()
    if enabled and mode == "lines":
        return Lines(iterable, **kwargs)
    return tqdm(iterable, disable=not (enabled and mode == "bars"), **kwargs)


def duration(seconds: float) -> str:
    """``42 s``, ``3m05s``, ``1h02m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Lines:
    """The part of tqdm's interface the package uses (iterate, ``update``, ``total``, ``refresh``,
    ``close``, ``set_postfix``, a context manager), printed as a plain line every ``interval``
    seconds and once at the end of a loop that printed any."""

    def __init__(
        self,
        iterable=None,
        *,
        total: float | None = None,
        desc: str | None = None,
        initial: float = 0,
        interval: float | None = None,
        file=None,
        unit: str = "it",
        **_ignored: Any,  # tqdm's display options (leave, unit_scale, ...)
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc or "progress"
        self.n = initial
        self.unit = unit
        env = os.environ.get("FUSIONKIT_PROGRESS_INTERVAL", "")
        self.interval = float(interval if interval is not None else (env or INTERVAL))
        self.file = file
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.printed = 0
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def refresh(self) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def write(self, s: str, **_ignored: Any) -> None:
        print(s, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.printed:
            self._print(time.monotonic(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self.start
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 1)
        count = f"{n}/{int(self.total)}" if self.total else f"{n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        if final:
            ended = "stopped after" if self.total and self.n < self.total else "done in"  # a loop left early
            text = f"{self.desc}: {count}, {ended} {duration(elapsed)}"
        else:
            text = f"{self.desc}: {count}, {duration(elapsed)} so far"
            if self.total and self.n > 0 and self.n < self.total:
                text += f", about {duration(elapsed / self.n * (self.total - self.n))} left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _print(self, now: float, final: bool = False) -> None:
        self.printed += 1
        print(self.line(now, final), file=self.file or sys.stderr, flush=True)
