"""What the notebooks call: one small function per thing a notebook shows or does, so that the
cells stay narrative + parameters + plots (docs/architecture.md, "Layers")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fusionkit.data import registry, shapes
from fusionkit.data.base import SPLITS, Dataset, DatasetError
from fusionkit.data.caption_formats import karpathy_images
from fusionkit.data.problems import Problems
from fusionkit.data.vqa import read_vqa_file, vqa_annotations, vqa_questions
from fusionkit.report import figures
from fusionkit.tasks import run
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
    dataset_dir = Path(dataset_dir)
    if dataset == "shapes":
        opts = dict(options or {})
        own = sorted(set(opts) & {"n", "image_size"})
        if own:
            raise DatasetError(f"shapes: dataset_options {own} are parameters of their own (n_scenes, image_size)")
        # registry.prepare refuses unknown options, listing the valid ones
        ds = registry.prepare("shapes", dataset_dir, seed=seed, progress=progress, n=n_scenes, image_size=image_size,
                              **opts)  # fmt: skip
        shapes.validate(dataset_dir)
        return ds
    if dataset not in registry.available():
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(registry.available())}")
    return registry.prepare(
        dataset, dataset_dir, source_dir=source_dir or None, seed=seed, progress=progress, **(options or {})
    )


def balance_table(ds: Dataset) -> pd.DataFrame:
    """Samples per (target, split, class) of the class targets (a regression target's numbers
    are summarised by ``Dataset.summary``'s ``values/<target>``)."""
    rows = []
    for t, classes in ds.targets.items():
        if not classes:
            continue
        for s in ds.samples:
            rows.append({"target": t, "split": s.split, "class": classes[s.targets[t]]})
    if not rows:
        return pd.DataFrame(columns=["target", "split", "class", "count"])
    df = pd.DataFrame(rows)
    return df.groupby(["target", "split", "class"]).size().rename("count").reset_index()


def captions_by_sample(ds: Dataset) -> dict[str, list[str]]:
    """Sample id -> its reference captions, when the dataset has a ``captions.json`` (read by the
    one Karpathy parser, :func:`fusionkit.data.caption_formats.karpathy_images`)."""
    path = ds.root / "captions.json"
    if not path.exists():
        return {}
    problems = Problems("raise")
    return {im.stem: [c for c, _ in im.sentences(problems) or []] for im in karpathy_images(path, problems)}


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
        ans = {x.question_id: x.raw for x in vqa_annotations(af, problems)}
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
def feature_stats(splits: dict[str, SplitData]) -> pd.DataFrame:
    """Per split and modality: samples, dimension, mean, std, mean norm, all finite."""
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


# ------------------------------------------------------------------------------ 04/05
def predictions_table(
    ds: Dataset,
    data: SplitData,
    logits: torch.Tensor,
    class_names: list[str],
    n: int = 16,
    weights: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Sample predictions (image path, text, truth, prediction, confidence, modality weights); a
    regression target (float labels): truth, prediction and its error in the target's units."""
    probs = None if data.regression else logits.softmax(1)
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
        if probs is None:
            truth, pred = float(data.labels[i]), float(logits.reshape(len(data), -1)[i, 0])
            row.update(truth=round(truth, 4), prediction=round(pred, 4), error=round(pred - truth, 4))
        else:
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


def train_tasks(
    tasks: list[str],
    features_index: str | Path,
    run_dir: str | Path,
    tracker,
    seed: int = 0,
    options: dict | None = None,
    resume: bool = False,
    workers: int = 0,
) -> dict:
    """Train every extra task (captioning, vqa, retrieval) and log each one's summary.

    ``options``: task -> keyword arguments of ``fusionkit.tasks.run.train_task`` (``epochs``, ``method``
    and the task's options, e.g. ``{"captioning": {"decoders": ["transformer"], "epochs": 12}}``).
    ``resume``: continue interrupted trainings from their per-epoch checkpoints (a task's own
    ``resume`` option wins). ``workers``: tasks trained at once, each in its own process
    (``fusionkit.tasks.run.train_tasks``; 0: as many as the cores allow, 1: one after another)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(tasks))
    if unknown:
        raise ValueError(f"task_options names task(s) {unknown} that are not in tasks={list(tasks)}")
    kws = {}
    for task in tasks:
        kw = options.get(task) or {}
        if not isinstance(kw, dict):
            raise TypeError(f"task_options[{task!r}] must be a dict of train_task options, got {kw!r}")
        kws[task] = {"resume": bool(resume), **kw}
    n = run.task_workers(len(tasks), workers)
    if n > 1:
        print(f"training {', '.join(tasks)}: {n} at a time, each in its own process")
    t0 = time.perf_counter()

    def done(task: str, summary: dict) -> None:
        if n > 1:
            print(f"  {task} done after {time.perf_counter() - t0:.0f} s", flush=True)
        tracker.summary({f"{task}/{k}": v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})

    return run.train_tasks(tasks, features_index, run_dir, seed=seed, options=kws, workers=workers, on_done=done)


def evaluate_task(task: str, features_index: str | Path, run_dir: str | Path, tracker, n_examples: int = 8):
    """Evaluate one extra task on the test split and log its metrics, tables and figures."""
    res = run.evaluate_task(task, features_index, run_dir, n_examples=n_examples)
    tracker.log_table(f"{task}_metrics", res.metrics)
    for key, table in res.tables.items():
        tracker.log_table(f"{task}_{key}", table, image_columns=["image"] if "image" in table.columns else [])
    for key, fig in figures.task_figures(res).items():
        tracker.log_figure(f"{task}_{key}", fig)
    # the keys already start with the task's name ("vqa/best/accuracy")
    tracker.summary({k: v for k, v in res.summary.items() if isinstance(v, (int, float, str, bool))})
    return res
