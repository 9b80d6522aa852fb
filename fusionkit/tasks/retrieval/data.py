"""A retrieval split: the images' and their captions' features and which caption belongs to which image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusionkit.data.problems import check_on_error
from fusionkit.tasks.retrieval.ranking import _check_mapping

Tensor = torch.Tensor


@dataclass
class RetrievalSplit:
    """``image`` ``(N, Di)``, ``text`` ``(M, Dt)`` (one row per caption), ``text_to_image``
    ``(M,)`` the image row of each caption, ``image_ids`` (optional)."""

    image: Tensor
    text: Tensor
    text_to_image: Tensor
    image_ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.text_to_image = _check_mapping(self.text_to_image, len(self.image), len(self.text))
        if self.image_ids is not None and len(self.image_ids) != len(self.image):
            raise ValueError("image_ids must have one id per image row")
        for name, x in (("image", self.image), ("text", self.text)):
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero().flatten()[:5].tolist()
                raise ValueError(f"{name} features have NaN/inf values (rows {bad})")

    @property
    def n_images(self) -> int:
        return len(self.image)

    @property
    def n_texts(self) -> int:
        return len(self.text)


def retrieval_split(
    dataset,
    split: str,
    feature_ids: Sequence[str],
    image_features: Tensor,
    text_features: Tensor,
    on_error: str = "raise",
) -> RetrievalSplit:
    """Join a :class:`~fusionkit.tasks.captioning.CaptionDataset` split with image features
    (rows = ``feature_ids``) and caption features (rows in the order of
    ``dataset.pairs(split)``, i.e. what the text encoder was given). Images without features are
    an error, or dropped with their captions (``on_error="skip"``, noted in ``dataset.report``)."""
    check_on_error(on_error)
    img_of_caption, captions, _ = dataset.pairs(split)
    if len(text_features) != len(captions):
        raise ValueError(
            f"text_features has {len(text_features)} rows; dataset.pairs({split!r}) has {len(captions)} captions"
        )
    ids, rows = dataset.feature_rows(feature_ids, split, on_error=on_error)
    row_of = {i: r for r, i in enumerate(ids)}
    keep = [j for j, i in enumerate(img_of_caption) if i in row_of]
    t2i = torch.as_tensor([row_of[img_of_caption[j]] for j in keep], dtype=torch.long)
    return RetrievalSplit(image_features[rows].float(), text_features[keep].float(), t2i, ids)
