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

Artifacts (lineage: data -> features -> model -> evaluation; what each notebook logs is
:mod:`fusionkit.lineage`): :meth:`Tracker.log_artifact` logs one as this run's output, in every
mode but "disabled" - offline it is written with the offline run (its manifest in the run's
``.wandb`` file, copies of its files staged under ``<run_dir>/wandb/artifact-staging``, so the run
folder carries them) and ``wandb sync`` uploads it. :meth:`Tracker.use_artifact` declares one as
this run's input. W&B cannot record an input offline (``run.use_artifact`` refuses, whatever it is
given: "Cannot use artifact when in offline mode"), so an offline run records the inputs it used
in its config (``fusionkit_inputs``) and the mirror (``kind: artifact_use``); after ``wandb sync``,
:func:`link_inputs` declares them through W&B's public API (``Run.use_artifact``), which completes
the lineage graph. Online, the input is declared at once.
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

    def log_artifact(
        self,
        name: str,
        type: str,
        *,
        files: Iterable[str | os.PathLike | tuple[str, str | os.PathLike]] = (),
        references: Iterable[str | os.PathLike | tuple[str, str | os.PathLike]] = (),
        metadata: Mapping[str, Any] | None = None,
        aliases: Iterable[str] = (),
    ) -> str:
        """Log a W&B Artifact ``name`` of ``type`` (``dataset`` / ``features`` / ``model``) as this
        run's output: ``files`` copied into it (named as in their folder, or ``(name, path)``), ``references``
        (large or rebuildable files: checksummed, not uploaded) as ``file://`` references; aliases
        ``latest``, this chain's group and ``aliases``. Returns ``name:group`` (what
        :meth:`use_artifact` takes). Recorded in the mirror in every mode."""
        name = artifact_name(name)
        alias = artifact_name(self.group)
        named, refs = _named(files), _named(references)
        for f in [p for _, p in named + refs]:
            if not f.is_file():
                raise FileNotFoundError(f"artifact {name!r}: {f} is not a file")
        meta = scrub(metadata or {})
        all_aliases = sorted({alias, *(artifact_name(a) for a in aliases)})
        self._write({"kind": "artifact", "name": name, "type": type, "aliases": all_aliases, "metadata": meta,
                     "files": {n: str(f) for n, f in named}, "references": {n: str(f) for n, f in refs}})  # fmt: skip
        if self._wandb_run is not None:
            art = self._wandb.Artifact(name, type=type, metadata=meta)
            staging = self.run_dir / "wandb" / "artifact-staging"
            previous = os.environ.get("WANDB_DATA_DIR")
            os.environ["WANDB_DATA_DIR"] = str(staging)  # wandb copies added files to its data dir at once
            try:
                for n, f in named:
                    art.add_file(str(f), name=n)
            finally:
                if previous is None:
                    os.environ.pop("WANDB_DATA_DIR", None)
                else:
                    os.environ["WANDB_DATA_DIR"] = previous
            for n, f in refs:
                art.add_reference(f.resolve().as_uri(), name=n)
            self._wandb_run.log_artifact(art, aliases=all_aliases)
        return f"{name}:{alias}"

    def use_artifact(self, ref: str, type: str) -> None:
        """Declare the artifact ``ref`` (``name:alias``, as :meth:`log_artifact` returned it) this
        run's input. Online at once; offline in the run's config ``fusionkit_inputs`` and the
        mirror, declared after ``wandb sync`` by :func:`link_inputs` (module docstring)."""
        run = self._wandb_run
        self._write({"kind": "artifact_use", "artifact": ref, "type": type, "mode": self.mode,
                     "wandb_run": run.id if run is not None else None,
                     "project": run.project if run is not None else None})  # fmt: skip
        if self._wandb_run is None:
            return
        if self.mode == "online":
            self._wandb_run.use_artifact(ref, type=type)
        else:
            inputs = list(self._wandb_run.config.get("fusionkit_inputs") or [])
            self._wandb_run.config.update({"fusionkit_inputs": [*inputs, {"artifact": ref, "type": type}]},
                                          allow_val_change=True)  # fmt: skip

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


def _named(files: Iterable[Any]) -> list[tuple[str, Path]]:
    """``path`` or ``(name, path)`` entries as (name inside an artifact, path)."""
    return [(str(f[0]), Path(f[1])) if isinstance(f, tuple) else (Path(f).name, Path(f)) for f in files]


def artifact_name(text: str) -> str:
    """A W&B artifact name or alias: letters, digits, ``-``, ``_`` and ``.`` (others become ``-``)."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.")
    if not out:
        raise ValueError(f"{text!r}: no usable characters for a W&B artifact name")
    return out


def download_artifact(ref: str, type: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Download the W&B artifact ``ref`` (``ENTITY/PROJECT/NAME:ALIAS``) through W&B's public API
    (``wandb.Api().artifact(ref).download()``; into ``root``, default wandb's
    ``./artifacts/NAME:VERSION``) and return its folder. Online only: RuntimeError saying so when
    W&B is offline or disabled, or without an API key."""
    mode = resolve_mode()
    if mode != "online":
        raise RuntimeError(
            f"wandb:{ref}: downloading a W&B artifact needs W&B online (mode here: {mode}; set WANDB_API_KEY and "
            "WANDB_MODE=online), or download it elsewhere (`wandb artifact get ENTITY/PROJECT/NAME:ALIAS`) and pass "
            "its folder"
        )
    import wandb

    try:
        art = wandb.Api().artifact(ref, type=type)
        return Path(art.download(root=str(root) if root else None))
    except Exception as e:  # noqa: BLE001 - wandb's errors (not found, auth, network) named with the ref
        raise RuntimeError(f"wandb:{ref}: cannot download the artifact ({type(e).__name__}: {e})") from e


def link_inputs(run_dir: str | os.PathLike, entity: str | None = None, api=None) -> list[str]:
    """After ``wandb sync`` of a run folder's offline runs: declare each run's recorded inputs
    (mirror ``kind: artifact_use`` of an offline run) through W&B's public API, so the lineage
    graph has them. Online only (it needs the API key); returns the ``run <- artifact`` declared."""
    if api is None:
        import wandb

        if resolve_mode() != "online":
            raise RuntimeError(
                "linking artifact inputs needs W&B online (WANDB_API_KEY set, WANDB_MODE not offline); run it "
                "after `wandb sync`"
            )
        api = wandb.Api()
    entity = entity or api.default_entity
    done = []
    for rec in read_mirror(run_dir):
        if rec.get("kind") != "artifact_use" or rec.get("mode") != "offline" or not rec.get("wandb_run"):
            continue
        project = rec.get("project") or os.environ.get("WANDB_PROJECT", "fusionkit")
        run = api.run(f"{entity}/{project}/{rec['wandb_run']}")
        run.use_artifact(api.artifact(f"{entity}/{project}/{rec['artifact']}", type=rec["type"]))
        done.append(f"{rec['wandb_run']} <- {rec['artifact']}")
    return done


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
