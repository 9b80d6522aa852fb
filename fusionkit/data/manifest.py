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
  stores the class index, ``dataset.json`` the names.
* **regression targets**: ``regression="score"`` (comma-separated or a list; each is a target
  too) declares columns whose values are numbers to predict; the manifest stores the number,
  ``dataset.json`` an empty class list (:func:`fusionkit.data.base.target_kind`). An undeclared
  target column whose values are all numbers, some of them not integers (``0.37``), is a
  regression target too, and a note in the report says so; a column of integers stays classes
  unless declared (and a column with more words than numbers is classes, each non-integer
  number a bad row). Refused in a regression column: each row with a word or NaN / inf (named),
  and a constant column.
* **tabular**: ``tabular="record=age,sex,bp?"`` makes the columns ``age``, ``sex`` and ``bp``
  one modality named ``record`` (several: ``"record=age,sex;item=price,brand"``); its manifest
  value is an object column -> value. A column is numeric when all its values are numbers, else
  categorical; ``age:num`` / ``sex:cat`` say so. A column may have missing values (empty, null,
  NaN) only when declared so with a trailing ``?`` (``bp?``, ``bp:num?``); inf is always refused.
  Tabular columns are neither detected as modalities nor taken as targets. The tabular encoder
  (:mod:`fusionkit.encoders.tabular`) standardises, one-hot encodes, imputes and masks them.
* **split**: a ``split`` column (train / val / test; also training, validation, valid, dev,
  testing) is used as given; without it the samples are split at random, stratified by the first
  target (a regression target: by its quintiles), by ``split_fractions`` (seeded).
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
paths escaping the root, NaN / inf / words in a regression target, corrupt images and WAVs (``check_media``: "verify", "decode", "none").
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

__all__ = ["parse_modalities", "read_table", "scan"]

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


_TABULAR_TYPES = {"num": "numeric", "numeric": "numeric", "cat": "categorical", "categorical": "categorical"}


def parse_tabular(spec: str | dict[str, Any] | None) -> dict[str, list[tuple[str, str | None, bool]]]:
    """{modality: [(column, "numeric" | "categorical" | None (detect), missing allowed)]} from
    ``"record=age,sex:cat,bp?;item=price"`` or a dict ``{modality: "age,sex" or [columns]}``."""
    if spec is None or spec == "":
        return {}
    groups = (
        spec.items() if isinstance(spec, dict) else [g.split("=", 1) if "=" in g else ("", g) for g in spec.split(";")]
    )
    out: dict[str, list[tuple[str, str | None, bool]]] = {}
    for name, cols in groups:
        name = str(name).strip()
        items = cols.split(",") if isinstance(cols, str) else list(cols)
        parsed = []
        for item in (str(c).strip() for c in items):
            missing = item.endswith("?")
            item = item.rstrip("?").strip()
            col, _, kind = item.partition(":")
            col, kind = col.strip(), kind.strip()
            if not col or (kind and kind not in _TABULAR_TYPES):
                raise DatasetError(
                    f"tabular option: {item!r} in group {name!r}; expected 'column', 'column:num' or 'column:cat', "
                    "with a trailing '?' where values may be missing"
                )
            parsed.append((col, _TABULAR_TYPES[kind] if kind else None, missing))
        if not name or not parsed:
            raise DatasetError(f"tabular option: {spec!r}; expected 'name=column,column,...' groups separated by ';'")
        if name in out:
            raise DatasetError(f"tabular option: modality {name!r} is named twice")
        out[name] = parsed
    return out


def _is_missing(v: Any) -> bool:
    """Empty, null or NaN: a missing tabular value."""
    if v is None or (isinstance(v, str) and (not v.strip() or v.strip().lower() in ("nan", "+nan", "-nan"))):
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


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


def read_table(path: Path, encoding: str, problems: Problems) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(columns, [(where, row)]) for any supported table format (a malformed row goes to
    ``problems``); :func:`scan` and ``fusionkit predict`` (:mod:`fusionkit.predict`) read manifests with it."""
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
        tabular=ds.tabular,
        stats={"source_dataset": str(source)},
    )


def _classes(values: list[tuple[str, Any]]) -> list[str]:
    """Class names of a target column: integers (or strings that all look like integers)
    numerically, other names alphabetically."""
    names = sorted({str(v) for _, v in values})
    if all(_INT.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return names


_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _number(v: Any) -> float | None:
    """``v`` as a float when it is a number (a JSON/Parquet number or a string that reads as one,
    NaN / inf included), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float | np.integer | np.floating):
        return float(v)
    if isinstance(v, str) and (_FLOAT.fullmatch(v.strip()) or v.strip().lower() in _NON_FINITE):
        return float(v.strip())
    return None


def tabular_value(v: Any, column_type: str) -> Any:
    """A manifest cell as a tabular record's value (what ``fusionkit predict`` reads): None when
    missing (empty, null, NaN), a float for a numeric column whose cell reads as a number (the cell
    as it is otherwise: the tabular encoder refuses it, naming the column), else the text."""
    if _is_missing(v):
        return None
    if column_type == "numeric":
        x = _number(v)
        return v if x is None else x
    return str(v).strip() if isinstance(v, str) else str(v)


def _is_regression(col: str, rows: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether an undeclared target column holds continuous numbers: some values are numbers
    that are not integers, and numbers outnumber words (each word is then a bad row, reported;
    with more words, the column is classes and each non-integer number is a bad row)."""
    decimal, numbers, words = False, 0, 0
    for _, row in rows:
        v = row.get(col)
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        x = _number(v)
        if x is None:
            words += 1
            continue
        numbers += 1
        decimal = decimal or not math.isfinite(x) or not x.is_integer()
    return decimal and numbers > words


def _split_column(value: str | Sequence[str] | None) -> list[str]:
    if value is None or value == "":
        return []
    return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else [str(t) for t in value]


def scan(
    source: Path,
    *,
    seed: int = 0,
    problems: Problems,
    progress: bool = True,
    manifest: str | None = None,
    modalities: str | dict[str, str] | None = None,
    targets: str | Sequence[str] | None = None,
    regression: str | Sequence[str] | None = None,
    id_column: str = "id",
    split_column: str = "split",
    group_column: str = "group",
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    media_root: str | None = None,
    name: str | None = None,
    check_media: str = "verify",
    encoding: str = "utf-8",
    tabular: str | dict[str, Any] | None = None,
) -> Built:
    """A manifest table (module docstring).

    ``manifest``: the file, relative to ``source_dir`` (default: manifest.csv/.tsv/.txt/.jsonl/
    .parquet, or the only table there); ``source_dir`` may also be the file itself.
    ``modalities``: "column:kind,..." (or a dict column -> kind); default auto-detected.
    ``targets``: target column(s); default every other column. ``regression``: target column(s)
    whose numbers are predicted (regression; detected for non-integer numbers). ``id_column``,
    ``split_column``, ``group_column``: their names (the group column is optional; each group stays
    in one split). ``split_fractions``: (train, val, test) when there is no split column.
    ``media_root``: folder the file paths are relative to (relative to the manifest's folder;
    default that folder). ``tabular``: tabular modalities, "name=col,col:cat,col?;..." (module
    docstring). ``name``: the dataset name (default the manifest's stem, or its folder
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
    cols, rows = read_table(path, encoding, problems)
    if not rows:
        raise DatasetError(f"{path}: no rows; expected a header and one row per sample")
    ds_name = name or (path.parent.name if path.stem == "manifest" else path.stem)
    # ------------------------------------------------------------------ columns
    spec = parse_modalities(modalities)
    tab = parse_tabular(tabular)
    reserved = {id_column, split_column, group_column}
    for tname, tcols in tab.items():
        missing = [c for c, _, _ in tcols if c not in cols]
        if missing:
            raise DatasetError(f"{path}: tabular column(s) {missing} of {tname!r} not found; the columns are {cols}")
    tab_cols = {c for tcols in tab.values() for c, _, _ in tcols}
    mods: dict[str, tuple[str, str]] = {}
    if spec is not None:
        for mname, (col, kind) in spec.items():
            if col not in cols:
                raise DatasetError(f"{path}: modality column {col!r} not found; the columns are {cols}")
            mods[mname] = (col, kind or "")
    tgt_cols: list[str] | None = None
    declared = _split_column(regression)
    if targets is not None and targets != "":
        tgt_cols = _split_column(targets)
        tgt_cols += [t for t in declared if t not in tgt_cols]
        missing = [t for t in tgt_cols if t not in cols]
        if missing:
            raise DatasetError(f"{path}: target column(s) {missing} not found; the columns are {cols}")
    missing = [t for t in declared if t not in cols]
    if missing:
        raise DatasetError(f"{path}: regression column(s) {missing} not found; the columns are {cols}")
    both = sorted(tab_cols & ({c for c, _ in mods.values()} | set(tgt_cols or []) | set(declared)))
    if both:
        raise DatasetError(f"{path}: column(s) {both} are tabular and also a modality or a target; use each once")
    taken = {c for c, _ in mods.values()} | set(tgt_cols or []) | set(declared) | tab_cols
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
    if not mods and not tab:
        raise DatasetError(
            f"{path}: no modality column found in {cols}; expected file paths with image/audio extensions or a "
            "text column (text, caption, ...), or pass modalities='column:kind,...'"
        )
    if tgt_cols is None:
        tgt_cols = [c for c in cols if c not in reserved | tab_cols and c not in {c2 for c2, _ in mods.values()}]
    if not tgt_cols:
        raise DatasetError(f"{path}: no target column; the columns are {cols} - add one (e.g. label) or pass targets=")
    names = set(mods) | set(tab)
    clash = sorted((set(mods) & set(tab)) | (names & set(tgt_cols)) | ((names | set(tgt_cols)) & {"id", "split"}))
    if clash:
        raise DatasetError(f"{path}: names {clash} are used twice (modality/target/id/split); rename the columns")
    has_split = split_column in cols
    has_id = id_column in cols
    regress = [t for t in tgt_cols if t in declared or _is_regression(t, rows)]
    # each tabular column's type: as declared, else numeric when every present value is a number
    schema: dict[str, dict[str, dict[str, Any]]] = {}
    for tname, tcols in tab.items():
        schema[tname] = {}
        for c, kind, missing in tcols:
            if kind is None:
                present = [r.get(c) for _, r in rows if not _is_missing(r.get(c))]
                kind = "numeric" if present and all(_number(v) is not None for v in present) else "categorical"
            schema[tname][c] = {"type": kind, "missing": missing}
    for t in regress:
        if t not in declared:
            problems.warn(
                "note",
                str(path),
                f"target {t!r} holds non-integer numbers: read as a regression target (the numbers "
                f"are predicted); pass targets/regression options to change that",
            )
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
        vals: dict[str, Any] = {}
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
                expected = "a number (regression target)" if t in regress else "a class label"
                problems.error("malformed", where, f"target {t!r} is empty; expected {expected}")
                bad = True
                break
            if t in regress:
                x = _number(v)
                if x is None or not math.isfinite(x):
                    what = "a word among numbers" if x is None else "NaN / inf"
                    problems.error(
                        "malformed", where, f"regression target {t!r} = {v!r} ({what}); expected a finite number"
                    )
                    bad = True
                    break
                tv[t] = x
                continue
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
        for tname, tcols in schema.items():
            record: dict[str, Any] = {}
            for c, col_spec in tcols.items():
                v = row.get(c)
                if _is_missing(v):
                    if not col_spec["missing"]:
                        problems.error("malformed", where, f"tabular column {c!r} of {tname!r} is missing ({v!r}); "
                                       f"declare it '{c}?' to allow missing values")  # fmt: skip
                        bad = True
                        break
                    record[c] = None
                elif col_spec["type"] == "numeric":
                    x = _number(v)
                    if x is None or not math.isfinite(x):
                        what = "inf" if x is not None else "not a number"
                        problems.error("malformed", where, f"tabular column {c!r} of {tname!r} = {v!r} ({what}); "
                                       "expected a finite number")  # fmt: skip
                        bad = True
                        break
                    record[c] = x
                else:
                    record[c] = str(v).strip() if isinstance(v, str) else str(v)
            if bad:
                break
            vals[tname] = record
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
            modalities={**{m: k for m, (_, k) in mods.items()}, **{t: "tabular" for t in schema}},
            targets={},
            samples=[],
        )
    for t in regress:
        values = {tv[t] for _, _, _, _, tv in good}
        if len(values) < 2:
            raise DatasetError(
                f"{path}: regression target {t!r} is constant ({next(iter(values))} on all {len(good)} usable rows); "
                "expected values that vary"
            )
    classes = {t: [] if t in regress else _classes([(w, tv[t]) for _, w, _, _, tv in good]) for t in tgt_cols}
    for t, cs in classes.items():
        if t not in regress and len(cs) < 2:  # nothing to learn, but a table may be read for other targets
            problems.warn(
                "malformed", str(path), f"target {t!r} is constant ({cs[0]!r} on all {len(good)} usable rows): it has "
                "one class, nothing to predict"
            )  # fmt: skip
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
        by_class: dict[Any, list[int]] = defaultdict(list)
        first = tgt_cols[0]
        if first in regress:  # strata: the quintiles of the numbers (ties broken by row order)
            order = sorted(range(len(good)), key=lambda i: good[i][4][first])
            for rank, i in enumerate(order):
                by_class[rank * 5 // len(good)].append(i)
        else:
            for i, (_, _, _, _, tv) in enumerate(good):
                by_class[tv[first]].append(i)
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
        Sample(sid, split, vals, {t: tv[t] if t in regress else index[t][tv[t]] for t in tgt_cols}, group_of.get(sid))  # type: ignore[arg-type]
        for sid, _, split, vals, tv in good
    ]
    samples.sort(key=lambda s: SPLITS.index(s.split))
    fmt = {".jsonl": "jsonl", ".parquet": "parquet", ".tsv": "tsv"}.get(path.suffix.lower(), "csv")
    info = {
        "description": f"{ds_name}: user manifest {path.name} (fusionkit.data.manifest)",
        "task": "regression" if tgt_cols[0] in regress else "classification",
        "manifest": str(path),
        "columns": {
            "modalities": {m: c for m, (c, _) in mods.items()},
            "tabular": {t: list(cs) for t, cs in schema.items()},
            "targets": tgt_cols,
            "regression": regress,
            "split": has_split,
        },  # fmt: skip
        "split_policy": "given" if has_split else f"random by {group_column!r}" if has_group else "stratified random",
    }
    if has_group:
        info["group_column"] = group_column
    return Built(
        name=ds_name,
        format=f"manifest-{fmt}",
        modalities={**{m: k for m, (_, k) in mods.items()}, **{t: "tabular" for t in schema}},
        targets=classes,
        samples=samples,
        info=info,
        media_root=root,
        tabular=schema,
        stats={
            "rows": len(rows),
            "columns": cols,
            "modalities": {m: f"{c} ({k})" for m, (c, k) in mods.items()},
            "targets": tgt_cols,
        },
    )
