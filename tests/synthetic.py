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


def vqarad_folder(root, n_images: int = 20, per_image: int = 4, test: bool = False, size: int = 32):
    """A tiny VQA-RAD folder (``trainset.json``, ``testset.json`` when ``test``, ``images/``) in the
    real format, with the real data's quirks: ``"CLOSED "`` with a stray space, answers in mixed
    case with spaces, a numeric answer. Greyscale JPEGs; the brightness of image ``i`` tells its
    closed answer (``i % 2``: yes on bright images). Returns ``root``."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    organs = ("HEAD", "CHEST", "ABD")
    train, tests = [], []
    qid = 0
    for i in range(n_images):
        name = f"synpic{1000 + i}.jpg"
        level = 200 if i % 2 else 40
        Image.fromarray(np.full((size, size), level, dtype=np.uint8), "L").save(root / "images" / name)
        for j in range(per_image + (1 if test else 0)):
            qid += 1
            closed = j % 2 == 0
            rec = {
                "qid": qid,
                "image_name": name,
                "image_organ": organs[i % 3],
                "answer": ("Yes" if i % 2 else "no ") if closed else (["Left lung", " left lung", 2][(i + j) % 3]),
                "answer_type": ("CLOSED " if qid % 7 == 0 else "CLOSED") if closed else "OPEN",
                "question_type": "PRES" if closed else "POS",
                "question": f"Is there something in image part {j}?" if closed else f"Where is the lesion {j}?",
                "phrase_type": "freeform",
            }
            (tests if test and j == per_image else train).append(rec)
    (root / "trainset.json").write_text(json.dumps(train, indent=1))
    if test:
        (root / "testset.json").write_text(json.dumps(tests, indent=1))
    return root


def regression_problem(n: int = 400, seed: int = 0, noise: float = 0.5**0.5, dim: int = 8) -> dict[str, SplitData]:
    """A regression target in its own units: ``y = 5 + 2 * (u + v + e)`` with ``u``, ``v``, ``e``
    independent normal (sd 1, 1, ``noise``); ``image`` carries ``u`` (along a random direction of
    ``dim`` dimensions, on top of a fixed offset as real embeddings have, so that the projectors'
    LayerNorm keeps the scale of ``u``; plus small noise), ``audio`` carries ``v``. R^2 ceilings
    (Var = 4 (2 + noise^2)): image alone = audio alone = 1 / (2 + noise^2), both 2 / (2 + noise^2)
    - with the default noise 0.4, 0.4 and 0.8; the additive target is within late fusion's reach."""
    g = torch.Generator().manual_seed(seed)
    mods = ("image", "audio")
    dirs = {m: torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0) for m in mods}
    base = {m: 2 * torch.randn(dim, generator=g) for m in mods}
    out = {}
    for split, size in (("train", n), ("val", n // 2), ("test", n)):
        u, v, e = (torch.randn(size, generator=g) for _ in range(3))
        feats = {m: base[m] + z[:, None] * dirs[m] + 0.05 * torch.randn(size, dim, generator=g)
                 for m, z in zip(mods, (u, v))}  # fmt: skip
        y = 5 + 2 * (u + v + noise * e)
        out[split] = SplitData(feats, y.float(), [f"{split}{i}" for i in range(size)])
    return out


def regression_ceilings(noise: float = 0.5**0.5) -> dict[str, float]:
    """:func:`regression_problem`'s R^2 ceilings."""
    return {"image": 1 / (2 + noise**2), "audio": 1 / (2 + noise**2), "fused": 2 / (2 + noise**2)}


def grouped_problem(n_groups: int = 4, per_group: int = 60, seed: int = 0) -> tuple[SplitData, list[str]]:
    """:func:`label_problem`'s samples in ``n_groups`` groups (``g0``, ``g1``, ...), each group's
    audio shifted by an offset of its own (a speaker): (all the samples, their groups)."""
    data = label_problem(n=n_groups * per_group, seed=seed)["train"]
    g = torch.Generator().manual_seed(seed + 1)
    groups = [f"g{i % n_groups}" for i in range(len(data))]
    offsets = torch.randn(n_groups, data.features["audio"].shape[1], generator=g) * 0.5
    audio = data.features["audio"] + offsets[torch.tensor([i % n_groups for i in range(len(data))])]
    return SplitData({**data.features, "audio": audio}, data.labels, data.ids), groups
