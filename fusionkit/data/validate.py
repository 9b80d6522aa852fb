"""``fusionkit data check``: the :class:`~fusionkit.data.problems.Report` on a processed fusionkit
folder (every manifest line checked, every problem listed) or on raw data in any supported format
(read by the registry's loader, writing nothing). The issue record, the collectors and the report
itself live in :mod:`fusionkit.data.problems`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fusionkit.data import registry, shapes
from fusionkit.data.base import MODALITY_KINDS, SPLITS, DatasetError, Sample
from fusionkit.data.problems import Issue, Report, class_balance
from fusionkit.data.readers import check_audio, check_image, read_json, read_text, safe_media_path

__all__ = ["check", "check_processed"]


# ------------------------------------------------------------------------------- processed folders
def check_processed(root: str | os.PathLike, media: str = "verify") -> Report:
    """Report on a fusionkit dataset folder (dataset.json + manifest.jsonl): every line checked,
    every problem listed (load_dataset stops at the first). ``media``: "none" (existence only),
    "verify" (open images, read WAV headers) or "decode" (decode every image)."""
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
    path = Path(path)
    if not path.exists():
        rep = Report(name=name or "?", source=str(path))
        rep.issues.append(Issue("missing_file", str(path), "does not exist"))
        return rep
    media = options.pop("media", None)
    if name is None and path.is_dir() and (path / "dataset.json").is_file():
        return check_processed(path, media=media or "verify")
    return registry.check_raw(path, name=name, media=media, **options)
