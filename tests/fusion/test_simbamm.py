"""SimBaMM (fusionkit/fusion/simbamm.py): the equations its docstring states, masking a modality is
removing its token, and the hyper-parameter checks. The shared interface tests in
test_methods.py run on it too."""

from __future__ import annotations

import warnings

import pytest
import torch

from fusionkit.fusion import build_fusion, hyperparameters

B = 5
DIMS = {"audio": 6, "image": 8, "text": 12}


def feats(dims: dict[str, int], seed: int = 0, seq: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(*((B, seq, d) if seq else (B, d)), generator=g) for m, d in sorted(dims.items())}


def build(dims=DIMS, **kw):
    torch.manual_seed(0)
    return build_fusion("simbamm", dims, **kw).eval()


def tokens(f, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[c; P_m(mean_l x_m) + e_m ...]``, (B, 1 + M, D), from the module's own parameters."""
    toks = [f.cls.expand(B, -1)]
    for i, m in enumerate(sorted(x)):
        v = x[m].mean(1) if x[m].dim() == 3 else x[m]
        toks.append(f.proj[i](v) + f.modality_embedding[i])
    return torch.stack(toks, 1)


def test_hyperparameters_report_defaults():
    assert hyperparameters("simbamm") == {"dim": None, "layers": 1, "heads": 4, "ff_mult": 2, "dropout": 0.1}


def test_dims_and_projections():
    f = build({"a": 6, "b": 10})
    assert f.out_dim == 12  # the largest input dim rounded up to a multiple of heads
    assert build({"a": 6, "b": 10}, heads=2).out_dim == 10
    f = build({"a": 16, "b": 16}, dim=8, heads=2, layers=2, ff_mult=3)
    assert f.out_dim == 8 and len(f.encoder.layers) == 2
    assert f.encoder.layers[0].linear1.out_features == 24
    # equal input dims are still projected, each modality by its own Linear
    assert len(f.proj) == 2 and f.proj[0] is not f.proj[1]
    assert tuple(f.modality_embedding.shape) == (2, 8) and tuple(f.cls.shape) == (8,)
    assert not f.encoder.use_nested_tensor


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match=r"simbamm: heads=4 must divide dim=10"):
        build_fusion("simbamm", {"a": 8, "b": 8}, dim=10)
    with pytest.raises(ValueError, match=r"heads=3 must divide dim=16"):
        build_fusion("simbamm", {"a": 8}, dim=16, heads=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        build_fusion("simbamm", {"a": 8}, layers=0)
    with pytest.raises(ValueError, match="dropout"):
        build_fusion("simbamm", {"a": 8}, dropout=1.0)


def test_builds_without_warnings():
    """No "enable_nested_tensor is True, but ..." warning from nn.TransformerEncoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_fusion("simbamm", DIMS)


def test_matches_its_equations():
    """One pre-LN layer over [CLS; tokens], the CLS output through the final LayerNorm."""
    dims = {"a": 6, "b": 8}
    f = build(dims, dim=8, heads=2, dropout=0.0)
    x = feats(dims, seq=3)
    x["b"] = x["b"][:, 0]  # one sequence, one vector
    h = tokens(f, x)
    layer = f.encoder.layers[0]
    a = layer.norm1(h)
    h = h + layer.self_attn(a, a, a, need_weights=False)[0]
    h = h + layer.linear2(torch.nn.functional.gelu(layer.linear1(layer.norm2(h))))
    torch.testing.assert_close(f(x).fused, f.norm(h[:, 0]))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("layers", [1, 2])
def test_masking_a_modality_is_removing_its_token(n, layers):
    """For every pattern of present modalities (none, all but one, ...), a sample's output equals
    the encoder run on the CLS token and the present modalities' tokens alone."""
    dims = dict(list(DIMS.items())[:n])
    f = build(dims, layers=layers)
    x = feats(dims, seq=2)
    mods = sorted(dims)
    patterns = torch.tensor([[(i >> k) & 1 for k in range(n)] for i in range(2**n)], dtype=torch.float)
    patterns = patterns[torch.arange(B) % len(patterns)]  # (B, n): every pattern, all-missing too
    mask = {m: patterns[:, k] for k, m in enumerate(mods)}
    out = f(x, mask).fused
    assert torch.isfinite(out).all()
    toks = tokens(f, x)
    for i in range(B):
        keep = [0] + [1 + k for k in range(n) if patterns[i, k] > 0]
        alone = f.norm(f.encoder(toks[i : i + 1, keep])[:, 0])
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_missing_modality_does_not_change_the_output(mode):
    """Perturbing a missing modality's features changes nothing, with dropout on (train, same
    dropout draws), in eval, and under inference_mode (PyTorch's fast path)."""
    f = build(layers=2)
    f.train(mode == "train")
    x = feats(DIMS, seq=3)
    for m in sorted(DIMS):
        mask = {k: torch.ones(B) for k in DIMS}
        mask[m][[0, 3]] = 0.0
        changed = dict(x)
        changed[m] = x[m].clone()
        changed[m][[0, 3]] = 100 * torch.randn_like(x[m][[0, 3]])
        with torch.inference_mode(mode == "inference"):
            torch.manual_seed(1)
            before = f(x, mask).fused
            torch.manual_seed(1)
            after = f(changed, mask).fused
        torch.testing.assert_close(after, before, rtol=0, atol=0, msg=f"{m} leaks ({mode})")


def test_output_depends_on_the_present_modalities_of_its_own_sample_only():
    f = build()
    x = feats(DIMS)
    mask = {"audio": torch.ones(B), "image": torch.tensor([1.0, 0, 1, 1, 1]), "text": torch.tensor([1.0, 1, 0, 1, 1])}
    out = f(x, mask).fused
    for m in sorted(DIMS):
        changed = {**x, m: x[m].clone()}
        changed[m][4] += 1.0  # sample 4 has every modality
        new = f(changed, mask).fused
        assert (new[4] - out[4]).abs().max() > 1e-3, f"the output ignores {m}"
        torch.testing.assert_close(new[:4], out[:4], rtol=0, atol=0)
    # the all-but-one samples still depend on the one modality they have
    only_audio = {"audio": torch.ones(B), "image": torch.zeros(B), "text": torch.zeros(B)}
    a = f(x, only_audio).fused
    b = f({**x, "audio": x["audio"] + 1.0}, only_audio).fused
    assert ((a - b).abs().amax(dim=1) > 1e-3).all()
    # with nothing present every sample gets the same output
    nothing = {m: torch.zeros(B) for m in DIMS}
    z = f(x, nothing).fused
    torch.testing.assert_close(z, z[:1].expand(B, -1), rtol=0, atol=1e-6)


def test_a_sequence_is_mean_pooled_to_one_token():
    f = build()
    x = feats(DIMS, seq=4)
    pooled = {m: v.mean(1) for m, v in x.items()}
    torch.testing.assert_close(f(x).fused, f(pooled).fused)


def test_eval_and_train_agree_without_dropout():
    """Train mode, eval mode and inference mode (the fused fast path) compute the same thing."""
    f = build(dropout=0.0, layers=2)
    x = feats(DIMS, seq=2)
    mask = {"audio": torch.tensor([1.0, 0, 0, 1, 0]), "image": torch.tensor([1.0, 1, 0, 0, 0]), "text": torch.ones(B)}
    mask["text"][4] = 0.0
    evaluated = f(x, mask).fused
    with torch.inference_mode():
        fast = f(x, mask).fused
    trained = f.train()(x, mask).fused
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)
    torch.testing.assert_close(fast, evaluated, atol=1e-5, rtol=1e-5)
