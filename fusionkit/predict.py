"""``fusionkit predict BUNDLE INPUT``: an exported bundle (:mod:`fusionkit.export`) on new raw files.

::

    predictor = Predictor.load("bundle/")                  # model + encoders, loaded once
    inputs = read_inputs("new/manifest.csv", predictor)     # or a folder, or single_inputs(...)
    result = predictor.predict(inputs)                      # result.records, result.issues
    write_predictions(result, "predictions.csv")            # CSV or JSONL by extension; None: stdout

Inputs:

* a **manifest** (CSV / TSV / JSONL / Parquet, read as ``fusionkit data prepare manifest`` reads
  them): one column per modality the model takes, named as the modality (``image``,
  ``caption``, ``audio``...; a tabular modality: its columns, or one object column named after
  it), optionally ``id`` (else ``row{N}``), and the training dataset's ``split``, ``group`` and
  target columns (ignored). Any other column is refused, naming it. File paths are relative to
  the manifest's folder and must stay inside it.
* a **folder**: a fusionkit dataset folder (``dataset.json``: its samples), a folder with a
  manifest, or loose files grouped by name stem (``cat.jpg`` + ``cat.wav`` + ``cat.txt`` is one
  row ``cat``), each file's kind by its extension (``.txt``: the text modality's text).
* **single inputs** (:func:`single_inputs`: ``--image x.jpg --text "..." --audio y.wav``).

The bundle is a folder, or ``wandb:ENTITY/PROJECT/NAME:ALIAS``: a ``model`` artifact 04 logged
(:mod:`fusionkit.lineage`), downloaded through W&B's public API when W&B is online
(:func:`fusionkit.tracking.download_artifact`); offline that is refused, saying so.

A modality absent from a row (no column, an empty cell, ``null``) is missing: its features are
zeros and the missing-modality mask says so to the fusion method; the output lists it
(``missing``). A bad row (an unreadable or mistyped file, a path outside the manifest's folder,
an empty text, a malformed line) is reported by file and row and skipped; every other row is
predicted, and nothing is written until all are (a file output is written atomically).
Encoders run batched on their measured batch sizes (:func:`fusionkit.features.encode_records`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle, tracking
from fusionkit.bundle import BundleError, ClassifierSpec
from fusionkit.data.base import INLINE_KINDS, DatasetError, atomic_write_text, load_dataset, safe_media_path
from fusionkit.data.manifest import TABLE_EXTENSIONS, read_table, tabular_value
from fusionkit.data.problems import Issue, Problems
from fusionkit.data.readers import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, read_text
from fusionkit.encoding import encode_records, inference_runner, resolve_device, shared_inputs
from fusionkit.progress import progress as progress_bar

#: manifest columns a predictor reads besides the modalities (``id``) or ignores
IGNORED_COLUMNS = ("split", "group")
TEXT_EXTENSIONS = (".txt",)
#: a bundle named as a W&B artifact: ``wandb:ENTITY/PROJECT/NAME:ALIAS``
WANDB_PREFIX = "wandb:"


@dataclass
class Row:
    """One input: its id, where it came from (file:line, for messages), and modality -> value
    (a path, a text or a tabular record; absent or None: missing)."""

    id: str
    where: str
    values: dict[str, Any]


@dataclass
class Inputs:
    """The rows to predict, the folder their relative paths are inside (None: single inputs,
    paths as given), where they came from, and the rows refused while reading."""

    rows: list[Row]
    root: Path | None
    source: str
    issues: list[Issue] = field(default_factory=list)


@dataclass
class Predictions:
    """One record per predicted row (id, prediction, probabilities, weights, missing), the rows
    skipped (:class:`~fusionkit.data.problems.Issue`, file and row named) and, per tabular
    modality, the values of categories its training split lacked (read as ``unknown``: ``unknown``
    = ``{column: count}``)."""

    records: list[dict[str, Any]]
    issues: list[Issue]
    class_names: list[str]
    modalities: list[str]
    weighted: bool
    unknown: dict[str, dict[str, int]] = field(default_factory=dict)
    #: a task's predictions (:mod:`fusionkit.tasks.predict`): their CSV rows, flat (None: a classifier's)
    flat: list[dict[str, Any]] | None = None


def resolve_bundle(path: str | os.PathLike) -> str | os.PathLike:
    """A bundle folder as given, or for ``wandb:ENTITY/PROJECT/NAME:ALIAS`` the folder the W&B model
    artifact downloads to (online only; BundleError saying why otherwise). 04's model artifact holds
    the classifier's bundle and each task's in a folder of its own: ``wandb:E/P/NAME:ALIAS/vqa``
    is the VQA bundle in it (``captioning``, ``retrieval`` likewise)."""
    if not str(path).startswith(WANDB_PREFIX):
        return path
    ref, sub = str(path)[len(WANDB_PREFIX) :], ""
    if ":" in ref:  # an alias has no "/": what follows one is a folder inside the artifact
        name, alias = ref.rsplit(":", 1)
        alias, _, sub = alias.partition("/")
        ref = f"{name}:{alias}"
    try:
        folder = Path(tracking.download_artifact(ref, type="model"))
    except RuntimeError as e:
        raise BundleError(str(e)) from e
    if sub and not (folder / sub / "model.safetensors").is_file():
        raise BundleError(f"{path}: the artifact {ref} holds no bundle in {sub!r}")
    return folder / sub if sub else folder


class Predictor:
    """A bundle's model and encoders, loaded once (``fusionkit predict`` and ``fusionkit serve``)."""

    def __init__(self, folder: Path, model, spec: ClassifierSpec, encoders: dict, device: torch.device) -> None:
        self.folder, self.model, self.spec, self.encoders, self.device = folder, model, spec, encoders, device
        self.kinds = {m: e["kind"] for m, e in spec.encoders.items() if m in spec.in_dims}
        #: the encoder output of each modality's features (default ``pooled``; a task model may read ``grid``)
        self.outputs: dict[str, str] = {}
        self._runners = {m: inference_runner(enc, device) for m, enc in encoders.items()}

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> Predictor:
        """The bundle in folder ``path`` (or its ``model.safetensors``); BundleError naming the file
        for a missing, corrupt, incompatible or un-exported bundle, or missing encoder weights."""
        weights, dev = cls._open(resolve_bundle(path), device)
        model, spec = bundle.load_classifier(weights)
        encoders = bundle.load_encoders(weights.parent, spec)
        return cls(weights.parent, model.to(dev).eval(), spec, encoders, dev)

    @staticmethod
    def _open(path: str | os.PathLike, device: str | None) -> tuple[Path, torch.device]:
        """The bundle's weights file and the device to load it on (BundleError for a bad ``device``)."""
        try:
            dev = resolve_device(device)
        except (RuntimeError, ValueError) as e:
            raise BundleError(f"--device {device!r}: {e}") from e
        return bundle.weights_file(path), dev

    # ------------------------------------------------------------------ what it needs
    def modality_of(self, kind: str) -> str:
        """The one modality of ``kind`` (for ``--image`` / ``--text`` / ``--audio``)."""
        mods = [m for m, k in self.kinds.items() if k == kind]
        if len(mods) != 1:
            takes = ", ".join(f"{m} ({k})" for m, k in sorted(self.kinds.items()))
            if not mods:
                raise DatasetError(f"the model was not trained on a {kind} modality; it takes {takes}")
            raise DatasetError(f"the model takes several {kind} modalities ({mods}); name them in a manifest")
        return mods[0]

    def columns(self) -> dict[str, list[str]]:
        """Modality -> the manifest columns it is read from (a tabular modality: its own columns)."""
        out = {}
        for m, kind in self.kinds.items():
            fitted = self.spec.encoders[m].get("fitted") or {}
            out[m] = list((fitted.get("columns") or {}).keys()) if kind == "tabular" else [m]
        return out

    def info(self) -> dict[str, Any]:
        """What the model needs and what it was trained on (``fusionkit serve``'s ``/info``)."""
        s = self.spec
        return {"fusion": s.fusion, "task": "regression" if s.regression else "classification", "target": s.target,
                "class_names": s.class_names, "modalities": self.kinds, "columns": self.columns(),
                "encoders": {m: {k: e.get(k) for k in ("encoder", "options", "weights")} for m, e in s.encoders.items()},
                "dataset": s.dataset, "metrics": s.metrics, "device": str(self.device)}  # fmt: skip

    # ------------------------------------------------------------------ predicting
    #: modalities a row cannot do without (a task model's; a classifier masks a missing one)
    required: tuple[str, ...] = ()

    def predict(self, inputs: Inputs, progress: bool = False, batch_size: int = 512) -> Predictions:
        """Encode every row's present modalities, fuse, and predict; bad rows are skipped and listed."""
        rows, feats, issues, unknown = self.encode(inputs, progress)
        records = self._forward(rows, feats, batch_size, progress)
        return Predictions(records, issues, list(self.spec.class_names), sorted(self.kinds), self._weighted, unknown)

    def missing_hint(self, modality: str) -> str:
        """What to add to the message of a row without a :attr:`required` modality."""
        return f"a {modality!r} column"

    def encode(
        self, inputs: Inputs, progress: bool = False
    ) -> tuple[list[Row], list[dict[str, torch.Tensor | None]], list[Issue], dict[str, dict[str, int]]]:
        """Every row's present modalities encoded with the bundle's encoders: (the rows kept, their
        features per modality - None: missing -, every row skipped, the tabular values of unknown
        categories). A bad row is skipped, named by file and row."""
        rows = inputs.rows
        issues = list(inputs.issues)
        bad: dict[int, Issue] = {}

        def refuse(i: int, message: str, file: str | None = None) -> None:
            if i not in bad:
                bad[i] = Issue(
                    "malformed", f"{rows[i].where} (id {rows[i].id!r})", message, "skipped", file, rows[i].id
                )

        present: dict[str, list[int]] = {}
        values: dict[str, list[Any]] = {}
        for m, kind in sorted(self.kinds.items()):
            present[m], values[m] = [], []
            for i, row in enumerate(rows):
                v = row.values.get(m)
                if v is None or (kind not in INLINE_KINDS and isinstance(v, str) and not v.strip()):
                    continue
                if kind not in INLINE_KINDS and inputs.root is not None:
                    try:
                        v = safe_media_path(inputs.root, v, f"{m}")
                    except DatasetError as e:
                        refuse(i, str(e))
                        continue
                present[m].append(i)
                values[m].append(v)
        for m in self.required:
            given = set(present[m])
            for i in range(len(rows)):
                if i not in given:
                    refuse(i, f"no {m} given; the model needs one ({self.missing_hint(m)})")
        feats: dict[str, dict[int, torch.Tensor]] = {}
        unknown: dict[str, dict[str, int]] = {}
        for m in sorted(self.kinds):
            idx = [i for i in present[m] if i not in bad]
            vals = [values[m][j] for j, i in enumerate(present[m]) if i not in bad]
            # a file or text that several rows share (a manifest of pairs or of questions repeats its
            # images) is decoded and encoded once; every row gets its features, or its failure
            groups = shared_inputs(vals, range(len(vals)))
            distinct = [vals[j] for j in groups]
            slot = [0] * len(vals)
            for k, same in enumerate(groups.values()):
                for j in same:
                    slot[j] = k
            got_d, failed_d = encode_records(self.encoders[m], distinct, inputs.root, self.kinds[m], device=self.device,
                                             output=self.outputs.get(m, "pooled"), runner=self._runners[m],
                                             progress=progress, desc=f"{m} ({self.encoders[m].name})")  # fmt: skip
            got = {j: got_d[s] for j, s in enumerate(slot) if s in got_d}
            failed = {j: failed_d[s] for j, s in enumerate(slot) if s in failed_d}
            feats[m] = {idx[j]: v for j, v in got.items()}
            if self.kinds[m] == "tabular":
                counts = self.encoders[m].split_notes([vals[j] for j in got])["unknown_categories"]
                if counts:
                    unknown[m] = counts
            for j, (reason, file) in failed.items():
                refuse(idx[j], f"{m}: {file + ': ' if file else ''}{reason}", file)
        for i in range(len(rows)):
            if i not in bad and not any(i in feats[m] for m in feats):
                refuse(i, f"no input for any modality the model takes ({', '.join(sorted(self.kinds))})")
        keep = [i for i in range(len(rows)) if i not in bad]
        issues += [bad[i] for i in sorted(bad)]
        return [rows[i] for i in keep], [{m: feats[m].get(i) for m in feats} for i in keep], issues, unknown

    _weighted = False

    @torch.inference_mode()
    def _forward(self, rows: list[Row], feats: list[dict[str, torch.Tensor | None]], batch_size: int,
                 progress: bool) -> list[dict[str, Any]]:  # fmt: skip
        mods = sorted(self.kinds)
        out: list[dict[str, Any]] = []
        bar = progress_bar(total=len(rows), enabled=progress, desc="fusion", unit="row")
        for s in range(0, len(rows), batch_size):
            chunk = feats[s : s + batch_size]
            x, mask = {}, {}
            for m in mods:
                d = self.spec.in_dims[m]
                x[m] = torch.stack([f[m] if f[m] is not None else torch.zeros(d) for f in chunk]).to(self.device)
                mask[m] = torch.tensor([float(f[m] is not None) for f in chunk], device=self.device)
            full = all(bool(v.all()) for v in mask.values())
            res = self.model(x, None if full else mask)  # all present: exactly what training saw
            logits = res.logits.float().cpu()
            weights = {m: w.float().cpu() for m, w in res.weights.items()} if res.weights is not None else None
            self._weighted = weights is not None
            probs = None if self.spec.regression else torch.softmax(logits, dim=1)
            for j, row in enumerate(rows[s : s + batch_size]):
                rec: dict[str, Any] = {"id": row.id}
                if probs is None:
                    rec["prediction"] = float(logits[j, 0])
                else:
                    rec["prediction"] = self.spec.class_names[int(probs[j].argmax())]
                    rec["probabilities"] = {c: float(p) for c, p in zip(self.spec.class_names, probs[j], strict=True)}
                if weights is not None:
                    rec["weights"] = {m: float(weights[m][j].reshape(-1).mean()) for m in mods}
                rec["missing"] = [m for m in mods if chunk[j][m] is None]
                out.append(rec)
            bar.update(len(chunk))
        bar.close()
        return out


# ---------------------------------------------------------------------------- reading inputs
def _manifest_rows(path: Path, predictor: Predictor) -> Inputs:
    problems = Problems("skip")
    try:
        cols, table = read_table(path, "utf-8", problems)
    except DatasetError as e:
        raise DatasetError(str(e)) from e
    columns = predictor.columns()
    known = {c for cs in columns.values() for c in cs} | set(columns) | {"id", *IGNORED_COLUMNS}
    known |= set(predictor.spec.dataset.get("targets") or [predictor.spec.target])
    unknown = [c for c in cols if c not in known]
    if unknown:
        takes = ", ".join(f"{m} ({predictor.kinds[m]})" for m in sorted(predictor.kinds))
        raise DatasetError(
            f"{path}: column(s) {unknown} unknown to the model; it takes {takes} (a tabular modality: its columns "
            f"{ {m: c for m, c in columns.items() if predictor.kinds[m] == 'tabular'} }), plus 'id' and the training "
            "dataset's split, group and target columns (ignored)"
        )
    if not any(c in cols for cs in columns.values() for c in cs) and not any(m in cols for m in columns):
        raise DatasetError(f"{path}: no column for any modality the model takes ({', '.join(sorted(columns))})")
    for m, kind in predictor.kinds.items():  # a tabular modality given by its columns needs every one it cannot miss
        if kind != "tabular" or m in cols or not any(c in cols for c in columns[m]):
            continue
        spec = (predictor.spec.encoders[m].get("fitted") or {}).get("columns") or {}
        absent = [c for c in columns[m] if c not in cols and not (spec.get(c) or {}).get("missing")]
        if absent:
            raise DatasetError(
                f"{path}: tabular column(s) {absent} of {m!r} absent; the model was trained on {columns[m]} (only "
                f"columns declared as allowed to be missing may be left out; leave out all of them for {m!r} missing)"
            )
    types = {m: {c: e.get("type", "numeric") for c, e in ((predictor.spec.encoders[m].get("fitted") or {}).get("columns")
                                                          or {}).items()}
             for m, kind in predictor.kinds.items() if kind == "tabular"}  # fmt: skip
    rows, seen = [], set()
    for n, (where, r) in enumerate(table, 1):
        rid = str(r.get("id")) if r.get("id") not in (None, "") else f"row{n}"
        if rid in seen:
            problems.error("duplicate", where, f"id {rid!r} appears twice; expected unique ids")
            continue
        seen.add(rid)
        vals: dict[str, Any] = {}
        for m, kind in predictor.kinds.items():
            if kind == "tabular":
                if isinstance(r.get(m), dict):
                    vals[m] = r[m]
                elif any(c in r for c in columns[m]):
                    vals[m] = {c: tabular_value(r.get(c), types[m].get(c, "numeric")) for c in columns[m]}
            elif m in r and r[m] is not None and not (kind != "text" and r[m] == ""):
                vals[m] = r[m] if not isinstance(r[m], float) or r[m] == r[m] else None  # NaN: missing
        rows.append(Row(rid, where, vals))
    return Inputs(rows, path.parent, str(path), [_skipped(i) for i in problems.issues])


def _skipped(issue: Issue) -> Issue:
    issue.severity = "skipped"
    return issue


def _folder_rows(folder: Path, predictor: Predictor, split: str | None) -> Inputs:
    if (folder / "dataset.json").is_file():
        ds = load_dataset(folder)
        samples = ds.split(split) if split else ds.samples
        root = Path(getattr(ds, "media_root", None) or ds.root)
        mods = [m for m in predictor.kinds if m in ds.modalities]
        rows = [Row(s.id, f"{folder / 'manifest.jsonl'}: {s.id}", {m: s.modalities.get(m) for m in mods})
                for s in samples]  # fmt: skip
        return Inputs(rows, root, str(folder))
    for ext in TABLE_EXTENSIONS:
        if (folder / f"manifest{ext}").is_file():
            return _manifest_rows(folder / f"manifest{ext}", predictor)
    groups: dict[str, dict[str, Any]] = {}
    problems: list[Issue] = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        ext = f.suffix.lower()
        kind = "image" if ext in IMAGE_EXTENSIONS else "audio" if ext in AUDIO_EXTENSIONS else None
        kind = kind or ("text" if ext in TEXT_EXTENSIONS else None)
        if kind is None:
            continue
        try:
            m = predictor.modality_of(kind)
        except DatasetError as e:
            problems.append(Issue("malformed", str(f), str(e), "skipped", str(f)))
            continue
        rel = f.relative_to(folder).as_posix()
        stem = rel[: -len(f.suffix)]
        if kind == "text":
            try:
                value: Any = read_text(f)
            except DatasetError as e:
                problems.append(Issue("malformed", str(f), str(e), "skipped", str(f)))
                continue
        else:
            value = rel
        groups.setdefault(stem, {})[m] = value
    if not groups and not problems:
        raise DatasetError(f"{folder}: no dataset.json, no manifest and no image / audio / .txt file to predict")
    rows = [Row(stem, str(folder / stem), vals) for stem, vals in groups.items()]
    return Inputs(rows, folder, str(folder), problems)


def read_inputs(source: str | os.PathLike, predictor: Predictor, split: str | None = None) -> Inputs:
    """The rows of a manifest file or a folder (module docstring); DatasetError naming the file
    when the input as a whole cannot be used."""
    p = Path(source)
    if p.is_dir():
        return _folder_rows(p, predictor, split)
    if not p.is_file():
        raise DatasetError(f"{p}: input not found; expected a manifest (.csv .tsv .jsonl .parquet) or a folder")
    if p.suffix.lower() not in TABLE_EXTENSIONS:
        raise DatasetError(f"{p}: not a manifest (expected {', '.join(TABLE_EXTENSIONS)}); pass files with --image ...")
    return _manifest_rows(p, predictor)


def single_inputs(predictor: Predictor, **by_kind: Any) -> Inputs:
    """One row from ``image=path, text="...", audio=path`` (None: not given)."""
    vals = {predictor.modality_of(kind): v for kind, v in by_kind.items() if v is not None}
    if not vals:
        raise DatasetError(f"no input given; the model takes {', '.join(sorted(predictor.kinds))}")
    where = " ".join(f"--{k} {v if k != 'text' else repr(v)}" for k, v in by_kind.items() if v is not None)
    return Inputs([Row("input", where, vals)], None, "command line")


# ---------------------------------------------------------------------------- writing
def _flat(rec: dict[str, Any], result: Predictions) -> dict[str, Any]:
    row = {"id": rec["id"], "prediction": rec["prediction"]}
    for c in result.class_names:
        row[f"prob_{c}"] = rec["probabilities"][c]
    if result.weighted:
        for m in result.modalities:
            row[f"weight_{m}"] = rec["weights"][m]
    row["missing"] = ";".join(rec["missing"])
    return row


def render(result: Predictions, fmt: str) -> str:
    """The predictions as CSV (one column per class probability and modality weight; ``missing``
    the masked modalities, ``;``-separated) or JSONL (one object per row)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records)
    buf = io.StringIO()
    if result.flat is not None:  # a task's predictions: their own columns
        header = list(dict.fromkeys(k for r in result.flat for k in r)) or ["id", "prediction"]
        w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(result.flat)
        return buf.getvalue()
    header = ["id", "prediction", *(f"prob_{c}" for c in result.class_names)]
    header += [f"weight_{m}" for m in result.modalities] if result.weighted else []
    w = csv.DictWriter(buf, fieldnames=[*header, "missing"], lineterminator="\n")
    w.writeheader()
    for rec in result.records:
        w.writerow(_flat(rec, result))
    return buf.getvalue()


def write_predictions(result: Predictions, out: str | os.PathLike | None) -> Path | None:
    """Write to ``out`` (``.csv`` or ``.jsonl``, atomically) or, when None, to standard output."""
    if out is None:
        sys.stdout.write(render(result, "csv"))
        return None
    out = Path(out)
    fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
    if fmt is None:
        raise DatasetError(f"--out {out}: expected a .csv or .jsonl file")
    atomic_write_text(out, render(result, fmt))
    return out


__all__ = [
    "Inputs",
    "Predictions",
    "Predictor",
    "Row",
    "read_inputs",
    "resolve_bundle",
    "render",
    "single_inputs",
    "write_predictions",
]
