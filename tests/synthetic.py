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


def xor_problem(n: int = 300, seed: int = 0, noise: float = 0.3, dim: int = 8) -> dict[str, SplitData]:
    """``image`` carries bit ``a``, ``audio`` bit ``b`` (each balanced, independent); label = a XOR b.
    Ceilings: each modality alone 1/2, additive late fusion 1/2 (a sum of per-modality logits
    cannot represent XOR), both together 1.0."""
    g = torch.Generator().manual_seed(seed)
    protos_img = torch.randn(2, dim, generator=g) * 2
    protos_aud = torch.randn(2, dim, generator=g) * 2
    out = {}
    for split, size in (("train", n), ("val", n // 3), ("test", n // 3)):
        a = torch.randint(0, 2, (size,), generator=g)
        b = torch.randint(0, 2, (size,), generator=g)
        img = protos_img[a] + noise * torch.randn(size, dim, generator=g)
        aud = protos_aud[b] + noise * torch.randn(size, dim, generator=g)
        out[split] = SplitData({"image": img, "audio": aud}, a ^ b, [f"{split}{i}" for i in range(size)])
    return out
