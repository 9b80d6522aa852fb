"""The validation report every loader produces, and ``fusionkit data check``.

A :class:`Problems` collector is handed to a loader while it reads raw data. What it does with a
bad record depends on ``on_error``:

* ``"raise"`` (the default of :func:`fusionkit.data.registry.prepare`): raise
  :class:`~fusionkit.data.base.DatasetError` at the first problem, naming the file, the line or
  record and what was expected;
* ``"skip"``: drop the record, list it (kind, where, message, file) and go on; the list lands in
  the :class:`Report`, in ``report.json`` and in ``skipped.json`` of the processed folder;
* ``"collect"`` (what ``fusionkit data check`` uses): like skip, but every problem counts as an
  error, so the check exits non-zero.

Problems that make a whole file unusable (a CSV without the expected columns, JSON that does not
parse, a folder without any known layout) always raise; ``check`` reports them as one error.

:class:`Report` holds: counts per split, extra counts (images, captions, questions, speakers, ...),
the class balance per target and split, and the issues by kind - ``missing_file``,
``duplicate``, ``empty_caption``, ``corrupt``, ``unsafe_path``, ``malformed``, ``unmatched``,
``dropped`` (e.g. answers outside the top K) - with :meth:`Report.render` printing all of it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusionkit.data.base import SPLITS, DatasetError, Sample

__all__ = ["ON_ERROR", "Issue", "Problems", "Report", "check", "check_processed", "class_balance"]

ON_ERROR = ("raise", "skip", "collect")

# kinds the report names in its summary lines (others are listed under "other")
KINDS = {
    "missing_file": "missing files",
    "duplicate": "duplicate ids",
    "empty_caption": "empty captions / texts",
    "corrupt": "corrupt or unreadable files",
    "unsafe_path": "paths escaping the root",
    "malformed": "malformed records",
    "unmatched": "unmatched annotations",
    "dropped": "dropped by an option",
}


@dataclass
class Issue:
    kind: str  # one of KINDS
    where: str  # file:line (id ...) or file: record
    message: str  # what is wrong and what was expected
    severity: str = "error"  # error | skipped | warning
    file: str | None = None  # the media file concerned, if any

    def line(self) -> str:
        return f"{self.where}: {self.message}"


class Problems:
    """Collects (or raises) the problems a loader finds; see the module docstring."""

    def __init__(self, on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise DatasetError(f"on_error = {on_error!r}; expected one of {ON_ERROR}")
        self.on_error = on_error
        self.issues: list[Issue] = []

    def error(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        """A bad record: raise (on_error="raise") or list it and let the caller skip it."""
        if self.on_error == "raise":
            raise DatasetError(f"{where}: {message}")
        sev = "skipped" if self.on_error == "skip" else "error"
        self.issues.append(Issue(kind, where, message, sev, None if file is None else str(file)))

    def warn(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        """Something the user should know that does not stop the load (e.g. a duplicate caption)."""
        self.issues.append(Issue(kind, where, message, "warning", None if file is None else str(file)))

    def dropped(self, where: str, message: str) -> None:
        """A record left out on purpose by an option (e.g. an answer outside the top K)."""
        self.issues.append(Issue("dropped", where, message, "warning"))


def class_balance(targets: dict[str, list[str]], samples: list[Sample]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for t, classes in targets.items():
        counts = Counter((s.split, s.targets.get(t)) for s in samples)
        out[t] = {
            sp: {classes[c]: counts.get((sp, c), 0) for c in range(len(classes))}
            for sp in SPLITS
            if any(s.split == sp for s in samples)
        }
    return out


@dataclass
class Report:
    name: str
    source: str
    format: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # samples per split
    stats: dict[str, Any] = field(default_factory=dict)  # images, captions, speakers, ...
    class_balance: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def skipped(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "skipped"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> list[Issue]:
        return [i for i in self.issues if i.kind == kind]

    @property
    def missing_files(self) -> list[Issue]:
        return self.of_kind("missing_file")

    @property
    def duplicates(self) -> list[Issue]:
        return self.of_kind("duplicate")

    @property
    def empty_captions(self) -> list[Issue]:
        return self.of_kind("empty_caption")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["n_errors"], d["n_skipped"], d["n_warnings"] = len(self.errors), len(self.skipped), len(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            name=d["name"],
            source=d["source"],
            format=d.get("format", ""),
            counts=d.get("counts", {}),
            stats=d.get("stats", {}),
            class_balance=d.get("class_balance", {}),
            issues=[Issue(**i) for i in d.get("issues", [])],
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """The report.json of a processed folder (or the file itself)."""
        p = Path(path)
        p = p / "report.json" if p.is_dir() else p
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))

    def render(self, max_items: int = 10) -> str:
        """The human-readable report ``fusionkit data check`` prints."""
        lines = [f"{self.name} ({self.format}) at {self.source}" if self.format else f"{self.name} at {self.source}"]
        total = sum(self.counts.values())
        per = " · ".join(f"{sp} {self.counts.get(sp, 0)}" for sp in SPLITS if sp in self.counts)
        lines.append(f"  samples: {total}" + (f" ({per})" if per else ""))
        for k, v in self.stats.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items())
            elif isinstance(v, list):
                v = ", ".join(map(str, v[:20])) + (" ..." if len(v) > 20 else "")
            lines.append(f"  {k.replace('_', ' ')}: {v}")
        for t, per_split in self.class_balance.items():
            lines.append(f"  class balance ({t}):")
            for sp, counts in per_split.items():
                n = sum(counts.values()) or 1
                shown = list(counts.items())
                body = ", ".join(f"{c} {k} ({100 * k / n:.0f}%)" for c, k in shown[:12])
                if len(shown) > 12:
                    body += f", ... {len(shown) - 12} more classes"
                lines.append(f"    {sp:5s} {body}")
        for kind, label in KINDS.items():
            items = self.of_kind(kind)
            lines.append(f"  {label}: {len(items)}")
            for i in items[:max_items]:
                lines.append(f"    [{i.severity}] {i.line()}")
            if len(items) > max_items:
                lines.append(f"    ... {len(items) - max_items} more (see report.json / skipped.json)")
        other = [i for i in self.issues if i.kind not in KINDS]
        for i in other[:max_items]:
            lines.append(f"  [{i.severity}] {i.line()}")
        status = "OK" if self.ok else f"{len(self.errors)} ERROR(S)"
        lines.append(
            f"  status: {status} ({len(self.errors)} errors, {len(self.skipped)} skipped, {len(self.warnings)} warnings)"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------- processed folders
def check_processed(root: str | os.PathLike, media: str = "verify") -> Report:
    """Report on a fusionkit dataset folder (dataset.json + manifest.jsonl): every line checked,
    every problem listed (load_dataset stops at the first). ``media``: "none" (existence only),
    "verify" (open images, read WAV headers) or "decode" (decode every image)."""
    from fusionkit.data.base import MODALITY_KINDS
    from fusionkit.data.readers import check_audio, check_image, read_json, read_text, safe_media_path

    root = Path(root)
    rep = Report(name="?", source=str(root), format="fusionkit dataset")
    meta_path, man_path = root / "dataset.json", root / "manifest.jsonl"
    try:
        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object")
        for key in ("name", "modalities", "targets"):
            if key not in meta:
                raise DatasetError(f"{meta_path}: missing key {key!r}")
        rep.name = str(meta["name"])
        modalities = meta["modalities"]
        targets = meta["targets"]
        if not isinstance(modalities, dict) or not isinstance(targets, dict):
            raise DatasetError(f"{meta_path}: 'modalities' and 'targets' must be objects")
        for m, kind in modalities.items():
            if kind not in MODALITY_KINDS:
                raise DatasetError(f"{meta_path}: modality {m!r} has kind {kind!r}; expected one of {MODALITY_KINDS}")
        media_root = Path(meta["media_root"]) if meta.get("media_root") else root
        if not media_root.is_dir():
            raise DatasetError(f"{meta_path}: media_root {media_root} does not exist")
        text = read_text(man_path)
    except DatasetError as e:
        rep.issues.append(Issue("malformed", str(root), str(e)))
        return rep
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    checked: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{man_path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            rep.issues.append(Issue("malformed", where, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(row, dict):
            rep.issues.append(Issue("malformed", where, "expected a JSON object"))
            continue
        sid = row.get("id")
        if not isinstance(sid, str) or not sid:
            rep.issues.append(Issue("malformed", where, f"expected a non-empty string 'id', got {sid!r}"))
            continue
        where = f"{where} (id {sid!r})"
        if sid in seen:
            rep.issues.append(Issue("duplicate", where, f"id appears twice (first on line {seen[sid]})"))
            continue
        seen[sid] = lineno
        bad = False
        if row.get("split") not in SPLITS:
            rep.issues.append(Issue("malformed", where, f"split {row.get('split')!r}; expected one of {SPLITS}"))
            bad = True
        mods = {}
        for m, kind in modalities.items():
            v = row.get(m)
            if kind == "text":
                if not isinstance(v, str):
                    rep.issues.append(Issue("malformed", where, f"text modality {m!r} must be a string, got {v!r}"))
                    bad = True
                elif not v.strip():
                    rep.issues.append(Issue("empty_caption", where, f"text modality {m!r} is empty"))
                mods[m] = v
                continue
            try:
                rel = safe_media_path(media_root, v, f"modality {m!r}")
            except DatasetError as e:
                rep.issues.append(Issue("unsafe_path" if isinstance(v, str) and v else "malformed", where, str(e)))
                bad = True
                continue
            p = media_root / rel
            if not p.is_file():
                rep.issues.append(Issue("missing_file", where, f"{kind} file {p} does not exist", file=str(p)))
                bad = True
            elif media != "none" and rel not in checked:
                checked.add(rel)
                try:
                    check_image(p, decode=media == "decode") if kind == "image" else check_audio(p)
                except DatasetError as e:
                    rep.issues.append(Issue("corrupt", where, str(e), file=str(p)))
                    bad = True
            mods[m] = rel
        tg = {}
        for t, classes in targets.items():
            v = row.get(t)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(classes):
                rep.issues.append(
                    Issue("malformed", where, f"target {t!r} = {v!r}; expected an integer in [0, {len(classes)})")
                )
                bad = True
            else:
                tg[t] = v
        if not bad:
            samples.append(Sample(id=sid, split=row["split"], modalities=mods, targets=tg))
    if not seen:
        rep.issues.append(Issue("malformed", str(man_path), "no samples"))
    rep.counts = {sp: sum(s.split == sp for s in samples) for sp in SPLITS if any(s.split == sp for s in samples)}
    rep.class_balance = class_balance(targets, samples)
    rep.stats = {"modalities": modalities, "media_root": str(media_root)}
    if (root / "skipped.json").is_file():
        try:
            rep.stats["skipped_when_prepared"] = len(json.loads((root / "skipped.json").read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            rep.issues.append(Issue("malformed", str(root / "skipped.json"), "not valid JSON"))
    if rep.name == "shapes" and rep.ok:
        from fusionkit.data import shapes

        try:
            shapes.validate(root)
        except DatasetError as e:
            rep.issues.append(Issue("malformed", str(root), f"shapes consistency check: {e}"))
    return rep


def check(path: str | os.PathLike, name: str | None = None, **options: Any) -> Report:
    """Report on ``path``: a processed fusionkit folder, or raw data in any supported format
    (auto-detected, or ``name``: a registry name). Never writes anything. ``media``: "none",
    "verify" (default) or "decode" - how deeply image/audio files are checked; other options go
    to the loader."""
    from fusionkit.data import registry

    path = Path(path)
    if not path.exists():
        rep = Report(name=name or "?", source=str(path))
        rep.issues.append(Issue("missing_file", str(path), "does not exist"))
        return rep
    media = options.pop("media", None)
    if name is None and path.is_dir() and (path / "dataset.json").is_file():
        return check_processed(path, media=media or "verify")
    return registry.check_raw(path, name=name, media=media, **options)
