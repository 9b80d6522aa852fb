"""Method-specific tests: each method computes the equations its docstring states."""

from __future__ import annotations

import pytest
import torch

from fusionkit.fusion import build_fusion, hyperparameters

B = 5


def feats(dims: dict[str, int], seed: int = 0, seq: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(*((B, seq, d) if seq else (B, d)), generator=g) for m, d in sorted(dims.items())}


def build(name, dims, **kw):
    torch.manual_seed(0)
    return build_fusion(name, dims, **kw).eval()


def test_hyperparameters_report_defaults():
    assert hyperparameters("lmf") == {"rank": 4, "hidden": 64}
    assert hyperparameters("late") == {"num_classes": 2, "hidden": 64, "learned_weights": False}
    assert hyperparameters("film") == {"target": None, "hidden": None}


# --- concat / late ---------------------------------------------------------------------------------


def test_concat_is_the_masked_concatenation():
    dims = {"a": 3, "b": 4}
    x = feats(dims, seq=2)
    mask = {"a": torch.tensor([1.0, 0, 1, 1, 1]), "b": torch.ones(B)}
    z = build("concat", dims)(x, mask).fused
    torch.testing.assert_close(z[:, 3:], x["b"].mean(1))
    torch.testing.assert_close(z[1, :3], torch.zeros(3))
    assert build("concat", dims, hidden=7).out_dim == 7


def test_late_fusion_averages_logits_of_present_modalities():
    dims = {"a": 3, "b": 4}
    f = build("late", dims, num_classes=3)
    x = feats(dims)
    mask = {"a": torch.tensor([1.0, 0, 1, 1, 1]), "b": torch.ones(B)}
    out = f(x, mask)
    la, lb = f.classifiers[0](x["a"]), f.classifiers[1](x["b"])
    torch.testing.assert_close(out.fused[0], (la[0] + lb[0]) / 2)
    torch.testing.assert_close(out.fused[1], lb[1])
    torch.testing.assert_close(out.weights["a"], torch.tensor([0.5, 0, 0.5, 0.5, 0.5]))
    assert f.outputs_logits and f.out_dim == 3


def test_late_fusion_learned_weights():
    f = build("late", {"a": 3, "b": 4}, learned_weights=True)
    with torch.no_grad():
        f.weight_logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    out = f(feats({"a": 3, "b": 4}))
    torch.testing.assert_close(out.weights["b"], torch.full((B,), 0.75))


# --- weighted / additive attention -----------------------------------------------------------------


def test_weighted_matches_its_equation():
    dims = {"a": 6, "b": 6, "c": 6}
    f = build("weighted", dims)
    assert f.common.proj is None  # equal dims: no projection
    x = feats(dims, seq=3)
    xs = torch.stack([x[m].mean(1) for m in sorted(dims)], 1)  # (B, M, D)
    w = torch.softmax((xs * f.u).sum(-1) + f.b, dim=1)
    out = f(x)
    torch.testing.assert_close(out.fused, (w.unsqueeze(-1) * xs).sum(1))
    torch.testing.assert_close(torch.stack([out.weights[m] for m in sorted(dims)], 1), w)


def test_weighted_projects_different_dims():
    f = build("weighted", {"a": 6, "b": 9})
    assert f.out_dim == 9 and f.common.proj is not None
    assert build("weighted", {"a": 6, "b": 9}, dim=4).out_dim == 4


def test_additive_attention_matches_its_equations():
    dims = {"a": 6, "b": 6}
    f = build("additive_attention", dims, attn_dim=5)
    x = feats(dims, seq=4)
    summaries = []
    for i, m in enumerate(sorted(dims)):
        att = f.element_attn[i]
        e = (torch.tanh(x[m] @ att.proj.weight.T + att.proj.bias) @ att.u.weight.T).squeeze(-1)
        summaries.append((torch.softmax(e, 1).unsqueeze(-1) * x[m]).sum(1))
    s = torch.stack(summaries, 1)
    att = f.modality_attn
    beta = torch.softmax((torch.tanh(s @ att.proj.weight.T + att.proj.bias) @ att.u.weight.T).squeeze(-1), 1)
    out = f(x)
    torch.testing.assert_close(out.fused, (beta.unsqueeze(-1) * s).sum(1))
    torch.testing.assert_close(out.weights["b"], beta[:, 1])


# --- gmu --------------------------------------------------------------------------------------------


def test_gmu_bimodal_is_the_sigmoid_form():
    dims = {"text": 5, "visual": 7}
    f = build("gmu", dims, hidden=8)
    x = feats(dims)
    ht, hv = torch.tanh(f.encoders[0](x["text"])), torch.tanh(f.encoders[1](x["visual"]))
    z = torch.sigmoid(f.gate(torch.cat([x["text"], x["visual"]], -1)))
    out = f(x)
    torch.testing.assert_close(out.fused, z * ht + (1 - z) * hv)
    torch.testing.assert_close(out.weights["text"], z.mean(-1))


def test_gmu_nary_gates_are_a_softmax_per_unit():
    dims = {"a": 4, "b": 5, "c": 6}
    f = build("gmu", dims, hidden=8)
    x = feats(dims)
    g = torch.softmax(f.gate(torch.cat([x[m] for m in sorted(dims)], -1)).view(B, 3, 8), dim=1)
    h = torch.stack([torch.tanh(enc(x[m])) for enc, m in zip(f.encoders, sorted(dims), strict=True)], 1)
    torch.testing.assert_close(f(x).fused, (g * h).sum(1))


# --- tfn / lmf --------------------------------------------------------------------------------------


def test_tfn_keeps_unimodal_terms_through_the_appended_one():
    dims = {"a": 5, "b": 6}
    f = build("tfn", dims, dim=3)
    assert f.out_dim == 16
    x = feats(dims)
    mask = {"a": torch.ones(B), "b": torch.tensor([1.0, 0, 1, 1, 1])}
    z = f(x, mask).fused.view(B, 4, 4)
    pa, pb = f.proj[0](x["a"]), f.proj[1](x["b"])
    torch.testing.assert_close(z[:, 3, 3], torch.ones(B))
    torch.testing.assert_close(z[:, :3, 3], pa)
    torch.testing.assert_close(z[0, 3, :3], pb[0])
    torch.testing.assert_close(z[:, :3, :3][0], torch.outer(pa[0], pb[0]))
    torch.testing.assert_close(z[1, :, :3], torch.zeros(4, 3))  # b missing: only a's terms remain


def test_tfn_warns_on_a_huge_tensor():
    with pytest.warns(UserWarning, match="smaller `dim`"):
        build_fusion("tfn", {"a": 64, "b": 64, "c": 64}, dim=None)


@pytest.mark.parametrize("n", [2, 3])
def test_lmf_parameters_are_registered(n):
    dims = dict(list({"a": 4, "b": 5, "c": 6}.items())[:n])
    f = build("lmf", dims, rank=3, hidden=7)
    assert len(list(f.parameters())) == n + 2  # n factors + fusion weights + fusion bias
    assert f.num_parameters() == sum(3 * (d + 1) * 7 for d in dims.values()) + 3 + 7
    assert all(k in f.state_dict() for k in [f"factors.{i}" for i in range(n)])
    f = f.double()
    assert all(p.dtype == torch.float64 for p in f.parameters())


def test_lmf_equals_the_full_tensor_product():
    """LMF is TFN with a rank-r weight tensor: h = W . vec([x_a;1] (x) [x_b;1]) + b."""
    dims = {"a": 3, "b": 4}
    f = build("lmf", dims, rank=2, hidden=5)
    x = feats(dims)
    fa, fb = f.factors
    w_full = torch.einsum("r,rah,rbh->abh", f.fusion_weights, fa, fb)
    za = torch.cat([x["a"], torch.ones(B, 1)], -1)
    zb = torch.cat([x["b"], torch.ones(B, 1)], -1)
    expected = torch.einsum("ba,bc,ach->bh", za, zb, w_full) + f.fusion_bias
    torch.testing.assert_close(f(x).fused, expected)


# --- bilinear ---------------------------------------------------------------------------------------


def test_mlb_is_a_hadamard_product():
    dims = {"a": 4, "b": 5}
    f = build("mlb", dims, rank=6, hidden=3)
    x = feats(dims)
    joint = torch.tanh(f.proj[0](x["a"])) * torch.tanh(f.proj[1](x["b"]))
    torch.testing.assert_close(f(x).fused, f.out(joint))
    only_a = f(x, {"a": torch.ones(B), "b": torch.zeros(B)}).fused
    torch.testing.assert_close(only_a, f.out(torch.tanh(f.proj[0](x["a"]))))


def test_mfb_sum_pools_and_normalises():
    dims = {"a": 4, "b": 5, "c": 3}
    f = build("mfb", dims, k=3, hidden=4)
    x = feats(dims)
    out = f(x).fused
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(B))
    e = f.proj[0](x["a"]) * f.proj[1](x["b"]) * f.proj[2](x["c"])
    z = e.view(B, 4, 3).sum(-1)
    z = torch.sign(z) * z.abs().sqrt()
    torch.testing.assert_close(out, z / z.norm(dim=-1, keepdim=True), atol=1e-4, rtol=1e-4)


def test_mutan_sums_rank_terms():
    dims = {"a": 4, "b": 5}
    f = build("mutan", dims, dim=6, rank=2, hidden=3)
    x = feats(dims)
    pa = f.factors[0](torch.tanh(f.inp[0](x["a"]))).view(B, 2, 3)
    pb = f.factors[1](torch.tanh(f.inp[1](x["b"]))).view(B, 2, 3)
    torch.testing.assert_close(f(x).fused, (pa * pb).sum(1))


# --- film -------------------------------------------------------------------------------------------


def test_film_target_choice():
    assert build("film", {"audio": 3, "image": 4, "text": 5}).target == "image"
    assert build("film", {"text": 5, "audio": 3}).target == "audio"
    f = build("film", {"audio": 3, "image": 4, "text": 5}, target="text")
    assert f.target == "text" and f.out_dim == 5
    with pytest.raises(ValueError, match="target 'depth' is not one of"):
        build_fusion("film", {"image": 4, "text": 5}, target="depth")


def test_film_masked_conditioning_is_identity_modulation_and_masked_target_uses_conditioning():
    dims = {"image": 4, "text": 5}
    f = build("film", dims)
    x = feats(dims, seq=3)
    img = x["image"]
    no_text = f(x, {"image": torch.ones(B), "text": torch.zeros(B)}).fused
    torch.testing.assert_close(no_text, (img + torch.relu(f.block(img))).mean(1))  # gamma=1, beta=0
    no_image = f(x, {"image": torch.zeros(B), "text": torch.ones(B)}).fused
    dgamma, beta = f.generator(x["text"].mean(1)).chunk(2, -1)
    torch.testing.assert_close(no_image, torch.relu((1 + dgamma) * f.block.bias + beta))


def test_film_modulates_every_element_of_a_sequence():
    dims = {"image": 4, "text": 5}
    f = build("film", dims)
    x = feats(dims, seq=3)
    dgamma, beta = f.generator(x["text"].mean(1)).chunk(2, -1)
    y = x["image"] + torch.relu((1 + dgamma).unsqueeze(1) * f.block(x["image"]) + beta.unsqueeze(1))
    torch.testing.assert_close(f(x).fused, y.mean(1))


# --- cross attention / mixture ----------------------------------------------------------------------


def test_cross_attention_dims_and_missing_source():
    f = build("cross_attention", {"a": 6, "b": 8, "c": 7}, heads=4)
    assert f.common.dim == 8 and f.out_dim == 24 and len(f.attn) == 6
    with pytest.raises(ValueError, match="multiple of 4"):
        build_fusion("cross_attention", {"a": 6, "b": 8}, heads=4, dim=10)
    # wide inputs (pooled EfficientNet: 1280) attend at MAX_DIM, not at their own width
    wide = build_fusion("cross_attention", {"image": 1280, "text": 384, "audio": 1280}, heads=8)
    assert wide.common.dim == 128 and wide.out_dim == 384
    assert build_fusion("cross_attention", {"a": 256, "b": 256}, heads=2).common.proj is not None
    assert build_fusion("cross_attention", {"a": 256, "b": 256}, heads=2, dim=256).common.dim == 256
    dims = {"a": 8, "b": 8}
    f = build("cross_attention", dims, heads=2)
    x = feats(dims, seq=3)
    out = f(x, {"a": torch.ones(B), "b": torch.zeros(B)}).fused
    # b missing: a's block is its pooled sequence + the attention's constant output bias; b's block is 0
    torch.testing.assert_close(out[:, :8], x["a"].mean(1) + f.attn["0_1"].out_proj.bias)
    torch.testing.assert_close(out[:, 8:], torch.zeros(B, 8))


def test_mixture_validation():
    with pytest.raises(ValueError, match="cannot be mixed"):
        build_fusion("mixture", {"a": 4, "b": 4}, methods=("concat", "late"))
    with pytest.raises(KeyError, match="valid:"):
        build_fusion("mixture", {"a": 4, "b": 4}, methods=("concat", "nope"))
    f = build("mixture", {"a": 4, "b": 4}, methods=["concat", "film"], hidden=6)
    assert f.uses_sequences and f.out_dim == 6
