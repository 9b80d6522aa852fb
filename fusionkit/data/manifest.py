"""Your own data: a manifest table (CSV / TSV / JSONL / Parquet), or an existing fusionkit dataset folder.

A manifest has one row per sample and one column per modality, plus target columns and,
optionally, ``id`` and ``split``::

    id,image,caption,audio,label,split
    s001,photos/cat1.jpg,a cat on a mat,clips/meow1.wav,cat,train
    s002,photos/dog7.jpg,a dog in the park,clips/woof7.wav,dog,val

* **modalities**: ``modalities="image:image,caption:text,audio:audio"`` maps *column:kind* (the
  modality is named after its column; ``name=column:kind`` renames it). Without it they are
  detected: a column whose values are file paths with an image (.jpg .png ...) or audio
  (.wav .flac ...) extension is that kind; a column named text/caption/question/sentence/
  transcript/description/utterance/title is text.
* **targets**: ``targets="label"`` (comma-separated or a list); without it every remaining column
  (not id, split or a modality) is a target. Values are class names: strings are sorted
  alphabetically, integers (or strings that all look like integers) numerically; the manifest
  stores the class index, ``dataset.json`` the names. A column that looks continuous (floats) is
  refused - fusionkit's targets are classes.
* **split**: a ``split`` column (train / val / test; also training, validation, valid, dev,
  testing) is used as given; without it the samples are split at random, stratified by the first
  target, by ``split_fractions`` (seeded).
* **group**: an optional ``group`` column (speaker, patient, site; ``group_column`` names another):
  every group stays inside one split. With a split column, a group found in two splits is an
  error naming it; without one, whole groups are split at random by ``split_fractions`` (seeded;
  each split with a fraction > 0 needs one group at least) - ``fusionkit.data.groups``.
* **id**: an ``id`` column (unique) or, without one, ``row{N}`` (N: the data row, from 1).
* file paths are relative to the manifest's folder (or ``media_root``, relative to it); they must
  stay inside it (no ``..``, absolute paths or symlinks out). Files are indexed in place.

Validation (each row; with ``on_error="skip"`` the row is left out and listed): unknown or
missing columns (header), wrong number of fields, wrong types in JSONL/Parquet (a list where a
path is expected, a float target), empty values, duplicate ids, bad split names, missing files,
paths escaping the root, corrupt images and WAVs (``check_media``: "verify", "decode", "none").
Text files must be UTF-8 (a BOM is fine, CRLF is fine; ``encoding=`` for others). Parquet needs
the ``pyarrow`` package.

A source folder holding ``dataset.json`` is a fusionkit dataset already: it is validated with
:func:`~fusionkit.data.base.load_dataset` and re-indexed into ``out_dir`` (same samples, media
left where they are).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data.base import MODALITY_KINDS, SPLIT_ALIASES, SPLITS, Built, DatasetError, Sample, load_dataset
from fusionkit.data.groups import check_groups, split_groups
from fusionkit.data.problems import Problems
from fusionkit.data.readers import (
    check_audio,
    check_image,
    read_csv,
    read_jsonl,
    read_parquet,
    safe_media_path,
    sniff_media_kind,
)
from fusionkit.progress import progress as _progress

__all__ = ["parse_modalities", "scan"]

TEXT_COLUMNS = ("text", "caption", "question", "sentence", "transcript", "description", "utterance", "title")
TABLE_EXTENSIONS = (".csv", ".tsv", ".txt", ".jsonl", ".parquet")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def parse_modalities(spec: str | dict[str, str] | None) -> dict[str, tuple[str, str | None]] | None:
    """{modality name: (column, kind or None)} from ``"col:kind,name=col:kind"`` or a dict
    ``{column: kind}``."""
    if spec is None or spec == "":
        return None
    out: dict[str, tuple[str, str | None]] = {}
    items = (
        spec.items()
        if isinstance(spec, dict)
        else [tuple(x.split(":", 1)) if ":" in x else (x, None) for x in spec.split(",")]
    )
    for col, kind in items:
        col = str(col).strip()
        name = col
        if "=" in col:
            name, col = (s.strip() for s in col.split("=", 1))
        kind = kind.strip() if isinstance(kind, str) else kind
        if not col or (kind is not None and kind not in MODALITY_KINDS):
            raise DatasetError(
                f"modalities option: {col!r}:{kind!r}; expected 'column:kind' entries with kind in {MODALITY_KINDS}"
            )
        out[name] = (col, kind)
    return out


def _find_manifest(source: Path, manifest: str | None) -> Path:
    if source.is_file():
        return source
    if manifest:
        p = source / safe_media_path(source, manifest, "manifest option")
        if not p.is_file():
            raise DatasetError(f"{p}: manifest file not found")
        return p
    for ext in TABLE_EXTENSIONS:
        if (source / f"manifest{ext}").is_file():
            return source / f"manifest{ext}"
    tables = sorted(p for ext in (".csv", ".tsv", ".jsonl", ".parquet") for p in source.glob(f"*{ext}"))
    if len(tables) == 1:
        return tables[0]
    raise DatasetError(
        f"{source}: no manifest found; expected manifest.csv / .tsv / .jsonl / .parquet (or pass manifest=, "
        f"found {[p.name for p in tables][:5]})"
    )


def _read_table(path: Path, encoding: str, problems: Problems) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(columns, [(where, row)]) for any supported table format."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        cols: list[str] = []
        try:
            for lineno, obj in read_jsonl(path, encoding):
                rows.append((f"{path}:{lineno}", obj))
                for k in obj:
                    if k not in cols:
                        cols.append(k)
        except DatasetError as e:
            # a bad line: report it as such and keep the lines before it only when skipping
            if problems.on_error == "raise":
                raise
            problems.error("malformed", str(path), str(e))
        return cols, rows
    if suffix == ".parquet":
        cols, prows = read_parquet(path)
        return cols, [(f"{path}: row {i}", r) for i, r in prows]
    delim = "\t" if suffix == ".tsv" else None
    cols, crows = read_csv(
        path,
        delimiter=delim,
        encoding=encoding,
        on_bad_row=lambda ln, msg: problems.error("malformed", f"{path}:{ln}", msg),
    )
    return cols, [(f"{path}:{ln}", r) for ln, r in crows]


def _from_dataset_folder(source: Path, problems: Problems) -> Built:
    ds = load_dataset(source)
    return Built(
        name=ds.name,
        format="fusionkit-dataset",
        modalities=dict(ds.modalities),
        targets={k: list(v) for k, v in ds.targets.items()},
        samples=list(ds.samples),
        info={**ds.info, "reindexed_from": str(source)},
        media_root=ds.media_root,
        stats={"source_dataset": str(source)},
    )


def _classes(values: list[tuple[str, Any]], col: str, path: Path) -> list[str]:
    """Class names of a target column (sorted), refusing continuous-looking values."""
    names = sorted({str(v) for _, v in values})
    if all(_INT.fullmatch(n) for n in names):
        return sorted(names, key=int)
    floats = [n for n in names if _FLOAT.fullmatch(n) and not _INT.fullmatch(n)]
    if floats and all(_FLOAT.fullmatch(n) for n in names):
        where = next(w for w, v in values if str(v) == floats[0])
        raise DatasetError(
            f"{where}: target {col!r} = {floats[0]} looks continuous; expected class labels (names or integers)"
        )
    return names


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    manifest: str | None = None,
    modalities: str | dict[str, str] | None = None,
    targets: str | Sequence[str] | None = None,
    id_column: str = "id",
    split_column: str = "split",
    group_column: str = "group",
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    media_root: str | None = None,
    name: str | None = None,
    check_media: str = "verify",
    encoding: str = "utf-8",
) -> Built:
    """A manifest table (module docstring).

    ``manifest``: the file, relative to ``source_dir`` (default: manifest.csv/.tsv/.txt/.jsonl/
    .parquet, or the only table there); ``source_dir`` may also be the file itself.
    ``modalities``: "column:kind,..." (or a dict column -> kind); default auto-detected.
    ``targets``: target column(s); default every other column. ``id_column``, ``split_column``,
    ``group_column``: their names (the group column is optional; each group stays in one split). ``split_fractions``: (train, val, test) when there is no split column.
    ``media_root``: folder the file paths are relative to (relative to the manifest's folder;
    default that folder). ``name``: the dataset name (default the manifest's stem, or its folder
    name for manifest.*). ``check_media``: "verify", "decode" or "none". ``encoding``: of CSV/JSONL."""
    if check_media not in ("verify", "decode", "none"):
        raise DatasetError(f"manifest: check_media = {check_media!r}; expected verify, decode or none")
    if source.is_dir() and (source / "dataset.json").is_file() and manifest is None:
        return _from_dataset_folder(source, problems)
    path = _find_manifest(source, manifest)
    base = path.parent
    root = (base / safe_media_path(base, media_root, "media_root option")) if media_root else base
    if not root.is_dir():
        raise DatasetError(f"media_root {root} is not a folder")
    cols, rows = _read_table(path, encoding, problems)
    if not rows:
        raise DatasetError(f"{path}: no rows; expected a header and one row per sample")
    ds_name = name or (path.parent.name if path.stem == "manifest" else path.stem)
    # ------------------------------------------------------------------ columns
    spec = parse_modalities(modalities)
    reserved = {id_column, split_column, group_column}
    mods: dict[str, tuple[str, str]] = {}
    if spec is not None:
        for mname, (col, kind) in spec.items():
            if col not in cols:
                raise DatasetError(f"{path}: modality column {col!r} not found; the columns are {cols}")
            mods[mname] = (col, kind or "")
    tgt_cols: list[str] | None = None
    if targets is not None and targets != "":
        tgt_cols = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t) for t in targets]
        missing = [t for t in tgt_cols if t not in cols]
        if missing:
            raise DatasetError(f"{path}: target column(s) {missing} not found; the columns are {cols}")
    taken = {c for c, _ in mods.values()} | set(tgt_cols or [])
    for col in cols:
        if col in reserved or col in taken:
            continue
        if spec is not None:
            continue  # modalities given explicitly: the rest are targets (below)
        vals = [r.get(col) for _, r in rows if r.get(col) not in (None, "")]
        kinds = Counter(sniff_media_kind(v) if isinstance(v, str) else None for v in vals)
        kind, n = kinds.most_common(1)[0] if kinds else (None, 0)
        if kind is not None and n >= 0.9 * len(vals):
            mods[col] = (col, kind)
        elif col.lower() in TEXT_COLUMNS:
            mods[col] = (col, "text")
    for mname, (col, kind) in list(mods.items()):
        if not kind:  # 'column' given without a kind: detect it
            vals = [r.get(col) for _, r in rows if isinstance(r.get(col), str) and r.get(col)]
            k = Counter(sniff_media_kind(v) for v in vals).most_common(1)
            mods[mname] = (col, k[0][0] if k and k[0][0] else "text")
    if not mods:
        raise DatasetError(
            f"{path}: no modality column found in {cols}; expected file paths with image/audio extensions or a "
            "text column (text, caption, ...), or pass modalities='column:kind,...'"
        )
    if tgt_cols is None:
        tgt_cols = [c for c in cols if c not in reserved and c not in {c2 for c2, _ in mods.values()}]
    if not tgt_cols:
        raise DatasetError(f"{path}: no target column; the columns are {cols} - add one (e.g. label) or pass targets=")
    clash = sorted((set(mods) & set(tgt_cols)) | ((set(mods) | set(tgt_cols)) & {"id", "split"}))
    if clash:
        raise DatasetError(f"{path}: names {clash} are used twice (modality/target/id/split); rename the columns")
    has_split = split_column in cols
    has_id = id_column in cols
    has_group = group_column in cols
    # ------------------------------------------------------------------ rows
    good: list[tuple[str, str, str | None, dict[str, str], dict[str, Any]]] = []
    group_of: dict[str, str] = {}
    seen: dict[str, str] = {}
    media_ok: dict[str, str | None] = {}
    for n, (where, row) in enumerate(
        _progress(rows, enabled=progress, desc=f"{ds_name}: checking rows", unit="row"), 1
    ):
        sid = row.get(id_column) if has_id else f"row{n}"
        if isinstance(sid, int) and not isinstance(sid, bool):
            sid = str(sid)
        if not isinstance(sid, str) or not sid.strip():
            problems.error("malformed", where, f"{id_column!r} = {sid!r}; expected a non-empty string")
            continue
        sid = sid.strip()
        where = f"{where} (id {sid!r})"
        if sid in seen:
            problems.error("duplicate", where, f"id {sid!r} appears twice (first at {seen[sid]})")
            continue
        seen[sid] = where
        split = None
        if has_split:
            raw = row.get(split_column)
            split = SPLIT_ALIASES.get(str(raw).strip().lower()) if isinstance(raw, str) else None
            if split is None:
                problems.error("malformed", where, f"{split_column} = {raw!r}; expected train, val or test")
                continue
        vals: dict[str, str] = {}
        bad = False
        for mname, (col, kind) in mods.items():
            v = row.get(col)
            if kind == "text":
                if v is None or (isinstance(v, str) and not v.strip()):
                    problems.error("empty_caption", where, f"empty text in column {col!r}")
                    bad = True
                    break
                if not isinstance(v, str):
                    problems.error("malformed", where, f"column {col!r} = {v!r} ({type(v).__name__}); expected text")
                    bad = True
                    break
                vals[mname] = " ".join(v.split())
                continue
            if not isinstance(v, str) or not v.strip():
                problems.error("malformed", where, f"column {col!r} = {v!r}; expected a relative {kind} file path")
                bad = True
                break
            try:
                rel = safe_media_path(root, v, f"column {col!r}")
            except DatasetError as e:
                problems.error("unsafe_path", where, str(e), file=v)
                bad = True
                break
            p = root / rel
            if rel not in media_ok:
                if not p.is_file():
                    media_ok[rel] = f"{kind} file {p} does not exist"
                    problems.error("missing_file", where, media_ok[rel], file=rel)
                    bad = True
                    break
                try:
                    if check_media != "none":
                        check_image(p, decode=check_media == "decode") if kind == "image" else check_audio(p)
                    media_ok[rel] = None
                except DatasetError as e:
                    media_ok[rel] = str(e)
                    problems.error("corrupt", where, str(e), file=rel)
                    bad = True
                    break
            elif media_ok[rel] is not None:
                kind_of = "missing_file" if "does not exist" in media_ok[rel] else "corrupt"  # type: ignore[operator]
                problems.error(kind_of, where, media_ok[rel], file=rel)  # type: ignore[arg-type]
                bad = True
                break
            vals[mname] = rel
        if bad:
            continue
        tv: dict[str, Any] = {}
        for t in tgt_cols:
            v = row.get(t)
            if v is None or (isinstance(v, str) and not v.strip()):
                problems.error("malformed", where, f"target {t!r} is empty; expected a class label")
                bad = True
                break
            if isinstance(v, bool) or isinstance(v, float) and not float(v).is_integer():
                problems.error(
                    "malformed", where, f"target {t!r} = {v!r} ({type(v).__name__}); expected a class name or integer"
                )
                bad = True
                break
            if not isinstance(v, str | int | float | np.integer):
                problems.error(
                    "malformed", where, f"target {t!r} = {v!r} ({type(v).__name__}); expected a class name or integer"
                )
                bad = True
                break
            tv[t] = (
                str(int(v)) if isinstance(v, float | np.integer) else str(v).strip() if isinstance(v, str) else str(v)
            )
        if bad:
            continue
        if has_group:
            g = row.get(group_column)
            if isinstance(g, int | np.integer) and not isinstance(g, bool):
                g = str(int(g))
            if not isinstance(g, str) or not g.strip():
                problems.error("malformed", where, f"{group_column} = {g!r}; expected a non-empty group name")
                continue
            group_of[sid] = g.strip()
        good.append((sid, where, split, vals, tv))
    if not good:
        return Built(
            name=ds_name,
            format=path.suffix.lstrip(".") or "table",
            modalities={m: k for m, (_, k) in mods.items()},
            targets={},
            samples=[],
        )
    classes = {t: _classes([(w, tv[t]) for _, w, _, _, tv in good], t, path) for t in tgt_cols}
    index = {t: {c: i for i, c in enumerate(cs)} for t, cs in classes.items()}
    # ------------------------------------------------------------------ splits
    where_groups = f"{path} ({group_column!r} column)"
    if has_group and has_split:
        check_groups({sid: str(sp) for sid, _, sp, _, _ in good}, group_of, where=where_groups)
    elif has_group:
        if len(split_fractions) != 3 or any(f < 0 for f in split_fractions):
            raise DatasetError(f"split_fractions = {tuple(split_fractions)!r}; expected 3 non-negative fractions")
        by_group = split_groups(group_of, split_fractions, seed, where=where_groups)
        good = [(sid, w, by_group[sid], v, tv) for sid, w, _, v, tv in good]
    if not has_split and not has_group:
        if (
            len(split_fractions) != 3
            or any(f < 0 for f in split_fractions)
            or not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6)
        ):
            raise DatasetError(
                f"split_fractions = {tuple(split_fractions)!r}; expected 3 non-negative fractions summing to 1"
            )
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(505,)))
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, (_, _, _, _, tv) in enumerate(good):
            by_class[tv[tgt_cols[0]]].append(i)
        assign: dict[int, str] = {}
        for c in sorted(by_class):
            idx = [by_class[c][j] for j in rng.permutation(len(by_class[c]))]
            n = len(idx)
            n_val, n_test = round(n * split_fractions[1]), round(n * split_fractions[2])
            while n - n_val - n_test < 1 and (n_val or n_test):  # keep at least one per class in train
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
            for k, i in enumerate(idx):
                assign[i] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
        good = [(sid, w, assign[i], v, tv) for i, (sid, w, _, v, tv) in enumerate(good)]
    samples = [
        Sample(sid, split, vals, {t: index[t][tv[t]] for t in tgt_cols}, group_of.get(sid))  # type: ignore[arg-type]
        for sid, _, split, vals, tv in good
    ]
    samples.sort(key=lambda s: SPLITS.index(s.split))
    fmt = {".jsonl": "jsonl", ".parquet": "parquet", ".tsv": "tsv"}.get(path.suffix.lower(), "csv")
    info = {
        "description": f"{ds_name}: user manifest {path.name} (fusionkit.data.manifest)",
        "task": "classification",
        "manifest": str(path),
        "columns": {"modalities": {m: c for m, (c, _) in mods.items()}, "targets": tgt_cols, "split": has_split},
        "split_policy": "given" if has_split else f"random by {group_column!r}" if has_group else "stratified random",
    }
    if has_group:
        info["group_column"] = group_column
    return Built(
        name=ds_name,
        format=f"manifest-{fmt}",
        modalities={m: k for m, (_, k) in mods.items()},
        targets=classes,
        samples=samples,
        info=info,
        media_root=root,
        stats={
            "rows": len(rows),
            "columns": cols,
            "modalities": {m: f"{c} ({k})" for m, (c, k) in mods.items()},
            "targets": tgt_cols,
        },
    )
