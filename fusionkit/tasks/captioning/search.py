"""Caption generation: greedy and batched beam search with a length penalty and a minimum length."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fusionkit.progress import progress
from fusionkit.tasks.captioning.data import CaptionSplit
from fusionkit.tasks.captioning.decoders import CaptionDecoder
from fusionkit.tasks.captioning.tokenizer import CaptionTokenizer

Tensor = torch.Tensor


@dataclass
class Generation:
    """Per image: the generated ids (no BOS/EOS), their total log-probability, and (greedy only,
    when asked) the attention over the regions for each generated token incl. EOS ``(T, L)``."""

    tokens: list[list[int]]
    scores: list[float]
    attention: list[Tensor] | None = None


def _length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


def _forbid(model: CaptionDecoder, logp: Tensor) -> Tensor:
    logp[:, model.pad_id] = -math.inf
    if model.bos_id != model.eos_id:
        logp[:, model.bos_id] = -math.inf
    return logp


def _greedy(model: CaptionDecoder, grid: Tensor, pooled: Tensor | None, max_len: int, min_len: int, want_attn: bool):
    b = grid.shape[0]
    state = model.start(grid, pooled)
    prefix = torch.full((b, 1), model.bos_id, dtype=torch.long, device=grid.device)
    done = torch.zeros(b, dtype=torch.bool, device=grid.device)
    score = torch.zeros(b, device=grid.device)
    attn = []
    for t in range(1, max_len):
        logp, a, state = model.step(state, prefix)
        logp = _forbid(model, logp)
        if t - 1 < min_len:  # t - 1 words so far: too early to end
            logp[:, model.eos_id] = -math.inf
        if t == max_len - 1:  # no room left: end here
            nxt = torch.full((b,), model.eos_id, dtype=torch.long, device=grid.device)
        else:
            nxt = logp.argmax(dim=-1)
        score = score + torch.where(done, torch.zeros_like(score), logp.gather(1, nxt[:, None]).squeeze(1))
        nxt = torch.where(done, torch.full_like(nxt, model.pad_id), nxt)
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
        if want_attn:
            attn.append(a)
        done = done | (nxt == model.eos_id)
        if bool(done.all()):
            break
    out, atts = [], []
    for i in range(b):
        seq = prefix[i, 1:].tolist()
        n = seq.index(model.eos_id) if model.eos_id in seq else len(seq)
        out.append(seq[:n])
        if want_attn:
            atts.append(torch.stack([x[i] for x in attn[: n + 1]]).cpu())
    return out, score.tolist(), (atts if want_attn else None)


def _beam(model: CaptionDecoder, grid: Tensor, pooled: Tensor | None, k: int, alpha: float, max_len: int, min_len: int):
    b, dev = grid.shape[0], grid.device
    state = model.start(grid, pooled)
    state = model.reorder(state, torch.arange(b, device=dev).repeat_interleave(k))
    prefix = torch.full((b * k, 1), model.bos_id, dtype=torch.long, device=dev)
    scores = torch.full((b, k), -math.inf, device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    lp_max = _length_penalty(max_len - 1, alpha)
    for t in range(1, max_len):
        logp, _, state = model.step(state, prefix)
        logp = _forbid(model, logp)
        v = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).view(b, k, v)
        eos = cand[:, :, model.eos_id].tolist()
        lp = _length_penalty(t, alpha)
        for i in range(b):
            if done[i] or (t - 1 < min_len and t < max_len - 1):  # too short to end (unless out of room)
                continue
            for j in range(k):
                s = eos[i][j]
                if s > -math.inf:
                    finished[i].append((s / lp, s, prefix[i * k + j, 1:].tolist()))
        if t == max_len - 1:
            break
        cand[:, :, model.eos_id] = -math.inf
        top, idx = cand.view(b, -1).topk(k, dim=-1)
        origin = idx // v
        token = idx % v
        rows = (torch.arange(b, device=dev)[:, None] * k + origin).reshape(-1)
        prefix = torch.cat([prefix.index_select(0, rows), token.reshape(-1, 1)], dim=1)
        state = model.reorder(state, rows)
        scores = top
        best_alive = (top.max(dim=1).values / lp_max).tolist()
        for i in range(b):
            if not done[i] and finished[i]:
                best_done = max(f[0] for f in finished[i])
                done[i] = best_done >= best_alive[i]
        if all(done):
            break
    out, raw = [], []
    for i in range(b):
        best = max(finished[i], key=lambda f: f[0])  # max keeps the first of equal scores
        out.append(best[2])
        raw.append(best[1])
    return out, raw


@torch.inference_mode()
def generate(
    model: CaptionDecoder,
    grid: Tensor,
    pooled: Tensor | None = None,
    *,
    method: str = "greedy",
    beam_size: int = 3,
    length_penalty: float = 1.0,
    max_len: int | None = None,
    min_len: int = 1,
    batch_size: int = 128,
    return_attention: bool = False,
    show_progress: bool = False,
) -> Generation:
    """Decode captions for a batch of images (``grid`` ``(N, L, D)``, ``pooled`` ``(N, D)``).

    ``method="greedy"`` or ``"beam"`` (``beam_size`` hypotheses per image, final score
    ``log p(y) / ((5 + |y|) / 6) ** length_penalty`` with ``|y|`` counting EOS; Wu et al. use
    0.6-1.0). ``length_penalty=0`` ranks by raw log-probability, which favours very short
    captions - after label smoothing, which puts a floor under p(EOS) at every step, even the
    shortest allowed one. ``min_len``: no caption ends before this many tokens (default 1: never
    empty). ``max_len`` (default: the model's) counts BOS and EOS, as the tokenizer's does.
    Attention is returned for greedy decoding only."""
    if method not in ("greedy", "beam"):
        raise ValueError(f"method={method!r}; expected 'greedy' or 'beam'")
    if method == "beam" and beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    if method == "beam" and return_attention:
        raise ValueError("attention maps come from greedy decoding; use method='greedy'")
    max_len = min(max_len or model.max_len, model.max_len)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    toks: list[list[int]] = []
    scores: list[float] = []
    atts: list[Tensor] = []
    starts = range(0, grid.shape[0], batch_size)
    for s in progress(starts, enabled=show_progress, desc=f"{method} decoding", leave=False):
        g = grid[s : s + batch_size].to(dev).float()
        p = None if pooled is None else pooled[s : s + batch_size].to(dev).float()
        if method == "greedy":
            o, sc, at = _greedy(model, g, p, max_len, min_len, return_attention)
            if at is not None:
                atts += at
        else:
            o, sc = _beam(model, g, p, beam_size, length_penalty, max_len, min_len)
        toks += o
        scores += sc
    model.train(was)
    return Generation(toks, scores, atts if return_attention else None)


def predict_captions(
    model: CaptionDecoder, tokenizer: CaptionTokenizer, split: CaptionSplit, **generate_kw: Any
) -> dict[str, str]:
    """``{image id: caption}`` for every image of ``split`` (keywords go to :func:`generate`)."""
    gen = generate(model, split.grid, split.pooled, **generate_kw)
    return dict(zip(split.image_ids, tokenizer.decode_batch(gen.tokens)))
