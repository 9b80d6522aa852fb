"""Caption data: the reference captions of a dataset's images (read through
:mod:`fusionkit.data.caption_formats`) and a split's tokenised captions with their image features."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit.data import problems
from fusionkit.data.base import SPLITS
from fusionkit.data.caption_formats import coco_images, karpathy_images
from fusionkit.tasks.captioning.tokenizer import CaptionTokenizer

Tensor = torch.Tensor


def _image_id(filename: str) -> str:
    return Path(filename).stem


@dataclass
class CaptionDataset:
    """Reference captions per image: ``references[image_id]`` (raw strings, stripped),
    ``splits[image_id]``, ``files[image_id]`` (the file name the source gives), and the
    :class:`~fusionkit.data.problems.InputReport` of what was skipped or truncated. Image ids are
    file stems (``images/shapes_00042.png`` -> ``"shapes_00042"``), as in the feature cache."""

    references: dict[str, list[str]]
    splits: dict[str, str]
    files: dict[str, str]
    source: str = ""
    report: problems.InputReport = field(default_factory=problems.InputReport)

    # -- readers ------------------------------------------------------------------------------
    @classmethod
    def read_karpathy(
        cls,
        path: str | os.PathLike,
        *,
        tokenizer: CaptionTokenizer | None = None,
        too_long: str = "truncate",
        on_error: str = "raise",
        image_root: str | os.PathLike | None = None,
        report_path: str | os.PathLike | None = None,
    ) -> CaptionDataset:
        """Read a Karpathy-split ``captions.json`` (``{"images": [{"filename", "split",
        "sentences": [{"raw", ...}], ...}]}``; split ``restval`` counts as ``train``).

        ``tokenizer`` (optional): check caption lengths against its ``max_len``; ``too_long``:
        ``"truncate"`` (keep; noted in the report) or ``"error"`` (a bad record);
        ``image_root``: check that every image file exists there; ``report_path``: write the
        report there."""
        path = Path(path)
        problems.check_on_error(on_error)
        report = problems.InputReport(source=str(path))
        sink = problems.ReportProblems(report, on_error, path)
        entries = []
        with problems.as_task_error():
            for im in karpathy_images(path, sink):
                sents = im.sentences(sink)
                if sents is not None:
                    entries.append(
                        (f"images[{im.index}] ({im.stem})", im.stem, im.split, im.ref, [c for c, _ in sents])
                    )
        return cls._build(entries, str(path), tokenizer, too_long, on_error, image_root, report_path, report)

    @classmethod
    def read_coco(
        cls,
        path: str | os.PathLike,
        split: str,
        *,
        tokenizer: CaptionTokenizer | None = None,
        too_long: str = "truncate",
        on_error: str = "raise",
        image_root: str | os.PathLike | None = None,
        report_path: str | os.PathLike | None = None,
    ) -> CaptionDataset:
        """Read a COCO caption file (``{"images": [{"id", "file_name"}], "annotations":
        [{"image_id", "caption"}]}``) as split ``split``. An annotation whose ``image_id`` is not
        among ``images`` is a caption naming a missing image."""
        path = Path(path)
        problems.check_on_error(on_error)
        report = problems.InputReport(source=str(path))
        with problems.as_task_error():
            images = coco_images(path, problems.ReportProblems(report, on_error, path))
        entries = [
            (f"images[{im.index}] ({im.stem}, id {im.id})", im.stem, split, im.file_name, [c for c, _ in im.captions])
            for im in images
        ]
        return cls._build(entries, str(path), tokenizer, too_long, on_error, image_root, report_path, report)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        source: str = "records",
        tokenizer: CaptionTokenizer | None = None,
        too_long: str = "truncate",
        on_error: str = "raise",
        image_root: str | os.PathLike | None = None,
        report_path: str | os.PathLike | None = None,
    ) -> CaptionDataset:
        """From flat ``(image_id, caption, split)`` tuples or ``{"image_id", "caption", "split"}``
        dicts (``"file"`` optional), e.g. a Flickr8k CSV; captions are grouped per image in order.
        An image id given two different splits is a duplicated id."""
        grouped: dict[str, list[Any]] = {}
        order: list[str] = []
        conflicts: list[tuple[str, Any, Any]] = []
        for k, r in enumerate(records):
            if isinstance(r, Mapping):
                iid, cap, sp, fn = r.get("image_id"), r.get("caption"), r.get("split"), r.get("file")
            else:
                iid, cap, sp = r[0], r[1], r[2]
                fn = r[3] if len(r) > 3 else None
            iid = str(iid)
            if iid not in grouped:
                grouped[iid] = [f"record {k} ({iid})", iid, sp, fn or iid, []]
                order.append(iid)
            elif grouped[iid][2] != sp:
                conflicts.append((iid, grouped[iid][2], sp))
            grouped[iid][4].append(cap)
        problems.check_on_error(on_error)
        report = problems.InputReport(source=source)
        for iid, a, b in conflicts:
            problems.problem(
                report, on_error, source, f"image {iid!r}", f"listed in two splits ({a!r} and {b!r}): duplicated id"
            )
            grouped.pop(iid, None)
        entries = [tuple(grouped[i]) for i in order if i in grouped]
        return cls._build(entries, source, tokenizer, too_long, on_error, image_root, report_path, report)

    @classmethod
    def _build(
        cls,
        entries: Sequence[tuple[str, str | None, Any, str | None, list[Any] | None]],
        source: str,
        tokenizer: CaptionTokenizer | None,
        too_long: str,
        on_error: str,
        image_root: str | os.PathLike | None,
        report_path: str | os.PathLike | None,
        report: problems.InputReport | None = None,
    ) -> CaptionDataset:
        problems.check_on_error(on_error)
        if too_long not in ("truncate", "error"):
            raise ValueError(f"too_long={too_long!r}; expected 'truncate' or 'error'")
        report = report or problems.InputReport(source=source)
        refs: dict[str, list[str]] = {}
        splits: dict[str, str] = {}
        files: dict[str, str] = {}
        first_seen: dict[str, str] = {}
        for where, iid, split, fn, caps in entries:
            if iid is None:
                problems.problem(report, on_error, source, where, "expected a record with a non-empty 'filename'")
                continue
            if iid in first_seen:
                problems.problem(
                    report, on_error, source, where, f"image id {iid!r} repeated (first at {first_seen[iid]})"
                )
                continue
            first_seen[iid] = where
            split = "train" if split == "restval" else split
            if split not in SPLITS:
                problems.problem(
                    report, on_error, source, where, f"split {split!r}; expected one of {SPLITS} (or 'restval')"
                )
                continue
            if image_root is not None and not (Path(image_root) / fn).is_file():
                problems.problem(report, on_error, source, where, f"image file {Path(image_root) / fn} does not exist")
                continue
            if not caps:
                problems.problem(report, on_error, source, where, "image has no captions")
                continue
            kept: list[str] = []
            for j, c in enumerate(caps):
                rec = f"{where} caption {j}"
                if not isinstance(c, str) or not c.strip():
                    problems.problem(report, on_error, source, rec, f"empty caption {c!r}; expected some text")
                    continue
                c = " ".join(c.split())
                if tokenizer is not None:
                    if not tokenizer.normalize(c):
                        problems.problem(report, on_error, source, rec, f"caption {c!r} is empty after normalisation")
                        continue
                    n = len(tokenizer.pieces(c)) + 2
                    if n > tokenizer.max_len:
                        what = f"caption has {n} tokens with BOS/EOS, longer than max_len={tokenizer.max_len}"
                        if too_long == "error":
                            problems.problem(report, on_error, source, rec, what)
                            continue
                        report.add(source, rec, what, "truncated")
                kept.append(c)
            if not kept:
                problems.problem(report, on_error, source, where, "image has no usable captions left")
                continue
            refs[iid], splits[iid], files[iid] = kept, split, fn
        if not refs:
            raise problems.TaskInputError(
                f"{source}: no usable images with captions ({len(report)} problems: {report.to_text()})"
            )
        ds = cls(refs, splits, files, source, report)
        if report_path is not None:
            report.write(report_path)
        return ds

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.references)

    def ids(self, split: str | None = None) -> list[str]:
        return [i for i in self.references if split is None or self.splits[i] == split]

    def captions(self, split: str | None = None) -> list[str]:
        """Every caption of the split, flattened (e.g. to build the tokenizer's vocabulary)."""
        return [c for i in self.ids(split) for c in self.references[i]]

    def reference_dict(self, split: str | None = None) -> dict[str, list[str]]:
        return {i: list(self.references[i]) for i in self.ids(split)}

    def pairs(self, split: str | None = None) -> tuple[list[str], list[str], Tensor]:
        """(image id per caption, caption texts, caption -> image row in ``ids(split)``): what a
        text encoder encodes for retrieval."""
        ids = self.ids(split)
        img, caps, rows = [], [], []
        for r, i in enumerate(ids):
            for c in self.references[i]:
                img.append(i)
                caps.append(c)
                rows.append(r)
        return img, caps, torch.as_tensor(rows, dtype=torch.long)

    def feature_rows(
        self, feature_ids: Sequence[str], split: str | None = None, on_error: str = "raise"
    ) -> tuple[list[str], Tensor]:
        """(image ids of ``split`` that have features, their rows in ``feature_ids``). An image
        without a feature row is an error, or (``on_error="skip"``) dropped and reported."""
        problems.check_on_error(on_error)
        where: dict[str, int] = {}
        for r, f in enumerate(feature_ids):
            if f in where:
                raise problems.TaskInputError(f"feature ids: {f!r} appears twice (rows {where[f]} and {r})")
            where[f] = r
        ids, rows = [], []
        for i in self.ids(split):
            if i not in where:
                problems.problem(
                    self.report,
                    on_error,
                    self.source,
                    f"image {i!r}",
                    "the caption file names this image but it has no feature row",
                )
                continue
            ids.append(i)
            rows.append(where[i])
        return ids, torch.as_tensor(rows, dtype=torch.long)


@dataclass
class CaptionSplit:
    """One split as tensors: ``grid`` ``(N, L, D)`` and ``pooled`` ``(N, D)`` (or None) per image,
    ``references[n]`` the raw captions of image ``n``, ``tokens`` ``(M, T)`` every caption
    encoded, ``caption_image`` ``(M,)`` its image row, ``n_truncated`` captions cut to fit."""

    image_ids: list[str]
    grid: Tensor
    pooled: Tensor | None
    references: list[list[str]]
    tokens: Tensor
    caption_image: Tensor
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    def reference_dict(self) -> dict[str, list[str]]:
        return dict(zip(self.image_ids, self.references))

    def subset(self, rows: Sequence[int] | Tensor) -> CaptionSplit:
        """The images ``rows`` (and their captions)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        new_of_old = torch.full((len(self),), -1, dtype=torch.long)
        new_of_old[rows] = torch.arange(len(rows))
        keep = new_of_old[self.caption_image] >= 0
        return CaptionSplit(
            [self.image_ids[i] for i in rows.tolist()],
            self.grid[rows],
            None if self.pooled is None else self.pooled[rows],
            [self.references[i] for i in rows.tolist()],
            self.tokens[keep],
            new_of_old[self.caption_image[keep]],
            self.n_truncated,
        )


def caption_split(
    dataset: CaptionDataset,
    split: str,
    tokenizer: CaptionTokenizer,
    feature_ids: Sequence[str],
    grid: Tensor,
    pooled: Tensor | None = None,
    on_error: str = "raise",
) -> CaptionSplit:
    """Join a split of ``dataset`` with the feature tensors whose rows are ``feature_ids`` (grid
    ``(N, L, D)``; pooled ``(N, D)`` optional) and encode its captions with ``tokenizer``."""
    if grid.dim() != 3 or grid.shape[0] != len(feature_ids):
        raise ValueError(
            f"grid must be (N, L, D) with N = len(feature_ids) = {len(feature_ids)}; got {tuple(grid.shape)}"
        )
    if pooled is not None and (pooled.dim() != 2 or pooled.shape[0] != len(feature_ids)):
        raise ValueError(f"pooled must be (N, D) with N = {len(feature_ids)}; got {tuple(pooled.shape)}")
    ids, rows = dataset.feature_rows(feature_ids, split, on_error=on_error)
    if not ids:
        raise problems.TaskInputError(f"{dataset.source}: split {split!r} has no images with features")
    refs = [dataset.references[i] for i in ids]
    texts, owners, records = [], [], []
    for n, (i, caps) in enumerate(zip(ids, refs)):
        for j, c in enumerate(caps):
            texts.append(c)
            owners.append(n)
            records.append(f"{dataset.source}: image {i!r} caption {j}")
    seqs, truncated = tokenizer.encode_batch(texts, records)
    return CaptionSplit(
        image_ids=ids,
        grid=grid[rows].float(),
        pooled=None if pooled is None else pooled[rows].float(),
        references=refs,
        tokens=tokenizer.pad(seqs),
        caption_image=torch.as_tensor(owners, dtype=torch.long),
        n_truncated=int(sum(truncated)),
    )
