"""Time and peak memory of exact retrieval ranks (Recall@K, median/mean rank) and top-k search on
CPU, blocked (``chunk_size``) vs one full N x M block.

For N images x 5N captions of ``--dim``-d random embeddings, per chunk size: the wall time
(median of ``--repeats``) of ``retrieval_ranks`` (both directions) and of
``topk_similarity(k=10)``, and the growth of the peak resident set size (``getrusage``; each
setting runs in a fresh subprocess so an earlier, larger run cannot mask it). Checks that every
chunk size gives the same ranks. Writes JSON to ``--out`` and prints a table.

    python benchmarks/retrieval.py [--images 2000] [--dim 256] [--chunks 0 256 1024] [--out benchmarks/results/retrieval.json]

(``--chunks 0`` means no chunking: the full matrix.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def run_one(images: int, dim: int, chunk: int | None, repeats: int, seed: int) -> dict:
    import resource

    from fusionkit.tasks.retrieval import retrieval_ranks, topk_similarity

    g = torch.Generator().manual_seed(seed)
    img = torch.randn(images, dim, generator=g)
    t2i = torch.arange(5 * images) % images
    txt = 0.5 * img[t2i] + torch.randn(5 * images, dim, generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times_r, times_k = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r_i2t, r_t2i = retrieval_ranks(img, txt, t2i, chunk_size=chunk)
        times_r.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        topk_similarity(img, txt, 10, chunk_size=chunk, backend="torch")
        times_k.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "images": images,
        "texts": 5 * images,
        "dim": dim,
        "chunk_size": chunk,
        "ranks_s": statistics.median(times_r),
        "topk10_s": statistics.median(times_k),
        "peak_rss_growth_mib": (peak - base) / 1024,  # ru_maxrss is in KiB on Linux
        "full_matrix_mib": images * 5 * images * 4 / 2**20,
        "ranks_digest": [int(r_i2t.sum()), int(r_t2i.sum())],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval.json"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one setting
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.images, args.dim, args.one or None, args.repeats, args.seed)))
        return 0
    rows = []
    for c in args.chunks:
        cmd = [sys.executable, __file__, "--images", str(args.images), "--dim", str(args.dim)]
        cmd += ["--repeats", str(args.repeats), "--seed", str(args.seed), "--one", str(c)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    digests = {tuple(r["ranks_digest"]) for r in rows}
    if len(digests) != 1:
        raise SystemExit(f"chunk sizes disagree on the ranks: {rows}")
    print(
        f"{'chunk':>7} {'ranks s':>9} {'top-10 s':>9} {'peak RSS +MiB':>14} (full matrix {rows[0]['full_matrix_mib']:.0f} MiB)"
    )
    for r in rows:
        print(f"{str(r['chunk_size']):>7} {r['ranks_s']:9.3f} {r['topk10_s']:9.3f} {r['peak_rss_growth_mib']:14.1f}")
    doc = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
