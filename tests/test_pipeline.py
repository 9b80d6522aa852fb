"""The chain runner on tiny stand-in notebooks (fast): failures, resume, parameters, bad input."""

import json
from pathlib import Path

import nbformat
import pytest

from fusionkit import cli, pipeline, tracking

BODY = """
from pathlib import Path
from fusionkit import tracking
tracker = tracking.start(run_dir, "{name}", {{"epochs": epochs}}, mode="disabled")
marker = Path(run_dir) / "executed.txt"
with open(marker, "a") as f:
    f.write("{name}\\n")
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
    return tmp_path / "reports"


def _executed(run_dir: Path) -> list[str]:
    return (run_dir / "executed.txt").read_text().split()


def test_parameters_from_profile_and_overrides(fake_chain):
    run_dir = pipeline.run(
        "tiny", ["04.epochs=7", "common.label=z"], reports_dir=fake_chain, run_id="r1", stream_output=False
    )
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "complete"
    p = state["parameters"]
    assert p["01_data_prep"]["epochs"] == 2 and p["04_train"]["epochs"] == 7
    assert p["03_fusion_comparison"]["label"] == "y"  # the notebook section beats common
    assert p["05_evaluate"]["label"] == "z"
    assert p["01_data_prep"]["run_dir"] == str(run_dir.resolve())
    out = nbformat.read(run_dir / "notebooks" / "04_train.ipynb", as_version=4)
    assert "epochs=7" in out.cells[-1].outputs[0]["text"]
    assert _executed(run_dir) == list(pipeline.NOTEBOOKS)
    assert (fake_chain / "latest").resolve() == run_dir.resolve()


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

    # fix the cause, resume: finished notebooks are skipped
    flag.unlink()
    assert cli.main(["run", "--resume", "r2", "--reports-dir", str(fake_chain), "--quiet"]) == 0
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
