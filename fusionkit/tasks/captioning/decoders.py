"""The caption decoders over image grid features: a Transformer decoder and Show, Attend and Tell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.tasks.captioning.tokenizer import CaptionTokenizer, minilm_embeddings

Tensor = torch.Tensor


@dataclass
class CaptionOutput:
    logits: Tensor  # (B, T, V)
    attention: Tensor | None = None  # (B, T, L) over the grid regions


@dataclass(frozen=True, eq=False)
class DecoderSpec:
    """What a caption decoder is built for, whatever its kind (:func:`build_captioner` fills it
    in): the tokenizer's vocabulary size, longest caption (BOS and EOS included) and special ids;
    the features it reads, grid regions of ``feat_dim`` and the pooled vector of ``pooled_dim``
    (None: no pooled vector); the word embeddings it starts from (None: learned from scratch),
    frozen or not. A decoder's own hyper-parameters are its constructor's keywords."""

    vocab_size: int
    feat_dim: int
    max_len: int
    pad_id: int
    bos_id: int
    eos_id: int
    pooled_dim: int | None = None
    embeddings: Tensor | None = None
    freeze_embeddings: bool = False


class CaptionDecoder(nn.Module):
    """What the two decoders share: the :class:`DecoderSpec` they are built for, the word
    embedding (optionally initialised from given vectors, e.g. :func:`minilm_embeddings`), special
    ids, and the decoding interface ``start(grid, pooled) -> state``, ``step(state, prefix) ->
    (log_probs, attention, state)``, ``reorder(state, index)`` used by :func:`generate`."""

    def __init__(self, spec: DecoderSpec, d_model: int):
        super().__init__()
        self.vocab_size, self.d_model, self.max_len = spec.vocab_size, d_model, spec.max_len
        self.pad_id, self.bos_id, self.eos_id = spec.pad_id, spec.bos_id, spec.eos_id
        if spec.embeddings is not None:
            if spec.embeddings.shape[0] != spec.vocab_size:
                raise ValueError(
                    f"embeddings have {spec.embeddings.shape[0]} rows; the vocabulary has {spec.vocab_size}"
                )
            self.embed = nn.Embedding.from_pretrained(
                spec.embeddings.float().clone(), freeze=spec.freeze_embeddings, padding_idx=spec.pad_id
            )
        else:
            self.embed = nn.Embedding(spec.vocab_size, d_model, padding_idx=spec.pad_id)
        emb_dim = self.embed.embedding_dim
        self.emb_proj: nn.Module = nn.Identity() if emb_dim == d_model else nn.Linear(emb_dim, d_model)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.emb_proj(self.embed(tokens))

    def regularizer(self, out: CaptionOutput, target_mask: Tensor) -> Tensor:
        return out.logits.new_zeros(())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @staticmethod
    def _check(grid: Tensor, pooled: Tensor | None) -> None:
        if grid.dim() != 3:
            raise ValueError(f"grid features must be (B, L, D); got {tuple(grid.shape)}")
        if pooled is not None and (pooled.dim() != 2 or pooled.shape[0] != grid.shape[0]):
            raise ValueError(f"pooled features must be (B, D) with the grid's B; got {tuple(pooled.shape)}")


class TransformerCaptioner(CaptionDecoder):
    """``nn.TransformerDecoder`` captioner over grid regions (+ the pooled vector as one extra
    memory slot when ``pooled_dim`` is given). Pre-norm layers, GELU, learned positions for tokens
    and regions; a causal mask and a padding mask on the tokens."""

    def __init__(
        self,
        spec: DecoderSpec,
        *,
        d_model: int = 256,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int | None = None,
        dropout: float = 0.1,
        max_regions: int = 256,
    ):
        super().__init__(spec, d_model)
        feat_dim, pooled_dim, max_len = spec.feat_dim, spec.pooled_dim, spec.max_len
        self.feat_proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, d_model))
        self.region_pos = nn.Parameter(torch.randn(max_regions, d_model) * 0.02)
        self.pooled_proj = (
            nn.Sequential(nn.LayerNorm(pooled_dim), nn.Linear(pooled_dim, d_model)) if pooled_dim else None
        )
        self.pooled_slot = nn.Parameter(torch.randn(d_model) * 0.02) if pooled_dim else None
        self.token_pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(
            d_model, heads, ff_dim or 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d_model))
        self.out = nn.Linear(d_model, spec.vocab_size)
        self.max_regions = max_regions

    def memory(self, grid: Tensor, pooled: Tensor | None) -> Tensor:
        self._check(grid, pooled)
        if grid.shape[1] > self.max_regions:
            raise ValueError(
                f"{grid.shape[1]} regions; this captioner was built for at most max_regions={self.max_regions}"
            )
        mem = self.feat_proj(grid) + self.region_pos[: grid.shape[1]]
        if self.pooled_proj is not None:
            if pooled is None:
                raise ValueError("this captioner was built with pooled_dim: pass the pooled features too")
            mem = torch.cat([mem, (self.pooled_proj(pooled) + self.pooled_slot).unsqueeze(1)], dim=1)
        return self.drop(mem)

    def _embed(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"{tokens.shape[1]} tokens; this captioner was built for max_len={self.max_len}")
        return self.drop(self.embed_tokens(tokens) + self.token_pos[: tokens.shape[1]])

    def _decode(self, x: Tensor, mem: Tensor, pad: Tensor | None, need_attention: bool) -> tuple[Tensor, Tensor | None]:
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        if not need_attention:
            h = self.decoder(x, mem, tgt_mask=causal, tgt_key_padding_mask=pad, tgt_is_causal=True)
            return h, None
        # the same computation as nn.TransformerDecoder (pre-norm layers), written out so the last
        # layer's cross-attention weights can be returned
        attn = None
        for n, layer in enumerate(self.decoder.layers):
            y = layer.norm1(x)
            x = x + layer.dropout1(
                layer.self_attn(y, y, y, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0]
            )
            y = layer.norm2(x)
            last = n == len(self.decoder.layers) - 1
            ca, w = layer.multihead_attn(y, mem, mem, need_weights=last, average_attn_weights=True)
            if last:
                attn = w
            x = x + layer.dropout2(ca)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(x))))))
        h = self.decoder.norm(x) if self.decoder.norm is not None else x
        return h, attn

    def forward(
        self, grid: Tensor, tokens: Tensor, pooled: Tensor | None = None, need_attention: bool = False
    ) -> CaptionOutput:
        mem = self.memory(grid, pooled)
        pad = tokens == self.pad_id
        h, attn = self._decode(self._embed(tokens), mem, pad, need_attention)
        return CaptionOutput(self.out(h), None if attn is None else attn[:, :, : grid.shape[1]])

    # incremental decoding: the prefix is re-decoded each step (captions are short)
    def start(self, grid: Tensor, pooled: Tensor | None) -> dict[str, Tensor]:
        return {"mem": self.memory(grid, pooled), "n_regions": torch.tensor(grid.shape[1])}

    def step(self, state: dict[str, Tensor], prefix: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        h, attn = self._decode(self._embed(prefix), state["mem"], None, True)
        logp = F.log_softmax(self.out(h[:, -1]).float(), dim=-1)
        return logp, attn[:, -1, : int(state["n_regions"])], state

    def reorder(self, state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        return {"mem": state["mem"].index_select(0, index), "n_regions": state["n_regions"]}


class LSTMAttentionCaptioner(CaptionDecoder):
    """Show, Attend and Tell: an ``LSTMCell`` with soft additive attention over the regions.

    Each step: ``e_l = w^T tanh(W_a v_l + U_a h)``, ``alpha = softmax(e)``, context
    ``z = sigmoid(f_beta(h)) * sum_l alpha_l v_l``, ``h, c = LSTM([E y_{t-1}; z], (h, c))``,
    ``logits = W_o dropout(h)``. ``v_l`` are the regions projected to ``d_model``; ``h, c`` start
    from the mean region (and the pooled vector when ``pooled_dim`` is given). ``alpha_c``: weight
    of the doubly stochastic regulariser ``(1 - sum_t alpha_tl)^2`` (averaged over regions and
    images, as in the common PyTorch implementation; the paper sums over regions)."""

    def __init__(
        self, spec: DecoderSpec, *, d_model: int = 256, att_dim: int = 256, dropout: float = 0.3, alpha_c: float = 1.0
    ):
        super().__init__(spec, d_model)
        feat_dim, pooled_dim = spec.feat_dim, spec.pooled_dim
        self.feat_proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, d_model), nn.ReLU())
        self.enc_att = nn.Linear(d_model, att_dim)
        self.dec_att = nn.Linear(d_model, att_dim)
        self.full_att = nn.Linear(att_dim, 1)
        init_in = d_model + (pooled_dim or 0)
        self.pooled_norm = nn.LayerNorm(pooled_dim) if pooled_dim else None
        self.init_h = nn.Linear(init_in, d_model)
        self.init_c = nn.Linear(init_in, d_model)
        self.f_beta = nn.Linear(d_model, d_model)
        self.lstm = nn.LSTMCell(2 * d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, spec.vocab_size)
        self.alpha_c = alpha_c
        self.pooled_dim = pooled_dim

    def start(self, grid: Tensor, pooled: Tensor | None) -> dict[str, Tensor]:
        self._check(grid, pooled)
        v = self.feat_proj(grid)
        init = v.mean(dim=1)
        if self.pooled_norm is not None:
            if pooled is None:
                raise ValueError("this captioner was built with pooled_dim: pass the pooled features too")
            init = torch.cat([init, self.pooled_norm(pooled)], dim=-1)
        return {
            "v": v,
            "att_v": self.enc_att(v),
            "h": torch.tanh(self.init_h(init)),
            "c": torch.tanh(self.init_c(init)),
        }

    def _advance(self, state: dict[str, Tensor], token: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        h, c, v, att_v = state["h"], state["c"], state["v"], state["att_v"]
        e = self.full_att(torch.tanh(att_v + self.dec_att(h).unsqueeze(1))).squeeze(-1)  # (B, L)
        alpha = torch.softmax(e, dim=-1)
        z = torch.sigmoid(self.f_beta(h)) * (alpha.unsqueeze(-1) * v).sum(dim=1)
        h, c = self.lstm(torch.cat([self.embed_tokens(token), z], dim=-1), (h, c))
        logits = self.out(self.drop(h))
        return logits, alpha, {"v": v, "att_v": att_v, "h": h, "c": c}

    def forward(
        self, grid: Tensor, tokens: Tensor, pooled: Tensor | None = None, need_attention: bool = True
    ) -> CaptionOutput:
        state = self.start(grid, pooled)
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            lg, a, state = self._advance(state, tokens[:, t])
            logits.append(lg)
            alphas.append(a)
        return CaptionOutput(torch.stack(logits, 1), torch.stack(alphas, 1))

    def regularizer(self, out: CaptionOutput, target_mask: Tensor) -> Tensor:
        if not self.alpha_c or out.attention is None:
            return out.logits.new_zeros(())
        a = out.attention * target_mask.unsqueeze(-1).to(out.attention.dtype)  # steps that predict a real token
        return self.alpha_c * ((1.0 - a.sum(dim=1)) ** 2).mean()

    def step(self, state: dict[str, Tensor], prefix: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits, alpha, state = self._advance(state, prefix[:, -1])
        return F.log_softmax(logits.float(), dim=-1), alpha, state

    def reorder(self, state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        return {k: v.index_select(0, index) for k, v in state.items()}


CAPTIONERS: dict[str, type[CaptionDecoder]] = {"transformer": TransformerCaptioner, "lstm": LSTMAttentionCaptioner}


def build_captioner(
    kind: str,
    tokenizer: CaptionTokenizer,
    feat_dim: int,
    pooled_dim: int | None = None,
    init_embeddings: bool = False,
    freeze_embeddings: bool = False,
    **hparams: Any,
) -> CaptionDecoder:
    """``kind``: ``"transformer"`` or ``"lstm"``; the vocabulary, ``max_len`` and special ids come
    from ``tokenizer``; ``init_embeddings=True`` initialises the word embeddings from MiniLM's
    (384-d, projected to ``d_model`` when it differs)."""
    if kind not in CAPTIONERS:
        raise KeyError(f"unknown captioner {kind!r}; valid: {sorted(CAPTIONERS)}")
    spec = DecoderSpec(
        tokenizer.vocab_size,
        feat_dim,
        max_len=tokenizer.max_len,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        pooled_dim=pooled_dim,
        embeddings=minilm_embeddings(tokenizer) if init_embeddings else None,
        freeze_embeddings=freeze_embeddings,
    )
    return CAPTIONERS[kind](spec, **hparams)
