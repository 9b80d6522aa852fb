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
from fusionkit.data.base import SPLITS, DatasetError, read_manifest, read_metadata
from fusionkit.data.problems import Issue, Report, class_balance
from fusionkit.data.readers import check_audio, check_image

__all__ = ["check", "check_processed"]


# ------------------------------------------------------------------------------- processed folders
def check_processed(root: str | os.PathLike, media: str = "verify") -> Report:
    """Report on a fusionkit dataset folder (dataset.json + manifest.jsonl): every line checked,
    every problem listed (load_dataset stops at the first). ``media``: "none" (existence only),
    "verify" (open images, read WAV headers) or "decode" (decode every image)."""
    root = Path(root)
    rep = Report(name="?", source=str(root), format="fusionkit dataset")
    man_path = root / "manifest.jsonl"
    try:
        meta, media_root = read_metadata(root)
    except DatasetError as e:
        rep.issues.append(Issue("malformed", str(root), str(e)))
        return rep
    rep.name = str(meta["name"])
    modalities, targets = meta["modalities"], meta["targets"]

    def problem(kind: str, where: str, message: str, file: str | None, fatal: bool) -> None:
        rep.issues.append(Issue(kind, where, message, file=file))

    def check_media(kind: str, p: Path) -> None:
        check_image(p, decode=media == "decode") if kind == "image" else check_audio(p)

    try:
        samples, n_rows = read_manifest(
            man_path, modalities, targets, media_root, problem, check_media=None if media == "none" else check_media,
            tabular=meta.get("tabular"),
        )  # fmt: skip
    except DatasetError as e:
        rep.issues.append(Issue("malformed", str(root), str(e)))
        return rep
    if not n_rows:
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
