"""The run report: ``summary.csv`` and a self-contained ``report.html`` built from the local
mirror (``metrics.jsonl``), the tables and the figures of a run folder - never from the W&B API.

The page is curated: the headline first (what was compared, on what data, who won, by how much,
with CIs and against the documented ceilings; the interaction heatmap first when the run has
it), then one ``<section>`` per question - its one-line answer, its figure, a compact table, the
long tables collapsed (``<details>``) with their CSVs beside the page - and the run's facts at the
end. A section whose notebook did not finish says what is missing and why; a run made by another
fusionkit than the one building the page says so. Figures are embedded compressed
(:func:`compress_image`) so that the page stays one small file.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from fusionkit.data.base import atomic_write_text
from fusionkit.headline import STEP as HEADLINE_STEP
from fusionkit.headline import Headline
from fusionkit.report.folder import STEP_ORDER, RunFolder, compress_image
from fusionkit.report.sections import PUBLISHED_TABLE, SELECTION_PROTOCOL, banners, interaction_sentences, page_sections
from fusionkit.tracking import read_mirror

__all__ = ["PUBLISHED_TABLE", "SELECTION_PROTOCOL", "STEP_ORDER", "build_report", "collect_summary",
           "compress_image", "expected_sections", "headline", "interaction_sentences", "sections_of"]  # fmt: skip


def collect_summary(run_dir: str | Path) -> pd.DataFrame:
    """Every ``summary`` record of the notebooks' own runs as rows (step, metric, value); the last
    value wins. Per-method runs a notebook starts (03's method x seed runs) have their own tables."""
    rows: dict[tuple[str, str], Any] = {}
    for rec in read_mirror(run_dir):
        if rec.get("kind") == "summary" and rec.get("run", rec["step"]) == rec["step"]:
            for k, v in rec["data"].items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    rows[(rec["step"], k)] = v
    df = pd.DataFrame([{"step": s, "metric": k, "value": v} for (s, k), v in rows.items()])
    if len(df):
        df["order"] = df["step"].map({s: i for i, s in enumerate(STEP_ORDER)}).fillna(99)
        df = df.sort_values(["order"], kind="stable").drop(columns="order").reset_index(drop=True)
    return df


def headline(summary: pd.DataFrame) -> dict[str, Any]:
    """The result in one sentence: the fused model vs the best single modality (03's
    :class:`~fusionkit.headline.Headline`), and the final model's test accuracy (04, 05). On a
    regression target the scores are test R^2 (``metric`` "r2": ``best_fusion_r2``,
    ``best_unimodal_r2``, ``final_test_r2``, with ``best_fusion_mse`` and ``final_test_mse``)."""
    vals = {(r.step, r.metric): r.value for r in summary.itertuples()}
    out: dict[str, Any] = {}
    head = Headline.from_summary({k: v for (step, k), v in vals.items() if step == HEADLINE_STEP})
    if head is not None and head.margin is not None:
        m = head.metric
        out.update(
            {
                "best_fusion_method": head.best_fusion_method,
                f"best_fusion_{m}": head.best_fusion_score,
                "best_unimodal": head.best_unimodal,
                f"best_unimodal_{m}": head.best_unimodal_score,
                "margin": head.margin,
            }
        )
        if head.regression:
            out.update(metric=m, best_fusion_mse=head.best_fusion_mse)
    if head is not None:
        out["search_trials"] = head.search_trials
        for k in ("weights_point_to_informative", "most_robust_method", "most_robust_relative_robustness"):
            if getattr(head, k) is not None:
                out[k] = getattr(head, k)
    if ("05_evaluate", "test_accuracy") in vals:
        out["final_method"] = vals.get(("04_train", "method"))
        out["final_test_accuracy"] = vals[("05_evaluate", "test_accuracy")]
    elif ("05_evaluate", "test_r2") in vals:
        out["final_method"] = vals.get(("04_train", "method"))
        out["final_test_r2"] = vals[("05_evaluate", "test_r2")]
        out["final_test_mse"] = vals.get(("05_evaluate", "test_mse"))
    return out


CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1120px;margin:1.5em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{margin:0 0 .1em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em} h3{margin:1.2em 0 .3em;font-size:1em}
p,li,summary,figcaption{overflow-wrap:anywhere}
nav{font-size:.85em;margin:.6em 0 1em;color:#555} nav a{margin-right:.8em;white-space:nowrap}
.headline{background:#eef6ee;border-left:4px solid #4a4;padding:.7em 1em;font-size:1.08em}
.warn{background:#fbeeee;border-left:4px solid #c44;padding:.6em 1em}
.note{color:#555;font-size:.9em} .answer{font-size:1.05em;font-weight:500}
.scroll{max-width:100%;overflow-x:auto;margin:.4em 0}
table.tbl{border-collapse:collapse;font-size:.84em} .tbl th,.tbl td{padding:2px 8px;border-bottom:1px solid #eee;white-space:nowrap}
.tbl th{background:#f4f4f4;text-align:left} .tbl td{text-align:left} .tbl td.n{text-align:right} .tbl caption{text-align:left;color:#555;font-size:.95em;padding:.2em 0}
table.samples td{white-space:normal;max-width:22em;text-align:left;vertical-align:top} table.samples img{border:0;margin:0;max-width:112px}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0} figure{margin:.8em 0} figcaption{color:#666;font-size:.85em}
details{margin:.3em 0 .6em} summary{cursor:pointer;color:#245} code{background:#f4f4f4;padding:1px 4px}
section{margin-bottom:1.2em}
@media print{body{max-width:none;margin:0;font-size:10pt} nav{display:none} figure,table{break-inside:avoid} h2{break-after:avoid}
.scroll{overflow:visible} a{color:inherit;text-decoration:none}}
"""


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``summary.csv`` and ``report.html`` into the run folder; return the headline. An
    incomplete run folder (a notebook failed, a file is missing) gets a report that says what is
    missing and why."""
    run_dir = Path(run_dir)
    run = RunFolder.read(run_dir)
    try:
        summary = collect_summary(run_dir)
    except ValueError:  # a malformed mirror: RunFolder.read said so
        summary = pd.DataFrame(columns=["step", "metric", "value"])
    tmp = run_dir / ".summary.csv.tmp"
    summary.to_csv(tmp, index=False)
    tmp.replace(run_dir / "summary.csv")
    head = headline(summary) if len(summary) else {}
    h = Headline.from_summary(run.summary(HEADLINE_STEP))
    sections = page_sections(run, head, h, summary)
    state = run.state
    nav = " ".join(f"<a href='#{s.id}'>{html.escape(s.short or s.title)}</a>" for s in sections)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>fusionkit report {html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>fusionkit report</h1><p class='note'>run <code>{html.escape(run_dir.name)}</code>"
        f" &middot; profile <code>{html.escape(str(state.get('profile', '?')))}</code>"
        f" &middot; started {html.escape(str(state.get('created', '?')))}</p></header>",
        *banners(run),
        f"<nav>{nav}</nav>",
        *[s.render() for s in sections],
        "</body></html>",
    ]
    atomic_write_text(run_dir / "report.html", "\n".join(p for p in parts if p))
    return head


def sections_of(report_html: str) -> list[str]:
    """The ids of a report's sections, in order (what the browser test expects to see)."""
    import re

    return re.findall(r"<section id='([^']+)'>", report_html)


def expected_sections(tasks: Iterable[str] = ()) -> list[str]:
    """The sections every report has (whatever the profile ran), with one per task."""
    return ["headline", "comparison", "robustness", "interpretability", "final-model",
            *[f"task-{t}" for t in tasks], "data", "run-facts"]  # fmt: skip
