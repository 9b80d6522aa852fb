"""Where a decoder looks: per-token attention over the image regions, and the per-image table of
captions and scores."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fusionkit.tasks.captioning.data import CaptionSplit
from fusionkit.tasks.captioning.decoders import CaptionDecoder
from fusionkit.tasks.captioning.search import generate
from fusionkit.tasks.captioning.tokenizer import CaptionTokenizer

Tensor = torch.Tensor


@dataclass
class AttentionMap:
    image_id: str
    caption: str
    tokens: list[str]  # the generated pieces, then "<end>"
    attention: Tensor  # (len(tokens), L) attention over the grid regions for each token
    grid_hw: tuple[int, int]


def attention_maps(
    model: CaptionDecoder,
    tokenizer: CaptionTokenizer,
    split: CaptionSplit,
    n: int = 4,
    image_ids: Sequence[str] | None = None,
    grid_hw: tuple[int, int] | None = None,
) -> list[AttentionMap]:
    """Greedy captions of ``n`` images of ``split`` (or the given ``image_ids``) with each
    token's attention over the grid (Show-Attend-Tell alphas; for the Transformer the last
    layer's cross-attention averaged over heads, the pooled slot left out)."""
    if image_ids is None:
        rows = list(range(min(n, len(split))))
    else:
        where = {i: r for r, i in enumerate(split.image_ids)}
        bad = [i for i in image_ids if i not in where]
        if bad:
            raise KeyError(f"image ids not in the split: {bad}")
        rows = [where[i] for i in image_ids]
    n_reg = split.grid.shape[1]
    if grid_hw is None:
        side = int(round(math.sqrt(n_reg)))
        if side * side != n_reg:
            raise ValueError(f"{n_reg} regions is not a square grid; pass grid_hw=(h, w)")
        grid_hw = (side, side)
    if grid_hw[0] * grid_hw[1] != n_reg:
        raise ValueError(f"grid_hw={grid_hw} does not match {n_reg} regions")
    r = torch.as_tensor(rows)
    gen = generate(model, split.grid[r], None if split.pooled is None else split.pooled[r], return_attention=True)
    out = []
    for row, toks, att in zip(rows, gen.tokens, gen.attention or []):
        pieces = tokenizer.tokens(toks) + ["<end>"]
        out.append(
            AttentionMap(split.image_ids[row], tokenizer.decode(toks), pieces, att[: len(pieces)].float(), grid_hw)
        )
    return out


def caption_table(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    per_image: Mapping[str, Mapping[str, float]] | None = None,
    image_paths: Mapping[str, str | os.PathLike] | None = None,
    ids: Sequence[str] | None = None,
):
    """A DataFrame (image, image_id, caption, references, one column per score) for
    ``Tracker.log_table(key, df, image_columns=["image"])``."""
    import pandas as pd

    rows = []
    for i in ids if ids is not None else list(predictions):
        row: dict[str, Any] = {}
        if image_paths is not None:
            row["image"] = str(image_paths[i])
        row.update({"image_id": i, "caption": predictions[i], "references": " | ".join(references[i])})
        if per_image is not None and i in per_image:
            row.update({k: float(v) for k, v in per_image[i].items()})
        rows.append(row)
    return pd.DataFrame(rows)
