"""Image captioning on cached encoder features.

Pieces, in the order a notebook uses them (``tokenizer``, ``data``, ``decoders``, ``training``,
``search``, ``metrics``, ``baseline``, ``attention``; the task's training and evaluation from a
feature index: ``task``)::

    ds    = CaptionDataset.read_karpathy(root / "captions.json")      # or read_coco / from_records
    tok   = CaptionTokenizer.build(ds.captions("train"), max_len=24)   # MiniLM WordPiece, compact vocab
    train = caption_split(ds, "train", tok, ids, grid, pooled)         # features -> CaptionSplit
    model = build_captioner("transformer", tok, feat_dim=grid.shape[-1], pooled_dim=pooled.shape[-1])
    train_captioner(model, train, val, tok, CaptionTrainConfig(epochs=30))
    preds = predict_captions(model, tok, test, method="beam", beam_size=3)   # {image id: caption}
    caption_metrics(test.reference_dict(), preds)                      # BLEU-1..4 METEOR ROUGE-L CIDEr
    nearest_neighbour_captions(train..., test...)                      # the baseline
    maps = attention_maps(model, tok, test, n=4)          # drawn by fusionkit.report.figures.plot_attention_maps

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
    ``fusionkit.tasks.captioning.metrics``) or validation loss, best state restored. Greedy and batched beam
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

from fusionkit.tasks.captioning.attention import AttentionMap, attention_maps, caption_table
from fusionkit.tasks.captioning.baseline import nearest_neighbour_captions
from fusionkit.tasks.captioning.data import CaptionDataset, CaptionSplit, caption_split
from fusionkit.tasks.captioning.decoders import (
    CAPTIONERS,
    CaptionDecoder,
    CaptionOutput,
    DecoderSpec,
    LSTMAttentionCaptioner,
    TransformerCaptioner,
    build_captioner,
)
from fusionkit.tasks.captioning.metrics import caption_metrics
from fusionkit.tasks.captioning.search import Generation, generate, predict_captions
from fusionkit.tasks.captioning.tokenizer import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    CaptionTokenizer,
    default_tokenizer_path,
    minilm_embeddings,
)
from fusionkit.tasks.captioning.training import CaptionTrainConfig, caption_loss, evaluate_captioner, train_captioner

__all__ = [
    "BOS",
    "CAPTIONERS",
    "EOS",
    "PAD",
    "SPECIALS",
    "UNK",
    "AttentionMap",
    "CaptionDataset",
    "CaptionDecoder",
    "CaptionOutput",
    "CaptionSplit",
    "CaptionTokenizer",
    "CaptionTrainConfig",
    "DecoderSpec",
    "Generation",
    "LSTMAttentionCaptioner",
    "TransformerCaptioner",
    "attention_maps",
    "build_captioner",
    "caption_loss",
    "caption_metrics",
    "caption_split",
    "caption_table",
    "default_tokenizer_path",
    "evaluate_captioner",
    "generate",
    "minilm_embeddings",
    "nearest_neighbour_captions",
    "predict_captions",
    "train_captioner",
]
