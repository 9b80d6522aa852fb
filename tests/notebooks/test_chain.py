"""The whole notebook chain on the smoke profile, headless through papermill, as a user runs it."""

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from fusionkit import tracking
from fusionkit.pipeline import coerce, load_profile

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"

STEPS = ["01_data_prep", "02_feature_extraction", "03_fusion_comparison", "04_train", "05_evaluate", "06_report"]


def test_run_folder_complete(smoke_run):
    run_dir, proc = smoke_run
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "complete"
    assert [state["notebooks"][s]["status"] for s in STEPS] == ["done"] * 6
    for s in STEPS:
        assert (run_dir / "notebooks" / f"{s}.ipynb").exists()
    assert (run_dir.parent.parent / "latest").resolve() == run_dir.resolve()
    assert "[03_fusion_comparison]" in proc.stdout  # cell output streamed, prefixed by notebook
    assert "%|" not in proc.stdout + proc.stderr  # no progress-bar noise
    # the report's first screen, or the reason there is none (no headless browser here)
    assert "screenshot of the report's first screen" in proc.stdout or "no screenshot of the report" in proc.stdout


def test_mirror_has_every_step_and_wandb_offline_runs(smoke_run):
    run_dir, _ = smoke_run
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in recs} == set(STEPS)
    ends = [r for r in recs if r["kind"] == "end"]
    assert ends and all(r["exit_code"] == 0 for r in ends)
    assert any(r["kind"] == "table" and r["key"] == "predictions" for r in recs)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) >= len(STEPS)


def test_report_contents(smoke_run):
    run_dir, _ = smoke_run
    html = (run_dir / "report.html").read_text()
    summary = pd.read_csv(run_dir / "summary.csv")
    metrics = {(r.step, r.metric): r.value for r in summary.itertuples()}
    best = metrics[("03_fusion_comparison", "best_fusion_method")]
    assert best in ("concat", "weighted", "additive_attention")
    assert f"Best fusion method <b>{best}</b>" in html
    assert "best single modality" in html
    for fig in (
        "examples",
        "class_balance",
        "feature_projection",
        "comparison",
        "confusion_matrix",
        "modality_ablation",
    ):
        assert (run_dir / "figures" / f"{fig}.png").exists(), fig
        assert f"<figure id='fig-{fig}'>" in html
    assert html.count("<img src='data:image/") >= 6
    acc = float(metrics[("05_evaluate", "test_accuracy")])
    assert 0.0 <= acc <= 1.0
    assert f"{acc:.3f}" in html
    assert "wandb sync" in html


def test_tasks_run_through_the_chain(smoke_run):
    """The smoke profile's tasks: trained in 04, evaluated in 05, their tables in the report."""
    run_dir, _ = smoke_run
    html = (run_dir / "report.html").read_text()
    summary = pd.read_csv(run_dir / "summary.csv")
    metrics = {(r.step, r.metric): r.value for r in summary.itertuples()}
    for task, key in (
        ("captioning", "transformer/epochs_run"),
        ("vqa", "film/best_val_accuracy"),
        ("retrieval", "dual/best_val_rsum"),
    ):
        assert ("04_train", f"{task}/{key}") in metrics, task
        assert (run_dir / task / "summary.json").is_file(), task
        assert f"{task}_metrics" in html, task
    assert 0.0 <= float(metrics[("05_evaluate", "vqa/best/accuracy")]) <= 1.0
    assert ("05_evaluate", "captioning/nn_baseline/CIDEr") in metrics
    assert not [m for _, m in metrics if m.startswith(("vqa/vqa/", "captioning/captioning/", "retrieval/retrieval/"))]
    for table in ("captioning_metrics", "vqa_per_question_type", "retrieval_metrics"):
        assert table in html
    assert "nearest_neighbour" in html and "ridge" in html  # the baselines are reported next to the models
    for fig in ("captioning_attention", "vqa_per_question_type", "retrieval_recall"):
        assert (run_dir / "figures" / f"{fig}.png").is_file(), fig


def test_numbers_are_pinned(smoke_run):
    """Restructuring must not move a number: every table, task summary and headline of the smoke
    chain equals ``smoke_numbers.json`` (timings and paths left out; see ``pinned.py``). The pin
    was made with the CPU count it records: reductions differ bitwise across thread counts, and
    the chain's threads follow ``fusionkit.runtime.available_cpus`` (affinity, cgroup quota)."""
    from fusionkit.runtime import available_cpus
    from tests.notebooks import pinned

    want = json.loads(pinned.PIN.read_text(encoding="utf-8"))
    cpus = want.pop("cpus")
    if available_cpus() != cpus:
        pytest.skip(f"smoke_numbers.json was made on {cpus} CPUs; this process may use {available_cpus()}")
    run_dir, _ = smoke_run
    diffs = pinned.differences(pinned.numbers(run_dir), want)
    assert not diffs, f"{len(diffs)} number(s) moved:\n" + "\n".join(diffs[:60])


def test_pin_comparison_catches_a_moved_number():
    from tests.notebooks import pinned

    want = {"tables": {"t": {"acc": [0.5, 0.25], "method": ["a", "b"]}}, "summary": {"x": "0.75"}}
    assert pinned.differences(json.loads(json.dumps(want)), want) == []
    moved = {"tables": {"t": {"acc": [0.5, 0.2500011], "method": ["a", "b"]}}, "summary": {"x": "0.75"}}
    assert pinned.differences(moved, want) == ["/tables/t/acc[1]: 0.2500011, pinned 0.25"]
    renamed = {"tables": {"t": {"acc": [0.5, 0.25], "method": ["a", "c"]}}, "summary": {"x": 0.7500001}}
    assert pinned.differences(renamed, want) == ["/tables/t/method[1]: 'c', pinned 'b'"]
    assert pinned.differences({"tables": {}, "summary": {"x": "0.75"}}, want) == ["/tables/t: missing"]


def test_the_kernels_ran_in_notebooks_on_their_defaults_and_the_smoke_sizes(smoke_run):
    """Each notebook ran as JupyterLab runs it - its kernel in ``notebooks/`` - on its own defaults
    with only what the run changes injected: the smoke profile's sizes, the test's folders and
    the files the runner wires between notebooks."""
    run_dir, _ = smoke_run
    configs = {r["step"]: r for r in tracking.read_mirror(run_dir) if r["kind"] == "config" and r["run"] == r["step"]}
    profile = load_profile("smoke")["parameters"]
    wired = {"run_dir", "run_id", "features_index", "comparison_csv", "checkpoint", "dataset_dir", "cache_dir"}
    for step in STEPS:
        assert configs[step]["cwd"] == str(NOTEBOOKS_DIR), step
        declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{step}.ipynb"))
        defaults = {k: ast.literal_eval(p["default"]) for k, p in declared.items()}
        injected = dict(nbformat.read(run_dir / "notebooks" / f"{step}.ipynb", as_version=4).metadata.papermill.parameters)
        assert configs[step]["data"] == tracking.scrub({**defaults, **injected}), step  # what the kernel ran on
        asked = {k: v for k, v in {**profile["common"], **(profile.get(step) or {})}.items() if k in declared}
        for key, value in asked.items():
            if key in wired:
                continue
            value = coerce(value, declared[key]["inferred_type_name"], key)
            if value == defaults[key] and type(value) is type(defaults[key]):
                assert key not in injected, f"{step}.{key}: its default was injected"
            else:
                assert injected[key] == value, f"{step}.{key}"
        assert set(injected) - wired == {k for k in asked if k not in wired and k in injected}, step
    first = nbformat.read(run_dir / "notebooks" / "01_data_prep.ipynb", as_version=4).metadata.papermill.parameters
    assert (first["n_scenes"], first["image_size"]) == (150, 96) and "seed" not in first  # seed 0 is the default


def test_the_wandb_report_of_the_smoke_run(smoke_run):
    """``fusionkit report wandb`` on the chain's real offline W&B runs: every run is in a run set,
    one section per question, the predictions tables."""
    import wandb_workspaces.reports.v2 as wr

    from fusionkit.report import wandb_report

    run_dir, _ = smoke_run
    built = wandb_report.build(run_dir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(built.runs.names) == len(offline) and built.notes == []
    blocks = built.report.blocks
    headings = [b.text for b in blocks if isinstance(b, (wr.H1, wr.H2))]
    for h in ("Headline", "Fusion comparison", "Robustness", "Interactions", "Interpretability", "Final model",
              "Tasks", "captioning", "vqa", "retrieval", "Predictions", "Data", "Run facts"):  # fmt: skip
        assert h in headings, h
    grids = [b for b in blocks if isinstance(b, wr.PanelGrid)]
    shown = {n for g in grids for rs in g.runsets for n in ast.literal_eval(rs.filters.split(" in ", 1)[1])}
    run_id = run_dir.name
    assert shown == set(built.runs.names.values()) - {f"{run_id}/06_report"}  # each W&B run but 06's (no panels)
    trainings = [g for g in grids if g.runsets[0].name == "03 · trainings per method and seed"][0]
    assert [len(ast.literal_eval(rs.filters.split(" in ", 1)[1])) for rs in trainings.runsets] == [12, 12]  # tuned, untuned
    tables = {p.table_name for g in grids for p in g.panels if isinstance(p, wr.WeavePanelSummaryTable)}
    assert {"predictions", "captioning_samples", "vqa_samples", "retrieval_samples", "comparison_summary"} <= tables
    summary = pd.read_csv(run_dir / "summary.csv")
    best = summary[(summary.step == "03_fusion_comparison") & (summary.metric == "best_fusion_method")].value.iloc[0]
    assert any(isinstance(b, wr.P) and b.text.startswith(f"Best fusion method {best} ") for b in blocks)
    assert built.spec()["spec"]["blocks"]
