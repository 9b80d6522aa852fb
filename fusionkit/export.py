"""``fusionkit export RUN --out DIR``: a run's trained model as a bundle that runs on new raw files
without the run folder, the notebooks or the training data.

The bundle is the format of :mod:`fusionkit.bundle` (version 2): 04's classifier (or regressor)
``model.safetensors`` + ``model.json``, now with every modality's encoder (registry name,
options, identity, the fitted state of a tabular encoder, where its weights are), what it was
trained on and what it reached (04's and 05's summaries from the run's ``metrics.jsonl``). An
encoder without pretrained files (a random-init or trained audio CNN) travels inside
(``encoders.safetensors``); ``standalone`` also carries the pretrained ones (image encoders'
state dicts, a copy of the text encoder's Hugging Face folder), so the bundle runs on a machine
that has only fusionkit.

``--task captioning|vqa|retrieval``: one of the run's task models on the same format
(:mod:`fusionkit.tasks.bundles`).

``fmt="onnx"`` (``--format onnx``) also writes the fusion model + head and the image encoder as
ONNX graphs beside the bundle, checked against PyTorch (:mod:`fusionkit.onnx_export`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from fusionkit import bundle, onnx_export
from fusionkit.bundle import BundleError, load_classifier, save_classifier
from fusionkit.data.base import target_kind
from fusionkit.index import FeatureIndex
from fusionkit.tracking import read_mirror

#: regression: a classification bundle with num_classes 0; the other tasks: :mod:`fusionkit.tasks.bundles`
TASKS = ("classification", "captioning", "vqa", "retrieval")
FORMATS = ("bundle", "onnx")
#: the run's notebooks whose summaries a bundle keeps as the metrics it reached
_SUMMARIES = ("04_train", "05_evaluate")


def run_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The scalar numbers of 04's and 05's summaries in the run's ``metrics.jsonl``."""
    out: dict[str, Any] = {}
    for rec in read_mirror(run_dir):
        if rec.get("kind") == "summary" and rec.get("run") in _SUMMARIES:
            out.update({k: v for k, v in (rec.get("data") or {}).items() if isinstance(v, int | float | str | bool)})
    return out


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str = "classification",
    standalone: bool = False,
    checkpoint: str | os.PathLike | None = None,
    features_index: str | os.PathLike | None = None,
    fmt: str = "bundle",
    model: str | None = None,
) -> Path:
    """Write the bundle of ``run``'s trained model to the folder ``out`` (``model.safetensors``,
    ``model.json``, the encoders' weights where they travel); returns ``out/model.safetensors``.
    ``checkpoint`` / ``features_index``: 04's model and 02's index (default: in ``run``).
    ``fmt="onnx"``: the ONNX graphs too, checked on the run's test split (:func:`onnx_graphs`).
    ``task`` captioning / vqa / retrieval: the run's trained task model instead
    (:func:`fusionkit.tasks.bundles.export_task`; ``model``: which, default the best on validation)."""
    if fmt not in FORMATS:
        raise BundleError(f"--format {fmt!r}; expected one of {FORMATS}")
    if task not in TASKS:
        raise BundleError(f"--task {task!r}; expected one of {TASKS}")
    if task != "classification":
        if fmt != "bundle":
            raise BundleError(f"--format {fmt}: ONNX graphs are exported for classification / regression models only")
        from fusionkit.tasks.bundles import export_task

        return export_task(run, out, task, standalone=standalone, features_index=features_index, model=model,
                           metrics=run_metrics(run))  # fmt: skip
    run = Path(run)
    ckpt = Path(checkpoint) if checkpoint else run / "model.safetensors"
    index_path = Path(features_index) if features_index else run / "features.json"
    model, spec = load_classifier(ckpt)
    try:
        index = FeatureIndex.read(index_path)
    except FileNotFoundError as e:
        raise BundleError(f"{run}: {e}") from e
    encoders = index.encoders()  # identity-checked: the encoders that made the training features
    entries = {}
    for m in sorted(spec.in_dims):
        if m not in index.modalities:
            raise BundleError(f"{index_path}: the model takes modality {m!r}, the feature index has none")
        e = index.modalities[m]
        enc = encoders[m]
        entries[m] = bundle.encoder_entry(enc, e.kind, e.encoder, e.options, e.fitted, "pooled",
                                          bundle.weights_mode(enc, standalone))  # fmt: skip
    dataset = {"name": index.dataset, "manifest_hash": index.manifest_hash, "target": spec.target,
               "target_kind": target_kind(index.targets.get(spec.target, spec.class_names)),
               "targets": sorted(index.targets), "modalities": {m: e.kind for m, e in index.modalities.items()}}  # fmt: skip
    if model.regression:
        dataset["target_scale"] = {"mean": float(model.head.mean), "std": float(model.head.std)}
    full = replace(spec, encoders=entries, dataset=dataset, metrics=run_metrics(run))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":  # first: a graph that does not export leaves no bundle claiming it
        onnx_graphs(out, model, full, index, encoders)
    bundle.save_encoders(out, {m: encoders[m] for m in entries}, entries)
    return save_classifier(out / "model.safetensors", model, full)


def export_tasks(run: str | os.PathLike, bundle_dir: str | os.PathLike, tasks: list[str], *,
                 features_index: str | os.PathLike | None = None) -> dict[str, Path]:  # fmt: skip
    """04's task bundles: each task's model best on validation in ``bundle_dir/<task>/`` and, where
    the run fine-tuned encoders for it, its fine-tuned copy best on validation in
    ``bundle_dir/<task>_finetuned/``; name -> ``model.safetensors``."""
    from fusionkit.tasks.bundles import best_finetuned

    out = {}
    for task in tasks:
        out[task] = export_run(run, Path(bundle_dir) / task, task=task, features_index=features_index)
        tuned = best_finetuned(task, Path(run) / task)
        if tuned:
            out[f"{task}_finetuned"] = export_run(run, Path(bundle_dir) / f"{task}_finetuned", task=task,
                                                  features_index=features_index, model=tuned)  # fmt: skip
    return out


def onnx_graphs(out: Path, model, spec, index: FeatureIndex, encoders: dict) -> Path:
    """The ONNX graphs of ``model`` and its image encoders in ``out``, checked on the run's cached
    test features and the test split's images (:func:`fusionkit.onnx_export.export_onnx`)."""
    try:
        splits, _ = index.splits(target=spec.target, modalities=sorted(spec.in_dims))
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(
            f"{index.path}: the cached features the ONNX graphs are checked on cannot be read ({e})"
        ) from e
    test = splits.get("test") or splits.get("val") or splits["train"]
    kinds = {m: index.modalities[m].kind for m in spec.in_dims}
    images = {}
    if "image" in kinds.values():
        ds = index.load_dataset()
        root = Path(getattr(ds, "media_root", None) or ds.root)
        samples = ds.split("test") or ds.samples
        images = {m: ([s.modalities.get(m) for s in samples if s.modalities.get(m)], root)
                  for m, k in kinds.items() if k == "image"}  # fmt: skip
    return onnx_export.export_onnx(out, model, spec, encoders, kinds, test, images)


__all__ = ["FORMATS", "TASKS", "export_run", "export_tasks", "onnx_graphs", "run_metrics"]
