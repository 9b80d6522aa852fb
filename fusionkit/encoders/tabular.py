"""The tabular encoder: a tabular modality's record (``{column: value}``, the columns and their
types in ``dataset.json``'s ``tabular``, :mod:`fusionkit.data.manifest`) -> one feature vector.

Fitted on the training split only (:meth:`TabularEncoder.fit`), then the same for every split:

* a numeric column -> one value, standardised with the training split's mean and standard
  deviation (a constant column: deviation 1);
* a categorical column -> a one-hot block over the training split's categories plus one
  ``unknown`` slot: a category the training split never had maps there, and is counted
  (:meth:`TabularEncoder.split_notes`, written in the cache's sidecar and the feature index). The
  model's projector (a Linear on this block) learns each category's embedding;
* a column declared as allowed to be missing -> one more value, 1 where present, 0 where missing
  (a missing number is imputed with the training mean, i.e. 0 once standardised; a missing
  category is an all-zero block);
* two constant values, 1 and -1, last: every projector starts with a LayerNorm over the feature
  vector, which would otherwise discard the row's mean and spread (two of a few dimensions); with
  two known constants in the row, LayerNorm's output still determines every value.

The fitted statistics and vocabularies are plain JSON (:meth:`fitted`; never pickled), saved with
the features (``fitted.json`` in the cache entry's folder, and the sidecars) and in the feature
index; :meth:`load_fitted` restores them (the model bundle will carry them). The fit is part of
the encoder's identity, so features made with other statistics never share a cache entry.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections import Counter
from typing import Any

import torch

from fusionkit.encoders.base import Encoder, InputError

FORMAT = "fusionkit.tabular_encoder"
VERSION = 1
UNKNOWN = "<unknown>"


class TabularEncoder(Encoder):
    kind = "tabular"
    name = "onehot"
    unit = "record"
    #: records are encoded in the main process (nothing to decode; the counts stay exact)
    perf = {
        "cpu": {"batch_size": 512, "channels_last": False, "num_workers": 0},
        "cuda": {"batch_size": 512, "channels_last": False, "num_workers": 0},
    }
    needs_fit = True

    def __init__(self) -> None:
        super().__init__()
        self._state: dict[str, Any] | None = None
        self._finish_init()

    # ---------------------------------------------------------------- fitting
    @property
    def is_fitted(self) -> bool:
        return self._state is not None

    def fit(self, records: list[dict[str, Any]], columns: dict[str, dict[str, Any]], where: str = "train split"):
        """Statistics of each numeric column and categories of each categorical one, from
        ``records`` (the training split's; ``columns``: ``dataset.json``'s ``tabular`` entry)."""
        if not columns:
            raise ValueError(f"{where}: a tabular modality needs at least one column")
        if not records:
            raise ValueError(f"{where}: no records to fit the tabular encoder on")
        state: dict[str, Any] = {"format": FORMAT, "version": VERSION, "columns": {}}
        for c, spec in columns.items():
            present = [r.get(c) for r in records if r.get(c) is not None]
            if not present:
                raise ValueError(f"{where}: tabular column {c!r} is missing from every record")
            entry: dict[str, Any] = {"type": spec["type"], "missing": bool(spec.get("missing"))}
            if spec["type"] == "numeric":
                values = [float(v) for v in present]
                mean = math.fsum(values) / len(values)
                std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
                entry.update(mean=mean, std=std if std > 0 else 1.0)
            else:
                entry["categories"] = sorted({str(v) for v in present})
            state["columns"][c] = entry
        self.load_fitted(state)
        return self

    def fit_dataset(self, dataset, modality: str) -> TabularEncoder:
        """:meth:`fit` on ``dataset``'s training split of ``modality``."""
        records = [s.modalities[modality] for s in dataset.split("train")]
        return self.fit(records, dataset.tabular.get(modality, {}), where=f"{dataset.root}: {modality!r} train split")

    def fitted(self) -> dict[str, Any] | None:
        """The fitted statistics and vocabularies (JSON-able), or None before :meth:`fit`."""
        return json.loads(json.dumps(self._state)) if self._state is not None else None

    def load_fitted(self, state: dict[str, Any]) -> TabularEncoder:
        """Use statistics written by :meth:`fitted` (e.g. read back from ``fitted.json``)."""
        if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("columns"), dict):
            raise ValueError(f"not a fitted tabular encoder state ({FORMAT!r} with 'columns')")
        if state.get("version", 0) > VERSION:
            raise ValueError(f"fitted tabular state version {state.get('version')}; this fusionkit reads {VERSION}")
        self._state = state
        self._dims = {"pooled": self.width(), "grid": self.width()}
        return self

    def width(self) -> int:
        cols = self._columns()
        return sum(self._block(e) + int(e["missing"]) for e in cols.values()) + 2

    @staticmethod
    def _block(entry: dict[str, Any]) -> int:
        return 1 if entry["type"] == "numeric" else len(entry["categories"]) + 1

    def _columns(self) -> dict[str, dict[str, Any]]:
        if self._state is None:
            raise InputError("the tabular encoder is not fitted (fit it on the training split, or load_fitted)")
        return self._state["columns"]

    def layout(self) -> list[str]:
        """The name of each feature: ``col``, ``col=category``, ``col=<unknown>``, ``col:present``."""
        names = []
        for c, e in self._columns().items():
            names += [c] if e["type"] == "numeric" else [f"{c}={v}" for v in e["categories"]] + [f"{c}={UNKNOWN}"]
            if e["missing"]:
                names.append(f"{c}:present")
        return [*names, "const:+1", "const:-1"]

    def preprocessing(self) -> dict[str, Any]:
        blob = json.dumps(self._state, sort_keys=True).encode() if self._state is not None else b""
        return {"fitted_sha256": hashlib.sha256(blob).hexdigest()[:16] if blob else None}

    # ---------------------------------------------------------------- encoding
    def load(self, value: Any, root: str | os.PathLike | None = None) -> torch.Tensor:
        cols = self._columns()
        if not isinstance(value, dict):
            raise InputError(f"expected a tabular record (an object column -> value), got {value!r}")
        absent = [c for c in cols if c not in value]
        if absent:
            raise InputError(f"record lacks tabular column(s) {absent}; expected {list(cols)}")
        out: list[float] = []
        for c, e in cols.items():
            v = value[c]
            if v is None and not e["missing"]:
                raise InputError(f"tabular column {c!r} is missing; it was not declared as allowed to be missing")
            if e["type"] == "numeric":
                if v is None:
                    out.append(0.0)  # the training mean, standardised
                else:
                    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                        raise InputError(f"tabular column {c!r} = {v!r}; expected a finite number")
                    out.append((float(v) - e["mean"]) / e["std"])
            else:
                block = [0.0] * self._block(e)
                if v is not None:
                    cats = e["categories"]
                    i = _position(cats, str(v))
                    block[len(cats) if i is None else i] = 1.0
                out += block
            if e["missing"]:
                out.append(0.0 if v is None else 1.0)
        return torch.tensor([*out, 1.0, -1.0], dtype=torch.float32)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = batch.float()
        return {"pooled": batch, "grid": batch[:, None, :]}

    def split_notes(self, values: list[Any]) -> dict[str, Any]:
        """What encoding ``values`` (one split's records) involved: per column, the records whose
        category the training split lacked (mapped to ``unknown``) and the missing values."""
        unknown: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        for c, e in self._columns().items():
            for r in values:
                v = r.get(c) if isinstance(r, dict) else None
                if v is None:
                    missing[c] += 1
                elif e["type"] == "categorical" and _position(e["categories"], str(v)) is None:
                    unknown[c] += 1
        return {"unknown_categories": dict(unknown), "missing_values": dict(missing)}


def _position(categories: list[str], value: str) -> int | None:
    i = bisect.bisect_left(categories, value)
    return i if i < len(categories) and categories[i] == value else None
