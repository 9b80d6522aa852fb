"""The chain runner on tiny stand-in notebooks (fast): failures, resume, parameters, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fusionkit import __version__, cli, pipeline, tracking

BODY = """
from pathlib import Path
from fusionkit import tracking
tracker = tracking.start(run_dir, "{name}", {{"epochs": epochs}}, mode="disabled")
marker = Path(run_dir) / "executed.txt"
with open(marker, "a") as f:
    f.write("{name}\\n")
import json, os
(Path(run_dir) / "env-{name}.json").write_text(json.dumps({{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}}))
(Path(run_dir) / "progress-{name}.txt").write_text(os.environ.get("FUSIONKIT_PROGRESS", ""))
if Path("fail-{name}").exists():  # the runner runs notebooks in the notebooks folder
    raise ValueError("deliberate failure in {name}")
"""


def _write_notebooks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in pipeline.NOTEBOOKS:
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell(
            'run_dir: str = "."  # run folder\nepochs: int = 3  # passes\nlabel: str = "x"  # a string\nray_address: str = ""  # a cluster'
        )
        params.metadata["tags"] = ["parameters"]
        nb.cells = [
            params,
            nbformat.v4.new_code_cell(BODY.format(name=name)),
            nbformat.v4.new_code_cell('print(f"epochs={epochs} label={label}")'),
        ]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture
def fake_chain(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    profiles = tmp_path / "profiles"
    _write_notebooks(nbs)
    profiles.mkdir()
    (profiles / "tiny.yaml").write_text(
        "description: tiny\nparameters:\n  common:\n    epochs: 2\n  03_fusion_comparison:\n    label: y\n"
    )
    monkeypatch.setenv("FUSIONKIT_NOTEBOOKS_DIR", str(nbs))
    monkeypatch.setenv("FUSIONKIT_PROFILES_DIR", str(profiles))
    monkeypatch.setenv("FUSIONKIT_CHROMIUM", str(tmp_path / "no-browser"))  # no screenshot: these tests are fast
    return tmp_path / "reports"


def _executed(run_dir: Path) -> list[str]:
    return (run_dir / "executed.txt").read_text().split()


def test_parameters_from_profile_and_overrides(fake_chain, monkeypatch, capsys):
    """Also: only what differs from a notebook's defaults is injected (the executed notebook shows
    what the run changed), ``report_mode`` hides the code, under CI the kernels' loops print plain
    lines, and the runner prints one overall line per notebook start and end."""
    monkeypatch.setenv("CI", "true")
    for key in ("FUSIONKIT_PROGRESS", "FUSIONKIT_NO_PROGRESS"):  # restored after the test (the runner sets the first)
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    run_dir = pipeline.run("tiny", ["04.epochs=7", "common.label=z", "06.epochs=3", "06.label=x"],
                           reports_dir=fake_chain, run_id="r1", stream_output=False, report_mode=True)  # fmt: skip
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "complete"
    p = state["parameters"]
    assert p["01_data_prep"]["epochs"] == 2 and p["04_train"]["epochs"] == 7
    assert p["03_fusion_comparison"]["label"] == "y"  # the notebook section beats common
    assert p["05_evaluate"]["label"] == "z"
    assert p["01_data_prep"]["run_dir"] == str(run_dir.resolve())
    assert p["06_report"] == {"epochs": 3, "label": "x", "run_dir": str(run_dir.resolve())}  # the record is whole
    out = nbformat.read(run_dir / "notebooks" / "04_train.ipynb", as_version=4)
    assert "epochs=7" in out.cells[-1].outputs[0]["text"]
    assert _executed(run_dir) == list(pipeline.NOTEBOOKS)
    assert (fake_chain / "latest").resolve() == run_dir.resolve()
    last = nbformat.read(run_dir / "notebooks" / "06_report.ipynb", as_version=4)
    assert last.metadata.papermill.parameters == {"run_dir": str(run_dir.resolve())}  # 3 and "x" are its defaults
    assert "epochs=3 label=x" in last.cells[-1].outputs[0]["text"]  # ... which it ran with
    assert out.metadata.papermill.parameters["epochs"] == 7
    assert state["report_mode"] is True
    assert all(c.metadata.get("jupyter", {}).get("source_hidden") for c in out.cells if c.cell_type == "code")
    assert (run_dir / "progress-03_fusion_comparison.txt").read_text() == "lines"
    said = capsys.readouterr().out
    assert "[fusionkit] 01_data_prep: running (1/6, " in said
    assert "no estimate of what is left (no earlier finished run of profile tiny)" in said
    assert "[fusionkit] 06_report: done in " in said and "(6/6) · " in said


def test_failing_cell_stops_chain_keeps_output_and_exits_nonzero(fake_chain, tmp_path, capsys):
    flag = tmp_path / "notebooks" / "fail-03_fusion_comparison"
    flag.write_text("")
    code = cli.main(["run", "--profile", "tiny", "--run-id", "r2", "--reports-dir", str(fake_chain), "--quiet"])
    run_dir = fake_chain / "runs" / "r2"
    err = capsys.readouterr().err
    assert code == 1
    assert "03_fusion_comparison" in err and "cell" in err and "deliberate failure" in err
    assert _executed(run_dir) == ["01_data_prep", "02_feature_extraction", "03_fusion_comparison"]
    kept = nbformat.read(run_dir / "notebooks" / "03_fusion_comparison.ipynb", as_version=4)
    assert any(
        o.get("ename") == "ValueError" for c in kept.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    ends = [r for r in tracking.read_mirror(run_dir) if r["kind"] == "end"]
    assert [(r["step"], r["exit_code"]) for r in ends][-1] == ("03_fusion_comparison", 1)  # run closed as failed
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "failed"
    assert state["notebooks"]["03_fusion_comparison"]["status"] == "failed"
    assert not (fake_chain / "latest").exists()
    # the run still gets a report, which says what is missing and why
    html = (run_dir / "report.html").read_text()
    assert "Incomplete run" in html and "ValueError: deliberate failure in 03_fusion_comparison" in html
    assert "<code>04_train</code> did not run" in html
    assert state["fusionkit_version"] == __version__ and state["versions"]["python"]

    # fix the cause, resume: finished notebooks are skipped
    flag.unlink()
    assert cli.main(["run", "--resume", "r2", "--reports-dir", str(fake_chain), "--quiet"]) == 0
    assert "no screenshot of the report: no headless browser" in capsys.readouterr().out  # said, never fatal
    assert _executed(run_dir) == ["01_data_prep", "02_feature_extraction", "03_fusion_comparison"] + list(
        pipeline.NOTEBOOKS[2:]
    )
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--profile", "nope"], "unknown profile 'nope'; available: tiny"),
        (["--profile", "tiny", "-p", "03.epochs=abc"], "03_fusion_comparison.epochs: 'abc' is not an int"),
        (["--profile", "tiny", "-p", "03.nosuch=1"], "notebook 03_fusion_comparison has no parameter 'nosuch'"),
        (["--profile", "tiny", "-p", "99.epochs=1"], "unknown notebook '99'"),
        (["--profile", "tiny", "-p", "epochs"], "expected NOTEBOOK.KEY=VALUE"),
        (["--resume", "missing-run"], "cannot resume"),
        (["--profile", "tiny", "--ray-address", "127.0.0.1:9"], "ray_address '127.0.0.1:9': no Ray cluster reachable"),
        (["--profile", "tiny", "-p", "03.ray_address=nonsense"], "ray_address 'nonsense': expected"),
    ],
)
def test_bad_input_one_clear_line(fake_chain, capsys, argv, message):
    code = cli.main(["run", *argv, "--reports-dir", str(fake_chain), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert not list((fake_chain / "runs").glob("*/run.json"))  # nothing that looks like a run


def test_unwritable_reports_dir(fake_chain, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = cli.main(["run", "--profile", "tiny", "--reports-dir", str(blocker / "reports"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to the reports directory" in err


def test_missing_dataset_directory(fake_chain, tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    for name in pipeline.NOTEBOOKS:  # give 01 a source_dir parameter
        nb = nbformat.read(nbs / f"{name}.ipynb", as_version=4)
        nb.cells[0].source += '\nsource_dir: str = ""  # raw data'
        nbformat.write(nb, nbs / f"{name}.ipynb")
    code = cli.main(
        [
            "run",
            "--profile",
            "tiny",
            "-p",
            f"01.source_dir={tmp_path / 'nowhere'}",
            "--reports-dir",
            str(fake_chain),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "dataset directory" in err and "nowhere" in err


def test_coerce_types():
    assert pipeline.coerce("5", "int", "x") == 5
    assert pipeline.coerce("0.5", "float", "x") == 0.5
    assert pipeline.coerce("true", "bool", "x") is True
    assert pipeline.coerce("a,b", "list[str]", "x") == ["a", "b"]
    assert pipeline.coerce("[1, 2]", "list[int]", "x") == [1, 2]
    assert pipeline.coerce("007", "str", "x") == "007"
    with pytest.raises(pipeline.PipelineError, match="not a bool"):
        pipeline.coerce("maybe", "bool", "x")
    with pytest.raises(pipeline.PipelineError, match="not an int"):
        pipeline.coerce("1.5", "int", "x")


def test_kernels_get_passive_openmp_threads_unless_the_environment_says_otherwise(fake_chain, monkeypatch):
    """OpenMP reads these once, when torch loads in the kernel: the runner sets them before it
    starts any kernel (fusionkit.runtime.openmp_environment), keeping what the user set."""
    from fusionkit.runtime import available_cpus

    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, "placeholder")  # so that monkeypatch restores the original state
        monkeypatch.delenv(key)
    run_dir = pipeline.run("tiny", reports_dir=fake_chain, run_id="env", stream_output=False)
    seen = json.loads((run_dir / "env-04_train.json").read_text())
    assert seen == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(available_cpus())}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = pipeline.run("tiny", reports_dir=fake_chain, run_id="env2", stream_output=False)
    assert json.loads((run_dir / "env-04_train.json").read_text()) == {"OMP_WAIT_POLICY": "ACTIVE",
                                                                        "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_a_run_folder_is_run_by_one_process_at_a_time(fake_chain, tmp_path, capsys):
    """A second ``--resume`` of a run another process is running is refused, naming the lock;
    nothing of the run is touched."""
    flag = tmp_path / "notebooks" / "fail-02_feature_extraction"
    flag.write_text("")
    assert cli.main(["run", "--profile", "tiny", "--run-id", "busy", "--reports-dir", str(fake_chain), "--quiet"]) == 1
    flag.unlink()
    run_dir = fake_chain / "runs" / "busy"
    before = (run_dir / "run.json").read_text()
    holder = subprocess.Popen(  # another process running it: holds the run folder's lock
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(run_dir / ".run.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert cli.main(["run", "--resume", "busy", "--reports-dir", str(fake_chain), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "in use by another process" in err and ".run.lock" in err and len(err.strip().splitlines()) == 1
        assert (run_dir / "run.json").read_text() == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert cli.main(["run", "--resume", "busy", "--reports-dir", str(fake_chain), "--quiet"]) == 0  # released
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_the_chain_says_what_is_left_from_the_profile_s_earlier_runs(fake_chain, capsys):
    _run_json(fake_chain / "runs", "earlier", "tiny", "2026-01-01T10:00:00",
              {nb: {"status": "done", "seconds": 30.0} for nb in pipeline.NOTEBOOKS})  # fmt: skip
    run_dir = pipeline.run("tiny", reports_dir=fake_chain, run_id="r2", stream_output=False, show_progress=False,
                           only=["01", "02"])  # fmt: skip
    assert (run_dir / "progress-02_feature_extraction.txt").read_text() == "off"  # --no-progress: no bars, no lines
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fusionkit] 0")]
    assert len(lines) == 4 and all(" elapsed" in ln for ln in lines)
    assert "01_data_prep: running (1/2, " in lines[0]
    assert "about 1m00s left (from earlier runs of profile tiny)" in lines[0]
    assert "02_feature_extraction: done in " in lines[-1] and lines[-1].endswith(" elapsed")  # nothing left


def _run_json(folder, run_id, profile, created, notebooks):
    (folder / run_id).mkdir(parents=True)
    (folder / run_id / "run.json").write_text(
        json.dumps({"run_id": run_id, "profile": profile, "created": created, "notebooks": notebooks})
    )


def test_the_estimate_is_the_median_of_the_profile_s_latest_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    for i in range(7):
        _run_json(runs, f"a{i}", "smoke", f"2026-01-0{i + 1}T10:00:00",
                  {"01_data_prep": {"status": "done", "seconds": 10.0 * (i + 1)},
                   "02_feature_extraction": {"status": "failed", "seconds": 1.0}})  # fmt: skip
    _run_json(runs, "other", "default", "2026-02-01", {"01_data_prep": {"status": "done", "seconds": 999}})
    _run_json(runs, "me", "smoke", "2026-03-01", {"01_data_prep": {"status": "done", "seconds": 999}})
    (runs / "broken").mkdir()
    (runs / "broken" / "run.json").write_text("{not json")
    history = pipeline.earlier_durations(tmp_path, "smoke", exclude="me")
    assert history == {"01_data_prep": [70.0, 60.0, 50.0, 40.0, 30.0]}  # newest first, failed runs left out
    clock = pipeline.ChainClock(history, "smoke", ["01_data_prep", "02_feature_extraction"])
    assert clock.estimate("01_data_prep") == 50.0 and clock.estimate("02_feature_extraction") is None
    assert clock.line(clock.start + 5) == "5 s elapsed, at least 50 s left (no earlier timing of 02_feature_extraction)"
    clock.finished("02_feature_extraction")
    assert clock.line(clock.start + 65) == "1m05s elapsed, about 50 s left (from earlier runs of profile smoke)"
    assert clock.position("02_feature_extraction") == "2/2"


@pytest.mark.parametrize(
    "show, env, tty, mode",
    [(None, {}, True, "bars"), (None, {}, False, "lines"), (None, {"CI": "true"}, True, "lines"),
     (None, {"CI": "true", "FUSIONKIT_NO_PROGRESS": "1"}, False, "off"), (None, {"FUSIONKIT_PROGRESS": "bars"}, False, "bars"),
     (False, {}, True, "off"), (True, {"CI": "true"}, False, "bars")],
)  # fmt: skip
def test_the_kernels_progress_mode(monkeypatch, show, env, tty, mode):
    for key in ("CI", "FUSIONKIT_PROGRESS", "FUSIONKIT_NO_PROGRESS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert pipeline.kernel_progress(show) == mode
