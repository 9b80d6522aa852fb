"""W&B lineage: what each notebook logs as an Artifact, so that W&B's lineage graph reads
data -> features -> model -> evaluation (the W&B calls are :mod:`fusionkit.tracking`'s).

=============  ===========================  ==================================================
notebook       uses                         produces
=============  ===========================  ==================================================
01_data_prep                                ``dataset-<name>`` (type ``dataset``)
02_features    ``dataset-<name>``           ``features-<name>`` (type ``features``)
04_train       ``features-<name>``          ``model-<name>`` (type ``model``)
05_evaluate    ``model-<name>``,
               ``features-<name>``
=============  ===========================  ==================================================

Every artifact is aliased with the chain's run id (the trackers' ``group``), so a notebook uses
the one its own chain produced (``dataset-shapes:<run id>``); ``latest`` is the last produced.

* **dataset**: ``dataset.json`` and ``manifest.jsonl`` (and the small JSON files beside them:
  captions, annotations' index, the preparation report), metadata: manifest hash, samples,
  modalities, targets, where the media are; the media files themselves are not copied.
* **features**: ``features.json`` (the feature index: encoders, identities, fitted state) and each
  cached feature file as a checksummed reference (a cache entry is large and can be recomputed).
* **model**: the run's exported bundle (``fusionkit export``, :mod:`fusionkit.bundle` version 2:
  what ``fusionkit predict wandb:ENTITY/PROJECT/model-<name>:ALIAS`` downloads and runs) and each
  task's bundles from 04 (under ``tasks/``), metadata: fusion method, target, classes, what it reached.

Offline, consumption is recorded for :func:`fusionkit.tracking.link_inputs` (see there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fusionkit.data.base import Dataset
from fusionkit.index import FeatureIndex
from fusionkit.tracking import Tracker

#: small files of a dataset folder that travel in its artifact (beside dataset.json + manifest.jsonl)
DATASET_FILES = ("dataset.json", "manifest.jsonl", "captions.json", "report.json", "skipped.json")


def dataset_name(name: str) -> str:
    return f"dataset-{name}"


def features_name(name: str) -> str:
    return f"features-{name}"


def model_name(name: str) -> str:
    return f"model-{name}"


def _ref(tracker: Tracker, name: str) -> str:
    from fusionkit.tracking import artifact_name

    return f"{artifact_name(name)}:{artifact_name(tracker.group)}"


# ---------------------------------------------------------------------------- produced
def log_dataset(tracker: Tracker, ds: Dataset) -> str:
    """01: the prepared dataset as a ``dataset`` artifact."""
    root = Path(ds.root)
    files = [root / f for f in DATASET_FILES if (root / f).is_file()]
    meta = {"name": ds.name, "manifest_hash": ds.manifest_hash(), "samples": len(ds), "modalities": ds.modalities,
            "targets": sorted(ds.targets), "root": str(root), "media_root": str(ds.media_root)}  # fmt: skip
    return tracker.log_artifact(dataset_name(ds.name), "dataset", files=files, metadata=meta)


def feature_files(index: FeatureIndex) -> list[Path]:
    """The cached feature files an index points at (absolute)."""
    base = Path(index.cache_dir)
    out = []
    for e in index.modalities.values():
        for by_split in e.files.values():
            for f in by_split.values():
                p = Path(f)
                out.append(p if p.is_absolute() else base / p)
    return sorted(set(out))


def log_features(tracker: Tracker, index: FeatureIndex) -> str:
    """02: the feature cache entry as a ``features`` artifact (the index, its files referenced)."""
    if index.path is None:
        raise ValueError("the feature index has no file yet; write it first (FeatureIndex.write)")
    meta = {"dataset": index.dataset, "manifest_hash": index.manifest_hash, "cache_dir": str(index.cache_dir),
            "encoders": {m: {"encoder": e.encoder, "identity": e.identity, "dims": e.dims}
                         for m, e in index.modalities.items()}}  # fmt: skip
    base = Path(index.cache_dir).resolve()
    refs = [(f.resolve().relative_to(base).as_posix() if f.resolve().is_relative_to(base) else f.name, f)
            for f in feature_files(index) if f.is_file()]  # fmt: skip
    return tracker.log_artifact(features_name(index.dataset), "features", files=[("features.json", index.path)],
                                references=refs, metadata=meta)  # fmt: skip


def log_model(tracker: Tracker, bundle_dir: str | os.PathLike, dataset: str, run_dir: str | os.PathLike | None = None,
              tasks: list[str] = (), metadata: dict[str, Any] | None = None) -> str:  # fmt: skip
    """04: the exported bundle in ``bundle_dir`` (``fusionkit export``: what ``fusionkit predict``
    runs) and each task's bundles under ``run_dir/<task>`` as a ``model`` artifact."""
    folder = Path(bundle_dir)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors; export the run's model first (fusionkit export)")
    files = [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]
    base = Path(run_dir or folder.parent)
    for task in tasks:
        found = sorted(p for p in (base / task).rglob("*") if p.suffix in (".safetensors", ".json") and p.is_file())
        files += [(f"tasks/{p.relative_to(base).as_posix()}", p) for p in found]
    return tracker.log_artifact(model_name(dataset), "model", files=files, metadata=metadata or {})


# ---------------------------------------------------------------------------- used
def use_dataset(tracker: Tracker, ds: Dataset) -> str:
    ref = _ref(tracker, dataset_name(ds.name))
    tracker.use_artifact(ref, "dataset")
    return ref


def use_features(tracker: Tracker, index: FeatureIndex) -> str:
    ref = _ref(tracker, features_name(index.dataset))
    tracker.use_artifact(ref, "features")
    return ref


def use_model(tracker: Tracker, dataset: str) -> str:
    ref = _ref(tracker, model_name(dataset))
    tracker.use_artifact(ref, "model")
    return ref


__all__ = ["log_dataset", "log_features", "log_model", "use_dataset", "use_features", "use_model"]
