"""The run report: ``summary.csv`` and a self-contained ``report.html`` built from the local
mirror (``metrics.jsonl``), the tables and the figures of a run folder - never from the W&B API."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from fusionkit.data.base import atomic_write_text
from fusionkit.headline import STEP as HEADLINE_STEP
from fusionkit.headline import Headline
from fusionkit.tracking import read_mirror

#: long tables the report links to instead of showing
LINK_ONLY = {"comparison_runs", "noise_curves", "robustness_summary", "class_balance", "feature_stats"}
#: 05's VQA-RAD table (``workbook.evaluate_task`` logs the VQA task's tables as ``vqa_<name>``)
PUBLISHED_TABLE = "vqa_vqarad_vs_published"
STEP_ORDER = ["01_data_prep", "02_feature_extraction", "03_fusion_comparison", "04_train", "05_evaluate", "06_report"]


#: how every "best" in a run is chosen (stated in the report)
SELECTION_PROTOCOL = (
    "Selection protocol: the best fusion method, the best single modality, each method's searched "
    "configuration, every early-stopping epoch, the re-ranking mix and the best task model are chosen on "
    "the validation split; the test split is used once, for the numbers reported."
)


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
    :class:`~fusionkit.headline.Headline`), and the final model's test accuracy (04, 05)."""
    vals = {(r.step, r.metric): r.value for r in summary.itertuples()}
    out: dict[str, Any] = {}
    head = Headline.from_summary({k: v for (step, k), v in vals.items() if step == HEADLINE_STEP})
    if head is not None and head.margin is not None:
        out.update(
            best_fusion_method=head.best_fusion_method,
            best_fusion_accuracy=head.best_fusion_accuracy,
            best_unimodal=head.best_unimodal,
            best_unimodal_accuracy=head.best_unimodal_accuracy,
            margin=head.margin,
        )
    if head is not None:
        out["search_trials"] = head.search_trials
        for k in ("weights_point_to_informative", "most_robust_method", "most_robust_relative_robustness"):
            if getattr(head, k) is not None:
                out[k] = getattr(head, k)
    if ("05_evaluate", "test_accuracy") in vals:
        out["final_method"] = vals.get(("04_train", "method"))
        out["final_test_accuracy"] = vals[("05_evaluate", "test_accuracy")]
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _table(path: Path, max_rows: int = 60) -> str:
    df = pd.read_csv(path)
    return df.head(max_rows).to_html(
        index=False, float_format=lambda x: f"{x:.4g}", classes="tbl", border=0, escape=True
    )


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.headline{background:#eef6ee;border-left:4px solid #4a4;padding:.8em 1em;font-size:1.1em}
.warn{background:#fbeeee;border-left:4px solid #c44;padding:.8em 1em}
table.tbl{border-collapse:collapse;font-size:.85em;margin:.5em 0} .tbl th,.tbl td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
.tbl th{background:#f4f4f4} img{max-width:100%;border:1px solid #eee;margin:.4em 0} figure{margin:1em 0} figcaption{color:#666;font-size:.85em}
code{background:#f4f4f4;padding:1px 4px} .note{color:#555;font-size:.9em}
"""


def _pct(v: Any) -> str:
    return "?" if v is None or pd.isna(v) else f"{float(v):.3f}"


def interaction_sentences(verdicts: pd.DataFrame) -> list[str]:
    """One plain sentence per target of 03's ``interaction_verdicts`` table
    (``compare.TargetComparison.verdicts``): who wins against the ceilings, and which methods are
    no better than late fusion or than the best single modality."""
    out = []
    for _, r in verdicts.iterrows():
        s = (
            f"On {r['target']}, {r['best_method']} is best on validation with test accuracy {_pct(r['best_accuracy'])}"
            f" (fused ceiling {_pct(r.get('ceiling_fused'))}, best single modality's ceiling {_pct(r.get('ceiling_unimodal'))});"
            f" late fusion {_pct(r.get('late_accuracy'))}, the best single modality ({r.get('best_unimodal')})"
            f" {_pct(r.get('best_unimodal_accuracy'))}."
        )
        for col, what in (
            ("no_better_than_late", "late fusion"),
            ("no_better_than_unimodal", "the best single modality"),
        ):
            names = r.get(col)
            if isinstance(names, str) and names:
                s += f" No better than {what}: {names}."
        out.append(s)
    return out


def _late_part(row: pd.Series) -> str:
    """How much of a pair's synergy late fusion already extracts (an additive combination of what
    each modality says), where the profile table has the split."""
    if "synergy_late" not in row or pd.isna(row["synergy_late"]) or row["synergy"] <= 0:
        return ""
    return f", of which {row['synergy_late']:.2f} late fusion already extracts"


def _by_interaction(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """The headline's first figure: 03's methods x interaction-type heatmap and its verdicts."""
    fig = next((r for r in records if r.get("kind") == "figure" and r.get("key") == "interactions_heatmap"), None)
    table = next((r for r in records if r.get("kind") == "table" and r.get("key") == "interaction_verdicts"), None)
    prof = next((r for r in records if r.get("kind") == "table" and r.get("key") == "interaction_profile"), None)
    if fig is None and table is None and prof is None:
        return []
    parts = ["<h2>Which fusion works for which kind of interaction</h2>"]
    if prof is not None and (run_dir / prof["path"]).exists():
        rows = pd.read_csv(run_dir / prof["path"])
        pairs = "; ".join(
            f"{r['pair']}: mostly {r['largest']} (R {r['redundancy']:.2f}, U {r['unique_a']:.2f} / {r['unique_b']:.2f},"
            f" S {r['synergy']:.2f} bits{_late_part(r)})"
            for _, r in rows.iterrows()
        )
        parts.append(
            f"<p>The target's interaction profile (table <code>interaction_profile</code>): {html.escape(pairs)}.</p>"
        )
    if fig is not None and (run_dir / fig["path"]).exists():
        parts.append(f"<figure>{_img(run_dir / fig['path'])}<figcaption>interactions_heatmap</figcaption></figure>")
    if table is not None and (run_dir / table["path"]).exists():
        verdicts = pd.read_csv(run_dir / table["path"])
        parts.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in interaction_sentences(verdicts)) + "</ul>")
    return parts


def _published(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """VQA-RAD: fusionkit's closed / open / all accuracy next to the published numbers (05's table
    :data:`PUBLISHED_TABLE`, :func:`fusionkit.tasks.vqa.task.published_table`), with a warning while
    fusionkit's rows come from a split carved from the training questions."""
    rec = next((r for r in records if r.get("kind") == "table" and r.get("key") == PUBLISHED_TABLE), None)
    if rec is None or not (run_dir / rec["path"]).exists():
        return []
    df = pd.read_csv(run_dir / rec["path"])
    ours = df[df["kind"] != "published"]
    parts = ["<h2>VQA-RAD next to the published numbers</h2>"]
    if ours["evaluated_on"].astype(str).str.contains("not comparable").any():
        parts.append(
            "<p class='warn'>fusionkit's rows: <b>validation, not comparable</b> - no <code>testset.json</code>, so "
            "they are measured on images carved from the training questions, not on the official 451 test "
            "questions the published rows use.</p>"
        )
    parts.append(
        df.to_html(index=False, float_format=lambda x: f"{x:.1f}", classes="tbl", border=0, escape=True, na_rep="")
    )
    return parts


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``summary.csv`` and ``report.html`` into the run folder; return the headline."""
    run_dir = Path(run_dir)
    state: dict[str, Any] = {}
    if (run_dir / "run.json").exists():
        state = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    summary = collect_summary(run_dir)
    tmp = run_dir / ".summary.csv.tmp"
    summary.to_csv(tmp, index=False)
    tmp.replace(run_dir / "summary.csv")
    head = headline(summary)
    records = read_mirror(run_dir)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fusionkit report {html.escape(run_dir.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>fusionkit report</h1><p>run <code>{html.escape(run_dir.name)}</code>"
        f" &middot; profile <code>{html.escape(str(state.get('profile', '?')))}</code>"
        f" &middot; started {html.escape(str(state.get('created', '?')))}</p>",
    ]
    if "margin" in head:
        verdict = "beats" if head["margin"] > 0 else "does not beat"
        parts.append(
            f"<p class='{'headline' if head['margin'] > 0 else 'warn'}'>Best fusion method <b>{html.escape(str(head['best_fusion_method']))}</b>"
            f" reaches test accuracy <b>{float(head['best_fusion_accuracy']):.3f}</b> and {verdict} the best single modality"
            f" (<b>{html.escape(str(head['best_unimodal']))}</b>, {float(head['best_unimodal_accuracy']):.3f})"
            f" by <b>{100 * head['margin']:+.1f} points</b>.</p>"
        )
    parts.append(f"<p class='note'>{html.escape(SELECTION_PROTOCOL)}</p>")
    parts.extend(_published(run_dir, records))
    parts.extend(_by_interaction(run_dir, records))
    trials = int(float(head.get("search_trials") or 0))
    if "search_trials" in head:
        parts.append(
            f"<p>Tuning: every method (the single modalities too) was searched with <b>{trials}</b> trials of the same "
            "budget and its best configuration on validation retrained with every seed (table <code>rankings</code>: "
            "tuned and untuned ranking side by side).</p>"
            if trials > 0
            else "<p>Tuning: none; every method was trained at the same fixed settings (<code>search_trials</code> = 0).</p>"
        )
    if head.get("weights_point_to_informative"):
        parts.append(
            f"<p>Interpretability: learned modality weights point to the modality known to carry the target in "
            f"<b>{html.escape(str(head['weights_point_to_informative']))}</b> (method, target) pairs (table "
            f"<code>known_information_check</code>).</p>"
        )
    if head.get("most_robust_method"):
        parts.append(
            f"<p>Robustness: the most robust fusion method over all corruptions is <b>{html.escape(str(head['most_robust_method']))}</b>"
            f" (relative robustness {float(head['most_robust_relative_robustness']):.3f}; table <code>robustness_by_method</code>).</p>"
        )
    if "final_test_accuracy" in head:
        parts.append(
            f"<p>Final model (<code>{html.escape(str(head.get('final_method')))}</code>, 04_train) test accuracy:"
            f" <b>{float(head['final_test_accuracy']):.3f}</b>.</p>"
        )
    # ceilings documented by the dataset
    ceil = next(
        (
            r["data"]
            for r in records
            if r.get("kind") == "summary" and r["step"] == "01_data_prep" and "ceilings" in r["data"]
        ),
        None,
    )
    if ceil:
        parts.append(
            "<p>Documented ceilings of the target: "
            + ", ".join(f"{html.escape(k)} {float(v):.3f}" for k, v in ceil["ceilings"].items())
            + "</p>"
        )
    parts.append("<h2>Summary</h2>")
    parts.append(
        summary.to_html(index=False, classes="tbl", border=0, float_format=lambda x: f"{x:.4g}")
        if len(summary)
        else "<p>(no summary records)</p>"
    )
    tables = [(r["key"], run_dir / r["path"]) for r in records if r.get("kind") == "table"]
    figures = [(r["step"], r["key"], run_dir / r["path"]) for r in records if r.get("kind") == "figure"]
    for step in STEP_ORDER:
        step_tables = [
            (k, p)
            for k, p in dict(tables).items()
            if any(r.get("key") == k and r["step"] == step for r in records if r.get("kind") == "table")
        ]
        step_figs = [(k, p) for s, k, p in figures if s == step]
        if not step_tables and not step_figs:
            continue
        parts.append(f"<h2>{html.escape(step)}</h2>")
        for key, path in step_tables:
            if not path.exists():
                continue
            if key in LINK_ONLY or key.startswith("predictions"):
                rel = path.relative_to(run_dir)
                parts.append(f"<p>Table <a href='{html.escape(str(rel))}'>{html.escape(key)}</a> (CSV).</p>")
            else:
                parts.append(f"<h3>{html.escape(key)}</h3>{_table(path)}")
        seen = set()
        for key, path in step_figs:
            if path.exists() and path not in seen:
                seen.add(path)
                parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(key)}</figcaption></figure>")
    parts.append("<h2>Notebooks</h2><table class='tbl'><tr><th>notebook</th><th>status</th><th>seconds</th></tr>")
    for nb, info in state.get("notebooks", {}).items():
        link = f"notebooks/{nb}.ipynb"
        parts.append(
            f"<tr><td><a href='{link}'>{html.escape(nb)}</a></td><td>{html.escape(str(info.get('status')))}</td>"
            f"<td>{info.get('seconds', '')}</td></tr>"
        )
    parts.append("</table>")
    wandb_dir = run_dir / "wandb"
    offline = sorted(p.name for p in wandb_dir.glob("offline-run-*")) if wandb_dir.exists() else []
    if offline:
        parts.append(
            f"<p>{len(offline)} offline W&amp;B runs are in <code>wandb/</code>; upload them with "
            f"<code>wandb sync {html.escape(str(wandb_dir))}/offline-run-*</code>.</p>"
        )
    parts.append("</body></html>")
    atomic_write_text(run_dir / "report.html", "\n".join(parts))
    return head
