"""The notebook chain runner: ``fusionkit run --profile NAME``.

Each notebook of ``notebooks/`` runs in a fresh kernel through papermill, its cell output streamed
to the terminal, into ``reports/runs/<run-id>/``. Parameters come from the profile
(``configs/profiles/NAME.yaml``: ``common`` for every notebook that declares the key, then one
section per notebook), then ``-p notebook.key=value`` overrides, then the paths the runner wires
between notebooks (``run_dir``, the feature index, the comparison table, the checkpoint).

``run.json`` in the run folder records the state of every notebook and the fusionkit that made the
run; ``status: complete`` appears only when the whole chain finished, ``reports/latest`` then points
at the run and, where a headless Chromium is installed, ``report_first_screen.png`` shows the
report's first screen. When a notebook fails, the runner still builds ``report.html``: it says what
is missing and why. ``--resume <run-id>`` re-runs only the notebooks that did not finish.

Sharing: one process runs a run folder at a time (``.run.lock`` in it; a second ``--resume`` of a
run that is still running is refused, naming the lock). Chains with different run folders may
share the dataset and feature cache folders: those are locked per dataset folder and per cache
entry (``fusionkit.locks``), so what two chains both need is built once. The kernels get
``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` = the cores this process may use unless the
environment sets them (:func:`fusionkit.runtime.openmp_environment`): OpenMP threads that spin
while another process needs the core made two chains at once on 2 cores take 7x as long as one.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusionkit import __version__
from fusionkit.data.base import atomic_write_text
from fusionkit.locks import LockBusy, file_lock
from fusionkit.progress import asked_mode, duration
from fusionkit.runtime import openmp_environment
from fusionkit.tracking import MODES

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = (
    "01_data_prep",
    "02_feature_extraction",
    "03_fusion_comparison",
    "04_train",
    "05_evaluate",
    "06_report",
)
KERNEL_NAME = "fusionkit"


class PipelineError(RuntimeError):
    """A problem the user can fix: the message is one line naming what was wrong."""


# ---------------------------------------------------------------------------------------- paths
def profiles_dir() -> Path:
    return Path(os.environ.get("FUSIONKIT_PROFILES_DIR", REPO_ROOT / "configs" / "profiles"))


def notebooks_dir() -> Path:
    return Path(os.environ.get("FUSIONKIT_NOTEBOOKS_DIR", REPO_ROOT / "notebooks"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(
            f"unknown profile {name!r}; available: {', '.join(available_profiles()) or 'none'} (in {profiles_dir()})"
        )
    try:
        prof = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from e
    params = prof.get("parameters", {})
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: 'parameters' must be a mapping of notebook name -> parameters")
    for key in params:
        if key != "common" and key not in NOTEBOOKS:
            raise PipelineError(f"{path}: unknown section {key!r}; expected 'common' or one of {', '.join(NOTEBOOKS)}")
    prof["_path"] = str(path)
    return prof


# ---------------------------------------------------------------------------------------- parameters
def declared_parameters(notebook: Path) -> dict[str, dict[str, Any]]:
    """The notebook's parameters cell as papermill reads it: name -> {inferred_type_name, default, help}."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def _resolve_notebook(name: str) -> str:
    matches = [nb for nb in NOTEBOOKS if nb == name or nb.split("_", 1)[0] == name or nb.split("_", 1)[1] == name]
    if len(matches) != 1:
        raise PipelineError(
            f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)} (or its number, e.g. 03)"
        )
    return matches[0]


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """``["03.epochs=5", "common.seed=1"]`` -> ``{"03_fusion_comparison": {"epochs": "5"}, ...}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        m = re.fullmatch(r"([A-Za-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)", item, flags=re.S)
        if not m:
            raise PipelineError(f"-p {item!r}: expected NOTEBOOK.KEY=VALUE (e.g. -p 03.epochs=5 or -p common.seed=1)")
        nb, key, value = m.groups()
        nb = "common" if nb == "common" else _resolve_notebook(nb)
        out.setdefault(nb, {})[key] = value
    return out


def coerce(value: Any, type_name: str, where: str) -> Any:
    """Convert a value (a string from the command line, or YAML) to the declared parameter type."""
    t = (type_name or "None").replace(" ", "")
    is_str = isinstance(value, str)
    if t in ("str", "None") or t.startswith("Optional[str") or t == "str|None":
        if is_str or value is None or t == "None":
            return value
        return str(value)
    parsed = yaml.safe_load(value) if is_str else value
    if t == "bool":
        if isinstance(parsed, bool):
            return parsed
        raise PipelineError(f"parameter {where}: {value!r} is not a bool (expected true/false)")
    if t == "int":
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            return parsed
        raise PipelineError(f"parameter {where}: {value!r} is not an int")
    if t == "float":
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            return float(parsed)
        raise PipelineError(f"parameter {where}: {value!r} is not a float")
    if t.startswith("list"):
        if is_str and not isinstance(parsed, list):
            parsed = [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(parsed, list):
            raise PipelineError(f"parameter {where}: {value!r} is not a list (use a,b,c or [a, b, c])")
        inner = t[5:-1] if t.startswith("list[") else ""
        return [coerce(v, inner, where) for v in parsed] if inner else parsed
    if t == "dict" or t.startswith("dict["):
        if isinstance(parsed, dict):
            return parsed
        raise PipelineError(f"parameter {where}: {value!r} is not a mapping")
    return parsed


def build_parameters(profile: dict[str, Any], overrides: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Parameters per notebook: profile common -> profile section -> overrides, each checked
    against the notebook's declared parameters and types."""
    sections = profile.get("parameters", {}) or {}
    common = {**(sections.get("common") or {}), **overrides.get("common", {})}
    declared = {nb: declared_parameters(notebooks_dir() / f"{nb}.ipynb") for nb in NOTEBOOKS}
    every = set().union(*[set(d) for d in declared.values()])
    for key in common:
        if key not in every:
            raise PipelineError(
                f"common parameter {key!r} is declared by no notebook; valid: {', '.join(sorted(every))}"
            )
    cwd = Path.cwd()
    result: dict[str, dict[str, Any]] = {}
    for nb in NOTEBOOKS:
        decl = declared[nb]
        params: dict[str, Any] = {}
        sources = (
            ("profile common", sections.get("common") or {}, REPO_ROOT),
            ("-p common", overrides.get("common", {}), cwd),
            ("profile", sections.get(nb) or {}, REPO_ROOT),
            ("-p", overrides.get(nb, {}), cwd),
        )
        for source, values, base in sources:
            for key, value in values.items():
                if key not in decl:
                    if "common" in source:
                        continue
                    raise PipelineError(
                        f"{source}: notebook {nb} has no parameter {key!r}; valid: {', '.join(sorted(decl))}"
                    )
                v = coerce(value, decl[key]["inferred_type_name"], f"{nb}.{key}")
                if key.endswith("_dir") and isinstance(v, str) and v and not Path(v).is_absolute():
                    v = str((base / v).resolve())  # profile paths are relative to the repo, -p paths to the cwd
                params[key] = v
        result[nb] = params
    return result


def _literal(source: str) -> Any:
    """A parameter's default as papermill reads it (its source text), or a marker when it is not a literal."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def _same(key: str, value: Any, default: Any) -> bool:
    if default is _NOT_LITERAL or type(value) is not type(default):
        return False
    if value == default:
        return True
    if key.endswith("_dir") and isinstance(value, str) and value and default:
        # a folder given as the profile's absolute path and the notebook's default relative to notebooks/
        # (where the kernels run) is the same folder
        return Path(value).resolve() == (notebooks_dir() / default).resolve()
    return False


def injected_parameters(notebook: str, params: dict[str, Any]) -> dict[str, Any]:
    """What papermill injects into ``notebook``: the parameters that differ from the notebook's
    defaults (same type and value - or the same folder - is left out), so that the executed
    notebook's injected cell shows what this run changed."""
    decl = declared_parameters(notebooks_dir() / f"{notebook}.ipynb")
    return {k: v for k, v in params.items() if k not in decl or not _same(k, v, _literal(decl[k]["default"]))}


# ---------------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    run_id: str
    run_dir: Path
    profile: str
    parameters: dict[str, dict[str, Any]]
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = "running"
    created: str = ""
    fusionkit_version: str | None = None  # the fusionkit that made the run (None: one older than the record)
    versions: dict[str, str] = field(default_factory=dict)
    report_mode: bool = False  # the executed notebooks hide their code cells (--report-mode)

    def save(self) -> None:
        data = {
            "run_id": self.run_id,
            "profile": self.profile,
            "status": self.status,
            "created": self.created,
            "fusionkit_version": self.fusionkit_version,
            "versions": self.versions,
            "report_mode": self.report_mode,
            "parameters": self.parameters,
            "notebooks": self.notebooks,
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(data, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / "run.json"
        if not path.is_file():
            raise PipelineError(f"cannot resume: {path} does not exist (not a fusionkit run folder)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PipelineError(f"cannot resume: {path} is not valid JSON ({e})") from e
        return cls(
            d["run_id"],
            run_dir,
            d["profile"],
            d["parameters"],
            d.get("notebooks", {}),
            d.get("status", "failed"),
            d.get("created", ""),
            d.get("fusionkit_version"),
            d.get("versions", {}),
            bool(d.get("report_mode", False)),
        )


# ---------------------------------------------------------------------------------------- progress
HISTORY = 5  # earlier runs of a profile whose durations make the estimate


def earlier_durations(reports_dir: Path, profile: str, exclude: str = "") -> dict[str, list[float]]:
    """Seconds each notebook took in the profile's latest earlier runs (``run.json``'s notebooks
    that finished; up to :data:`HISTORY` per notebook, newest first). Unreadable run folders are
    skipped: an estimate is no reason to fail."""
    runs = []
    for path in (reports_dir / "runs").glob("*/run.json"):
        if path.parent.name == exclude:
            continue
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(d, dict) and d.get("profile") == profile and isinstance(d.get("notebooks"), dict):
            runs.append(d)
    runs.sort(key=lambda d: str(d.get("created", "")), reverse=True)
    out: dict[str, list[float]] = {}
    for d in runs:
        for nb, info in d["notebooks"].items():
            if not isinstance(info, dict) or info.get("status") != "done":
                continue
            secs = info.get("seconds")
            if isinstance(secs, (int, float)) and not isinstance(secs, bool):
                seen = out.setdefault(nb, [])
                if len(seen) < HISTORY:
                    seen.append(float(secs))
    return out


class ChainClock:
    """The chain's overall progress: elapsed time and an estimate of what is left (each notebook
    still to run at the median of its earlier durations; one without any makes it a lower bound)."""

    def __init__(self, history: dict[str, list[float]], profile: str, todo: list[str]):
        self.history, self.profile, self.todo = history, profile, list(todo)
        self.left_to_run = list(todo)
        self.start = time.perf_counter()

    def estimate(self, nb: str) -> float | None:
        seen = self.history.get(nb)
        return statistics.median(seen) if seen else None

    def finished(self, nb: str) -> None:
        if nb in self.left_to_run:
            self.left_to_run.remove(nb)

    def position(self, nb: str) -> str:
        return f"{self.todo.index(nb) + 1}/{len(self.todo)}" if nb in self.todo else "-"

    def left(self) -> tuple[float, list[str]]:
        """Seconds left by the estimate, and the notebooks still to run that have no earlier timing."""
        known = [e for e in map(self.estimate, self.left_to_run) if e is not None]
        return sum(known), [nb for nb in self.left_to_run if self.estimate(nb) is None]

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        text = f"{duration(now - self.start)} elapsed"
        if not self.left_to_run:
            return text
        left, unknown = self.left()
        if len(unknown) == len(self.left_to_run):
            return f"{text}, no estimate of what is left (no earlier finished run of profile {self.profile})"
        if unknown:
            return f"{text}, at least {duration(left)} left (no earlier timing of {', '.join(unknown)})"
        return f"{text}, about {duration(left)} left (from earlier runs of profile {self.profile})"


def wire_paths(run_dir: Path, params: dict[str, dict[str, Any]]) -> None:
    """The files notebooks hand each other, as parameters (only where the notebook declares them)."""
    links = {
        "run_dir": str(run_dir),
        "features_index": str(run_dir / "features.json"),
        "comparison_csv": str(run_dir / "tables" / "comparison_summary.csv"),
        "checkpoint": str(run_dir / "model.safetensors"),
    }
    for nb in NOTEBOOKS:
        decl = declared_parameters(notebooks_dir() / f"{nb}.ipynb")
        for key, value in links.items():
            if key in decl:
                params[nb][key] = value
        if "run_id" in decl:
            params[nb]["run_id"] = run_dir.name


def _new_run_id(profile: str) -> str:
    return f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{profile}"


def _check_writable(reports_dir: Path) -> None:
    try:
        (reports_dir / "runs").mkdir(parents=True, exist_ok=True)
        probe = reports_dir / "runs" / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PipelineError(
            f"cannot write to the reports directory {reports_dir}: {e.strerror or e}; expected a writable folder"
        ) from e


def _kernel_name() -> str:
    try:
        from jupyter_client.kernelspec import find_kernel_specs

        specs = find_kernel_specs()
    except Exception:  # noqa: BLE001 - no jupyter_client config: fall back to the default kernel
        return "python3"
    return KERNEL_NAME if KERNEL_NAME in specs else "python3"


def _update_latest(reports_dir: Path, run_dir: Path) -> None:
    latest = reports_dir / "latest"
    tmp = reports_dir / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path("runs") / run_dir.name)
    os.replace(tmp, latest)


class _Prefix(logging.Formatter):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(f"[{self.name}] {line}" for line in record.getMessage().splitlines() or [""])


def run(
    profile: str = "default",
    overrides: list[str] | None = None,
    *,
    reports_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    only: list[str] | None = None,
    show_progress: bool | None = None,
    stream_output: bool = True,
    report_mode: bool = False,
) -> Path:
    """Run the chain; returns the run folder. Raises PipelineError (bad input) or
    NotebookFailed (a cell raised). ``show_progress``: None - bars in a terminal, plain
    occasional lines otherwise or under CI; False - none; True - bars. ``report_mode``: the
    executed notebooks hide their code cells (papermill's report mode; kept by ``--resume``)."""
    reports_dir = Path(reports_dir or os.environ.get("FUSIONKIT_REPORTS_DIR", REPO_ROOT / "reports"))
    _check_writable(reports_dir)
    with contextlib.ExitStack() as held:
        run_dir, state = _start(held, reports_dir, profile, overrides, run_id, resume)
        if report_mode:
            state.report_mode = True
        _run_notebooks(state, run_dir, reports_dir, only, show_progress, stream_output)
    return run_dir


def _hold(held: contextlib.ExitStack, run_dir: Path) -> None:
    """Take the run folder's lock for the rest of the run, or refuse when another process has it."""
    try:
        held.enter_context(file_lock(run_dir / ".run.lock", f"run folder {run_dir}", wait=False))
    except LockBusy as e:
        raise PipelineError(f"{e}; wait for that run to finish, or run under another --run-id") from None


def _start(
    held: contextlib.ExitStack,
    reports_dir: Path,
    profile: str,
    overrides: list[str] | None,
    run_id: str | None,
    resume: str | None,
) -> tuple[Path, RunState]:
    """The run folder and its state, the folder's lock held: a new run's folder is created (by
    exactly one process), a resumed one is read after the lock is taken."""
    if resume:
        run_dir = reports_dir / "runs" / resume
        if not (run_dir / "run.json").is_file():
            RunState.load(run_dir)  # raises, naming the missing file
        _hold(held, run_dir)
        state = RunState.load(run_dir)
        if overrides:
            raise PipelineError("--resume re-runs a run with its recorded parameters; -p cannot be combined with it")
    else:
        prof = load_profile(profile)
        params = build_parameters(prof, parse_overrides(overrides or []))
        rid = run_id or _new_run_id(profile)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", rid):
            raise PipelineError(f"run id {rid!r}: expected letters, digits, '.', '_' or '-'")
        run_dir = reports_dir / "runs" / rid
        if run_dir.exists():
            raise PipelineError(f"run folder {run_dir} already exists; choose another --run-id or --resume {rid}")
        _preflight(params)
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:  # another process took this run id since the check above
            raise PipelineError(f"run folder {run_dir} already exists; choose another --run-id") from None
        _hold(held, run_dir)
        wire_paths(run_dir.resolve(), params)
        state = RunState(
            rid,
            run_dir,
            profile,
            params,
            {nb: {"status": "pending"} for nb in NOTEBOOKS},
            created=_dt.datetime.now().isoformat(timespec="seconds"),
            fusionkit_version=__version__,
            versions=_versions(),
        )
        state.save()
    return run_dir, state


def _run_notebooks(
    state: RunState,
    run_dir: Path,
    reports_dir: Path,
    only: list[str] | None,
    show_progress: bool | None,
    stream_output: bool,
) -> None:
    """Run the selected notebooks that have not finished, each in a fresh kernel, recording each
    one's state in ``run.json``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    os.environ["FUSIONKIT_PROGRESS"] = kernel_progress(show_progress)  # the kernels' loops (fusionkit.progress)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    openmp_environment()  # before any kernel starts: its OpenMP runtime reads them once
    (run_dir / "notebooks").mkdir(exist_ok=True)
    selected = [_resolve_notebook(n) for n in only] if only else list(NOTEBOOKS)
    kernel = _kernel_name()
    state.status = "running"
    state.save()
    logger = logging.getLogger("papermill")
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if stream_output else logging.WARNING)
    logger.propagate = False
    todo = [nb for nb in NOTEBOOKS if nb in selected and state.notebooks.get(nb, {}).get("status") != "done"]
    clock = ChainClock(earlier_durations(reports_dir, state.profile, exclude=state.run_id), state.profile, todo)
    try:
        for nb in NOTEBOOKS:
            if nb not in selected:
                continue
            info = state.notebooks.setdefault(nb, {"status": "pending"})
            if info.get("status") == "done":
                print(f"[fusionkit] {nb}: already finished, skipped", flush=True)
                continue
            out_nb = run_dir / "notebooks" / f"{nb}.ipynb"
            info.update(status="running", started=_dt.datetime.now().isoformat(timespec="seconds"))
            info.pop("error", None)
            state.save()
            handler.setFormatter(_Prefix(nb))
            print(f"[fusionkit] {nb}: running ({clock.position(nb)}, {kernel} kernel) -> {out_nb} · {clock.line()}",
                  flush=True)  # fmt: skip
            t0 = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(notebooks_dir() / f"{nb}.ipynb"),
                    str(out_nb),
                    parameters=injected_parameters(nb, state.parameters.get(nb, {})),
                    kernel_name=kernel,
                    log_output=stream_output,
                    progress_bar=False,
                    report_mode=state.report_mode,
                    cwd=str(notebooks_dir()),  # as a JupyterLab kernel opened on notebooks/ runs it
                )
            except PapermillExecutionError as e:
                info.update(
                    status="failed",
                    seconds=round(time.perf_counter() - t0, 1),
                    error=f"In [{e.exec_count}]: {e.ename}: {e.evalue}",
                )
                state.status = "failed"
                state.save()
                _report_what_there_is(run_dir)
                first_line = next((ln.strip() for ln in (e.source or "").splitlines() if ln.strip()), "")
                raise NotebookFailed(nb, e.exec_count, e.ename, e.evalue, out_nb, first_line) from None
            except BaseException as e:
                info.update(
                    status="failed", seconds=round(time.perf_counter() - t0, 1), error=f"{type(e).__name__}: {e}"
                )
                state.status = "failed"
                state.save()
                if isinstance(e, Exception):
                    _report_what_there_is(run_dir)
                raise
            info.update(status="done", seconds=round(time.perf_counter() - t0, 1))
            state.save()
            clock.finished(nb)
            print(
                f"[fusionkit] {nb}: done in {info['seconds']:.1f} s ({clock.position(nb)}) · {clock.line()}", flush=True
            )
    finally:
        logger.removeHandler(handler)
    if all(state.notebooks.get(nb, {}).get("status") == "done" for nb in NOTEBOOKS):
        state.status = "complete"
        state.save()
        _update_latest(reports_dir, run_dir)
        _screenshot(run_dir)
    else:
        state.status = "partial"
        state.save()


def kernel_progress(show_progress: bool | None) -> str:
    """The progress mode the kernels get: bars / off when asked (``--no-progress``), else what the
    environment says (``FUSIONKIT_PROGRESS``, ``FUSIONKIT_NO_PROGRESS``), else bars in a terminal
    and plain occasional lines where the output is a log (not a terminal, or ``CI`` set)."""
    if show_progress is not None:
        return "bars" if show_progress else "off"
    return asked_mode() or ("bars" if sys.stderr.isatty() and not os.environ.get("CI") else "lines")


def _versions() -> dict[str, str]:
    """The versions a run's numbers depend on (``run.json``; the report's run facts)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "pandas", "scikit-learn", "papermill", "wandb"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _report_what_there_is(run_dir: Path) -> None:
    """A notebook failed: the report of what the run has (it says what is missing and why); a
    failure to build it is printed, never raised over the notebook's own error."""
    try:
        from fusionkit.report import build_report

        build_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the notebook's error is the one to raise
        print(f"[fusionkit] no report of the incomplete run: {type(e).__name__}: {e}", flush=True)
        return
    print(f"[fusionkit] report of the incomplete run (it says what is missing): {run_dir / 'report.html'}", flush=True)


def _screenshot(run_dir: Path) -> None:
    """The report's first screen as ``report_first_screen.png``, where a headless Chromium is
    installed; otherwise the log says why there is none."""
    from fusionkit.report import browser

    report = run_dir / "report.html"
    if not report.exists():
        return
    found = browser.find()
    if found is None:
        print(f"[fusionkit] no screenshot of the report: {browser.MISSING}", flush=True)
        return
    try:
        out = browser.screenshot(report, run_dir / browser.SCREENSHOT, found)
    except Exception as e:  # noqa: BLE001 - a screenshot never fails a finished run
        print(f"[fusionkit] no screenshot of the report: {type(e).__name__}: {e}", flush=True)
        return
    print(f"[fusionkit] screenshot of the report's first screen: {out}", flush=True)


class NotebookFailed(RuntimeError):
    """A cell raised: names the notebook, the cell (its ``In [n]`` number and first line) and the error."""

    def __init__(self, notebook: str, cell: int | None, ename: str, evalue: str, output: Path, first_line: str = ""):
        self.notebook, self.cell, self.ename, self.evalue, self.output = notebook, cell, ename, evalue, output
        where = f"cell In [{cell}]" + (f" ({first_line[:60]})" if first_line else "")
        super().__init__(
            f"notebook {notebook} failed in {where}: {ename}: {evalue} (executed notebook kept at {output})"
        )


def _preflight(params: dict[str, dict[str, Any]]) -> None:
    """Checks that would otherwise fail minutes into the chain."""
    comparison = params.get("03_fusion_comparison", {})
    if comparison.get("executor", "ray") == "ray":
        from fusionkit.grid.executors import check_reachable, resolve_address

        address = resolve_address(comparison.get("ray_address", ""))
        if address:
            try:
                check_reachable(address)
            except (ConnectionError, ValueError) as e:
                raise PipelineError(f"03_fusion_comparison.{e}") from None
    for nb, p in params.items():
        src = p.get("source_dir")
        if src:
            path = Path(src) if Path(src).is_absolute() else (notebooks_dir() / src)
            if not path.is_dir():
                raise PipelineError(
                    f"{nb}.source_dir: dataset directory {path.resolve()} does not exist; expected the raw data folder (see `fusionkit data download`)"
                )
        mode = p.get("wandb_mode")
        if mode is not None:
            if mode not in MODES:
                raise PipelineError(f"{nb}.wandb_mode: {mode!r}; expected one of {', '.join(MODES)}")
