"""The feature index: the typed contract ``02_feature_extraction`` hands to 03, 04 and 05.

``features.json`` in a run folder says which dataset was encoded (folder, manifest hash, targets),
by which encoder per modality (name + identity hash of weights and preprocessing), where each
cached feature file is (per output and split) and, when the tasks ran in 02, what they cached
(``tasks``: written by :func:`fusionkit.tasks.features.extract_task_features`).

::

    index = FeatureIndex.read("reports/latest/features.json")
    splits, class_names = index.splits(target="label")      # {split: SplitData}
    ds = index.dataset()                                     # the fusionkit Dataset it indexes
    encoders = index.encoders()                              # the frozen encoders, identity-checked

The file carries ``format`` and ``version``. Version 1 is the layout fusionkit wrote before the
format was versioned (no ``version`` key): it is the same layout and still loads. A newer version
than this fusionkit knows is refused with a message that says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fusionkit.data.base import SPLITS, Dataset, DatasetError, atomic_write_text, load_dataset
from fusionkit.data.groups import Fold, loso_folds
from fusionkit.data.readers import read_json
from fusionkit.encoders import DEFAULTS as DEFAULT_ENCODERS
from fusionkit.encoders import build_encoder
from fusionkit.features import extract_features, read_feature_set
from fusionkit.train import SplitData

FORMAT = "fusionkit.feature_index"
VERSION = 2
#: the layout before versioning; same fields, no ``format`` / ``version``
LEGACY_VERSION = 1


class FeatureIndexError(DatasetError):
    """A feature index that cannot be read: the message names the file and the field."""


@dataclass
class ModalityFeatures:
    """One modality's cached features: its kind, the encoder that made them, and the files."""

    kind: str
    encoder: str
    identity: dict[str, Any]
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # output -> split -> path
    dims: dict[str, list[int]] = field(default_factory=dict)  # output -> feature shape per sample
    #: what the encoder learnt from the training split (tabular: statistics, vocabularies); JSON
    fitted: dict[str, Any] | None = None
    #: split -> the encoder's notes on it (tabular: categories unseen in training, missing values)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the encoder's constructor options (``encoder_options`` of 02, e.g. ``{"cmvn": true}``); {} = its defaults
    options: dict[str, Any] = field(default_factory=dict)

    def file(self, output: str, split: str, modality: str = "") -> str:
        try:
            return self.files[output][split]
        except KeyError:
            have = {o: sorted(s) for o, s in self.files.items()}
            raise FeatureIndexError(
                f"no cached {output!r} features of {modality or self.kind} for split {split!r}; the index has {have} "
                "(re-run 02_feature_extraction with that output)"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        doc = {"kind": self.kind, "encoder": self.encoder, "identity": self.identity, "files": self.files,
               "dims": self.dims}  # fmt: skip
        if self.fitted is not None:
            doc["fitted"] = self.fitted
        if self.notes:
            doc["notes"] = self.notes
        if self.options:
            doc["options"] = self.options
        return doc


@dataclass
class FeatureIndex:
    """What 02 cached, read back by every later notebook (see the module docstring)."""

    dataset_dir: str
    dataset: str
    manifest_hash: str
    cache_dir: str
    targets: dict[str, list[str]]
    modalities: dict[str, ModalityFeatures] = field(default_factory=dict)
    #: the tasks' cached features (``extract_task_features``); None when the tasks did not run
    tasks: dict[str, Any] | None = None
    #: the file it was read from or last written to
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        ds: Dataset,
        encoders: dict[str, str],
        cache_dir: str | os.PathLike,
        outputs: list[str],
        *,
        path: str | os.PathLike,
        batch_size: int = 0,
        progress: bool = True,
        options: dict[str, dict[str, Any]] | None = None,
        also: Mapping[str, Sequence[str]] | None = None,
    ) -> FeatureIndex:
        """Encode every modality x split x output of ``ds`` into the feature cache (``encoders``:
        kind -> encoder name; kinds without one are left out, except tabular, which needs no
        weights and gets its default; ``options``: kind -> the encoder's constructor options, e.g.
        ``{"audio": {"cmvn": True, "segments": 4}}``), write the index to ``path`` (the file later
        notebooks take as ``features_index``) and return it. An encoder that is fitted (tabular) is
        fitted on the training split; its state goes into the index entry (``fitted``).

        ``also``: kind -> further outputs computed in the same pass of the encoder and left in the
        cache, not in this index - the image grids the tasks read next
        (:func:`fusionkit.tasks.features.shared_outputs`), so the images are encoded once."""
        index = cls(
            dataset_dir=str(Path(ds.root).resolve()),
            dataset=ds.name,
            manifest_hash=ds.manifest_hash(),
            cache_dir=str(Path(cache_dir).resolve()),
            targets=ds.targets,
        )
        for modality, kind in sorted(ds.modalities.items()):
            name = encoders.get(kind) or (DEFAULT_ENCODERS[kind] if kind == "tabular" else None)
            if not name:
                continue
            opts = dict((options or {}).get(kind) or {})
            try:
                enc = build_encoder(kind, name, **opts)
            except TypeError as e:
                raise ValueError(f"{kind} encoder {name!r}: options {opts} refused ({e})") from None
            if enc.needs_fit:
                enc.fit_dataset(ds, modality)
            entry = ModalityFeatures(kind=kind, encoder=enc.name, identity=enc.identity(), fitted=enc.fitted(),
                                     options=opts)  # fmt: skip
            extra = [o for o in (also or {}).get(kind, ()) if o not in outputs]
            for split in SPLITS:
                if not ds.split(split):
                    continue
                for n, output in enumerate(outputs):  # the first computes the rest in its pass; they read the cache
                    fs = extract_features(ds, modality, enc, split=split, cache_dir=cache_dir, output=output,
                                          also=[*outputs[1:], *extra] if n == 0 else (),
                                          batch_size=batch_size or None, progress=progress)  # fmt: skip
                    entry.files.setdefault(output, {})[split] = str(Path(fs.path).resolve())
                    entry.dims[output] = list(fs.values.shape[1:])
                    if fs.meta.get("notes"):
                        entry.notes[split] = fs.meta["notes"]
            index.modalities[modality] = entry
        index.write(path)
        return index

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def read(cls, path: str | os.PathLike) -> FeatureIndex:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"feature index {p} does not exist; run 02_feature_extraction first")
        index = cls.from_dict(read_json(p, error=FeatureIndexError), source=p)
        index.path = p
        return index

    @classmethod
    def from_dict(cls, doc: Any, source: str | os.PathLike = "feature index") -> FeatureIndex:
        src = str(source)
        if not isinstance(doc, dict):
            raise FeatureIndexError(f"{src}: expected a JSON object, got {type(doc).__name__}")
        fmt = doc.get("format", FORMAT)
        if fmt != FORMAT:
            raise FeatureIndexError(f"{src}: format {fmt!r} is not a fusionkit feature index ({FORMAT!r})")
        version = doc.get("version", LEGACY_VERSION)
        if not isinstance(version, int) or version < LEGACY_VERSION:
            raise FeatureIndexError(f"{src}: version {version!r}; expected an integer >= {LEGACY_VERSION}")
        if version > VERSION:
            raise FeatureIndexError(
                f"{src}: made by a newer fusionkit (feature index version {version}; this fusionkit reads up to "
                f"{VERSION}); upgrade fusionkit or re-run 02_feature_extraction"
            )
        for key in ("dataset_dir", "dataset", "cache_dir", "targets", "modalities"):
            if key not in doc:
                raise FeatureIndexError(f"{src}: field {key!r} missing; re-run 02_feature_extraction")
        mods = {}
        for name, entry in doc["modalities"].items():
            try:
                mods[name] = ModalityFeatures(entry["kind"], entry["encoder"], entry.get("identity", {}),
                                              entry.get("files", {}), entry.get("dims", {}), entry.get("fitted"),
                                              entry.get("notes", {}), dict(entry.get("options") or {}))  # fmt: skip
            except (KeyError, TypeError) as e:
                raise FeatureIndexError(f"{src}: modalities.{name}: missing or malformed field {e}") from None
        tasks = doc.get("tasks")
        if tasks is not None and not isinstance(tasks, dict):
            raise FeatureIndexError(f"{src}: field 'tasks' must be an object")
        return cls(
            dataset_dir=str(doc["dataset_dir"]),
            dataset=str(doc["dataset"]),
            manifest_hash=str(doc.get("manifest_hash") or ""),
            cache_dir=str(doc["cache_dir"]),
            targets={k: list(v) for k, v in doc["targets"].items()},
            modalities=mods,
            tasks=tasks,
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "dataset_dir": self.dataset_dir,
            "dataset": self.dataset,
            "manifest_hash": self.manifest_hash,
            "cache_dir": self.cache_dir,
            "targets": self.targets,
            "modalities": {m: e.to_dict() for m, e in self.modalities.items()},
        }
        if self.tasks is not None:
            doc["tasks"] = self.tasks
        return doc

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write atomically (temporary file, then rename) to ``path`` (default: where it was read)."""
        p = Path(path) if path is not None else self.path
        if p is None:
            raise ValueError("FeatureIndex.write: no path given and the index was not read from a file")
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        self.path = p
        return p

    # ------------------------------------------------------------------ what later notebooks need
    def load_dataset(self, check_files: bool = False) -> Dataset:
        """The dataset these features were computed from."""
        return load_dataset(self.dataset_dir, check_files=check_files)

    def modality(self, name: str) -> ModalityFeatures:
        if name not in self.modalities:
            raise FeatureIndexError(
                f"{self.path or 'feature index'}: no features for modality {name!r}; it has {sorted(self.modalities)}"
            )
        return self.modalities[name]

    def by_target(
        self, targets: list[str], output: str = "pooled", modalities: list[str] | None = None
    ) -> dict[str, tuple[dict[str, SplitData], int]]:
        """:meth:`splits` for each of ``targets``: target -> (splits, number of classes; 0 for a
        regression target), what :func:`fusionkit.compare.across_targets` takes."""
        out = {}
        for t in targets:
            splits, names = self.splits(target=t, output=output, modalities=modalities)
            out[t] = (splits, len(names))
        return out

    def with_encoder(
        self,
        modality: str,
        encoder: str,
        options: dict[str, Any] | None = None,
        outputs: tuple[str, ...] = ("pooled",),
        progress: bool = False,
    ) -> FeatureIndex:
        """A copy of this index (not written) whose ``modality`` comes from another ``encoder``
        (with ``options``), extracted into the same cache - e.g. the ``mfcc`` features the MFCC +
        logistic-regression audio anchor needs next to a learned encoder's."""
        entry = self.modality(modality)
        ds = self.load_dataset()
        enc = build_encoder(entry.kind, encoder, **(options or {}))
        new = ModalityFeatures(kind=entry.kind, encoder=enc.name, identity=enc.identity(), options=dict(options or {}))
        for output in outputs:
            for split in SPLITS:
                if ds.split(split):
                    fs = extract_features(ds, modality, enc, split=split, cache_dir=self.cache_dir, output=output,
                                          progress=progress)  # fmt: skip
                    new.files.setdefault(output, {})[split] = str(Path(fs.path).resolve())
                    new.dims[output] = list(fs.values.shape[1:])
        return replace(self, modalities={**self.modalities, modality: new}, path=None)

    def anchors_by_fold(
        self, anchors: dict[str, dict[str, Any]], target: str
    ) -> dict[str, dict[str, tuple[dict[str, SplitData], str]]]:
        """The folds of the linear anchors :func:`fusionkit.compare.across_folds` takes:
        ``anchors`` is modality -> {"encoder": name, "options": {...}} (modalities this index lacks
        are left out); each becomes ``<modality>_<encoder>_lr`` -> fold -> (splits, modality)."""
        out = {}
        for m, spec in anchors.items():
            if m not in self.modalities:
                continue
            other = self.with_encoder(m, spec["encoder"], spec.get("options"))
            folds, _ = other.by_fold(target, modalities=[m])
            out[f"{m}_{spec['encoder']}_lr"] = {f: (splits, m) for f, (splits, _) in folds.items()}
        return out

    def by_fold(
        self, target: str, output: str = "pooled", modalities: list[str] | None = None
    ) -> tuple[dict[str, tuple[dict[str, SplitData], int]], list[Fold]]:
        """The leave-one-group-out protocol (:func:`fusionkit.data.groups.loso_folds`) on the
        dataset's groups (its speakers, patients, sites): every split's cached features pooled and
        re-split per fold - fold name -> (splits, number of classes), what
        :func:`fusionkit.compare.across_folds` takes - and the folds. DatasetError when the
        dataset has no groups or fewer than 3."""
        splits, names = self.splits(target=target, output=output, modalities=modalities)
        ds = self.load_dataset()
        group_of = ds.groups()
        where = f"{self.dataset_dir} (dataset {self.dataset})"
        if not group_of:
            raise DatasetError(
                f"{where}: no sample has a group; the leave-one-group-out protocol needs one per sample (a 'group' "
                "column in a manifest; avdigits: speaker-disjoint splits, split='speaker', val_split='speaker')"
            )
        pool = SplitData.concat([splits[sp] for sp in SPLITS if sp in splits])
        ungrouped = [i for i in pool.ids if i not in group_of]
        if ungrouped:
            raise DatasetError(f"{where}: {len(ungrouped)} sample(s) without a group (e.g. {ungrouped[:3]})")
        groups = [group_of[i] for i in pool.ids]
        folds = loso_folds(groups, where=where)
        return fold_splits(pool, groups, folds, len(names)), folds

    def splits(
        self, target: str = "label", output: str = "pooled", modalities: list[str] | None = None
    ) -> tuple[dict[str, SplitData], list[str]]:
        """The cached features of every split as :class:`SplitData`, aligned with the dataset's
        labels of ``target``; returns (splits, class names). A regression target
        (:func:`fusionkit.data.base.target_kind`) has no class names and float labels in its units."""
        ds = self.load_dataset()
        if target not in ds.targets:
            raise KeyError(f"target {target!r} not in dataset {ds.name}; valid: {', '.join(ds.targets)}")
        mods = modalities or sorted(self.modalities)
        out: dict[str, SplitData] = {}
        for split in SPLITS:
            samples = ds.split(split)
            if not samples:
                continue
            labels = _labels([s.targets[target] for s in samples], ds.targets[target])
            ids = [s.id for s in samples]
            feats = {}
            for m in mods:
                fs = read_feature_set(self.modality(m).file(output, split, m))
                pos = {sid: i for i, sid in enumerate(fs.ids)}
                missing = [sid for sid in ids if sid not in pos]
                if missing:
                    raise ValueError(f"{fs.path}: features missing for {len(missing)} samples (e.g. {missing[:3]})")
                feats[m] = torch.as_tensor(fs.values[[pos[sid] for sid in ids]]).float()
            out[split] = SplitData(feats, labels, ids)
        return out, ds.targets[target]

    def labels(self, splits: dict[str, SplitData], target: str) -> dict[str, torch.Tensor]:
        """The labels of another ``target`` of the dataset, aligned with ``splits``' samples."""
        ds = self.load_dataset()
        if target not in ds.targets:
            raise KeyError(f"target {target!r} not in dataset {ds.name}; valid: {', '.join(ds.targets)}")
        by_id = {s.id: s for s in ds.samples}
        classes = ds.targets[target]
        return {split: _labels([by_id[i].targets[target] for i in d.ids], classes) for split, d in splits.items()}

    def encoders(self) -> dict[str, Any]:
        """The frozen encoders that made the cached features, checked to be the same (identity
        hash of weights and preprocessing), so that re-encoded inputs are comparable to the cache."""
        out = {}
        for modality, entry in self.modalities.items():
            enc = build_encoder(entry.kind, entry.encoder, **entry.options)
            if entry.fitted is not None:
                enc.load_fitted(entry.fitted)
            if not enc.matches(entry.identity):
                raise FeatureIndexError(
                    f"{self.path or 'feature index'}: encoder {entry.encoder!r} for {modality!r} differs from the one "
                    "that made the cache (weights or preprocessing); re-run 02_feature_extraction"
                )
            out[modality] = enc.eval()
        return out


def _labels(values: list, classes: list[str]) -> torch.Tensor:
    """Class indices (int64), or a regression target's numbers (float32: ``SplitData.regression``)."""
    return torch.tensor(values, dtype=torch.int64 if classes else torch.float32)


def fold_splits(
    pool: SplitData, groups: list[str], folds: list[Fold], num_classes: int
) -> dict[str, tuple[dict[str, SplitData], int]]:
    """Fold name -> (its train / val / test splits of ``pool``, ``num_classes``): each sample goes
    to the split its group (``groups``, aligned with ``pool``) has in the fold."""
    out = {}
    for fold in folds:
        rows: dict[str, list[int]] = {sp: [] for sp in SPLITS}
        for i, g in enumerate(groups):
            rows[fold.split_of(g)].append(i)
        out[fold.name] = ({sp: pool.take(r) for sp, r in rows.items()}, num_classes)
    return out
