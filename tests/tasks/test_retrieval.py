"""Retrieval: ranks and Recall@K against brute force (ties included), memory of the blocked
computation, InfoNCE, the dual encoder vs the ridge baseline, re-ranking."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from fusionkit.tasks import captioning as C
from fusionkit.tasks import retrieval as R
from fusionkit.tasks.retrieval import ranking


def brute_force(sim: torch.Tensor, t2i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks from a full stable descending sort of every row (lower index first among ties)."""
    n, m = sim.shape
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices
    pos = torch.empty_like(order).scatter_(1, order, torch.arange(m).expand(n, -1))
    i2t = torch.stack([pos[i][t2i == i].min() + 1 for i in range(n)])
    order = torch.sort(sim.T, dim=1, descending=True, stable=True).indices
    pos = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(m, -1))
    t2i_ranks = pos[torch.arange(m), t2i] + 1
    return i2t, t2i_ranks


def brute_metrics(i2t: torch.Tensor, t2i: torch.Tensor) -> dict[str, float]:
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = sum(int(x) <= k for x in r) / len(r)
        s = sorted(int(x) for x in r)
        out[f"{name}_medr"] = math.floor(statistics.median(x - 1 for x in s)) + 1.0  # VSE++'s definition
        out[f"{name}_meanr"] = sum(s) / len(s)
    out["rsum"] = 100 * sum(v for k, v in out.items() if "R@" in k)
    return out


N, M = 300, 1500


@pytest.fixture(scope="module")
def random_case():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(N, 32, generator=g)
    t2i = torch.randperm(M, generator=g) % N  # 5 captions per image, shuffled
    txt = 0.4 * img[t2i] + torch.randn(M, 32, generator=g)
    return img, txt, t2i


@pytest.fixture(scope="module")
def tie_case():
    """Small integer embeddings: dot products are exact integers with very many ties."""
    g = torch.Generator().manual_seed(1)
    img = torch.randint(-1, 2, (N, 3), generator=g).float()
    txt = torch.randint(-1, 2, (M, 3), generator=g).float()
    t2i = torch.arange(M) % N
    return img, txt, t2i


@pytest.mark.parametrize("case", ["random_case", "tie_case"])
@pytest.mark.parametrize("chunk", [None, 64, 1000])
def test_ranks_and_recall_equal_brute_force(case, chunk, request):
    img, txt, t2i = request.getfixturevalue(case)
    sim = img @ txt.T
    b_i2t, b_t2i = brute_force(sim, t2i)
    i2t, t2i_r = R.retrieval_ranks(img, txt, t2i, chunk_size=chunk, normalize=False)
    assert torch.equal(i2t, b_i2t) and torch.equal(t2i_r, b_t2i)
    expect = brute_metrics(b_i2t, b_t2i)
    got = R.recall_at_k((img, txt), t2i, chunk_size=chunk, normalize=False)
    assert got.keys() == expect.keys()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert R.recall_at_k(sim, t2i) == got
    if case == "random_case":  # cosine: the same as dot products of normalised vectors
        cos = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
        b = brute_metrics(*brute_force(cos, t2i))
        assert R.recall_at_k((img, txt), t2i, chunk_size=chunk)["rsum"] == pytest.approx(b["rsum"])


@pytest.mark.parametrize("case", ["random_case", "tie_case"])
def test_topk_equals_a_full_sort(case, request):
    img, txt, _ = request.getfixturevalue(case)
    full = torch.sort(img @ txt.T, dim=1, descending=True, stable=True)
    for chunk in (None, 97):
        s, i = R.topk_similarity(img, txt, 10, chunk_size=chunk, normalize=False, backend="torch")
        assert torch.equal(i, full.indices[:, :10])
        torch.testing.assert_close(s, full.values[:, :10])


def test_blocks_never_hold_the_full_matrix(random_case, monkeypatch):
    img, txt, t2i = random_case
    shapes = []
    real = ranking._block_scores

    def spy(q, k):
        shapes.append((q.shape[0], k.shape[0]))
        return real(q, k)

    monkeypatch.setattr(ranking, "_block_scores", spy)
    R.recall_at_k((img, txt), t2i, chunk_size=64)
    R.topk_similarity(img, txt, 10, chunk_size=64, backend="torch")
    assert shapes and max(a * b for a, b in shapes) <= 64 * 64
    shapes.clear()
    R.recall_at_k((img, txt), t2i, chunk_size=None)
    assert (N, M) in shapes  # without chunk_size: one block


def test_hand_example_and_input_errors():
    # 2 images, 4 texts; image 0 owns texts 0, 1; image 1 owns texts 2, 3
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.4, 0.2, 0.8]])
    out = R.recall_at_k(sim, [0, 0, 1, 1], ks=(1, 2))
    # image 0: best own text (1) is first -> rank 1; image 1: text 3 first -> rank 1
    # text 0 -> images (0.1, 0.3): rank 2; text 1: rank 1; text 2 (0.5, 0.2): rank 2; text 3: rank 1
    assert out["i2t_R@1"] == 1.0 and out["t2i_R@1"] == 0.5 and out["t2i_R@2"] == 1.0
    assert out["t2i_meanr"] == 1.5 and out["t2i_medr"] == 1.0 and out["rsum"] == pytest.approx(350.0)
    with pytest.raises(ValueError, match=r"images \[1\] have no text"):
        R.recall_at_k(sim, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="outside"):
        R.recall_at_k(sim, [0, 0, 1, 2])
    with pytest.raises(ValueError, match="one image row per text"):
        R.recall_at_k(sim, [0, 1])
    if ranking._faiss() is None:
        with pytest.raises(ImportError, match="faiss is not installed"):
            R.topk_similarity(sim, sim, 1, backend="faiss")


# ----------------------------------------------------------------------------------- dual encoder
def test_info_nce_and_temperature():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    logits = 10.0 * a @ b.T
    expect = (
        torch.nn.functional.cross_entropy(logits, torch.arange(6))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(6))
    ) / 2
    torch.testing.assert_close(R.info_nce(a, b, 10.0), expect)
    # pairs of the same image are not negatives of each other
    rows = torch.tensor([0, 0, 1, 2, 3, 4])
    masked = logits.clone()
    masked[0, 1] = masked[1, 0] = -math.inf
    expect = (
        torch.nn.functional.cross_entropy(masked, torch.arange(6))
        + torch.nn.functional.cross_entropy(masked.T, torch.arange(6))
    ) / 2
    torch.testing.assert_close(R.info_nce(a, b, 10.0, rows), expect)
    de = R.DualEncoder(8, 6, embed_dim=4)
    assert de.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) and de.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        de.logit_scale.fill_(10.0)
    assert de.scale().item() == pytest.approx(100.0)
    de.clamp_()
    assert de.logit_scale.item() == pytest.approx(math.log(100.0))
    i, t = de(torch.randn(3, 8), torch.randn(5, 2, 6))  # token states are mean-pooled
    torch.testing.assert_close(i.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(5))


def _synthetic(n: int, a: torch.Tensor, g: torch.Generator, noise: float, per: int = 5) -> R.RetrievalSplit:
    """Texts = a noisy linear map of their image, ``per`` captions per image."""
    img = torch.randn(n, a.shape[0], generator=g)
    t2i = torch.arange(n).repeat_interleave(per)
    return R.RetrievalSplit(img, img[t2i] @ a + noise * torch.randn(n * per, a.shape[1], generator=g), t2i)


@pytest.fixture(scope="module")
def paired():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 24, generator=g) / 32**0.5
    return tuple(_synthetic(n, a, g, noise=0.5) for n in (300, 100, 100))


def test_dual_encoder_on_synthetic_pairs_and_the_ridge_baseline(paired):
    train, val, test = paired
    torch.manual_seed(0)
    de = R.DualEncoder(32, 24, embed_dim=32, hidden=None, dropout=0.0)
    res = R.train_dual_encoder(de, train, val, R.RetrievalTrainConfig(epochs=30, batch_size=64, lr=3e-3, patience=6))
    rsums = [h["val_rsum"] for h in res.history]
    assert res.best_epoch == rsums.index(max(rsums)) and res.best_rsum == max(rsums)
    ours = R.recall_at_k(R.encode_split(de, test), test.text_to_image)
    assert ours["i2t_R@1"] > 0.8 and ours["t2i_R@1"] > 0.8, ours
    ridge, scores = R.fit_ridge(train, val)
    assert scores[ridge.alpha] == max(scores.values())
    base = R.recall_at_k(ridge.embeddings(test), test.text_to_image)
    assert base["t2i_R@1"] > 0.8  # a linear problem: the closed form is strong too
    untrained = R.recall_at_k(R.encode_split(R.DualEncoder(32, 24, embed_dim=32), test), test.text_to_image)
    assert ours["rsum"] > untrained["rsum"] + 200


def test_locked_text_head_and_input_dropout(paired):
    train, val, test = paired
    torch.manual_seed(0)
    de = R.DualEncoder(32, 24, embed_dim=99, hidden=None, input_dropout=0.3, text_head="identity")
    assert de.embed_dim == 24 and not list(de.text_head.parameters())
    # the text side is the normalised text features, in train and eval mode alike
    de.train()
    assert torch.allclose(de.encode_text(test.text), torch.nn.functional.normalize(test.text, dim=-1))
    # input dropout acts in training only: train-mode image embeddings vary, eval-mode ones do not
    x = test.image[:8]
    assert not torch.allclose(de.encode_image(x), de.encode_image(x))
    de.eval()
    assert torch.equal(de.encode_image(x), de.encode_image(x))
    res = R.train_dual_encoder(de, train, val, R.RetrievalTrainConfig(epochs=30, batch_size=64, lr=3e-3, patience=6))
    ours = R.recall_at_k(R.encode_split(de, test), test.text_to_image)
    assert res.best_rsum > 400 and ours["t2i_R@1"] > 0.6, ours  # images mapped into the text space
    with pytest.raises(ValueError, match="text_head"):
        R.DualEncoder(32, 24, text_head="frozen")
    with pytest.raises(ValueError, match="input_dropout"):
        R.DualEncoder(32, 24, input_dropout=1.0)


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 7, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    ours = R.RidgeMap(alpha=2.5).fit(x, y)
    sk = Ridge(alpha=2.5).fit(x.numpy(), y.numpy())
    torch.testing.assert_close(
        ours.transform(x).double(), torch.from_numpy(sk.predict(x.numpy())), atol=1e-5, rtol=1e-5
    )


def test_retrieval_split_from_a_caption_dataset():
    ds = C.CaptionDataset.from_records(
        [("b", "a red circle", "test"), ("a", "a blue box", "test"), ("a", "a box", "test"), ("c", "x", "test")]
    )
    _, caps, _ = ds.pairs("test")
    text = torch.arange(4.0)[:, None].expand(-1, 2)
    img = torch.tensor([[10.0], [11.0], [12.0]])
    with pytest.raises(Exception, match="image 'c'"):
        R.retrieval_split(ds, "test", ["a", "b", "z"], img, text)
    sp = R.retrieval_split(ds, "test", ["a", "b", "z"], img, text, on_error="skip")
    assert sp.image_ids == ["b", "a"] and sp.image[:, 0].tolist() == [11.0, 10.0]
    assert sp.text[:, 0].tolist() == [0.0, 1.0, 2.0] and sp.text_to_image.tolist() == [0, 1, 1]
    assert caps[:3] == ["a red circle", "a blue box", "a box"]


# ----------------------------------------------------------------------------------- re-ranking
class Oracle(torch.nn.Module):
    """Scores 1 for the true pairs of a split (looked up by the feature values), 0 otherwise."""

    def __init__(self, split: R.RetrievalSplit):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.split = split

    def forward(self, image, text):
        img_row = (image[:, None, :] == self.split.image[None]).all(-1).float().argmax(1)
        txt_row = (text[:, None, :] == self.split.text[None]).all(-1).float().argmax(1)
        return (self.split.text_to_image[txt_row] == img_row).float() + 0 * self.w


def test_rerank_with_an_oracle_and_with_the_dual_scores(paired):
    _, _, test = paired
    torch.manual_seed(0)
    de = R.DualEncoder(32, 24, embed_dim=16, hidden=None)  # untrained: a weak first stage
    out = R.rerank(de, Oracle(test), test, k=10)
    before, after = out["before"], out["after"]
    # a perfect matcher puts the positive first whenever it is in the top 10
    assert after["i2t_R@1"] == before["i2t_R@10"] and after["t2i_R@1"] == before["t2i_R@10"]
    assert after["t2i_R@10"] == before["t2i_R@10"] and after["t2i_R@1"] > before["t2i_R@1"]

    class Same(torch.nn.Module):  # the dual encoder's own score: nothing changes
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, image, text):
            return (de.encode_image(image) * de.encode_text(text)).sum(-1) + 0 * self.w

    same = R.rerank(de, Same(), test, k=10)
    assert same["after"] == pytest.approx(same["before"])


def test_hard_negatives_and_a_trained_matcher(paired):
    train, val, test = paired
    train, val, test = train_small(train, 150), train_small(val, 60), train_small(test, 60)
    torch.manual_seed(0)
    de = R.DualEncoder(32, 24, embed_dim=16, hidden=None, dropout=0.0)
    R.train_dual_encoder(de, train, None, R.RetrievalTrainConfig(epochs=1, lr=1e-3))  # deliberately weak
    neg_i2t, neg_t2i = R.mine_hard_negatives(de, train, k=5)
    assert neg_i2t.shape == (150, 5) and neg_t2i.shape == (750, 5)
    assert not bool((train.text_to_image[neg_i2t] == torch.arange(150)[:, None]).any())
    assert not bool((neg_t2i == train.text_to_image[:, None]).any())
    ie, te = R.encode_split(de, train)
    s = (ie[:, None, :] * te[neg_i2t]).sum(-1)
    assert bool((s[:, :-1] >= s[:, 1:] - 1e-6).all())  # hardest first
    matcher = R.build_matcher("concat", 32, 24, hidden=64, dropout=0.0)
    cfg = R.MatcherTrainConfig(epochs=12, batch_size=64, lr=3e-3, rerank_k=10, patience=12)
    res = R.train_matcher(matcher, de, train, val, cfg)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    out = R.rerank(de, matcher, test, k=10)
    for d in ("i2t", "t2i"):
        assert out["after"][f"{d}_R@1"] > out["before"][f"{d}_R@1"], out
        assert out["after"][f"{d}_R@10"] == out["before"][f"{d}_R@10"]


def train_small(split: R.RetrievalSplit, n: int) -> R.RetrievalSplit:
    keep = split.text_to_image < n
    return R.RetrievalSplit(split.image[:n], split.text[keep], split.text_to_image[keep])
