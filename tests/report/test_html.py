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
        t.log_table("comparison_summary", pd.DataFrame({"method": ["concat", "late", "unimodal:audio"], "kind": ["fusion", "fusion", "unimodal"],
                                                        "test_accuracy_mean": [0.97, 0.9, 0.5], "test_accuracy_ci95": [0.01, 0.02, 0.05],
                                                        "val_accuracy_mean": [0.96, 0.91, 0.52], "is_best": [True, False, False]}))  # fmt: skip
        t.log_table("missing_modality", pd.DataFrame({"method": ["concat"] * 3 + ["late"] * 3, "dropped": ["none", "image", "audio"] * 2,
                                                      "accuracy": [0.97, 0.61, 0.43, 0.9, 0.8, 0.7]}))  # fmt: skip
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
    assert "<figure id='fig-examples'><img src='data:image/png;base64," in html
    assert "unimodal:audio" in html  # the comparison table
    assert "Documented ceilings" in html
    assert "chosen on the validation split; the test split is used once" in html  # the selection protocol
    assert "<b>6/6</b>" in html and "Most robust fusion method over all corruptions: <b>late</b>" in html
    # long tables collapsed, their CSV beside the page
    assert (
        "<details><summary><code>noise_curves</code> (2 rows) &middot; <a href='tables/noise_curves.csv' download>"
        in html
    )
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
    first_figure = html.index("<figure ")
    assert html.index("<figure id='fig-interactions_heatmap'>") == first_figure  # the headline's first figure
    assert html.index("<section id='headline'>") < first_figure < html.index("<section id='comparison'>")
    assert html.index("<section id='interactions'>") < html.index("<figure id='fig-examples'>")
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
        section = html[html.index("VQA-RAD next to the published numbers") : html.index("<section id='run-facts'>")]
        assert "MEVF+BAN" in section and "75.1" in section and "43.9" in section and "70.0" in section
        assert ("validation, not comparable" in section) is (not official)


def _state(run_dir, notebooks, **extra):
    from fusionkit.report.html import STEP_ORDER

    info = {nb: {"status": "pending"} for nb in STEP_ORDER}
    info.update(notebooks)
    state = {"run_id": run_dir.name, "profile": "smoke", "created": "now", "status": "failed", "notebooks": info}
    (run_dir / "run.json").write_text(json.dumps({**state, **extra}))


def test_an_incomplete_run_gets_a_report_that_says_what_is_missing_and_why(tmp_path):
    from fusionkit import __version__
    from fusionkit.report.html import expected_sections, sections_of

    with tracking.start(tmp_path, "01_data_prep", mode="disabled") as t:
        t.summary({"n_samples": 10, "dataset": "shapes"})
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.log_table("robustness_by_method", pd.DataFrame({"method": ["concat"], "relative_robustness": [0.9]}))
    (tmp_path / "tables" / "robustness_by_method.csv").unlink()  # logged, then lost
    _state(tmp_path, {"01_data_prep": {"status": "done"}, "02_feature_extraction": {"status": "done"},
                      "03_fusion_comparison": {"status": "failed", "error": "In [7]: ValueError: boom"}},
           fusionkit_version=__version__)  # fmt: skip
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    banner = html[html.index("id='incomplete'") : html.index("<nav>")]
    assert "Incomplete run" in banner and "fusionkit run --resume" in banner
    assert "<code>03_fusion_comparison</code> failed (In [7]: ValueError: boom)" in banner
    assert "<code>04_train</code> did not run" in banner and "<code>05_evaluate</code> did not run" in banner
    final = html[html.index("<section id='final-model'>") :]
    assert "Missing: <code>04_train</code> did not run" in final[: final.index("</section>")]
    assert f"{tmp_path / 'tables' / 'robustness_by_method.csv'} is missing" in html  # named, not fatal
    assert set(expected_sections()) <= set(sections_of(html))
    assert "id='version'" not in html  # made by this fusionkit


def test_a_run_folder_without_run_json_or_with_a_broken_mirror_still_gets_a_page(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "summary", "step": "01_data_prep", "data": {}}\nnot json\n')
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "No <code>run.json</code>" in html
    assert f"{tmp_path / 'metrics.jsonl'}:2: not valid JSON" in html


def test_a_run_made_by_another_fusionkit_says_so(tmp_path):
    from fusionkit import __version__

    _fake_run(tmp_path)  # its run.json records no version: an older fusionkit
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "id='version'" in html and "made by an older fusionkit (one that did not record its version)" in html
    for made, banner in (("0.0.1", True), (__version__, False)):
        _state(tmp_path, {}, fusionkit_version=made, status="complete")
        report.build_report(tmp_path)
        html = (tmp_path / "report.html").read_text()
        assert ("id='version'" in html) is banner
        assert (
            f"This run was made by fusionkit {made}; this page was built by fusionkit {__version__}" in html
        ) is banner


def test_the_comparison_is_a_forest_plot_and_missing_modality_a_method_by_dropped_grid(tmp_path):
    _fake_run(tmp_path)
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    comparison = html[html.index("<section id='comparison'>") : html.index("<section id='robustness'>")]
    assert "<figure id='fig-comparison_forest'><img src='data:image/" in comparison
    assert "0.970 ± 0.010" in comparison  # mean and CI in one cell of the compact table
    grid = html[html.index("with a modality missing (method x dropped)") :]
    grid = grid[: grid.index("</table>")]
    assert "<th>none</th><th>image</th><th>audio</th>" in grid
    assert grid.count("<tr><th>") == 1 + 2 and "<tr><th>concat</th>" in grid and "<tr><th>late</th>" in grid
    assert ">0.610</td>" in grid and ">0.700</td>" in grid


def test_every_logged_figure_and_table_is_on_the_page(tmp_path):
    _fake_run(tmp_path)
    with tracking.start(tmp_path, "04_train", mode="disabled") as t:
        fig, ax = plt.subplots()
        ax.plot([0, 2, 1])
        t.log_figure("something_new", fig)
        t.log_table("something_else", pd.DataFrame({"a": [1, 2]}))
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    for key in ("examples", "something_new"):
        assert f"<figure id='fig-{key}'>" in html
    facts = html[html.index("<section id='run-facts'>") :]
    assert "<code>something_else</code> (2 rows)" in facts and "tables/something_else.csv" in facts


def test_a_table_without_the_columns_a_section_reads_breaks_only_that_section(tmp_path):
    _fake_run(tmp_path)
    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.log_table("comparison_summary", pd.DataFrame({"method": ["concat"], "acc": [0.9]}))  # an older layout
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    comparison = html[html.index("<section id='comparison'>") : html.index("<section id='robustness'>")]
    assert "could not be built from the run's files (column &#x27;test_accuracy_mean&#x27;)" in comparison
    assert "<section id='run-facts'>" in html


def test_figures_are_embedded_compressed_and_keep_their_size():
    import io

    import numpy as np
    from PIL import Image

    from fusionkit.report.html import compress_image

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.sin(np.linspace(0, 9, 200)))
    ax.set_title("a line plot with text")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    mime, data = compress_image(buf.getvalue())
    assert mime == "image/png" and len(data) < 0.6 * len(buf.getvalue())  # a palette PNG: sharp text, small
    with Image.open(io.BytesIO(data)) as im, Image.open(buf) as orig:
        assert im.size == orig.size

    photo = io.BytesIO()  # photograph-like content (attention maps, images): lossy WebP is far smaller
    y, x = np.indices((300, 400))
    smooth = np.stack([128 + 100 * np.sin(x / 17), 128 + 100 * np.sin(y / 23), 128 + 100 * np.sin((x + y) / 31)], -1)
    grain = np.random.default_rng(0).normal(0, 6, smooth.shape)
    Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8)).save(photo, "PNG")
    mime, data = compress_image(photo.getvalue())
    assert mime == "image/webp" and len(data) < 0.5 * len(photo.getvalue())


def test_the_tuning_section_says_over_how_many_seeds_each_ranking_is(tmp_path):
    def summary(n):
        return pd.DataFrame({"method": ["concat", "late"], "kind": ["fusion", "fusion"], "n_seeds": [n, n],
                             "test_accuracy_mean": [0.9, 0.8], "test_accuracy_ci95": [0.01, 0.02],
                             "val_accuracy_mean": [0.9, 0.8], "is_best": [True, False]})  # fmt: skip

    with tracking.start(tmp_path, "03_fusion_comparison", mode="disabled") as t:
        t.log_table("comparison_summary", summary(5))
        t.log_table("comparison_untuned_summary", summary(3))
        t.summary({"best_fusion_method": "concat", "best_fusion_accuracy": 0.9, "search_trials": 4})
    report.build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "searched with <b>4</b> trials" in html
    assert "The untuned ranking is over 3 seeds, the tuned one over 5." in html
