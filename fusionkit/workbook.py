"""What the notebooks call: one small function per thing a notebook shows or does, so that the
cells stay narrative + parameters + plots (docs/architecture.md, "Layers")."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from fusionkit.data.base import SPLITS, Dataset, DatasetError
from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.problems import Problems
from fusionkit.data.readers import load_rgb
from fusionkit.data.vqa import read_vqa_file, vqa_annotations, vqa_questions
from fusionkit.encoders import build_encoder
from fusionkit.features import extract_features
from fusionkit.index import FeatureIndex, ModalityFeatures
from fusionkit.tasks import experiments
from fusionkit.train import SplitData

_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


def parameters_from(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook's parameters: the simple-typed globals defined by its parameters cell (call it
    right after that cell)."""
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_")
        and k not in _IPYTHON_NAMES
        and isinstance(v, (str, int, float, bool, list, dict, type(None)))
    }


def resolve(path: str | Path, base: str | Path | None = None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base is None else Path(base) / p


# ------------------------------------------------------------------------------ 01 data prep
def prepare_dataset(
    dataset: str,
    dataset_dir: str | Path,
    *,
    n_scenes: int = 1200,
    image_size: int = 128,
    seed: int = 0,
    source_dir: str = "",
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Dataset:
    """Build (or reuse) the dataset folder and return the validated :class:`Dataset`.

    ``shapes`` is generated (``n_scenes``, ``image_size``; ``options``: ``questions_per_scene``,
    ``splits``); every other family of ``fusionkit.data.registry`` (flickr8k, coco, vqa, avdigits,
    manifest, ...) is read from ``source_dir`` with the loader's ``options``."""
    from fusionkit.data import registry

    dataset_dir = Path(dataset_dir)
    if dataset == "shapes":
        from fusionkit.data import shapes

        opts = dict(options or {})
        allowed = sorted(set(registry.options("shapes")) - {"n", "image_size"})  # those two have parameters
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise DatasetError(
                f"shapes: unknown dataset_options {unknown}; expected some of {allowed} "
                "(n_scenes and image_size are parameters of their own)"
            )
        ds = shapes.generate(dataset_dir, n=n_scenes, seed=seed, image_size=image_size, progress=progress, **opts)
        shapes.validate(dataset_dir)
        return ds
    if dataset not in registry.available():
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(registry.available())}")
    return registry.prepare(
        dataset, dataset_dir, source_dir=source_dir or None, seed=seed, progress=progress, **(options or {})
    )


def balance_table(ds: Dataset) -> pd.DataFrame:
    rows = []
    for t, classes in ds.targets.items():
        for s in ds.samples:
            rows.append({"target": t, "split": s.split, "class": classes[s.targets[t]]})
    df = pd.DataFrame(rows)
    return df.groupby(["target", "split", "class"]).size().rename("count").reset_index()


def plot_class_balance(ds: Dataset):
    df = balance_table(ds)
    targets = list(ds.targets)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.2), squeeze=False)
    for ax, t in zip(axes[0], targets):
        sub = df[df.target == t]
        sns.barplot(sub, x="class", y="count", hue="split", hue_order=list(SPLITS), ax=ax)
        ax.set_title(f"class balance: {t}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def _captions(ds: Dataset) -> dict[str, list[str]]:
    """{file stem: raw captions} of the dataset's ``captions.json`` (read by the one Karpathy parser)."""
    path = ds.root / "captions.json"
    if not path.exists():
        return {}
    problems = Problems("raise")
    return {im.stem: [c for c, _ in im.sentences(problems) or []] for im in karpathy_images(path, problems)}


def plot_examples(ds: Dataset, n: int = 8, seed: int = 0):
    """A grid of images with their captions and target labels. An unreadable image (corrupt, or
    over PIL's decompression-bomb limit) raises DatasetError naming the file and the sample."""
    rng = np.random.default_rng(seed)
    samples = [ds.samples[i] for i in rng.choice(len(ds.samples), size=min(n, len(ds.samples)), replace=False)]
    caps = _captions(ds)
    img_mod = next((m for m, k in ds.modalities.items() if k == "image"), None)
    cols = 4
    rows = int(np.ceil(len(samples) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        if img_mod:
            ax.imshow(load_rgb(ds.path(s, img_mod), s.id))
        labels = ", ".join(f"{t}={ds.targets[t][v]}" for t, v in s.targets.items())
        text = caps.get(s.id, [v for m, v in s.modalities.items() if ds.modalities[m] == "text"])[:2]
        ax.set_title("\n".join([s.id, labels] + [textwrap.shorten(c, 48) for c in text]), fontsize=8)
    fig.tight_layout()
    return fig


def questions_table(ds: Dataset, n: int = 10) -> pd.DataFrame:
    """A few VQA questions with answers (when the dataset has them)."""
    rows = []
    problems = Problems("raise")
    for split in SPLITS:
        q, a = (ds.root / "vqa" / f"{kind}_{split}.json" for kind in ("questions", "annotations"))
        if not (q.exists() and a.exists()):
            continue
        qf, af = read_vqa_file(q, "questions"), read_vqa_file(a, "annotations")
        if qf is None or af is None:
            raise DatasetError(f"{q}, {a}: expected a VQA v2 questions file and an annotations file")
        ans = {a.question_id: a.raw for a in vqa_annotations(af, problems)}
        for x in vqa_questions(qf, problems):
            ann = ans.get(x.question_id)
            if ann is None:
                raise DatasetError(f"{x.where}: no annotation for this question in {af.path}")
            rows.append(
                {
                    "split": split,
                    "image_id": x.image_id,
                    "question": x.question,
                    "answer": ann.get("multiple_choice_answer"),
                    "answer_type": ann.get("answer_type"),
                }
            )
    df = pd.DataFrame(rows)
    return df.head(n) if len(df) else df


# ------------------------------------------------------------------------------ 02 features
def extract_all(
    ds: Dataset,
    encoders: dict[str, str],
    cache_dir: str | Path,
    outputs: list[str],
    *,
    batch_size: int = 0,
    index_path: str | Path,
    progress: bool = True,
) -> FeatureIndex:
    """Encode every modality x split x output into the feature cache; write the feature index
    (the file later notebooks take as ``features_index``) and return it."""
    index = FeatureIndex(
        dataset_dir=str(Path(ds.root).resolve()),
        dataset=ds.name,
        manifest_hash=ds.manifest_hash(),
        cache_dir=str(Path(cache_dir).resolve()),
        targets=ds.targets,
    )
    for modality, kind in sorted(ds.modalities.items()):
        name = encoders.get(kind)
        if not name:
            continue
        enc = build_encoder(kind, name)
        entry = ModalityFeatures(kind=kind, encoder=enc.name, identity=enc.identity())
        for output in outputs:
            for split in SPLITS:
                if not ds.split(split):
                    continue
                fs = extract_features(
                    ds,
                    modality,
                    enc,
                    split=split,
                    cache_dir=cache_dir,
                    output=output,
                    batch_size=batch_size or None,
                    progress=progress,
                )
                entry.files.setdefault(output, {})[split] = str(Path(fs.path).resolve())
                entry.dims[output] = list(fs.values.shape[1:])
        index.modalities[modality] = entry
    index.write(index_path)
    return index


def feature_stats(splits: dict[str, SplitData]) -> pd.DataFrame:
    rows = []
    for split, d in splits.items():
        for m, x in d.features.items():
            flat = x.reshape(len(x), -1)
            rows.append(
                {
                    "split": split,
                    "modality": m,
                    "n": len(x),
                    "dim": flat.shape[1],
                    "mean": float(flat.mean()),
                    "std": float(flat.std()),
                    "mean_norm": float(flat.norm(dim=1).mean()),
                    "finite": bool(torch.isfinite(flat).all()),
                }
            )
    return pd.DataFrame(rows)


def plot_projection(data: SplitData, class_names: list[str], max_points: int = 1500, seed: int = 0):
    """PCA of each modality's features, coloured by label."""
    from sklearn.decomposition import PCA

    mods = sorted(data.features)
    fig, axes = plt.subplots(1, len(mods), figsize=(4.6 * len(mods), 4), squeeze=False)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data))[:max_points]
    labels = [class_names[i] for i in data.labels[idx].tolist()]
    for ax, m in zip(axes[0], mods):
        x = data.features[m][idx].reshape(len(idx), -1).numpy()
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
        sns.scatterplot(
            x=xy[:, 0], y=xy[:, 1], hue=labels, hue_order=class_names, s=12, ax=ax, legend=ax is axes[0][-1]
        )
        ax.set_title(f"{m}: PCA of features")
    if len(mods):
        axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ 03 comparison
def plot_comparison(
    results: pd.DataFrame, summary: pd.DataFrame, metric: str = "test_accuracy", ceilings: dict | None = None
):
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
    axes[1].set_title("accuracy vs parameters")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ 04/05
def plot_history(history: list[dict[str, float]]):
    df = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    df.plot(x="epoch", y=["train_loss", "val_loss"], ax=axes[0], title="loss")
    df.plot(x="epoch", y=["train_acc", "val_acc"], ax=axes[1], title="accuracy")
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, class_names: list[str]):
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(class_names), 0.8 + 0.7 * len(class_names)))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def plot_ablation(rows: list[dict[str, Any]], ceilings: dict | None = None):
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.2))
    sns.barplot(df, y="condition", x="accuracy", ax=ax, color="#d08c60")
    for i, v in enumerate(df["accuracy"]):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_title("test accuracy when modalities are dropped at test time")
    fig.tight_layout()
    return fig


def predictions_table(
    ds: Dataset,
    data: SplitData,
    logits: torch.Tensor,
    class_names: list[str],
    n: int = 16,
    weights: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Sample predictions (image path, text, truth, prediction, confidence, modality weights)."""
    probs = logits.softmax(1)
    by_id = {s.id: s for s in ds.samples}
    img_mod = next((m for m, k in ds.modalities.items() if k == "image"), None)
    txt_mod = next((m for m, k in ds.modalities.items() if k == "text"), None)
    rows = []
    for i in range(min(n, len(data))):
        s = by_id[data.ids[i]]
        row = {"id": s.id}
        if img_mod:
            row["image"] = str(ds.path(s, img_mod))
        if txt_mod:
            row["text"] = s.modalities[txt_mod]
        row.update(
            truth=class_names[int(data.labels[i])],
            prediction=class_names[int(probs[i].argmax())],
            confidence=round(float(probs[i].max()), 4),
        )
        if weights:
            for m, w in weights.items():
                row[f"w_{m}"] = round(float(w[i]), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def choose_method(method: str, comparison_csv: str | Path) -> str:
    """``method`` itself, or for "best" the best fusion method of 03's summary table."""
    from fusionkit.fusion import get

    if method != "best":
        get(method)  # unknown names fail here with the list of valid ones
        return method
    path = Path(comparison_csv)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: method='best' needs 03_fusion_comparison's summary (or name a method)"
        )
    df = pd.read_csv(path)
    best = df[df["is_best"]]
    if best.empty:
        raise ValueError(f"{path}: no row has is_best = True")
    return str(best.iloc[0]["method"])


def target_labels(ds: Dataset, splits: dict[str, SplitData], target: str) -> dict[str, torch.Tensor]:
    """Labels of another target of the dataset, aligned with ``splits``' sample order."""
    by_id = {s.id: s for s in ds.samples}
    return {split: torch.tensor([by_id[i].targets[target] for i in d.ids]) for split, d in splits.items()}


def train_tasks(
    tasks: list[str],
    features_index: str | Path,
    run_dir: str | Path,
    tracker,
    seed: int = 0,
    options: dict | None = None,
    resume: bool = False,
) -> dict:
    """Train every extra task (captioning, vqa, retrieval) and log each one's summary.

    ``options``: task -> keyword arguments of ``experiments.train_task`` (``epochs``, ``method``
    and the task's options, e.g. ``{"captioning": {"decoders": ["transformer"], "epochs": 12}}``).
    ``resume``: continue interrupted trainings from their per-epoch checkpoints (a task's own
    ``resume`` option wins)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(tasks))
    if unknown:
        raise ValueError(f"task_options names task(s) {unknown} that are not in tasks={list(tasks)}")
    out = {}
    for task in tasks:
        kw = options.get(task) or {}
        if not isinstance(kw, dict):
            raise TypeError(f"task_options[{task!r}] must be a dict of train_task options, got {kw!r}")
        summary = experiments.train_task(task, features_index, run_dir, seed=seed, **{"resume": bool(resume), **kw})
        tracker.summary({f"{task}/{k}": v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        out[task] = summary
    return out


def evaluate_task(task: str, features_index: str | Path, run_dir: str | Path, tracker, n_examples: int = 8):
    """Evaluate one extra task on the test split and log its metrics, tables and figures."""
    res = experiments.evaluate_task(task, features_index, run_dir, n_examples=n_examples)
    tracker.log_table(f"{task}_metrics", res.metrics)
    for key, table in res.tables.items():
        tracker.log_table(f"{task}_{key}", table, image_columns=["image"] if "image" in table.columns else [])
    for key, fig in res.figures.items():
        tracker.log_figure(f"{task}_{key}", fig)
    # the keys already start with the task's name ("vqa/best/accuracy")
    tracker.summary({k: v for k, v in res.summary.items() if isinstance(v, (int, float, str, bool))})
    return res
