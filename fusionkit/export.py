"""``fusionkit export RUN --out DIR``: a run's trained model as a bundle that runs on new raw files
without the run folder, the notebooks or the training data.

The bundle is the format of :mod:`fusionkit.bundle` (version 2): 04's classifier (or regressor)
``model.safetensors`` + ``model.json``, now with every modality's encoder (registry name,
options, identity, the fitted state of a tabular encoder, where its weights are), what it was
trained on and what it reached (04's and 05's summaries from the run's ``metrics.jsonl``). An
encoder without pretrained files (a random-init or trained audio CNN) travels inside
(``encoders.safetensors``); ``standalone`` also carries the pretrained ones (image encoders'
state dicts, a copy of the text encoder's Hugging Face folder), so the bundle runs on a machine
that has only fusionkit. :func:`export_onnx` writes the fusion model + head as ONNX.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle
from fusionkit.bundle import BundleError, ClassifierSpec, load_classifier, save_classifier
from fusionkit.data.base import target_kind
from fusionkit.index import FeatureIndex
from fusionkit.tracking import read_mirror

TASKS = ("classification",)  # regression: a classification bundle with num_classes 0
NOT_EXPORTED = {
    "captioning": "captioning bundles are not exported yet (fusionkit predict runs classifiers and regressors)",
    "vqa": "VQA bundles are not exported yet (fusionkit predict runs classifiers and regressors)",
    "retrieval": "retrieval bundles are not exported yet (fusionkit predict runs classifiers and regressors)",
}
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
) -> Path:
    """Write the bundle of ``run``'s trained model to the folder ``out`` (``model.safetensors``,
    ``model.json``, the encoders' weights where they travel); returns ``out/model.safetensors``.
    ``checkpoint`` / ``features_index``: 04's model and 02's index (default: in ``run``)."""
    if task in NOT_EXPORTED:
        raise BundleError(f"--task {task}: {NOT_EXPORTED[task]}")
    if task not in TASKS:
        raise BundleError(f"--task {task!r}; expected one of {TASKS + tuple(NOT_EXPORTED)}")
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
    bundle.save_encoders(out, {m: encoders[m] for m in entries}, entries)
    return save_classifier(out / "model.safetensors", model, full)


# ---------------------------------------------------------------------------- ONNX
class _Exportable(torch.nn.Module):
    """The fusion model + head with tensors in and out (ONNX takes no dicts): features and masks
    in sorted modality order -> (logits or predictions, per-modality weights if any)."""

    def __init__(self, model: torch.nn.Module, modalities: list[str]) -> None:
        super().__init__()
        self.model, self.modalities = model, modalities

    def forward(self, *xs: torch.Tensor):
        n = len(self.modalities)
        feats = dict(zip(self.modalities, xs[:n], strict=True))
        mask = dict(zip(self.modalities, xs[n:], strict=True))
        out = self.model(feats, mask)
        if out.weights is None:
            return (out.logits,)
        return (out.logits, *(out.weights[m] for m in self.modalities))


def export_onnx(bundle_path: str | os.PathLike, out: str | os.PathLike, opset: int = 17) -> dict[str, Any]:
    """Write the bundle's fusion model + head as ONNX (``out``) and check it with onnxruntime
    against PyTorch on random features with random masks; returns {"path", "max_abs_diff",
    "outputs"}. BundleError naming the method when it does not export."""
    import numpy as np

    model, spec = load_classifier(bundle_path)
    mods = sorted(spec.in_dims)
    wrapped = _Exportable(model, mods).eval()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(8, spec.in_dims[m], generator=g) for m in mods]
    masks = [torch.ones(8) for _ in mods]
    if len(mods) > 1:
        masks[0][::3] = 0.0  # some samples without their first modality
    args = (*feats, *masks)
    with torch.no_grad():
        ref = wrapped(*args)
    names_in = [f"x_{m}" for m in mods] + [f"mask_{m}" for m in mods]
    names_out = ["output"] + ([f"weight_{m}" for m in mods] if len(ref) > 1 else [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(wrapped, args, str(out), input_names=names_in, output_names=names_out, opset_version=opset,
                          dynamic_axes={n: {0: "batch"} for n in names_in + names_out}, dynamo=False)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any exporter failure: the method does not export
        raise BundleError(f"fusion method {spec.fusion!r} does not export to ONNX ({type(e).__name__}: {e})") from e
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(names_in, args, strict=True)})
    diff = max(float(np.abs(g_ - r.numpy()).max()) for g_, r in zip(got, ref, strict=True))
    return {"path": str(out), "max_abs_diff": diff, "outputs": names_out, "fusion": spec.fusion}


__all__ = ["ClassifierSpec", "export_onnx", "export_run", "run_metrics"]
