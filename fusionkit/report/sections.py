"""The report's sections, one per question (each: its one-line answer, its figure, a compact
table, the long tables collapsed), the headline first and the run's facts last; each says what
is missing when its notebook did not finish."""

from __future__ import annotations

import html
import io
import json
import platform
from typing import Any

import pandas as pd

from fusionkit import __version__
from fusionkit.headline import Headline
from fusionkit.report.folder import (
    STEP_ORDER,
    RunFolder,
    Section,
    compress_image,
    data_uri,
    esc,
    figure_html,
    fmt,
    grid_html,
    mean_ci,
    pct,
    table_html,
    thumbnail,
)

#: 05's VQA-RAD table (``workbook.evaluate_task`` logs the VQA task's tables as ``vqa_<name>``)
PUBLISHED_TABLE = "vqa_vqarad_vs_published"
#: the tasks' names for their baselines (rows of ``<task>_metrics`` the best model is compared with)
TASK_BASELINES = {"nearest_neighbour", "ridge", "majority", "question_only"}
#: each task's one number (a column of ``<task>_metrics``; the first present is used)
TASK_METRIC = {"captioning": ("CIDEr", "BLEU-4"), "vqa": ("accuracy",), "retrieval": ("rsum",)}
#: sample rows (with their image) a task's section shows
SAMPLES = 6

#: how every "best" in a run is chosen (stated in the report)
SELECTION_PROTOCOL = (
    "Selection protocol: the best fusion method, the best single modality, each method's searched "
    "configuration, every early-stopping epoch, the re-ranking mix and the best task model are chosen on "
    "the validation split; the test split is used once, for the numbers reported."
)


# ------------------------------------------------------------------------------------ sections
def _ceilings(run: RunFolder) -> dict[str, float]:
    return {k: float(v) for k, v in (run.summary("01_data_prep").get("ceilings") or {}).items()}


def _score_name(metric: str) -> str:
    return "R^2" if metric == "r2" else metric


def _unit(metric: str, margin: float) -> str:
    """A margin as the report says it: points of accuracy, or R^2."""
    return f"{margin:+.3f} R^2" if metric == "r2" else f"{100 * margin:+.1f} points"


def _headline(run: RunFolder, head: dict[str, Any], h: Headline | None) -> Section:
    body: list[str] = []
    data = run.summary("01_data_prep")
    cfg = run.config("03_fusion_comparison")
    ceilings = _ceilings(run)
    metric = h.metric if h is not None else "accuracy"
    name = _score_name(metric)
    mse = (
        f" (test MSE {fmt(h.best_fusion_mse)}{'' if h.best_fusion_mse_ci95 is None or pd.isna(h.best_fusion_mse_ci95) else f' &plusmn; {fmt(h.best_fusion_mse_ci95)}'}"
        ", lower is better)"
        if h is not None and h.regression and h.best_fusion_mse is not None
        else ""
    )
    answer = ""
    if "margin" in head and h is not None:
        verdict = "beats" if head["margin"] > 0 else "does not beat"
        ci = "" if pd.isna(h.best_fusion_score_ci95) else f" &plusmn; {h.best_fusion_score_ci95:.3f}"
        answer = (
            f"Best fusion method <b>{html.escape(h.best_fusion_method)}</b>"
            f" reaches test {name} <b>{h.best_fusion_score:.3f}</b>{ci}{mse} and {verdict} the best single"
            f" modality (<b>{html.escape(str(h.best_unimodal))}</b>, {h.best_unimodal_score:.3f})"
            f" by <b>{_unit(metric, head['margin'])}</b>."
        )
        body.insert(0, f"<p class='{'headline' if head['margin'] > 0 else 'warn'}'>{answer}</p>")
    elif h is not None:
        answer = (
            f"Best fusion method <b>{html.escape(h.best_fusion_method)}</b> reaches test {name} "
            f"<b>{h.best_fusion_score:.3f}</b>{mse} (no single-modality baseline was compared)."
        )
        body.insert(0, f"<p class='headline'>{answer}</p>")
    else:
        body.insert(0, run.missing("03_fusion_comparison", what="the headline") or _regression_answer(run))
    compared = []
    if h is not None:
        compared.append(f"{h.n_methods} methods x {h.n_seeds} seeds")
    if data.get("dataset"):
        splits = "/".join(str(data[k]) for k in ("n_train", "n_val", "n_test") if k in data)
        compared.append(
            f"on <b>{html.escape(str(data['dataset']))}</b> ({data.get('n_samples', '?')} samples"
            + (f", train/val/test {splits}" if splits else "")
            + ")"
        )
    if cfg.get("target"):
        compared.append(f"target <code>{html.escape(str(cfg['target']))}</code>")
    if compared:
        body.append(f"<p>Compared: {' '.join(compared)}; selected on validation, reported on test.</p>")
    rows = []
    if h is not None:
        rows.append(("best fusion method", h.best_fusion_method, h.best_fusion_score, h.best_fusion_score_ci95))
        if h.best_unimodal is not None:
            rows.append(("best single modality", h.best_unimodal, h.best_unimodal_score, None))
    final = f"final_test_{metric}"
    if final in head:
        rows.append(("final model (04, 05)", head.get("final_method"), head[final], None))
    mods = {k: v for k, v in ceilings.items() if k not in ("fused", "late", "chance") and "+" not in k}
    if "fused" in ceilings:
        rows.append(("ceiling: fused", "documented", ceilings["fused"], None))
    if mods:
        best_mod = max(mods, key=mods.get)
        rows.append(("ceiling: best single modality", best_mod, mods[best_mod], None))
    for k in ("late", "chance"):
        if k in ceilings:
            rows.append((f"ceiling: {k}", "documented", ceilings[k], None))
    if rows:
        df = pd.DataFrame(rows, columns=["", "method", f"test {name}", "95% CI"])
        body.append(table_html(df.dropna(axis=1, how="all")))
    if ceilings:
        shown = {k: v for k, v in ceilings.items() if "+" not in k or k == "fused"}  # subsets: in 01's summary
        body.append(
            "<p class='note'>Documented ceilings of the target"
            + (" (R^2)" if metric == "r2" else "")
            + ": "
            + ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in shown.items())
            + "</p>"
        )
    # the headline's first figure: which fusion works for which kind of interaction (when the run has it)
    body.append(run.figure("interactions_heatmap", "Which fusion works for which kind of interaction:"))
    body.append(f"<p class='note'>{html.escape(SELECTION_PROTOCOL)}</p>")
    return Section("headline", "Headline", "", body, "headline")


def _ceiling_of(method: str, ceilings: dict[str, float]) -> float | None:
    """A method's documented ceiling: its modality's for a single-modality baseline, else the fused one."""
    if method.startswith("unimodal:"):
        return ceilings.get(method.removeprefix("unimodal:"))
    return ceilings.get("fused")


def _regression_answer(run: RunFolder) -> str:
    from fusionkit.compare import metrics_of

    s = run.table("comparison_summary")
    if s is None or not len(s):
        return ""
    metric = metrics_of(s)[0]
    best = s[s["is_best"].fillna(False).astype(bool)] if "is_best" in s else s.head(1)
    best = best.iloc[0] if len(best) else s.iloc[0]
    return (
        f"<p class='headline'>Best method <b>{html.escape(str(best['method']))}</b> (on validation):"
        f" {html.escape(metric)} <b>{fmt(best[f'{metric}_mean'])}</b> on test.</p>"
    )


def _comparison(run: RunFolder, h: Headline | None) -> Section:
    from fusionkit.compare import metrics_of
    from fusionkit.report import figures

    sec = Section("comparison", "Which fusion method wins?", "", [], "comparison")
    s = run.table("comparison_summary")
    if s is None or not len(s):
        sec.body.append(run.missing("03_fusion_comparison") or "<p>(no comparison table in this run)</p>")
        return sec
    metric = metrics_of(s)[0]
    best = s[s["is_best"].fillna(False).astype(bool)] if "is_best" in s else s.head(0)
    regression = metric == "test_mse"
    if h is not None and h.margin is not None:
        sec.answer = (
            f"<b>{html.escape(h.best_fusion_method)}</b>: {_score_name(h.metric)} {h.best_fusion_score:.3f}"
            f" against {html.escape(str(h.best_unimodal))}'s {h.best_unimodal_score:.3f} ({_unit(h.metric, h.margin)})."
        )
    elif len(best):
        sec.answer = f"<b>{html.escape(str(best.iloc[0]['method']))}</b> (best on validation)."
    if "p_vs_best" in s and "worse_than_best" in s:
        tied = s[(s["kind"] != "unimodal") & ~s["worse_than_best"].fillna(False).astype(bool)]["method"].tolist()
        if len(tied) > 1:
            sec.answer += f" Not significantly worse than it: {html.escape(', '.join(m for m in tied if m not in set(best['method'])))}."
    ceilings = _ceilings(run)
    # a regression target: the forest in R^2 (its ceilings are R^2), the table in MSE too
    shown = "test_r2" if regression and "test_r2_mean" in s else metric
    fig = figures.plot_forest(s, ceilings if not regression or shown == "test_r2" else {}, shown)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    mime, data = compress_image(buf.getvalue())
    sec.body.append(figure_html("comparison_forest", data_uri(mime, data), "Mean and 95% CI per method:"))
    cols = {"method": s["method"], "kind": s.get("kind", "")}
    cols[metric.removeprefix("test_") + (" (test, lower is better)" if regression else " (test)")] = mean_ci(s, metric)
    if regression:
        for m in ("test_r2", "test_mae"):
            if f"{m}_mean" in s:
                cols[m.removeprefix("test_") + " (test)"] = mean_ci(s, m)
        if ceilings:
            cols["R^2 ceiling"] = [_ceiling_of(str(m), ceilings) for m in s["method"]]
    val = metrics_of(s)[1]
    if f"{val}_mean" in s:
        cols[val.removeprefix("val_") + " (val)"] = s[f"{val}_mean"]
    for c in ("params", "p_vs_best"):
        if c in s:
            cols[c] = s[c]
    sec.body.append(table_html(pd.DataFrame(cols)))
    sec.body.append(run.figure("comparison", "Per seed, and against the parameter count:"))
    failed = run.table("failed_methods")
    if failed is not None and len(failed):
        sec.body.append(
            f"<p class='warn'>Methods that failed: {html.escape(', '.join(map(str, failed.iloc[:, 0])))}.</p>"
        )
    sec.body.append(
        run.long("comparison_summary", "comparison_runs", "comparison_untuned_summary", "comparison_untuned_runs")
    )
    return sec


def interaction_sentences(verdicts: pd.DataFrame) -> list[str]:
    """One plain sentence per target of 03's ``interaction_verdicts`` table
    (``compare.TargetComparison.verdicts``): who wins against the ceilings, and which methods are
    no better than late fusion or than the best single modality."""
    out = []
    for _, r in verdicts.iterrows():
        s = (
            f"On {r['target']}, {r['best_method']} is best on validation with test accuracy {pct(r['best_accuracy'])}"
            f" (fused ceiling {pct(r.get('ceiling_fused'))}, best single modality's ceiling {pct(r.get('ceiling_unimodal'))});"
            f" late fusion {pct(r.get('late_accuracy'))}, the best single modality ({r.get('best_unimodal')})"
            f" {pct(r.get('best_unimodal_accuracy'))}."
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


def _interactions(run: RunFolder) -> Section | None:
    """03's interaction study: the targets' verdicts and the interaction profile (its heatmap is
    the headline's first figure)."""
    if not ({"interaction_verdicts", "interaction_profile", "comparison_by_target"} & set(run.tables)):
        return None
    sec = Section("interactions", "Which fusion works for which kind of interaction?", "", [], "interactions")
    verdicts = run.table("interaction_verdicts")
    if verdicts is not None and len(verdicts):
        sec.answer = (
            "; ".join(
                f"{html.escape(str(r['target']))}: <b>{html.escape(str(r['best_method']))}</b> {pct(r['best_accuracy'])}"
                for _, r in verdicts.iterrows()
            )
            + " (best on validation, test accuracy; the heatmap is in the headline)."
        )
        sec.body.append(
            "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in interaction_sentences(verdicts)) + "</ul>"
        )
    prof = run.table("interaction_profile")
    if prof is not None and len(prof):
        pairs = "; ".join(
            f"{r['pair']}: mostly {r['largest']} (R {r['redundancy']:.2f}, U {r['unique_a']:.2f} / {r['unique_b']:.2f},"
            f" S {r['synergy']:.2f} bits{_late_part(r)})"
            for _, r in prof.iterrows()
        )
        sec.body.append(
            f"<p>The target's interaction profile (table <code>interaction_profile</code>): {html.escape(pairs)}.</p>"
        )
    sec.body.append(run.figure("interaction_profile", "The run's own target, decomposed per modality pair:"))
    if verdicts is not None and len(verdicts):
        keep = [c for c in ("target", "best_method", "best_accuracy", "late_accuracy", "best_unimodal",
                            "best_unimodal_accuracy", "ceiling_fused", "ceiling_unimodal") if c in verdicts]  # fmt: skip
        sec.body.append(table_html(verdicts[keep]))
    sec.body.append(
        run.long("comparison_by_target", "interaction_verdicts", "interaction_profile", "interaction_evidence")
    )
    return sec


def _tuning(run: RunFolder, head: dict[str, Any]) -> Section | None:
    searches = sorted(k for k in run.tables if k.startswith("search_") and k not in ("search_trials", "search_chosen"))
    if "rankings" not in run.tables and "search_trials" not in run.tables and "search_trials" not in head:
        return None
    sec = Section("tuning", "Did tuning change the ranking?", "", [], "tuning")
    trials = int(float(head.get("search_trials") or 0))
    sec.answer = (
        f"Every method (the single modalities too) was searched with <b>{trials}</b> trials of the same budget and its "
        "best configuration on validation retrained with every seed."
        if trials > 0
        else "No search: every method was trained at the same fixed settings (<code>search_trials</code> = 0)."
    )
    if trials > 0:
        seeds = {k: run.table(k) for k in ("comparison_untuned_summary", "comparison_summary")}
        n = {k: int(t["n_seeds"].max()) for k, t in seeds.items() if t is not None and "n_seeds" in t and len(t)}
        if len(n) == 2:
            sec.answer += (
                f" The untuned ranking is over {n['comparison_untuned_summary']} seeds, the tuned one over"
                f" {n['comparison_summary']}."
            )
    ranks = run.table("rankings")
    if ranks is not None and len(ranks) and "gain" in ranks:
        moved = ranks[ranks.get("untuned_rank") != ranks.get("tuned_rank")] if "tuned_rank" in ranks else ranks.head(0)
        top = ranks.sort_values("gain", ascending=False).iloc[0]
        sec.answer += (
            f" {len(moved)} of {len(ranks)} methods changed rank; the largest gain: {html.escape(str(top['method']))}"
            f" ({fmt(top['gain'])})."
        )
        keep = [c for c in ("method", "untuned_test_accuracy_mean", "untuned_rank", "tuned_test_accuracy_mean",
                            "tuned_rank", "gain") if c in ranks]  # fmt: skip
        sec.body.append(run.figure("search_curves", "Each method's search (validation):"))
        sec.body.append(table_html(ranks[keep]))
    else:
        sec.body.append(run.figure("search_curves", "Each method's search (validation):"))
    sec.body.append(run.long("rankings", "search_chosen", "search_trials"))
    if searches:
        for k in searches:
            run.shown.add(f"table:{k}")
        links = ", ".join(
            f"<a href='{html.escape(run.tables[k]['path'])}' download>{html.escape(k.removeprefix('search_'))}</a>"
            for k in searches
        )
        sec.body.append(f"<p class='note'>Each method's trials (CSV): {links}.</p>")
    return sec


def _folds(run: RunFolder) -> Section | None:
    if not ({"loso_summary", "loso_per_fold", "loso_runs"} & set(run.tables)):
        return None
    sec = Section("folds", "Does it hold for a held-out group (leave one group out)?", "", [], "folds")
    s = run.table("loso_summary")
    if s is not None and len(s):
        best = s[s["is_best"].fillna(False).astype(bool)] if "is_best" in s else s.head(1)
        if len(best):
            b = best.iloc[0]
            gain = f", gain over each fold's best single modality {fmt(b['gain_mean'])}" if "gain_mean" in b else ""
            p = f" (p = {fmt(b['p_gain'])})" if "p_gain" in b and not pd.isna(b["p_gain"]) else ""
            sec.answer = (
                f"<b>{html.escape(str(b['method']))}</b> (best on validation over folds): test accuracy "
                f"{fmt(b.get('test_accuracy_mean'))}{gain}{p}."
            )
        keep = [c for c in s.columns if not c.endswith(("_sd",)) and c != "config"][:10]
        sec.body.append(table_html(s[keep]))
    per_fold = run.table("loso_per_fold")
    if per_fold is not None and {"method", "fold", "test_accuracy_mean"} <= set(per_fold.columns):
        sec.body.append(
            grid_html(per_fold, "method", "fold", "test_accuracy_mean", "test accuracy per fold (method x fold)")
        )
    sec.body.append(run.long("loso_summary", "loso_per_fold", "loso_runs"))
    return sec


def _robustness(run: RunFolder, head: dict[str, Any]) -> Section:
    sec = Section("robustness", "How robust is it to noise and missing modalities?", "", [], "robustness")
    if head.get("most_robust_method"):
        sec.answer = (
            f"Most robust fusion method over all corruptions: <b>{html.escape(str(head['most_robust_method']))}</b>"
            f" (relative robustness {float(head['most_robust_relative_robustness']):.3f})."
        )
    miss = run.table("missing_modality")
    score = "r2" if miss is not None and "r2" in miss.columns else "accuracy"
    name = _score_name(score)
    sec.body.append(run.figure("noise_curves", f"Test {name} as each modality is corrupted:"))
    by = run.table("robustness_by_method")
    if by is not None and len(by):
        sec.body.append(table_html(by))
    for key, caption in (
        ("missing_modality", f"test {name} with a modality missing (method x dropped)"),
        ("modality_dropout_study", f"trained with modality dropout, test {name} (method x dropped)"),
    ):
        t = run.table(key)
        if t is not None and {"method", "dropped", score} <= set(t.columns):
            sec.body.append(grid_html(t, "method", "dropped", score, caption))
    sec.body.append(run.long("robustness_summary", "missing_modality", "noise_curves"))
    if not sec.answer and not any(sec.body):
        sec.body.insert(0, run.missing("03_fusion_comparison") or "<p>Not studied in this run.</p>")
    return sec


def _interpretability(run: RunFolder, head: dict[str, Any]) -> Section:
    sec = Section("interpretability", "Does the model look where the information is?", "", [], "interpretability")
    if head.get("weights_point_to_informative"):
        sec.answer = (
            f"Learned modality weights point to the modality known to carry the target in "
            f"<b>{html.escape(str(head['weights_point_to_informative']))}</b> (method, target) pairs."
        )
    sec.body.append(run.figure("modality_weights", "Per-sample modality weights:"))
    known = run.table("known_information_check")
    if known is not None and len(known):
        sec.body.append(table_html(known))
    sec.body.append(run.long("weights_vs_importance", "drop_importance", "modality_weights"))
    if not sec.answer and not any(sec.body):
        sec.body.insert(0, run.missing("03_fusion_comparison") or "<p>Not studied in this run (03's <code>interpret</code> is"
                        " off, or no method learns modality weights).</p>")  # fmt: skip
    return sec


def _samples_table(df: pd.DataFrame, columns: list[str]) -> str:
    """The first :data:`SAMPLES` rows with each row's image (``image`` column) as a thumbnail."""
    rows = []
    cols = [c for c in columns if c in df.columns]
    for d in df.head(SAMPLES).to_dict("records"):
        src = thumbnail(d["image"]) if isinstance(d.get("image"), str) and d["image"] else None
        img = (
            f"<img src='{src}' alt='{html.escape(str(d.get('image_id', d.get('id', 'sample'))))}'>"
            if src
            else "(image not found)"
        )
        cells = "".join(f"<td>{esc(d[c])}</td>" for c in cols)
        rows.append(f"<tr><td>{img}</td>{cells}</tr>")
    head = "<th>image</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    return f"<div class='scroll'><table class='tbl samples'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _final_model(run: RunFolder, head: dict[str, Any]) -> Section:
    sec = Section("final-model", "The final model on the test split", "", [], "final model")
    if "final_test_accuracy" in head:
        sec.answer = (
            f"<code>{html.escape(str(head.get('final_method')))}</code> (04_train) reaches test accuracy"
            f" <b>{float(head['final_test_accuracy']):.3f}</b>."
        )
    elif "final_test_r2" in head:
        ev = run.summary("05_evaluate")
        sec.answer = (
            f"<code>{html.escape(str(head.get('final_method')))}</code> (04_train) reaches test R^2"
            f" <b>{float(head['final_test_r2']):.3f}</b>: MSE {fmt(ev.get('test_mse'))}, MAE {fmt(ev.get('test_mae'))}"
            " in the target's units (lower is better)."
        )
    else:
        sec.body.append(run.missing("04_train", "05_evaluate"))
    sec.body.append(run.figure("training_curves", "Training:"))
    sec.body.append(run.figure("confusion_matrix", "Confusion matrix (test):"))
    sec.body.append(run.figure("predicted_vs_true", "Predicted against true values (test):"))
    sec.body.append(run.figure("modality_ablation", "Modalities dropped at test time:"))
    abl = run.table("ablation")
    if abl is not None and len(abl):
        sec.body.append(table_html(abl))
    pred = run.table("predictions")
    if pred is not None and len(pred):
        sec.body.append(
            "<h3>Sample predictions</h3>"
            + _samples_table(pred, ["id", "text", "truth", "prediction", "confidence", "error"])
        )
    sec.body.append(run.long("predictions"))
    return sec


def _tasks(run: RunFolder) -> list[str]:
    declared = run.config("02_feature_extraction").get("tasks") or run.config("05_evaluate").get("tasks") or []
    found = [k.removesuffix("_metrics") for k in run.tables if k.endswith("_metrics")]
    found += ["vqa"] if PUBLISHED_TABLE in run.tables else []
    return list(dict.fromkeys([*declared, *found]))


def _task(run: RunFolder, task: str) -> Section:
    sec = Section(f"task-{task}", f"Task: {task}", "", [], task)
    metrics = run.table(f"{task}_metrics")
    if metrics is None or not len(metrics):
        sec.body.append(
            run.missing("04_train", "05_evaluate", what=f"the {task} results") or f"<p>(no {task}_metrics table)</p>"
        )
        sec.body.extend(_published(run) if task == "vqa" else [])
        return sec
    metric = next((m for m in TASK_METRIC.get(task, ()) if m in metrics), None)
    is_base = metrics["model"].isin(TASK_BASELINES)
    if "kind" in metrics:
        is_base |= metrics["kind"].eq("baseline")
    best = metrics[metrics["best"].fillna(False).astype(bool)] if "best" in metrics else metrics[~is_base].head(1)
    if metric and len(best):
        b = best.iloc[0]
        bases = metrics[is_base]
        against = "; ".join(f"{html.escape(str(r['model']))} {fmt(r[metric])}" for _, r in bases.iterrows())
        sec.answer = (
            f"Best model (on validation) <b>{html.escape(str(b['model']))}</b>: {html.escape(metric)} <b>{fmt(b[metric])}</b>"
            + (
                f", against the baseline{'s' if len(bases) > 1 else ''} {against}"
                if against
                else " (no baseline in this run)"
            )
            + "."
        )
    for key in sorted(k for k in run.figures if k.startswith(f"{task}_")):
        sec.body.append(run.figure(key))
    keep = [c for c in metrics.columns if c not in ("encoders", "config")]
    rel = html.escape(str(run.tables[f"{task}_metrics"]["path"]))
    sec.body.append(
        table_html(metrics[keep])
        + f"<p class='note'>Table <code>{task}_metrics</code> (the best model and its baselines, test split)"
        f" &middot; <a href='{rel}' download>CSV</a></p>"
    )
    if task == "vqa":
        sec.body.extend(_published(run))
    samples = run.table(f"{task}_samples")
    if samples is not None and len(samples):
        cols = [c for c in samples.columns if c not in ("image", "image_id", "question_id", "model")][:6]
        sec.body.append(f"<h3>Sample predictions ({task})</h3>" + _samples_table(samples, cols))
    rest = sorted(k for k in run.tables if k.startswith(f"{task}_") and k not in (f"{task}_metrics", PUBLISHED_TABLE))
    sec.body.append(run.long(*rest))
    return sec


def _published(run: RunFolder) -> list[str]:
    """VQA-RAD: fusionkit's closed / open / all accuracy next to the published numbers (05's table
    :data:`PUBLISHED_TABLE`, :func:`fusionkit.tasks.vqa.task.published_table`), with a warning while
    fusionkit's rows come from a split carved from the training questions."""
    df = run.table(PUBLISHED_TABLE)
    if df is None:
        return []
    ours = df[df["kind"] != "published"]
    parts = ["<h3>VQA-RAD next to the published numbers</h3>"]
    if ours["evaluated_on"].astype(str).str.contains("not comparable").any():
        parts.append(
            "<p class='warn'>fusionkit's rows: <b>validation, not comparable</b> - no <code>testset.json</code>, so "
            "they are measured on images carved from the training questions, not on the official 451 test "
            "questions the published rows use.</p>"
        )
    parts.append(table_html(df.map(lambda v: f"{v:.1f}" if isinstance(v, float) and not pd.isna(v) else v)))
    return parts


def _data(run: RunFolder) -> Section:
    sec = Section("data", "The data and its features", "", [], "data")
    d = run.summary("01_data_prep")
    if d:
        sec.answer = (
            f"{html.escape(str(d.get('dataset', '?')))}: {d.get('n_samples', '?')} samples"
            + (f" (train {d['n_train']}, validation {d['n_val']}, test {d['n_test']})" if "n_train" in d else "")
            + "."
        )
    else:
        sec.body.append(run.missing("01_data_prep"))
    sec.body.append(run.figure("examples", "Examples:"))
    sec.body.append(run.figure("class_balance", "Class balance:"))
    sec.body.append(run.figure("feature_projection", "Features (PCA):"))
    sec.body.append(run.long("class_balance", "feature_stats"))
    return sec


def _other(run: RunFolder) -> Section | None:
    """Figures no section claimed: kept, never dropped."""
    rest = [k for k in run.figures if f"figure:{k}" not in run.shown]
    if not rest:
        return None
    return Section("other", "Other figures", "", [run.figure(k) for k in rest], "other figures")


def _facts(run: RunFolder, summary: pd.DataFrame) -> Section:
    sec = Section("run-facts", "Run facts", "", [], "run facts")
    st = run.state
    made_by = st.get("fusionkit_version")
    sec.answer = (
        f"Run <code>{html.escape(run.dir.name)}</code>, profile <code>{html.escape(str(st.get('profile', '?')))}</code>,"
        f" started {html.escape(str(st.get('created', '?')))}, status {html.escape(str(st.get('status', '?')))};"
        f" made by fusionkit {html.escape(str(made_by or 'of unknown version'))}, this page by fusionkit {__version__}."
    )
    rows = []
    for nb in STEP_ORDER:
        status, error = run.status(nb)
        info = st.get("notebooks", {}).get(nb, {})
        rows.append(
            f"<tr><td><a href='notebooks/{nb}.ipynb'>{nb}</a></td><td>{html.escape(status)}</td>"
            f"<td>{html.escape(fmt(info.get('seconds')))}</td><td>{html.escape(error)}</td></tr>"
        )
    sec.body.append(
        "<h3>Notebooks and timings</h3><div class='scroll'><table class='tbl'><thead><tr><th>notebook</th><th>status</th>"
        f"<th>seconds</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    enc = run.config("02_feature_extraction")
    dims = run.summary("02_feature_extraction")
    facts = []
    d = run.summary("01_data_prep")
    if d:
        facts.append(
            (
                "dataset",
                f"{d.get('dataset', '?')} ({d.get('n_samples', '?')} samples, manifest {d.get('manifest_hash', '?')})",
            )
        )
    for m in ("image", "text", "audio"):
        if enc.get(f"{m}_encoder"):
            dim = dims.get(f"dim_{m}")
            facts.append((f"{m} encoder", f"{enc[f'{m}_encoder']}" + (f" ({dim} features)" if dim else "")))
    versions = st.get("versions") or {}
    facts.append(("fusionkit (run)", made_by or "not recorded: an older fusionkit"))
    facts.extend((k, v) for k, v in versions.items())
    facts.append(("fusionkit (this page)", f"{__version__}, Python {platform.python_version()}"))
    sec.body.append("<h3>Data, encoders, versions</h3>" + table_html(pd.DataFrame(facts, columns=["", "value"])))
    params = st.get("parameters") or {s: run.config(s) for s in STEP_ORDER if run.config(s)}
    if params:
        prow = [(nb, k, json.dumps(v) if not isinstance(v, str) else v) for nb, p in params.items() for k, v in p.items()
                if not k.endswith(("_dir", "_index", "_csv")) and k not in ("run_dir", "run_id", "checkpoint")]  # fmt: skip
        sec.body.append(
            f"<details><summary>Parameters ({len(prow)})</summary>"
            f"{table_html(pd.DataFrame(prow, columns=['notebook', 'parameter', 'value']))}</details>"
        )
    if len(summary):
        sec.body.append(
            f"<details><summary>Every logged summary value ({len(summary)}) &middot; <a href='summary.csv' download>CSV</a>"
            f"</summary>{table_html(summary)}</details>"
        )
    rest = [k for k in run.tables if f"table:{k}" not in run.shown]
    if rest:
        sec.body.append("<h3>Other tables</h3>" + run.long(*rest))
    wandb_dir = run.dir / "wandb"
    offline = sorted(p.name for p in wandb_dir.glob("offline-run-*")) if wandb_dir.exists() else []
    if offline:
        sec.body.append(
            f"<p>{len(offline)} offline W&amp;B runs are in <code>wandb/</code>; upload them with "
            f"<code>wandb sync {html.escape(str(wandb_dir))}/offline-run-*</code>.</p>"
        )
    return sec


def banners(run: RunFolder) -> list[str]:
    """What a reader must know before the numbers: an incomplete run (what is missing, why), a run
    made by another fusionkit, problems reading the folder."""
    out = []
    st = run.state
    if not st:
        out.append("<p class='warn' id='incomplete'>No <code>run.json</code>: the notebooks' states are unknown;"
                   " the page shows what the mirror holds.</p>")  # fmt: skip
    elif st.get("status") != "complete":
        missing = run.missing(*STEP_ORDER[:5], cls="missing")  # 06 is building this page
        resume = html.escape(str(st.get("run_id", run.dir.name)))
        out.append(
            f"<div class='warn' id='incomplete'><b>Incomplete run</b> (status {html.escape(str(st.get('status', '?')))}):"
            f" sections below say what they lack. {missing}"
            f" Finish it with <code>fusionkit run --resume {resume}</code>.</div>"
        )
    if st and st.get("fusionkit_version") != __version__:
        made = st.get("fusionkit_version")
        out.append(
            "<p class='warn' id='version'>This run was made by "
            + (
                f"fusionkit {html.escape(str(made))}"
                if made
                else "an older fusionkit (one that did not record its version)"
            )
            + f"; this page was built by fusionkit {__version__}: sections that version did not produce say so, and"
            " numbers may differ from what this version computes.</p>"
        )
    if run.problems:
        out.append(
            "<div class='warn' id='problems'>Problems reading the run folder:<ul>"
            + "".join(f"<li>{html.escape(p)}</li>" for p in dict.fromkeys(run.problems))
            + "</ul></div>"
        )
    return out


def safe(build, id: str, title: str, run: RunFolder, *args) -> Section | None:
    """A section, or - when the run's files are not what this fusionkit expects (a table without
    a column it reads, from an older fusionkit or edited by hand) - the section saying so."""
    try:
        return build(run, *args)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        what = f"column {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        return Section(id, title, "", [
            f"<p class='warn missing'>This section could not be built from the run's files ({html.escape(what)});"
            " the run may have been made by another fusionkit. Its tables and figures are listed under Run facts.</p>"
        ])  # fmt: skip


def page_sections(run: RunFolder, head: dict[str, Any], h: Headline | None, summary: pd.DataFrame) -> list[Section]:
    """The page's sections in order: the headline, one per question (those of the studies the
    run made), one per task, the data, the figures no section claimed, the run's facts."""
    sections = [
        safe(_headline, "headline", "Headline", run, head, h),
        safe(_comparison, "comparison", "Which fusion method wins?", run, h),
        safe(_interactions, "interactions", "Which fusion works for which kind of interaction?", run),
        safe(_tuning, "tuning", "Did tuning change the ranking?", run, head),
        safe(_folds, "folds", "Does it hold for a held-out group?", run),
        safe(_robustness, "robustness", "How robust is it to noise and missing modalities?", run, head),
        safe(_interpretability, "interpretability", "Does the model look where the information is?", run, head),
        safe(_final_model, "final-model", "The final model on the test split", run, head),
        *[safe(_task, f"task-{t}", f"Task: {t}", run, t) for t in _tasks(run)],
        safe(_data, "data", "The data and its features", run),
    ]
    sections.append(safe(_other, "other", "Other figures", run))
    sections.append(safe(_facts, "run-facts", "Run facts", run, summary))  # last: it lists the tables no section showed
    return [s for s in sections if s is not None]
