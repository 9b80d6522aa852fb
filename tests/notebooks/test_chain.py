"""The whole notebook chain on the smoke profile, headless through papermill, as a user runs it."""

import json

import pandas as pd
import pytest

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
