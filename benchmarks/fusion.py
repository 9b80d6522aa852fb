"""Speed and size of every registered fusion method on CPU.

For each method: forward time (eval mode, no grad) and forward + backward time (train mode,
backward of ``fused.sum()``), median over ``--repeats`` timed runs after ``--warmup`` runs, on
3 modalities of ``--hidden`` dims (what the projectors of ``MultimodalModel`` produce) at batch
``--batch``; pooled ``(B, D)`` inputs for every method, and ``(B, L, D)`` sequences as well for
the methods that use sequence elements (``Fusion.uses_sequences``). Writes JSON to ``--out`` and
prints a table.

    python benchmarks/fusion.py [--batch 256] [--repeats 10] [--out benchmarks/results/fusion.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fusionkit.fusion import available, build_fusion

MODALITIES = ("audio", "image", "text")


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_one(name: str, batch: int, hidden: int, seq_len: int | None, warmup: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    fusion = build_fusion(name, {m: hidden for m in MODALITIES})
    shape = (batch, hidden) if seq_len is None else (batch, seq_len, hidden)
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(*shape, generator=g) for m in MODALITIES}
    mask = {m: torch.ones(batch) for m in MODALITIES}
    mask["audio"][::4] = 0.0  # a quarter of the samples miss a modality, as in real runs

    fusion.eval()

    def forward():
        with torch.no_grad():
            fusion(feats, mask)

    fwd = median_ms(forward, warmup, repeats)

    fusion.train()
    # the inputs require grad, as the projectors' outputs do in the model (and so that
    # parameter-free methods are timed too)
    grad_feats = {m: x.clone().requires_grad_() for m, x in feats.items()}

    def forward_backward():
        fusion.zero_grad(set_to_none=True)
        fusion(grad_feats, mask).fused.sum().backward()

    fwd_bwd = median_ms(forward_backward, warmup, repeats)
    return {
        "method": name,
        "input": "pooled" if seq_len is None else "sequence",
        "seq_len": 1 if seq_len is None else seq_len,
        "out_dim": fusion.out_dim,
        "params": fusion.num_parameters(),
        "forward_ms": round(fwd, 3),
        "forward_backward_ms": round(fwd_bwd, 3),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--hidden", type=int, default=128, help="feature dim of every modality")
    parser.add_argument("--seq-len", type=int, default=16, help="L for the sequence inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion.json"), help="JSON output")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or available()
    unknown = sorted(set(methods) - set(available()))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {', '.join(available())}")

    results = []
    for name in methods:
        results.append(bench_one(name, args.batch, args.hidden, None, args.warmup, args.repeats, args.seed))
        probe = build_fusion(name, {m: 4 for m in MODALITIES})
        if probe.uses_sequences:
            results.append(bench_one(name, args.batch, args.hidden, args.seq_len, args.warmup, args.repeats, args.seed))

    report = {
        "benchmark": "fusion",
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "modalities": list(MODALITIES),
        "hidden": args.hidden,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "statistic": "median",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    header = f"{'method':<20} {'input':<12} {'params':>10} {'out_dim':>8} {'fwd ms':>9} {'fwd+bwd ms':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        inp = r["input"] if r["input"] == "pooled" else f"seq L={r['seq_len']}"
        print(
            f"{r['method']:<20} {inp:<12} {r['params']:>10,} {r['out_dim']:>8} "
            f"{r['forward_ms']:>9.2f} {r['forward_backward_ms']:>11.2f}"
        )
    print(
        f"\nbatch {args.batch}, {len(MODALITIES)} modalities x {args.hidden} dims, CPU, {report['threads']} threads, "
        f"median of {args.repeats}; written to {args.out}"
    )
    return results


if __name__ == "__main__":
    main()
