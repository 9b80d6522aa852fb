"""One training step of every fusion model with AdamW's per-tensor loop against its fused kernel.

The comparison's models are small (a few hundred thousand parameters on cached features), so a
CPU step is bound by the number of ops, not by arithmetic: the per-tensor AdamW spends ~6 small
ops on every parameter tensor. ``fusionkit.train`` uses ``fused=True``. For each method: a full
step (forward, cross-entropy, backward, gradient clipping, AdamW) at the default profile's shapes
(image 1280, text 384, audio 128 dims; batch 64; hidden 128; one thread, as a comparison trial
runs), the median of ``--repeats`` timed blocks of ``--steps`` steps, the two optimizers
interleaved block by block so that load on a shared machine hits both alike; the ratio is what
to read. Writes JSON to ``--out``.

    python benchmarks/optimizer.py [--steps 50] [--repeats 5] [--out benchmarks/results/optimizer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from fusionkit.fusion import available
from fusionkit.model import build_model

DIMS = {"audio": 128, "image": 1280, "text": 384}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--out", default="benchmarks/results/optimizer.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(args.batch, d, generator=g) for m, d in DIMS.items()}
    labels = torch.randint(0, 4, (args.batch,), generator=g)
    rows = []
    for method in args.methods or available():
        steps = {}
        for kind in ("per_tensor", "fused"):
            torch.manual_seed(0)
            model = build_model(method, DIMS, 4, hidden=128, dropout=0.1).train()
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2, fused=kind == "fused")
            params = list(model.parameters())

            def step(model=model, opt=opt, params=params) -> None:
                loss = nn.functional.cross_entropy(model(feats, None).logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()

            for _ in range(5):
                step()
            steps[kind] = step
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):
            for kind, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[kind].append((time.perf_counter() - t0) / args.steps * 1e3)
        per, fused = statistics.median(times["per_tensor"]), statistics.median(times["fused"])
        rows.append({"method": method, "per_tensor_ms": round(per, 3), "fused_ms": round(fused, 3),
                     "speedup": round(per / fused, 2)})  # fmt: skip
        print(f"{method:20s} per-tensor {per:7.2f} ms  fused {fused:7.2f} ms  {per / fused:4.2f}x", flush=True)
    out = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load": list(os.getloadavg()),
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "methods": rows,
        "median_speedup": statistics.median(r["speedup"] for r in rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("median speedup", out["median_speedup"])


if __name__ == "__main__":
    main()
