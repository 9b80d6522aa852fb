"""Synthetic cached-feature problems with known answers (label = 3 * bit + tone, like shapes)."""

from __future__ import annotations

import torch

from fusionkit.train import SplitData


def label_problem(n: int = 300, seed: int = 0, noise: float = 0.3, dim: int = 16) -> dict[str, SplitData]:
    """``image`` carries ``bit`` (2 classes), ``audio`` carries ``tone`` (3 classes); label = 3*bit + tone.
    Ceilings: image alone 1/3, audio alone 1/2, both 1.0."""
    g = torch.Generator().manual_seed(seed)
    protos_img = torch.randn(2, dim, generator=g) * 2
    protos_aud = torch.randn(3, dim, generator=g) * 2
    out = {}
    for split, size in (("train", n), ("val", n // 3), ("test", n // 3)):
        bit = torch.randint(0, 2, (size,), generator=g)
        tone = torch.randint(0, 3, (size,), generator=g)
        img = protos_img[bit] + noise * torch.randn(size, dim, generator=g)
        aud = protos_aud[tone] + noise * torch.randn(size, dim, generator=g)
        out[split] = SplitData({"image": img, "audio": aud}, 3 * bit + tone, [f"{split}{i}" for i in range(size)])
    return out


#: what each interaction target's label is made of (``interaction_problem``)
INTERACTIONS = ("redundant", "unique", "synergy")


def interaction_problem(
    kind: str, n: int = 300, seed: int = 0, noise: float = 1.0, dim: int = 8, signal: int = 2
) -> dict[str, SplitData]:
    """Two modalities, ``first`` and ``second``, each ``+-prototype`` for its bit plus Gaussian
    noise (sd ``noise``) in ``dim`` dimensions, the prototype non-zero (unit entries, random
    signs) in ``signal`` of them only (the others are nuisance). With the defaults the bit is read
    from one modality with about 92 % accuracy (margin sqrt(signal) / noise). The label's
    interaction type is known by construction:

    * ``redundant``: label = a, and both modalities encode a (either alone reaches the ceiling);
    * ``unique``: label = a, ``first`` encodes a, ``second`` an unrelated bit b;
    * ``synergy``: label = a XOR b, ``first`` encodes a, ``second`` encodes b (each alone at chance).
    """
    if kind not in INTERACTIONS:
        raise ValueError(f"kind {kind!r}; expected one of {INTERACTIONS}")
    g = torch.Generator().manual_seed(seed)
    protos = {}
    for m in ("first", "second"):
        protos[m] = torch.zeros(dim)
        protos[m][:signal] = torch.randint(0, 2, (signal,), generator=g).float() * 2 - 1
    out = {}
    for split in ("train", "val", "test"):  # as large as train: the estimates' noise is the held-out splits'
        a = torch.randint(0, 2, (n,), generator=g)
        b = torch.randint(0, 2, (n,), generator=g)
        bits = {"redundant": (a, a, a), "unique": (a, b, a), "synergy": (a, b, a ^ b)}[kind]
        feats = {}
        for m, bit in zip(("first", "second"), bits[:2]):
            sign = (2 * bit - 1).float()[:, None]
            feats[m] = sign * protos[m] + noise * torch.randn(n, dim, generator=g)
        out[split] = SplitData(feats, bits[2], [f"{split}{i}" for i in range(n)])
    return out


def grouped_problem(n_groups: int = 4, per_group: int = 60, seed: int = 0) -> tuple[SplitData, list[str]]:
    """:func:`label_problem`'s samples in ``n_groups`` groups (``g0``, ``g1``, ...), each group's
    audio shifted by an offset of its own (a speaker): (all the samples, their groups)."""
    data = label_problem(n=n_groups * per_group, seed=seed)["train"]
    g = torch.Generator().manual_seed(seed + 1)
    groups = [f"g{i % n_groups}" for i in range(len(data))]
    offsets = torch.randn(n_groups, data.features["audio"].shape[1], generator=g) * 0.5
    audio = data.features["audio"] + offsets[torch.tensor([i % n_groups for i in range(len(data))])]
    return SplitData({**data.features, "audio": audio}, data.labels, data.ids), groups
