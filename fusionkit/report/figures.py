"""Every figure the notebooks and the report show: one function per figure, each returning a
matplotlib ``Figure`` (the notebook displays it; ``Tracker.log_figure`` saves it for the report)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.decomposition import PCA
from torch.nn import functional as F

from fusionkit.compare import metrics_of
from fusionkit.data.base import SPLITS, Dataset
from fusionkit.data.readers import load_rgb
from fusionkit.evaluate import higher_is_better
from fusionkit.train import SplitData


def plot_class_balance(balance: pd.DataFrame):
    """Bars of ``workbook.balance_table``: samples per class and split, one panel per target."""
    df = balance
    targets = list(dict.fromkeys(df["target"]))
    cols = min(4, len(targets))  # rows of at most 4 panels: readable at a page's width
    rows = -(-len(targets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in list(axes.flat)[len(targets) :]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, targets):
        sub = df[df.target == t]
        sns.barplot(sub, x="class", y="count", hue="split", hue_order=list(SPLITS), ax=ax)
        ax.set_title(f"class balance: {t}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def plot_examples(ds: Dataset, n: int = 8, seed: int = 0, captions: dict[str, list[str]] | None = None):
    """A grid of images with their captions (``captions``: sample id -> captions, else the
    sample's own text) and target labels. An unreadable image (corrupt, or over PIL's
    decompression-bomb limit) raises DatasetError naming the file and the sample."""
    rng = np.random.default_rng(seed)
    samples = [ds.samples[i] for i in rng.choice(len(ds.samples), size=min(n, len(ds.samples)), replace=False)]
    caps = captions or {}
    img_mod = next((m for m, k in ds.modalities.items() if k == "image"), None)
    cols = 4
    rows = int(np.ceil(len(samples) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        if img_mod:
            ax.imshow(load_rgb(ds.path(s, img_mod), s.id))
        labels = ", ".join(f"{t}={ds.targets[t][v] if ds.targets[t] else f'{v:.4g}'}" for t, v in s.targets.items())
        text = caps.get(s.id, [v for m, v in s.modalities.items() if ds.modalities[m] == "text"])[:2]
        ax.set_title("\n".join([s.id, labels] + [textwrap.shorten(c, 48) for c in text]), fontsize=8)
    fig.tight_layout()
    return fig


def plot_projection(data: SplitData, class_names: list[str], max_points: int = 1500, seed: int = 0):
    """PCA of each modality's features, coloured by label (a regression target: by its value,
    a continuous colour scale)."""
    mods = sorted(data.features)
    fig, axes = plt.subplots(1, len(mods), figsize=(4.6 * len(mods), 4), squeeze=False)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data))[:max_points]
    if data.regression:
        values = data.labels[idx].numpy()
        hue = {"hue": values, "palette": "viridis"}
    else:
        hue = {"hue": [class_names[i] for i in data.labels[idx].tolist()], "hue_order": class_names}
    for ax, m in zip(axes[0], mods):
        x = data.features[m][idx].reshape(len(idx), -1).numpy()
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
        sns.scatterplot(x=xy[:, 0], y=xy[:, 1], s=12, ax=ax, legend=ax is axes[0][-1], **hue)
        ax.set_title(f"{m}: PCA of features")
    if len(mods):
        axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_comparison(
    results: pd.DataFrame, summary: pd.DataFrame, metric: str | None = None, ceilings: dict | None = None
):
    """Each method's ``metric`` per seed and vs its parameter count. Default: the comparison's
    (``compare.metrics_of``: test accuracy), on a regression target test R^2 - the metric its
    documented ``ceilings`` are in (the MSE is in the table)."""
    if metric is None:
        metric = metrics_of(summary)[0]
        if metric == "test_mse" and "test_r2" in results:
            metric = "test_r2"
    order = summary["method"].tolist()
    fig, axes = plt.subplots(
        1, 2, figsize=(13, max(3.5, 0.38 * len(order) + 1.5)), gridspec_kw={"width_ratios": [2, 1]}
    )
    sns.barplot(results, y="method", x=metric, order=order, errorbar=("ci", 95), ax=axes[0], color="#7aa6c2")
    sns.stripplot(results, y="method", x=metric, order=order, ax=axes[0], color="k", size=3)
    if ceilings:
        by_value: dict[float, list[str]] = {}
        for k, v in ceilings.items():
            by_value.setdefault(round(float(v), 4), []).append(k)
        for v, names in by_value.items():
            axes[0].axvline(v, ls=":" if "fused" not in names else "-", color="grey", lw=1)
            axes[0].text(v, -0.6, "/".join(names), fontsize=7, color="grey", ha="center")
    axes[0].set_title(f"{metric} per method (mean, 95% CI, seeds as dots)")
    sns.scatterplot(summary, x="params", y=f"{metric}_mean", hue="kind", ax=axes[1])
    for _, r in summary.iterrows():
        axes[1].annotate(r["method"].replace("unimodal:", "uni:"), (r["params"], r[f"{metric}_mean"]), fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_title(f"{metric.removeprefix('test_')} vs parameters")
    fig.tight_layout()
    return fig


def plot_forest(summary: pd.DataFrame, ceilings: Mapping[str, float] | None = None, metric: str | None = None):
    """The comparison as a forest plot: one row per method (``compare.summarize``'s table, best
    first) with its mean ``metric`` (default: the comparison's, ``compare.metrics_of``) and 95% CI
    over seeds; the single-modality baselines in their own colour, the best method (chosen on
    validation) in bold, and the documented ceilings (``ceilings``: name -> value; the fused one
    solid, the others dotted) as vertical lines."""
    metric = metric or metrics_of(summary)[0]
    higher = higher_is_better(metric)
    df = summary.sort_values(f"{metric}_mean", ascending=not higher, kind="stable").reset_index(drop=True)
    mean = df[f"{metric}_mean"].to_numpy(dtype=float)
    ci = df.get(f"{metric}_ci95", pd.Series(np.zeros(len(df)))).fillna(0).to_numpy(dtype=float)
    uni = df["method"].str.startswith("unimodal:").to_numpy()
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(df) + 1.6))
    y = np.arange(len(df))
    for sel, colour, label in ((~uni, "#2b6f97", "fusion method"), (uni, "#d08c60", "single modality")):
        if sel.any():
            ax.errorbar(mean[sel], y[sel], xerr=ci[sel], fmt="o", color=colour, ecolor=colour, capsize=3, ms=5,
                        lw=1.2, label=label)  # fmt: skip
    lo, hi = float(np.nanmin(mean - ci)), float(np.nanmax(mean + ci))
    if metric.endswith(("accuracy", "f1")):  # a CI over 2 seeds can reach past what the metric can be
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    by_value: dict[float, list[str]] = {}
    for k, v in (ceilings or {}).items():
        by_value.setdefault(round(float(v), 4), []).append(k)
    for i, (v, names) in enumerate(sorted(by_value.items())):  # labels on two rows, so that neighbours do not overlap
        ax.axvline(v, ls="-" if "fused" in names else ":", color="grey", lw=1)
        ax.text(v, -0.8 - 0.7 * (i % 2), "/".join(names), fontsize=7, color="grey", ha="center", va="bottom")
        lo, hi = min(lo, v), max(hi, v)
    pad = 0.04 * max(hi - lo, 1e-6)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(len(df) - 0.5, -1.9 if by_value else -0.7)
    ax.set_yticks(y, [m.replace("unimodal:", "uni:") for m in df["method"]], fontsize=8)
    if "is_best" in df:
        for label, best in zip(ax.get_yticklabels(), df["is_best"].fillna(False).astype(bool)):
            if best:
                label.set_fontweight("bold")
    ax.grid(axis="x", color="#eeeeee")
    ax.set_xlabel(f"{metric} (mean over seeds, 95% CI)")
    ax.set_title("fusion comparison: bold = best on validation; grey lines = documented ceilings", fontsize=9)
    ax.legend(fontsize=7, loc="lower right" if higher else "lower left")
    fig.tight_layout()
    return fig


def plot_targets(
    summary: pd.DataFrame, ceilings: Mapping[str, Mapping[str, float]] | None = None, metric: str = "test_accuracy"
):
    """The methods x targets heatmap of ``compare.TargetComparison.summary``: the mean of
    ``metric`` with its 95% CI in each cell, each target's best method (on validation) framed,
    methods no better than late fusion in grey type, and the fused / best single-modality ceilings
    under each target's name (``ceilings``: target -> {"fused": .., "<modality>": ..})."""
    targets = list(dict.fromkeys(summary["target"]))
    mean = summary.pivot(index="method", columns="target", values=f"{metric}_mean")[targets]
    ci = summary.pivot(index="method", columns="target", values=f"{metric}_ci95")[targets]
    order = mean.mean(axis=1).sort_values(ascending=False).index
    mean, ci = mean.loc[order], ci.loc[order]
    annot = mean.map(lambda v: f"{v:.2f}") + ci.map(lambda v: "" if pd.isna(v) else f"\n±{v:.2f}")
    fig, ax = plt.subplots(figsize=(1.5 * len(targets) + 3, 0.42 * len(order) + 1.6))
    sns.heatmap(mean, annot=annot, fmt="", cmap="viridis", vmin=0, vmax=1, ax=ax, annot_kws={"fontsize": 7},
                cbar_kws={"label": f"{metric} (mean over seeds)"})  # fmt: skip
    labels = []
    mods = [m[len("unimodal:") :] for m in mean.index if m.startswith("unimodal:")]
    for t in targets:
        c = dict((ceilings or {}).get(t, {}))
        uni = max((c[m] for m in mods if m in c), default=None)
        extra = [f"fused {c['fused']:.2f}"] if "fused" in c else []
        extra += [f"1 mod. {uni:.2f}"] if uni is not None else []
        labels.append("\n".join([t, *extra]))
    # each annotation by its cell (row, column): seaborn writes them at the cells' centres
    cells = {(int(t.get_position()[1]), int(t.get_position()[0])): t for t in ax.texts}
    ax.set_xticklabels(labels, rotation=0, fontsize=8)
    ax.set_yticklabels([m.replace("unimodal:", "uni:") for m in order], fontsize=8)
    ax.set_xlabel("target (interaction type); ceilings below the name")
    ax.set_ylabel("")
    for j, t in enumerate(targets):
        sub = summary[summary.target == t].set_index("method")
        if "is_best" in sub and sub["is_best"].any():
            i = list(order).index(sub.index[sub["is_best"]][0])
            ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="#e8483b", lw=2))
        if "no_better_than_late" in sub:
            for i, m in enumerate(order):
                if m in sub.index and bool(sub.loc[m, "no_better_than_late"]):
                    cells[(i, j)].set_color("#bbbbbb")
    ax.set_title("methods x interaction type: best on validation framed, grey = no better than late fusion",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_search(trials: pd.DataFrame, metric: str | None = None):
    """Each method's search: the validation score of every trial (dots; trial 0 is the method's
    defaults, ringed) and the best so far (line). ``trials``: ``SearchResult.trials``;
    ``metric``: default ``val_accuracy``, or ``val_mse`` where the trials have it."""
    metric = metric or ("val_mse" if "val_mse" in trials.columns else "val_accuracy")
    methods = list(dict.fromkeys(trials["method"]))
    ncols = min(5, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.1 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax, method in zip(axes.flat, methods):
        t = trials[trials["method"] == method].sort_values("trial")
        best = t[metric].cummax() if higher_is_better(metric) else t[metric].cummin()
        ax.plot(t["trial"], best, color="#2b6f97", lw=1.5)
        ax.scatter(t["trial"], t[metric], s=10, color="k", zorder=3)
        ax.scatter(t["trial"].iloc[:1], t[metric].iloc[:1], s=40, facecolors="none", edgecolors="#c2577a", zorder=4)
        ax.set_title(method.replace("unimodal:", "uni:"), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods) :]:
        ax.set_visible(False)
    fig.supxlabel("trial", fontsize=8)
    fig.supylabel(f"{metric} (best so far)", fontsize=8)
    fig.suptitle("search per method (equal budget; selected on validation)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(history: list[dict[str, float]]):
    """Loss and accuracy per epoch (a regression target: the loss on the standardised target and
    the validation MSE in the target's units)."""
    df = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    df.plot(x="epoch", y=["train_loss", "val_loss"], ax=axes[0], title="loss")
    if "val_mse" in df:
        df.plot(x="epoch", y=["val_mse"], ax=axes[1], title="validation MSE (target units)")
    else:
        df.plot(x="epoch", y=["train_acc", "val_acc"], ax=axes[1], title="accuracy")
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, class_names: list[str], max_classes: int = 20):
    """The confusion matrix (rows true, columns predicted). With more than ``max_classes`` classes
    (VQA-RAD's 359 answers) it shows the ``max_classes`` most frequent true classes and pools the
    rest into one "other" row and column, so the figure stays readable and small."""
    cm = np.asarray(cm)
    names = list(class_names)
    title = None
    if len(names) > max_classes:
        keep = np.sort(np.argsort(-cm.sum(1), kind="stable")[:max_classes])
        group = np.full(len(names), max_classes)  # every other class -> the last row / column
        group[keep] = np.arange(max_classes)
        pooled = np.zeros((max_classes + 1, max_classes + 1), dtype=cm.dtype)
        np.add.at(pooled, (group[:, None], group[None, :]), cm)
        cm = pooled
        title = f"the {max_classes} most frequent of {len(names)} classes (the rest pooled as 'other')"
        names = [names[i] for i in keep] + ["other"]
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", xticklabels=names, yticklabels=names, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_predicted_vs_true(pred: np.ndarray, true: np.ndarray, target: str = "target"):
    """A regression target's test predictions against the true values (the target's units), with
    the diagonal a perfect model would lie on."""
    pred, true = np.asarray(pred, dtype=float).reshape(-1), np.asarray(true, dtype=float).reshape(-1)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(true, pred, s=10, alpha=0.6, color="#3b75af")
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title("test predictions vs true values")
    fig.tight_layout()
    return fig


def plot_ablation(rows: list[dict[str, Any]], ceilings: dict | None = None):
    """The test score (accuracy; a regression target: R^2) of each ablation condition."""
    df = pd.DataFrame(rows)
    metric = "r2" if "r2" in df else "accuracy"
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.2))
    sns.barplot(df, y="condition", x=metric, ax=ax, color="#d08c60")
    for i, v in enumerate(df[metric]):
        ax.text(max(v, 0), i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(min(0, float(df[metric].min()) - 0.05), 1.08)
    ax.set_title(f"test {'R^2' if metric == 'r2' else 'accuracy'} when modalities are dropped at test time")
    fig.tight_layout()
    return fig


def plot_curves(curves: pd.DataFrame):
    """One panel per (modality, corruption): accuracy (a regression target: R^2) vs level, one
    line per method."""
    metric = "r2" if "r2" in curves else "accuracy"
    panels = (
        curves[["modality", "corruption"]].drop_duplicates().sort_values(["modality", "corruption"]).values.tolist()
    )
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (modality, corruption) in zip(axes.flat, panels):
        ax.axis("on")
        sub = curves[(curves.modality == modality) & (curves.corruption == corruption)]
        sns.lineplot(sub, x="level", y=metric, hue="method", ax=ax, marker="o", markersize=3, legend=ax is axes.flat[0])
        ax.set_title(f"{modality}: {corruption}")
    if len(panels):
        axes.flat[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_weights(weights: pd.DataFrame):
    """Distribution of the learned modality weights, per method (rows) and class (x)."""
    methods = sorted(weights["method"].unique())
    fig, axes = plt.subplots(len(methods), 1, figsize=(10, 2.8 * len(methods)), squeeze=False, sharey=True)
    for ax, method in zip(axes[:, 0], methods):
        sub = weights[weights.method == method]
        sns.boxplot(sub, x="class", y="weight", hue="modality", ax=ax, fliersize=1)
        ax.set_title(f"{method}: per-sample modality weights by class")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def plot_attention_maps(
    maps: Sequence[Any],
    image_paths: Mapping[str, str | os.PathLike] | Callable[[str], str | os.PathLike],
    max_tokens: int = 8,
    size: int = 224,
    alpha: float = 0.55,
    panel_inches: float = 1.8,
):
    """One row per image: the image with its generated caption, then one panel per token with
    the attention upsampled (bilinear) to the image and drawn over it. Returns the figure. An
    unreadable image (corrupt, or over PIL's decompression-bomb limit) raises DatasetError naming
    the file and the image id."""
    if not maps:
        raise ValueError("no attention maps to draw")
    cols = 1 + min(max_tokens, max(len(m.tokens) for m in maps))
    fig, axes = plt.subplots(
        len(maps), cols, figsize=(panel_inches * cols, panel_inches * 1.15 * len(maps)), squeeze=False
    )
    for row, m in zip(axes, maps):
        path = image_paths(m.image_id) if callable(image_paths) else image_paths[m.image_id]
        img = np.asarray(load_rgb(path, m.image_id, (size, size)))
        row[0].imshow(img)
        row[0].set_title(f"{m.image_id}", fontsize=7)
        row[0].set_xlabel(m.caption, fontsize=6, wrap=True)
        for c, ax in enumerate(row[1:]):
            if c < min(len(m.tokens), max_tokens):
                h, w = m.grid_hw
                a = m.attention[c].reshape(1, 1, h, w)
                a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
                a = (a - a.min()) / (a.max() - a.min() + 1e-12)
                ax.imshow(img)
                ax.imshow(a.numpy(), cmap="jet", alpha=alpha)
                ax.set_title(m.tokens[c], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_xticks([])
        row[0].set_yticks([])
    fig.tight_layout()
    return fig


def plot_vqa_accuracy(df: pd.DataFrame, title: str = "VQA accuracy per question type (test)"):
    """Horizontal bars: VQA accuracy per type (rows) and model (colours)."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(df) + 1.5))
    df.plot.barh(ax=ax)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("VQA accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_recall(metrics: pd.DataFrame):
    """Recall@K of each retrieval model, both directions."""
    cols = [c for c in metrics.columns if "_R@" in c]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    metrics.set_index("model")[cols].T.plot.bar(ax=ax)
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.05)
    ax.set_title("retrieval recall on the test split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def task_figures(result) -> dict[str, Any]:
    """The figures of a task's evaluation (:class:`fusionkit.tasks.common.TaskResult`), drawn from
    what it returned in ``plots``: captioning ``attention`` maps, VQA accuracy ``per_question_type``,
    retrieval ``recall``."""
    out = {}
    for key, data in result.plots.items():
        if key == "attention":
            maps, image_paths = data
            out[key] = plot_attention_maps(maps, image_paths)
        elif key == "per_question_type":
            out[key] = plot_vqa_accuracy(data)
        elif key == "recall":
            out[key] = plot_recall(data)
        else:
            raise ValueError(f"{result.task}: no figure is drawn for {key!r}")
    return out


#: the segments of an interaction profile's bars, with their colours
_INTERACTION_SEGMENTS = (
    ("redundancy", "redundancy R", "#7aa6c2"),
    ("unique_a", "unique U (first of the pair)", "#d08c60"),
    ("unique_b", "unique U (second of the pair)", "#e8b98f"),
    ("synergy_late", "synergy late fusion extracts", "#9bbf85"),
    ("synergy_beyond_late", "synergy beyond late fusion", "#c2577a"),
)


def plot_interactions(table: pd.DataFrame, evidence: pd.DataFrame | None = None):
    """An interaction profile (``fusionkit.interactions``): per modality pair a stacked bar of its
    decomposition in bits (``InteractionProfile.table()``: redundancy, each modality's unique
    information, synergy split into what late fusion extracts and what only a non-additive fusion
    does; sd over seeds on the total, ``H(Y)`` dotted) and, with ``evidence``
    (``evidence_table()``), the test accuracy of each model behind it."""
    panels = 1 if evidence is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, max(2.4, 0.6 * len(table) + 1.6)), squeeze=False)
    ax = axes[0][0]
    pairs = table["pair"].tolist()
    y = np.arange(len(pairs))
    left = np.zeros(len(pairs))
    for key, label, colour in _INTERACTION_SEGMENTS:
        width = table[key].to_numpy(dtype=float)
        ax.barh(y, width, left=left, color=colour, label=label, height=0.6)
        for i, (w, x0) in enumerate(zip(width, left)):
            if key.startswith("unique") and w > 0.06 * max(float(table["h_y"].max()), 1e-9):
                name = table["a" if key == "unique_a" else "b"].iloc[i]
                ax.text(x0 + w / 2, i, name, ha="center", va="center", fontsize=7)
        left = left + width
    ax.errorbar(table["i_ab"], y, xerr=table["i_ab_sd"], fmt="none", ecolor="k", capsize=3, lw=1)
    h_y = float(table["h_y"].max())
    ax.axvline(h_y, ls=":", color="grey", lw=1)
    ax.text(h_y, -0.45, "H(Y)", fontsize=7, color="grey", ha="center", va="bottom")
    ax.set_xlim(0, 1.08 * max(h_y, float((table["i_ab"] + table["i_ab_sd"]).max()), 1e-3))
    ax.set_ylim(len(pairs) - 0.5, -0.75)
    ax.set_yticks(y, pairs)
    ax.set_xlabel("bits")
    ax.set_title("interactions per modality pair (MMI decomposition of I(a,b;Y))", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    if evidence is not None:
        ax = axes[0][1]
        ev = evidence.reset_index(drop=True)
        names = [r.method if r.model == "unimodal" else f"{r.method} on {r.modalities}" for r in ev.itertuples()]
        kinds = list(dict.fromkeys(ev["model"]))
        colours = dict(zip(kinds, sns.color_palette("muted", len(kinds))))
        ax.barh(np.arange(len(ev)), ev["test_accuracy"], xerr=ev["test_accuracy_sd"].fillna(0), capsize=3,
                color=[colours[k] for k in ev["model"]], height=0.6)  # fmt: skip
        for i, v in enumerate(ev["test_accuracy"]):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(ev)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("test accuracy (mean, sd over seeds)")
        ax.set_title("the evidence: each modality alone, late fusion, fused", fontsize=9)
    fig.tight_layout()
    return fig
