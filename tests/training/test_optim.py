"""The optimizer every model trains with (fusionkit.training.optim)."""

from __future__ import annotations

import torch

from fusionkit.training import adamw


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def test_fused_adamw_makes_the_per_tensor_update():
    a, b = _model(0), _model(0)
    fused = adamw(a.parameters(), lr=1e-2, weight_decay=1e-2)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-2)
    assert fused.defaults["fused"] is True and not plain.defaults.get("fused")
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(20):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), (pa - pb).abs().max()
    assert not torch.equal(a[0].weight, _model(0)[0].weight)  # it trained


def test_parameter_groups_and_devices_without_the_kernel():
    m = _model(1)
    groups = [{"params": list(m[0].parameters()), "lr": 1e-3}, {"params": list(m[2].parameters()), "lr": 1e-2}]
    opt = adamw(groups, weight_decay=0.0)
    assert opt.defaults["fused"] is True and [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    meta = torch.nn.Linear(4, 4, device="meta")
    assert adamw(meta.parameters(), lr=1e-3).defaults["fused"] is False  # no fused kernel there: the loop
