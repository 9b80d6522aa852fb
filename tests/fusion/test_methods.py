"""Contract tests run on every registered fusion method (``available()``), plus method-specific ones.

Every method must: work with 2 and 3 modalities of different dims on (B, D) and (B, L, D) inputs;
register every parameter and send gradients to all of them; ignore the dict order; ignore a masked
modality's features; be reproducible under a seed; report valid per-sample weights; and actually
fuse (solve XOR of two modalities; late fusion provably cannot, see fusionkit/fusion/concat.py).
"""

from __future__ import annotations

import pytest
import torch

import fusionkit.fusion  # noqa: F401  (registers every method)
from fusionkit.fusion import FusionOutput, available, build_fusion, get, hyperparameters, values_checked
from fusionkit.model import build_model

METHODS = available()
EXPECTED = {
    "concat",
    "late",
    "weighted",
    "additive_attention",
    "gmu",
    "tfn",
    "lmf",
    "mlb",
    "mfb",
    "mutan",
    "film",
    "cross_attention",
    "mixture",
    "simbamm",
}
#: methods that report per-sample modality weights
WITH_WEIGHTS = {"late", "weighted", "additive_attention", "gmu"}
DIMS2 = {"text": 12, "image": 8}
DIMS3 = {"text": 12, "image": 8, "audio": 6}
B = 6


def make_features(dims: dict[str, int], kind: str, seed: int = 0, batch: int = B) -> dict[str, torch.Tensor]:
    """``kind``: "pooled" (B, D), "sequence" (B, L_m, D) with a different L per modality, "mixed"."""
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for i, (m, d) in enumerate(sorted(dims.items())):
        seq = kind == "sequence" or (kind == "mixed" and i % 2 == 0)
        shape = (batch, 3 + i, d) if seq else (batch, d)
        feats[m] = torch.randn(*shape, generator=g)
    return feats


def build(name: str, dims: dict[str, int], seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_fusion(name, dims, **kw).eval()


def test_expected_methods_registered():
    assert EXPECTED <= set(METHODS), f"missing: {EXPECTED - set(METHODS)}"


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dims", [DIMS2, DIMS3], ids=["2mod", "3mod"])
@pytest.mark.parametrize("kind", ["pooled", "sequence", "mixed"])
def test_output_shape(name, dims, kind):
    fusion = build(name, dims)
    assert fusion.out_dim > 0
    out = fusion(make_features(dims, kind))
    assert isinstance(out, FusionOutput)
    assert out.fused.shape == (B, fusion.out_dim)
    assert torch.isfinite(out.fused).all()


@pytest.mark.parametrize("name", METHODS)
def test_equal_dims_as_in_the_model(name):
    dims = {"audio": 16, "image": 16, "text": 16}
    fusion = build(name, dims)
    out = fusion(make_features(dims, "mixed"))
    assert out.fused.shape == (B, fusion.out_dim)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dims", [DIMS2, DIMS3], ids=["2mod", "3mod"])
def test_gradients_reach_every_parameter(name, dims):
    fusion = build(name, dims).train()
    feats = {m: x.requires_grad_() for m, x in make_features(dims, "sequence").items()}
    fusion(feats).fused.sum().backward()
    for m, x in feats.items():  # every modality influences the output
        assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: no gradient reaches modality {m}"
    for pname, p in fusion.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert p.grad.abs().sum() > 0, f"{name}: all-zero gradient for {pname}"


@pytest.mark.parametrize("name", METHODS)
def test_num_parameters(name):
    fusion = build(name, DIMS3)
    assert fusion.num_parameters() == sum(p.numel() for p in fusion.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_dict_order_does_not_matter(name):
    fusion = build(name, DIMS3)
    feats = make_features(DIMS3, "mixed")
    mask = {m: torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]) for m in feats}
    mask["image"] = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    a = fusion(feats, mask)
    rev_feats = dict(reversed(list(feats.items())))
    rev_mask = dict(reversed(list(mask.items())))
    b = fusion(rev_feats, rev_mask)
    torch.testing.assert_close(a.fused, b.fused, rtol=0, atol=0)
    # a fusion built from a reordered in_dims dict is the same module
    c = build(name, dict(reversed(list(DIMS3.items()))))(feats, mask)
    torch.testing.assert_close(a.fused, c.fused, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kind", ["pooled", "mixed"])
def test_masked_modality_has_no_influence(name, kind):
    fusion = build(name, DIMS3)
    feats = make_features(DIMS3, kind)
    masked_rows = torch.tensor([0, 2, 5])
    for m in sorted(DIMS3):
        mask = {k: torch.ones(B) for k in DIMS3}
        mask[m][masked_rows] = 0.0
        before = fusion(feats, mask)
        changed = dict(feats)
        noise = 10 * torch.randn_like(feats[m])
        changed[m] = feats[m].clone()
        changed[m][masked_rows] = noise[masked_rows]
        after = fusion(changed, mask)
        torch.testing.assert_close(after.fused, before.fused, rtol=0, atol=1e-6, msg=f"{name}: {m} leaks")
        if before.weights is not None:
            assert (before.weights[m][masked_rows] == 0).all()


@pytest.mark.parametrize("name", METHODS)
def test_two_masked_and_all_masked(name):
    """Only one modality left, or none at all: still finite and independent of the missing ones."""
    fusion = build(name, DIMS3)
    feats = make_features(DIMS3, "mixed")
    mask = {m: torch.ones(B) for m in DIMS3}
    mask["audio"][:4] = 0.0
    mask["image"][:4] = 0.0
    mask["text"][:2] = 0.0  # rows 0-1: nothing present; rows 2-3: text only
    before = fusion(feats, mask)
    assert torch.isfinite(before.fused).all()
    changed = {
        m: torch.where((mask[m] > 0).view(-1, *[1] * (x.dim() - 1)), x, 5 * torch.randn_like(x))
        for m, x in feats.items()
    }
    after = fusion(changed, mask)
    torch.testing.assert_close(after.fused, before.fused, rtol=0, atol=1e-6)
    if before.weights is not None:
        total = sum(before.weights.values())
        torch.testing.assert_close(total[2:], torch.ones(B - 2))
        torch.testing.assert_close(total[:2], torch.zeros(2))
        torch.testing.assert_close(before.weights["text"][2:4], torch.ones(2))


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_under_seed(name):
    feats = make_features(DIMS3, "mixed")
    a, b = build(name, DIMS3, seed=7), build(name, DIMS3, seed=7)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    torch.testing.assert_close(a(feats).fused, b(feats).fused, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dims", [DIMS2, DIMS3], ids=["2mod", "3mod"])
def test_weights_are_a_distribution(name, dims):
    fusion = build(name, dims)
    feats = make_features(dims, "mixed")
    mask = {m: torch.ones(B) for m in dims}
    mask["image"][1] = 0.0
    out = fusion(feats, mask)
    assert (out.weights is not None) == (name in WITH_WEIGHTS)
    if out.weights is None:
        return
    assert set(out.weights) == set(dims)
    for w in out.weights.values():
        assert w.shape == (B,)
        assert (w >= 0).all()
    torch.testing.assert_close(sum(out.weights.values()), torch.ones(B))
    assert out.weights["image"][1] == 0


@pytest.mark.parametrize("name", METHODS)
def test_full_model_ignores_a_masked_modality(name):
    """End to end through build_model (projectors to equal dims, fusion, head)."""
    torch.manual_seed(0)
    model = build_model(name, DIMS3, num_classes=3, hidden=16).eval()
    feats = make_features(DIMS3, "mixed")
    mask = {m: torch.ones(B) for m in DIMS3}
    mask["audio"][:3] = 0.0
    out = model(feats, mask)
    assert out.logits.shape == (B, 3)
    changed = {**feats, "audio": feats["audio"] + 3.0}
    torch.testing.assert_close(model(changed, mask).logits[:3], out.logits[:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_single_modality(name):
    fusion = build(name, {"image": 8})
    out = fusion(make_features({"image": 8}, "mixed"))
    assert out.fused.shape == (B, fusion.out_dim)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_method_lists_valid_ones():
    with pytest.raises(KeyError, match="valid: .*concat"):
        build_fusion("no_such_fusion", DIMS2)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_hyperparameter_lists_valid_ones(name):
    with pytest.raises(TypeError, match="unknown hyper-parameter.*no_such_knob.*valid"):
        build_fusion(name, DIMS2, no_such_knob=3)
    assert isinstance(hyperparameters(name), dict)


@pytest.mark.parametrize("name", METHODS)
def test_bad_inputs_raise_clear_errors(name):
    fusion = build(name, DIMS3)
    feats = make_features(DIMS3, "pooled")
    with pytest.raises(ValueError, match="'image' expected shape"):
        fusion({**feats, "image": torch.randn(B, 9)})
    with pytest.raises(ValueError, match="built for modalities"):
        fusion({k: v for k, v in feats.items() if k != "audio"})
    with pytest.raises(ValueError, match="built for modalities"):
        fusion({**feats, "depth": torch.randn(B, 4)})
    for bad in (float("nan"), float("inf")):
        x = feats["text"].clone()
        x[3, 1] = bad
        with pytest.raises(ValueError, match="'text' has non-finite"):
            fusion({**feats, "text": x})
    with pytest.raises(ValueError, match="mask for modality 'audio'"):
        fusion(feats, {"audio": torch.ones(B + 1)})
    # a training on splits checked whole leaves out the per-batch value check, and only that one
    x = feats["text"].clone()
    x[3, 1] = float("nan")
    with values_checked(False):
        fusion({**feats, "text": x})
        with pytest.raises(ValueError, match="'image' expected shape"):
            fusion({**feats, "image": torch.randn(B, 9)})
    with pytest.raises(ValueError, match="'text' has non-finite"):
        fusion({**feats, "text": x})


# --- it really fuses -------------------------------------------------------------------------------


def sign_data(n_per_cell: int, seed: int, noise: float = 0.3, dims=(("a", 8), ("b", 12))):
    """x_m = s_m v_m + noise with signs s_a, s_b in {-1, +1}, every sign pair equally often.
    Returns features, s_a, s_b (the label is a function of the signs)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).repeat(n_per_cell, 1)
    s = s[torch.randperm(len(s), generator=g)]
    gv = torch.Generator().manual_seed(1234)  # the directions are fixed across splits
    feats = {}
    for i, (m, d) in enumerate(dims):
        v = torch.randn(d, generator=gv)
        v = 2 * v / v.norm()
        feats[m] = s[:, i : i + 1] * v + noise * torch.randn(len(s), d, generator=g)
    return feats, s[:, 0], s[:, 1]


def train_and_score(name: str, problem: str, steps: int = 150, **hp) -> tuple[float, torch.nn.Module]:
    def labels(sa, sb):
        return (sa != sb).long() if problem == "xor" else ((sa > 0) | (sb > 0)).long()

    x_tr, sa, sb = sign_data(64, seed=0)
    y_tr = labels(sa, sb)
    x_te, sa, sb = sign_data(128, seed=1)
    y_te = labels(sa, sb)
    torch.manual_seed(0)
    model = build_model(name, {"a": 8, "b": 12}, num_classes=2, hidden=32, dropout=0.0, **hp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_tr).logits, y_tr)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_te).logits.argmax(-1) == y_te).float().mean().item()
    return acc, model


@pytest.mark.parametrize("name", [m for m in METHODS if not get(m).outputs_logits])
def test_solves_xor(name):
    acc, _ = train_and_score(name, "xor")
    assert acc >= 0.9, f"{name}: XOR accuracy {acc:.2f}"


@pytest.mark.parametrize("learned", [False, True])
def test_late_fusion_solves_an_additive_problem(learned):
    acc, _ = train_and_score("late", "or", learned_weights=learned)
    assert acc >= 0.9, f"late fusion: OR accuracy {acc:.2f}"


@pytest.mark.parametrize("learned", [False, True])
def test_late_fusion_cannot_solve_xor(learned):
    """Averaged (or globally weighted) logits are additive, f(x_a) + g(x_b): at most 3 of the 4
    XOR cells can be right (proof in fusionkit/fusion/concat.py), whatever the training."""
    acc, model = train_and_score("late", "xor", learned_weights=learned)
    assert acc < 0.8, f"late fusion XOR accuracy {acc:.2f}"
    # on the four noise-free cell centres the bound is exact
    centres, sa, sb = sign_data(1, seed=2, noise=0.0)
    with torch.no_grad():
        pred = model(centres).logits.argmax(-1)
    assert (pred == (sa != sb).long()).float().mean().item() <= 0.75


def test_named_expands_all_and_keeps_a_given_list():
    from fusionkit import fusion

    assert fusion.named(["all"]) == fusion.named("all") == fusion.available()
    assert fusion.named("concat, late,") == ["concat", "late"]
    assert fusion.named(["gmu", " tfn "]) == ["gmu", "tfn"]
    assert fusion.named(["all", "concat"]) == ["all", "concat"]  # "all" only alone; the unknown name is refused later
