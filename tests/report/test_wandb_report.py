"""``fusionkit report wandb``: the W&B Report of a run, built with wandb_workspaces' own objects
from a run folder whose runs went to W&B offline (real offline runs, no network), serialised and
read back; a run without W&B runs, an older run and a folder that is not a run say so."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import wandb_workspaces.reports.v2 as wr  # noqa: E402
from wandb_workspaces.reports.v2 import internal  # noqa: E402

from fusionkit import cli, tracking  # noqa: E402
from fusionkit.headline import Headline  # noqa: E402
from fusionkit.report import wandb_report  # noqa: E402

GROUP = "r-wb"
METHODS = ("concat", "unimodal:image")


def _log_run(run_dir, mode: str) -> None:
    """A run folder as the notebooks leave it, through the real tracker: 01, 03 (its headline,
    tables, one run per method and seed with its curves), 04, 05 (tables, predictions); 06 never
    ran (an incomplete run)."""
    state = {"run_id": GROUP, "profile": "tiny", "status": "failed", "created": "2026-12-01T10:00:00",
             "fusionkit_version": "0.0.9", "parameters": {},
             "notebooks": {"01_data_prep": {"status": "done", "seconds": 3.0},
                           "03_fusion_comparison": {"status": "done", "seconds": 9.0},
                           "04_train": {"status": "done", "seconds": 2.0},
                           "05_evaluate": {"status": "done", "seconds": 4.0},
                           "06_report": {"status": "failed", "error": "In [3]: KeyError: 'x'"}}}  # fmt: skip
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(state))
    with tracking.start(run_dir, "01_data_prep", {"seed": 0}, group=GROUP, mode=mode) as t:
        t.summary({"dataset": "shapes", "n_samples": 60, "ceilings": {"fused": 1.0, "image": 0.5}})
    with tracking.start(run_dir, "03_fusion_comparison", {"seed": 0}, group=GROUP, mode=mode) as t:
        t.summary(Headline("concat", 0.9, 0.05, "unimodal:image", 0.6, n_methods=2, n_seeds=2).as_summary())
        t.log_table("comparison_summary", pd.DataFrame({"method": list(METHODS), "test_accuracy_mean": [0.9, 0.6]}))
        t.log_table("missing_modality", pd.DataFrame({"method": ["concat"], "dropped": ["image"], "accuracy": [0.5]}))
        fig = plt.figure(figsize=(2, 2))
        t.log_figure("comparison", fig)
        plt.close(fig)
    for method in METHODS:
        for seed in (0, 1):
            cfg = {"seed": seed, "method": method}
            with tracking.start(
                run_dir, "03_fusion_comparison", cfg, group=GROUP, mode=mode, name=f"{method}/seed{seed}"
            ) as t:
                for epoch in range(2):
                    t.log({"epoch": epoch, "val_acc": 0.5 + epoch / 10, "train_loss": 1.0}, step=epoch)
                t.summary({"method": method, "seed": seed, "test_accuracy": 0.8, "params": 100, "train_time_s": 0.1})
    with tracking.start(run_dir, "04_train", {"seed": 0}, group=GROUP, mode=mode) as t:
        t.log({"epoch": 0, "val_acc": 0.7, "train_loss": 0.9}, step=0)
        t.summary({"method": "concat", "best_val_accuracy": 0.7})
    with tracking.start(run_dir, "05_evaluate", {"seed": 0}, group=GROUP, mode=mode) as t:
        t.summary({"test_accuracy": 0.875, "ablation/all": 0.875, "ablation/drop image": 0.5, "vqa/best/accuracy": 0.4})
        t.log_table("predictions", pd.DataFrame({"id": ["a"], "label": ["x"], "predicted": ["x"]}))
        t.log_table("vqa_metrics", pd.DataFrame({"model": ["film"], "accuracy": [0.4]}))


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wandb-report") / "runs" / GROUP
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_PROJECT", "fk-test")
        _log_run(run_dir, "offline")
    return run_dir


def _names(metrics):
    return [getattr(m, "name", m) for m in metrics]  # str as given, Metric once read back


def _grid_of(report, runset_name):
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid) and b.runsets[0].name == runset_name]
    assert len(grids) == 1, [b.runsets[0].name for b in report.blocks if isinstance(b, wr.PanelGrid)]
    return grids[0]


def test_the_report_shows_the_run_s_wandb_runs_section_by_section(offline_run):
    built = wandb_report.build(offline_run, entity="team")
    report = built.report
    assert (
        built.project == "fk-test"
        and built.notes[-1] == f"the run was made by fusionkit 0.0.9; this is {wandb_report.__version__}"
    )
    assert (report.entity, report.project) == ("team", "fk-test")
    headings = [b.text for b in report.blocks if isinstance(b, wr.H1)]
    assert headings == [
        "Headline",
        "Fusion comparison",
        "Robustness",
        "Final model",
        "Tasks",
        "Predictions",
        "Run facts",
    ]
    text = [b.text for b in report.blocks if isinstance(b, wr.P)]
    assert any(t.startswith("Best fusion method concat reaches test accuracy 0.900 ± 0.050 and beats the best single "
                            "modality (unimodal:image, 0.600) by +30.0 points") for t in text)  # fmt: skip

    # the comparison: the per-seed runs, named one by one; the test metric per method, mean and s.e. over seeds
    trainings = _grid_of(report, "03 · trainings per method and seed")
    names = sorted(f"{GROUP}/{m}/seed{s}" for m in METHODS for s in (0, 1))
    assert trainings.runsets[0].filters == f'Metric("Name") in {names!r}'
    bars = {p.title: p for p in trainings.panels if isinstance(p, wr.BarPlot)}
    assert set(bars) == {"test_accuracy per method", "params per method"}
    acc = bars["test_accuracy per method"]
    assert _names(acc.metrics) == ["test_accuracy"] and acc.groupby == wr.Config("method")
    assert (acc.groupby_aggfunc, acc.groupby_rangefunc) == ("mean", "stderr")
    curves = [p for p in trainings.panels if isinstance(p, wr.LinePlot)]
    assert [_names(p.y) for p in curves] == [["val_acc"]]
    tables = _grid_of(report, "03 · comparison tables")
    assert tables.runsets[0].filters == f'Metric("Name") in {[GROUP + "/03_fusion_comparison"]!r}'
    assert [getattr(p, "table_name", None) or p.media_keys for p in tables.panels] == [
        "comparison_summary",
        ["comparison"],
    ]
    robust = _grid_of(report, "03 · robustness")
    assert [p.table_name for p in robust.panels] == ["missing_modality"]  # only what was logged
    # the final model, the task, the predictions table
    evaluation = _grid_of(report, "05 · evaluation")
    assert [getattr(p.metric, "name", p.metric) for p in evaluation.panels if isinstance(p, wr.ScalarChart)] == [
        "test_accuracy"
    ]
    ablation = [p for p in evaluation.panels if isinstance(p, wr.BarPlot)][0]
    assert _names(ablation.metrics) == ["ablation/all", "ablation/drop image"]
    vqa = _grid_of(report, "05 · vqa")
    assert _names(vqa.panels[0].metrics) == ["vqa/best/accuracy"] and vqa.panels[1].table_name == "vqa_metrics"
    assert [p.table_name for p in _grid_of(report, "05 · predictions").panels] == ["predictions"]
    # the run's facts: each notebook's state
    facts = [b for b in report.blocks if isinstance(b, wr.UnorderedList)][-1].items
    assert "06_report: failed (In [3]: KeyError: 'x')" in facts and "03_fusion_comparison: done in 9.0 s" in facts


def test_the_specification_is_the_library_s_model_and_reads_back(offline_run):
    built = wandb_report.build(offline_run)
    path = wandb_report.write_spec(built)
    assert path == offline_run / "wandb_report.json"
    spec = json.loads(path.read_text())
    model = internal.ReportViewspec.model_validate(spec)  # the library's own model of a report
    assert model.display_name == f"fusionkit {GROUP}" and model.project.name == "fk-test"
    again = wr.Report._from_model(model)
    assert [type(b).__name__ for b in again.blocks] == [type(b).__name__ for b in built.report.blocks]
    views = [p.view_type for b in model.spec.blocks if isinstance(b, internal.PanelGrid)
             for p in b.metadata.panel_bank_section_config.panels]  # fmt: skip
    assert views.count("Bar Chart") >= 3 and "Run History Line Plot" in views and "Weave" in views
    blocks, panels = built.counts()
    assert blocks == len(built.report.blocks) and panels == len(views)


def test_the_command_writes_the_specification_and_says_how_to_publish(offline_run, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (offline_run / "wandb_report.json").unlink(missing_ok=True)
    assert cli.main(["report", "wandb", str(offline_run), "--entity", "team"]) == 0
    out = capsys.readouterr().out
    assert (offline_run / "wandb_report.json").is_file()
    assert f"W&B Report of {2 * 2 + 4} W&B runs" in out
    assert f"wandb sync --project fk-test {offline_run / 'wandb'}/offline-run-*   # its 8 offline runs" in out
    assert f"fusionkit report wandb {offline_run} --entity team --project fk-test --mode online" in out
    # by run id, under the reports folder
    assert (
        cli.main(["report", "wandb", GROUP, "--reports-dir", str(offline_run.parent.parent), "--mode", "offline"]) == 0
    )


def test_a_run_without_wandb_runs_gets_a_clear_message(tmp_path, capsys):
    run_dir = tmp_path / "runs" / GROUP
    _log_run(run_dir, "disabled")
    assert cli.main(["report", "wandb", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "the run has no W&B runs" in err and "W&B disabled" in err and "wandb_mode=offline" in err
    assert len(err.strip().splitlines()) == 1 and not (run_dir / "wandb_report.json").exists()
    assert cli.main(["report", "wandb", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", "wandb", str(tmp_path / "empty")]) == 2
    assert "not a fusionkit run folder" in capsys.readouterr().err


def test_a_run_made_before_the_project_was_recorded_still_gets_its_report(offline_run, tmp_path):
    old = tmp_path / GROUP
    old.mkdir()
    (old / "run.json").write_text((offline_run / "run.json").read_text())
    (old / "wandb" / "offline-run-x").mkdir(parents=True)  # its W&B runs, as an older fusionkit left them
    recs = [json.loads(line) for line in (offline_run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wandb", None)
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    built = wandb_report.build(old)
    assert built.project == "fusionkit"
    assert "the run does not record its W&B project (an older fusionkit): assuming 'fusionkit'" in built.notes
    assert len(built.runs.names) == 8


def test_a_notebook_that_did_not_finish_is_named_where_its_section_would_be(offline_run, tmp_path):
    partial = tmp_path / GROUP
    partial.mkdir()
    (partial / "metrics.jsonl").write_text(
        "".join(
            line + "\n"
            for line in (offline_run / "metrics.jsonl").read_text().splitlines()
            if '"05_evaluate"' not in line
        )
    )
    state = json.loads((offline_run / "run.json").read_text())
    state["notebooks"]["05_evaluate"] = {"status": "failed", "error": "In [2]: ValueError: boom"}
    (partial / "run.json").write_text(json.dumps(state))
    report = wandb_report.build(partial).report
    text = [b.text for b in report.blocks if isinstance(b, wr.P)]
    assert "Missing: 05_evaluate failed (In [2]: ValueError: boom)." in text
    headings = [b.text for b in report.blocks if isinstance(b, wr.H1)]
    assert "Predictions" not in headings and "Tasks" not in headings  # nothing of 05 is shown
