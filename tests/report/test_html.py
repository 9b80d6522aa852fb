import json

import matplotlib.pyplot as plt
import pandas as pd

from fusionkit import report, tracking


def _fake_run(run_dir):
    with tracking.start(run_dir, "01_data_prep", mode="disabled") as t:
        t.summary({"n_samples": 10, "ceilings": {"image": 1 / 3, "audio": 0.5, "fused": 1.0}})
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        t.log_figure("examples", fig)
    with tracking.start(run_dir, "03_fusion_comparison", mode="disabled") as t:
        t.log_table("comparison_summary", pd.DataFrame({"method": ["concat", "unimodal:audio"], "acc": [0.97, 0.5]}))
        t.summary(
            {
                "best_fusion_method": "concat",
                "best_fusion_accuracy": 0.97,
                "best_unimodal": "unimodal:audio",
                "best_unimodal_accuracy": 0.5,
                "weights_point_to_informative": "6/6",
                "most_robust_method": "late",
                "most_robust_relative_robustness": 0.91,
            }
        )
        t.log_table("noise_curves", pd.DataFrame({"level": [0.0, 1.0], "accuracy": [1.0, 0.5]}))
    with tracking.start(run_dir, "05_evaluate", mode="disabled") as t:
        t.summary({"test_accuracy": 0.9833})
    (run_dir / "run.json").write_text(
        json.dumps(
            {"profile": "smoke", "created": "now", "notebooks": {"01_data_prep": {"status": "done", "seconds": 1.0}}}
        )
    )


def test_report_from_mirror_only(tmp_path):
    _fake_run(tmp_path)
    head = report.build_report(tmp_path)
    assert head["best_fusion_method"] == "concat"
    assert abs(head["margin"] - 0.47) < 1e-9
    html = (tmp_path / "report.html").read_text()
    assert "Best fusion method <b>concat</b>" in html and "+47.0 points" in html
    assert "0.983" in html
    assert "<figcaption>examples</figcaption>" in html and "data:image/png;base64," in html
    assert "unimodal:audio" in html  # the comparison table
    assert "Documented ceilings" in html
    assert "chosen on the validation split; the test split is used once" in html  # the selection protocol
    assert "<b>6/6</b>" in html and "most robust fusion method over all corruptions is <b>late</b>" in html
    assert "<a href='tables/noise_curves.csv'>noise_curves</a>" in html  # long tables are linked, not shown
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert ("05_evaluate", "test_accuracy") in {(r.step, r.metric) for r in summary.itertuples()}
    assert list(summary.step.unique()) == ["01_data_prep", "03_fusion_comparison", "05_evaluate"]


def test_report_flags_fusion_that_does_not_help(tmp_path):
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.summary(
            {
                "best_fusion_method": "tfn",
                "best_fusion_accuracy": 0.4,
                "best_unimodal": "unimodal:audio",
                "best_unimodal_accuracy": 0.5,
            }
        )
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "does not beat" in html and "class='warn'" in html


def test_report_escapes_html(tmp_path):
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.summary(
            {
                "best_fusion_method": "<script>x</script>",
                "best_fusion_accuracy": 0.9,
                "best_unimodal": "a",
                "best_unimodal_accuracy": 0.5,
            }
        )
    report.build_report(tmp_path)
    assert "<script>x</script>" not in (tmp_path / "report.html").read_text()


def test_summary_ignores_child_runs(tmp_path):
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled", name="concat/seed0") as child:
            child.summary({"test_accuracy": 0.1, "method": "concat"})
        t.summary({"best_fusion_method": "concat"})
    metrics = set(report.collect_summary(tmp_path).metric)
    assert metrics == {"best_fusion_method"}


def test_the_interaction_heatmap_is_the_first_figure_with_a_sentence_per_target(tmp_path):
    _fake_run(tmp_path)
    verdicts = pd.DataFrame(
        {
            "target": ["synergy", "redundant"],
            "best_method": ["concat", "gmu"],
            "best_accuracy": [0.81, 0.95],
            "best_accuracy_ci95": [0.02, 0.01],
            "late_accuracy": [0.5, 0.94],
            "best_unimodal": ["unimodal:audio", "unimodal:image"],
            "best_unimodal_accuracy": [0.51, 0.94],
            "ceiling_fused": [1.0, 1.0],
            "ceiling_late": [0.5, 1.0],
            "ceiling_unimodal": [0.5, 1.0],
            "no_better_than_late": ["", "gmu, concat"],
            "no_better_than_unimodal": ["late", "gmu, concat, late"],
        }
    )
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.log_table("interaction_verdicts", verdicts)
        t.log_table("interaction_profile", pd.DataFrame({"pair": ["image+audio"], "largest": ["synergy"], "redundancy": [0.01],
                                                         "unique_a": [0.0], "unique_b": [0.02], "synergy": [0.61],
                                                         "synergy_late": [0.01]}))  # fmt: skip
        fig, ax = plt.subplots()
        ax.plot([1, 0])
        t.log_figure("interactions_heatmap", fig)
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    first_figure = html.index("<figure>")
    assert html.index("<figcaption>interactions_heatmap</figcaption>") < html.index("<figcaption>examples</figcaption>")
    assert html.index("Which fusion works for which kind of interaction") < first_figure < html.index("<h2>Summary")
    assert "On synergy, concat is best on validation with test accuracy 0.810 (fused ceiling 1.000" in html
    assert "No better than late fusion: gmu, concat." in html
    assert "On synergy" in html and "No better than the best single modality: late." in html
    assert (
        "image+audio: mostly synergy (R 0.01, U 0.00 / 0.02, S 0.61 bits, of which 0.01 late fusion already extracts)"
        in html
    )


def test_vqarad_numbers_sit_next_to_the_published_ones_marked_not_comparable(tmp_path):
    from fusionkit.tasks.vqa.data import VQATable
    from fusionkit.tasks.vqa.task import published_table

    rows = [{"model": "film", "kind": "fusion", "accuracy": 0.5, "answer_type/CLOSED": 0.7, "answer_type/OPEN": 0.25,
             "n": 400}]  # fmt: skip
    _fake_run(tmp_path)
    for official in (False, True):
        table = published_table(rows, VQATable([], info={"benchmark": "vqa-rad", "official_test": official}))
        with tracking.start(tmp_path, "05_evaluate", mode="disabled") as t:
            t.log_table("vqa_vqarad_vs_published", table)  # as 05 logs the VQA task's table
        report.build_report(tmp_path)
        html = (tmp_path / "report.html").read_text()
        section = html[html.index("VQA-RAD next to the published numbers") : html.index("<h2>Summary")]
        assert "MEVF+BAN" in section and "75.1" in section and "43.9" in section and "70.0" in section
        assert ("validation, not comparable" in section) is (not official)
