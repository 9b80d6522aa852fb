"""Captioning: tokenizer, caption data and its bad input, decoders, decoding, training, the
nearest-neighbour baseline and attention maps (no Java here: see test_caption_metrics.py)."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch

from fusionkit.data.problems import TaskInputError
from fusionkit.report import figures
from fusionkit.tasks import captioning as C
from fusionkit.tasks.captioning import search
from fusionkit.tasks.captioning.metrics import caption_metrics

CAPTIONS = [
    "A red circle left of a blue box.",
    "Two GREEN squares, and a café!",
    "  there   is a big  yellow rhombus  ",
    "Don't miss the purple star; it's tiny.",
]


@pytest.fixture(scope="module")
def tok() -> C.CaptionTokenizer:
    return C.CaptionTokenizer.build(CAPTIONS, max_len=16)


# ----------------------------------------------------------------------------------- tokenizer
def test_round_trip_compact_and_full_vocabulary(tok):
    full = C.CaptionTokenizer(max_len=32, path=tok.path)
    for t in (tok, full):
        for s in CAPTIONS:
            ids = t.encode(s)
            assert ids[0] == t.bos_id and ids[-1] == t.eos_id
            assert t.decode(ids) == t.normalize(s)
    assert tok.normalize(CAPTIONS[1]) == "two green squares , and a cafe !"
    assert tok.normalize(CAPTIONS[2]) == "there is a big yellow rhombus"
    # word pieces are joined back ("rhombus" is split by WordPiece)
    assert len(tok.pieces("rhombus")) > 1 and tok.decode(tok.encode("rhombus")) == "rhombus"
    # compact vocabulary: specials first; full vocabulary: MiniLM's ids
    assert tok.itos[:4] == list(C.SPECIALS) and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert (full.pad_id, full.bos_id, full.eos_id, full.unk_id) == (0, 101, 102, 100)
    assert tok.vocab_size < 60 and full.vocab_size == 30522


def test_unknown_pieces_truncation_padding_and_state(tok, tmp_path):
    ids = tok.encode("a zebra")
    assert tok.unk_id in ids and tok.decode(ids) == "a [UNK]"
    seqs, truncated = tok.encode_batch(["red " * 30, "a red circle"])
    assert len(seqs[0]) == tok.max_len and seqs[0][-1] == tok.eos_id and truncated == [True, False]
    assert tok.too_long("red " * 30) and not tok.too_long("a red circle")
    padded = tok.pad(seqs)
    assert padded.shape == (2, tok.max_len) and int((padded[1] == tok.pad_id).sum()) == tok.max_len - 5
    assert tok.decode(padded[1]) == "a red circle"
    again = C.CaptionTokenizer.load(tok.save(tmp_path / "tok.json"))
    assert again.itos == tok.itos and again.max_len == tok.max_len


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_caption_is_rejected_with_the_record(tok, bad):
    with pytest.raises(ValueError, match="image shapes_00007"):
        tok.encode(bad, record="image shapes_00007")


def test_minilm_embedding_rows_follow_the_vocabulary(tok):
    full = C.CaptionTokenizer(max_len=32, path=tok.path)
    emb = C.minilm_embeddings(tok)
    assert emb.shape == (tok.vocab_size, 384)
    table_rows = torch.as_tensor([full.stoi[p] for p in tok.itos])
    # the same piece gets the same MiniLM row whatever the vocabulary
    assert torch.equal(emb, C.minilm_embeddings(full)[table_rows])
    model = C.build_captioner("transformer", tok, feat_dim=8, init_embeddings=True, d_model=32)
    assert torch.equal(model.embed.weight.data, emb) and isinstance(model.emb_proj, torch.nn.Linear)


# ----------------------------------------------------------------------------------- data
def _karpathy(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"dataset": "t", "images": images}), encoding="utf-8")
    return path


def _img(name: str, split: str, caps: list, imgid: int = 0) -> dict:
    return {"filename": f"images/{name}.png", "imgid": imgid, "split": split, "sentences": [{"raw": c} for c in caps]}


def test_read_karpathy_of_the_shapes_dataset(shapes_root, tok):
    ds = C.CaptionDataset.read_karpathy(shapes_root / "captions.json", tokenizer=tok)
    doc = json.loads((shapes_root / "captions.json").read_text())
    assert len(ds) == len(doc["images"]) == 30
    first = doc["images"][0]
    iid = Path(first["filename"]).stem
    assert iid == "shapes_00000" and ds.references[iid] == [s["raw"] for s in first["sentences"]]
    assert all(len(v) == 5 for v in ds.references.values())
    assert set(ds.splits.values()) <= {"train", "val", "test"} and ds.ids("train")
    # long shapes captions exceed max_len=16: kept, truncated and counted in the report
    assert ds.report.counts.get("truncated", 0) > 0 and "skipped" not in ds.report.counts
    img, caps, rows = ds.pairs("test")
    assert len(img) == len(caps) == len(rows) == 5 * len(ds.ids("test"))
    assert [ds.ids("test")[r] for r in rows.tolist()] == img


def test_bad_captions_raise_naming_the_record_or_are_skipped_with_a_report(tmp_path, tok):
    images = [
        _img("ok", "train", ["a red circle", "a blue box"], 0),
        _img("empty", "train", ["a red circle", "   "], 1),
        _img("long", "val", ["red " * 40, "a red box"], 2),
        _img("nocaps", "test", [], 3),
        _img("ok", "train", ["a duplicate"], 4),
        _img("restval", "restval", ["a green star"], 5),
        _img("badsplit", "holdout", ["a green star"], 6),
    ]
    path = _karpathy(tmp_path / "captions.json", images)
    with pytest.raises(TaskInputError, match=r"images\[1\] \(empty\) caption 1: empty caption"):
        C.CaptionDataset.read_karpathy(path)
    report_file = tmp_path / "report.txt"
    ds = C.CaptionDataset.read_karpathy(path, tokenizer=tok, too_long="error", on_error="skip", report_path=report_file)
    assert ds.ids() == ["ok", "empty", "long", "restval"]
    assert ds.references["empty"] == ["a red circle"] and ds.references["long"] == ["a red box"]
    assert ds.splits["restval"] == "train"
    text = report_file.read_text()
    for needle in ("(empty) caption 1: empty caption", "(long) caption 0: caption has", "(nocaps): image has no captions",
                   "images[4] (ok): image id 'ok' repeated", "split 'holdout'"):  # fmt: skip
        assert needle in text, needle
    assert ds.report.counts == {"skipped": 5}
    # too_long="truncate" keeps the caption and notes it
    ds2 = C.CaptionDataset.read_karpathy(path, tokenizer=tok, on_error="skip")
    assert len(ds2.references["long"]) == 2 and ds2.report.counts["truncated"] == 1
    with pytest.raises(TaskInputError, match=r"\(long\) caption 0: caption has \d+ tokens"):
        C.CaptionDataset.read_karpathy(_karpathy(tmp_path / "c2.json", images[2:3]), tokenizer=tok, too_long="error")
    with pytest.raises(TaskInputError, match=r"\(nocaps\): image has no captions"):
        C.CaptionDataset.read_karpathy(_karpathy(tmp_path / "c3.json", images[3:4]))
    with pytest.raises(TaskInputError, match="image id 'ok' repeated"):
        C.CaptionDataset.read_karpathy(_karpathy(tmp_path / "c4.json", [images[0], images[4]]))


def test_missing_images_and_features(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    path = _karpathy(tmp_path / "c.json", [_img("a", "train", ["a red circle"]), _img("b", "train", ["a box"], 1)])
    with pytest.raises(TaskInputError, match=r"\(b\): image file .*b\.png does not exist"):
        C.CaptionDataset.read_karpathy(path, image_root=tmp_path)
    ds = C.CaptionDataset.read_karpathy(path)
    with pytest.raises(TaskInputError, match="image 'b'.*no feature row"):
        ds.feature_rows(["a", "c"])
    ids, rows = ds.feature_rows(["c", "a"], on_error="skip")
    assert ids == ["a"] and rows.tolist() == [1] and "no feature row" in ds.report.to_text()
    with pytest.raises(TaskInputError, match="appears twice"):
        ds.feature_rows(["a", "a"])
    # COCO files: an annotation naming an image the file does not list
    coco = {
        "images": [{"id": 1, "file_name": "x/a.png"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "a cat"}, {"id": 11, "image_id": 2, "caption": "a dog"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(TaskInputError, match=r"annotations\[1\] \(id 11\): caption names image_id 2"):
        C.CaptionDataset.read_coco(tmp_path / "coco.json", "test")
    ds = C.CaptionDataset.read_coco(tmp_path / "coco.json", "test", on_error="skip")
    assert ds.references == {"a": ["a cat"]} and len(ds.report) == 1
    # flat records: one image in two splits is a duplicated id
    with pytest.raises(TaskInputError, match="two splits"):
        C.CaptionDataset.from_records([("a", "x", "train"), ("a", "y", "test")])


def test_caption_split_aligns_features_and_tokens(tok):
    ds = C.CaptionDataset.from_records(
        [("b", "a red circle", "train"), ("a", "a blue box", "train"), ("a", "a box", "train")]
    )
    grid = torch.arange(3 * 4 * 2, dtype=torch.float).reshape(3, 4, 2)
    sp = C.caption_split(ds, "train", tok, ["a", "x", "b"], grid, grid.mean(1))
    assert sp.image_ids == ["b", "a"]
    assert torch.equal(sp.grid, grid[[2, 0]]) and torch.equal(sp.pooled, grid.mean(1)[[2, 0]])
    assert sp.caption_image.tolist() == [0, 1, 1] and sp.tokens.shape[0] == 3
    assert tok.decode_batch(sp.tokens) == ["a red circle", "a blue box", "a box"]
    sub = sp.subset([1])
    assert sub.image_ids == ["a"] and sub.caption_image.tolist() == [0, 0] and len(sub.tokens) == 2


# ----------------------------------------------------------------------------------- decoders
def _model(kind: str, tok, feat=8, pooled=6, **kw):
    torch.manual_seed(0)
    hp = {"d_model": 32, "dropout": 0.0}
    hp.update(kw)
    if kind == "lstm":
        hp.setdefault("att_dim", 16)
    return C.build_captioner(kind, tok, feat_dim=feat, pooled_dim=pooled, **hp).eval()


def test_transformer_is_causal_and_its_attention_path_matches(tok):
    m = _model("transformer", tok)
    g, p = torch.randn(2, 9, 8), torch.randn(2, 6)
    toks = tok.pad([tok.encode("a red circle left of a blue box"), tok.encode("a box")])
    out = m(g, toks, p)
    assert out.logits.shape == (2, toks.shape[1], tok.vocab_size) and out.attention is None
    changed = toks.clone()
    changed[0, 5:] = tok.stoi["red"]
    torch.testing.assert_close(m(g, changed, p).logits[0, :5], out.logits[0, :5])
    att = m(g, toks, p, need_attention=True)
    torch.testing.assert_close(att.logits, out.logits, atol=1e-5, rtol=1e-5)
    assert att.attention.shape == (2, toks.shape[1], 9)
    assert bool((att.attention.sum(-1) <= 1 + 1e-5).all())  # the pooled slot takes the rest
    with pytest.raises(ValueError, match="pooled"):
        m(g, toks)


def test_lstm_attention_is_a_distribution_and_regularised(tok):
    m = _model("lstm", tok)
    g, p = torch.randn(2, 9, 8), torch.randn(2, 6)
    toks = tok.pad([tok.encode("a red circle"), tok.encode("a box")])
    out = m(g, toks, p)
    assert out.attention.shape == (2, toks.shape[1], 9)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, toks.shape[1]))
    reg = m.regularizer(out, toks != tok.pad_id)
    assert reg.item() > 0 and m.regularizer(out, torch.zeros_like(toks, dtype=torch.bool)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_greedy_decoding_agrees_with_teacher_forcing(kind, tok):
    m = _model(kind, tok)
    g, p = torch.randn(3, 9, 8), torch.randn(3, 6)
    gen = C.generate(m, g, p, return_attention=True)
    forbidden = [tok.pad_id, tok.bos_id]
    for i, seq in enumerate(gen.tokens):
        full = torch.tensor([[tok.bos_id, *seq]])
        with torch.no_grad():
            logp = torch.log_softmax(m(g[i : i + 1], full, p[i : i + 1]).logits[0], -1)
        logp[:, forbidden] = -math.inf
        logp[0, tok.eos_id] = -math.inf  # min_len=1: no empty caption
        ended = len(seq) + 2 <= tok.max_len - 1  # else EOS was forced by the length limit
        expect = seq + [tok.eos_id] if ended else seq
        assert logp.argmax(-1)[: len(expect)].tolist() == expect
        assert gen.attention[i].shape == (len(seq) + 1, 9)
    # batching does not change the result
    one = [C.generate(m, g[i : i + 1], p[i : i + 1]).tokens[0] for i in range(3)]
    assert one == gen.tokens
    assert C.generate(m, g, p, batch_size=2).tokens == gen.tokens


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("min_len", [0, 1, 2])
def test_beam_search_with_a_wide_beam_is_exhaustive_search(alpha, min_len):
    tok = C.CaptionTokenizer.build(["red blue"], max_len=5)  # words: [UNK], red, blue; <= 3 words
    words = [tok.unk_id, tok.stoi["red"], tok.stoi["blue"]]
    m = C.build_captioner("transformer", tok, feat_dim=4, d_model=16, heads=2, dropout=0.0)
    torch.manual_seed(1)
    for prm in m.parameters():
        torch.nn.init.normal_(prm, std=0.5)
    m.eval()
    g = torch.randn(6, 3, 4)
    gen = C.generate(m, g, method="beam", beam_size=27, length_penalty=alpha, min_len=min_len)
    empty = 0
    for i in range(6):
        best, best_seq = -math.inf, None
        for n in range(min_len, 4):
            for seq in itertools.product(words, repeat=n):
                full = torch.tensor([[tok.bos_id, *seq, tok.eos_id]])
                with torch.no_grad():
                    logp = torch.log_softmax(m(g[i : i + 1], full[:, :-1]).logits[0], -1)
                s = float(logp.gather(1, full[0, 1:, None]).sum())
                norm = s / ((5 + n + 1) / 6) ** alpha
                if norm > best + 1e-6:
                    best, best_seq = norm, list(seq)
        assert gen.tokens[i] == best_seq
        assert gen.scores[i] / ((5 + len(best_seq) + 1) / 6) ** alpha == pytest.approx(best, abs=1e-4)
        empty += not best_seq
    if min_len == 0 and alpha == 0.0:
        assert empty > 0  # this model likes to stop at once: min_len matters
    # GNMT length penalty on |y| counting EOS
    assert search._length_penalty(3, alpha) == pytest.approx(((5 + 3) / 6) ** alpha)
    # batched beam search equals one image at a time
    one = [C.generate(m, g[i : i + 1], method="beam", beam_size=3, min_len=min_len).tokens[0] for i in range(6)]
    assert one == C.generate(m, g, method="beam", beam_size=3, min_len=min_len).tokens
    greedy = C.generate(m, g, min_len=min_len).tokens
    assert all(len(x) >= min_len for x in greedy)


# ----------------------------------------------------------------------------------- training
def _toy(n: int = 20, seed: int = 0):
    colors = ["red", "green", "blue", "yellow", "purple", "cyan"]
    kinds = ["circle", "square", "triangle", "star"]
    combos = list(itertools.product(colors, kinds, colors, kinds))
    random.Random(seed).shuffle(combos)
    caps = [f"a {a} {b} left of a {c} {d}" for a, b, c, d in combos[:n]]
    tok = C.CaptionTokenizer.build(caps, max_len=12)
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(n, 9, 32, generator=g)
    ids = [f"im{i}" for i in range(n)]
    ds = C.CaptionDataset.from_records([(i, c, "train") for i, c in zip(ids, caps)])
    return tok, C.caption_split(ds, "train", tok, ids, grid, grid.mean(1))


@pytest.mark.parametrize(
    ("kind", "epochs", "hp"),
    [("transformer", 60, {"d_model": 64, "layers": 2}), ("lstm", 150, {"d_model": 64, "att_dim": 32})],
)
def test_captioner_overfits_twenty_pairs(kind, epochs, hp):
    tok, sp = _toy()
    torch.manual_seed(0)
    m = C.build_captioner(kind, tok, 32, 32, dropout=0.0, **hp)
    cfg = C.CaptionTrainConfig(epochs=epochs, batch_size=10, lr=3e-3, label_smoothing=0.0)
    C.train_captioner(m, sp, None, tok, cfg)
    for method in ("greedy", "beam"):
        preds = C.predict_captions(m, tok, sp, method=method, beam_size=3)
        bleu = caption_metrics(sp.reference_dict(), preds, metrics=("BLEU",), tokenize="simple")["BLEU-4"]
        assert bleu > 0.95, (method, bleu, preds)


def test_early_stopping_restores_the_best_state():
    tok, sp = _toy(12, seed=1)
    _, val = _toy(12, seed=2)  # unrelated captions: validation loss rises as training overfits
    torch.manual_seed(0)
    m = C.build_captioner("transformer", tok, 32, 32, d_model=32, dropout=0.0)
    cfg = C.CaptionTrainConfig(epochs=40, batch_size=6, lr=3e-3, patience=3, monitor="loss")
    res = C.train_captioner(m, sp, val.subset(range(12)), tok, cfg)
    losses = [h["val_loss"] for h in res.history]
    assert res.epochs_run < 40 and res.best_epoch == losses.index(min(losses))
    assert res.epochs_run == res.best_epoch + 1 + cfg.patience
    assert C.caption_loss(m, val) == pytest.approx(min(losses), rel=1e-5)
    with pytest.raises(ValueError, match="monitor"):
        C.CaptionTrainConfig(monitor="bleu").validate()


def test_validation_cider_is_monitored():
    tok, sp = _toy(12, seed=1)
    torch.manual_seed(0)
    m = C.build_captioner("lstm", tok, 32, 32, d_model=32, att_dim=16, dropout=0.0)
    cfg = C.CaptionTrainConfig(epochs=4, batch_size=12, lr=3e-3, patience=10, val_max_images=6)
    logged = []
    res = C.train_captioner(m, sp, sp, tok, cfg, log_fn=logged.append)
    ciders = [h["val_cider"] for h in res.history]
    assert logged == res.history and res.monitor == "cider" and len(ciders) == 4
    assert res.best_epoch == ciders.index(max(ciders)) and res.best_value == max(ciders)
    preds = C.predict_captions(m, tok, sp.subset(range(6)))
    again = caption_metrics(sp.subset(range(6)).reference_dict(), preds, metrics=("CIDEr",), tokenize="simple")
    assert again["CIDEr"] == pytest.approx(max(ciders))  # the best state is the one in the model


# ----------------------------------------------------------------------------------- baseline
def test_nearest_neighbour_caption_baseline():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(5, 16, generator=g)
    ids = [f"t{i}" for i in range(5)]
    refs = {
        i: [f"odd caption {i} zebra", f"a red circle {i}", f"a red circle {i} here", f"a red circle {i} now"]
        for i in ids
    }
    query = train[[3, 0]] + 0.01 * torch.randn(2, 16, generator=g)
    consensus = C.nearest_neighbour_captions(train, ids, refs, query, ["q3", "q0"])
    # the neighbour's caption that agrees with its other captions, never the odd one out
    assert set(consensus) == {"q3", "q0"}
    assert consensus["q3"] in refs["t3"][1:] and consensus["q0"] in refs["t0"][1:]
    first = C.nearest_neighbour_captions(train, ids, refs, query, ["q3", "q0"], choose="first", chunk_size=2)
    assert first == {"q3": "odd caption t3 zebra", "q0": "odd caption t0 zebra"}
    pooled = C.nearest_neighbour_captions(train, ids, refs, query, ["q3", "q0"], k=2)
    assert set(pooled) == {"q3", "q0"} and all("zebra" not in c for c in pooled.values())
    with pytest.raises(ValueError, match="without references"):
        C.nearest_neighbour_captions(train, ids, {"t0": ["x"]}, query, ["a", "b"])


# ----------------------------------------------------------------------------------- attention
def test_attention_maps_and_figure(shapes_root, tok):
    ds = C.CaptionDataset.read_karpathy(shapes_root / "captions.json")
    ids = ds.ids("test")
    grid = torch.randn(len(ids), 16, 8)
    sp = C.caption_split(ds, "test", tok, ids, grid, grid.mean(1))
    m = _model("lstm", tok, feat=8, pooled=8)
    maps = C.attention_maps(m, tok, sp, n=2)
    assert [x.image_id for x in maps] == ids[:2]
    for x in maps:
        assert x.grid_hw == (4, 4) and x.attention.shape == (len(x.tokens), 16) and x.tokens[-1] == "<end>"
        torch.testing.assert_close(x.attention.sum(-1), torch.ones(len(x.tokens)))
        assert x.caption == tok.decode(tok.encode(x.caption)) if x.caption else True
    fig = figures.plot_attention_maps(maps, lambda i: shapes_root / ds.files[i], max_tokens=3)
    assert len(fig.axes) == 2 * 4
    import matplotlib.pyplot as plt

    plt.close(fig)
    tm = _model("transformer", tok, feat=8, pooled=8)
    (one,) = C.attention_maps(tm, tok, sp, image_ids=[ids[1]])
    assert one.image_id == ids[1] and one.attention.shape[1] == 16
    with pytest.raises(ValueError, match="not a square grid"):
        C.attention_maps(m, tok, C.caption_split(ds, "test", tok, ids, torch.randn(len(ids), 6, 8), grid.mean(1)))
    table = C.caption_table(sp.reference_dict(), {i: "a red circle" for i in ids[:2]}, {ids[0]: {"CIDEr": 1.5}})
    assert list(table.columns)[:3] == ["image_id", "caption", "references"] and table.loc[0, "CIDEr"] == 1.5


def test_plot_attention_maps_names_an_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch):
    from PIL import Image

    from fusionkit.data.base import DatasetError

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    maps = [C.AttentionMap("img9", "a cat", ["a", "<end>"], torch.full((2, 4), 0.25), (2, 2))]
    fig = figures.plot_attention_maps(maps, {"img9": tmp_path / "big.png"})
    assert len(fig.axes) == 3
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"big\.png \(id 'img9'\): refused as a possible decompression bomb"):
        figures.plot_attention_maps(maps, {"img9": tmp_path / "big.png"})
