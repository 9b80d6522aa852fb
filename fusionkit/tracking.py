"""Weights & Biases tracking with a local mirror.

One W&B run per notebook (``job_type`` = the notebook's step, grouped by the pipeline run id,
``config`` = the notebook's parameters). Everything logged through a :class:`Tracker` is also
appended to ``<run_dir>/metrics.jsonl``, so the report never needs the W&B API.

Mode: the ``mode`` argument ("online" | "offline" | "disabled" | "auto"), else ``WANDB_MODE``,
else "online" when an API key is available (``WANDB_API_KEY``) and "offline" otherwise. Offline runs
land in ``<run_dir>/wandb/offline-run-*``; upload them later with ``wandb sync <that folder>``.
"disabled" writes no W&B files at all (the local mirror is still written).

The API key is read by wandb from the environment only; parameters whose names look like secrets
are never logged.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled", "auto")
_SECRET = re.compile(r"(api[_-]?key|token|secret|password|passwd)", re.I)
_OPEN: list[Tracker] = []


def resolve_mode(mode: str | None = None) -> str:
    mode = (mode or "auto").lower()
    if mode not in MODES:
        raise ValueError(f"wandb mode {mode!r}; expected one of {MODES}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def scrub(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop secret-looking keys and make values JSON-serialisable."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if _SECRET.search(str(k)):
            continue
        out[str(k)] = _jsonable(v)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return v.item()
    return str(v)


class Tracker:
    """A W&B run + the local mirror. Use as a context manager, or call :meth:`finish`; runs left
    open are finished at interpreter exit, and in IPython a cell that raises finishes the run with
    exit code 1."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        step: str,
        config: Mapping[str, Any] | None = None,
        *,
        group: str | None = None,
        mode: str | None = None,
        project: str | None = None,
        name: str | None = None,
        tags: Iterable[str] = (),
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.step = step
        self.group = group or self.run_dir.name
        self.mode = resolve_mode(mode)
        self.config = scrub(config or {})
        self.name = name or step
        self.mirror = self.run_dir / "metrics.jsonl"
        self.finished = False
        self._wandb_run = None
        self.project = project or os.environ.get("WANDB_PROJECT", "fusionkit")
        if self.mode != "disabled":
            import wandb

            self._wandb = wandb
            self._wandb_run = wandb.init(
                project=self.project,
                dir=str(self.run_dir),
                group=self.group,
                job_type=step,
                name=f"{self.group}/{self.name}",
                config=self.config,
                tags=list(tags),
                mode=self.mode,
                reinit="create_new",
                settings=wandb.Settings(
                    silent=True, console="off", x_disable_stats=True, disable_git=True, disable_code=True
                ),
            )
            # wandb records which libraries get imported through import hooks; in a forked
            # DataLoader worker such a hook talks to the parent's wandb service and raises
            # ForkedError. Import telemetry is not worth that: switch the hooks off.
            unregister = getattr(self._wandb_run, "_unregister_telemetry_import_hooks", None)
            if unregister is not None:
                unregister(self._wandb_run.id)
        # cwd: where the notebook ran (fusionkit run runs its kernels in notebooks/, as JupyterLab does);
        # wandb: where this run went, if anywhere (what `fusionkit report wandb` builds its report from)
        where = {"mode": self.mode}
        if self._wandb_run is not None:
            where.update(project=self.project, id=self._wandb_run.id, name=f"{self.group}/{self.name}")
        self._write({"kind": "config", "data": self.config, "cwd": os.getcwd(), "wandb": where})
        _OPEN.append(self)
        _install_ipython_hook()

    # ------------------------------------------------------------------ properties
    @property
    def wandb_run(self):
        return self._wandb_run

    @property
    def wandb_dir(self) -> Path | None:
        """The run's local W&B folder (what ``wandb sync`` takes), or None when disabled."""
        if self._wandb_run is None:
            return None
        return Path(self._wandb_run.dir).parent

    # ------------------------------------------------------------------ logging
    def _write(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.time(), 3), "step": self.step, "run": self.name, "group": self.group, **record}
        with open(self.mirror, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(record), ensure_ascii=False) + "\n")

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        data = {k: _jsonable(v) for k, v in metrics.items()}
        self._write({"kind": "metrics", "i": step, "data": data})
        if self._wandb_run is not None:
            self._wandb_run.log(dict(metrics), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final numbers of this step (W&B run summary; ``kind: summary`` in the mirror)."""
        data = {k: _jsonable(v) for k, v in values.items()}
        self._write({"kind": "summary", "data": data})
        if self._wandb_run is not None:
            for k, v in data.items():
                self._wandb_run.summary[k] = v

    def log_table(self, key: str, df, image_columns: Iterable[str] = ()) -> Path:
        """A pandas DataFrame as a W&B table (columns named in ``image_columns`` hold image paths
        and become ``wandb.Image``) and as ``tables/<key>.csv`` in the run folder."""
        path = self.run_dir / "tables" / f"{_slug(key)}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        self._write({"kind": "table", "key": key, "path": str(path.relative_to(self.run_dir)), "rows": len(df)})
        if self._wandb_run is not None:
            image_columns = set(image_columns)
            cols = list(df.columns)
            table = self._wandb.Table(columns=cols)
            for row in df.itertuples(index=False):
                table.add_data(*[self._wandb.Image(str(v)) if c in image_columns else v for c, v in zip(cols, row)])
            self._wandb_run.log({key: table})
        return path

    def log_figure(self, key: str, fig) -> Path:
        """Save a matplotlib figure to ``figures/<key>.png`` and log it as an image."""
        path = self.run_dir / "figures" / f"{_slug(key)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self._write({"kind": "figure", "key": key, "path": str(path.relative_to(self.run_dir))})
        if self._wandb_run is not None:
            self._wandb_run.log({key: self._wandb.Image(str(path))})
        return path

    def log_artifact_path(self, key: str, path: str | os.PathLike) -> None:
        """Record a file this step produced (checkpoint, table) in the mirror."""
        p = Path(path)
        rel = str(p.relative_to(self.run_dir)) if p.is_relative_to(self.run_dir) else str(p)
        self._write({"kind": "file", "key": key, "path": rel})

    # ------------------------------------------------------------------ lifecycle
    def finish(self, exit_code: int = 0) -> None:
        if self.finished:
            return
        self.finished = True
        self._write({"kind": "end", "exit_code": exit_code})
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=exit_code)
        if self in _OPEN:
            _OPEN.remove(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type else 0)


def start(run_dir, step: str, config: Mapping[str, Any] | None = None, **kw) -> Tracker:
    """Start tracking a notebook step (what every notebook calls once, after its parameters)."""
    return Tracker(run_dir, step, config, **kw)


def read_mirror(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (the report's only source)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return out


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def _finish_all(exit_code: int = 0) -> None:
    for t in list(_OPEN):
        t.finish(exit_code=exit_code)


atexit.register(_finish_all)

_HOOKED = False


def _install_ipython_hook() -> None:
    """In a notebook, finish open runs with exit code 1 when a cell raises (papermill stops the
    kernel right after, so this is the only chance to close the run cleanly)."""
    global _HOOKED
    if _HOOKED:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def _post_run_cell(result) -> None:
        if getattr(result, "error_in_exec", None) is not None:
            _finish_all(exit_code=1)

    ip.events.register("post_run_cell", _post_run_cell)
    _HOOKED = True
