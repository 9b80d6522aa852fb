"""Feature-extraction throughput on a GPU (bf16): the GPU half of ``benchmarks/extract.py``.

One short script for a lent GPU machine (``python benchmarks/extract_gpu.py``), on the 800
Flickr8k images of ``../shared/data/flickr8k-800`` (or ``$FUSIONKIT_SHARED_DATA``), EfficientNet-Lite0
at 224 px:

ceiling     the bare package model on pre-decoded, normalised tensors already on the GPU, under
            ``torch.inference_mode`` and bf16 autocast; batch {32, 64, 128, 256} x {contiguous,
            channels_last}; the best configuration counts;
fusionkit   ``extract_features(device="cuda")`` on a cold cache (decode in DataLoader workers +
            host-to-device copy + bf16 forward + cache write) with the encoder's GPU defaults, and
            a sweep of batch x workers; throughput over the ceiling (target >= 0.85);
warm        the same call again: a cache hit (target >= 50x faster than cold).

Writes ``benchmarks/results/extract_gpu.json`` and prints a table. Without CUDA it stops with a
message, unless ``--device cpu`` is given (a dry run of the code path with the GPU's settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from extract import image_dataset, peak_mb  # noqa: E402

from fusionkit.data.base import load_dataset  # noqa: E402
from fusionkit.encoders import build_encoder  # noqa: E402
from fusionkit.features import extract_features  # noqa: E402
from fusionkit.paths import shared_data_root  # noqa: E402
from fusionkit.runtime import tune_allocator  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def autocast(dev: torch.device):
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def ceiling_run(net, x: torch.Tensor, bs: int, channels_last: bool, dev: torch.device, repeats: int = 3) -> float:
    """Images/s of the bare forward (best of ``repeats`` passes after a warm-up)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    n = x.shape[0]
    best = 0.0
    with torch.inference_mode(), autocast(dev):
        for _ in range(2):  # warm-up: cuDNN autotuning, kernel caches
            net.extract_features(x[: min(bs, n)]).mean((2, 3))
        for _ in range(repeats):
            sync(dev)
            t = time.perf_counter()
            for s in range(0, n, bs):
                net.extract_features(x[s : s + bs]).mean((2, 3)).float()
            sync(dev)
            best = max(best, n / (time.perf_counter() - t))
    return best


def fusionkit_run(ds, enc, cache: Path, dev: torch.device, **kw) -> dict:
    sync(dev)
    t = time.perf_counter()
    fs = extract_features(ds, "image", enc, split="train", cache_dir=cache, device=str(dev), progress=False, **kw)
    sync(dev)
    dt = time.perf_counter() - t
    return {"seconds": round(dt, 4), "images_per_s": round(len(fs.ids) / dt, 2), "settings": fs.meta.get("settings")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="flickr8k-800 folder (default: shared data)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract_gpu.json")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the code path")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick check)")
    ap.add_argument("--rounds", type=int, default=3, help="cold fusionkit runs (best kept)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this benchmark is for a GPU machine (--device cpu: a dry run)")
    tune_allocator()
    flickr = args.data or ((shared_data_root() or Path("/nonexistent")) / "flickr8k-800")
    if not (flickr / "images").is_dir():
        sys.exit(f"flickr8k-800 not found at {flickr}; pass --data or set FUSIONKIT_SHARED_DATA")
    work = Path(tempfile.mkdtemp(prefix="fusionkit-bench-gpu-"))
    ds = load_dataset(image_dataset(flickr, work, args.limit))
    paths = [ds.media_root / s.modalities["image"] for s in ds.samples]
    n = len(paths)
    t0 = time.time()
    result: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "n_images": n,
        "precision": "bf16 autocast" if dev.type == "cuda" else "fp32",
    }
    print(f"{n} images on {result['device']}", flush=True)

    enc = build_encoder("image")
    # pre-decoded, normalised tensors with fusionkit's own preprocessing, on the device (not timed)
    x = enc.collate([enc.load(p) for p in paths]).float().sub_(127.0).div_(128.0).to(dev)
    net = enc.net.to(dev).eval()
    sweep = []
    for bs in (32, 64, 128, 256):
        for cl in (False, True):
            r = ceiling_run(net, x, bs, cl, dev)
            sweep.append({"batch_size": bs, "channels_last": cl, "images_per_s": round(r, 2)})
            print(f"  ceiling bs={bs:<4d}{'channels_last' if cl else 'contiguous'}: {r:9.1f} img/s", flush=True)
    best = max(sweep, key=lambda r: r["images_per_s"])
    result["ceiling_sweep"], result["ceiling"] = sweep, best
    del x
    net.cpu()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # fusionkit: the encoder's defaults for this device, cold (fresh cache each round), then warm
    enc = build_encoder("image")
    cold = [fusionkit_run(ds, enc, work / f"cache{i}", dev) for i in range(args.rounds)]
    result["fusionkit_cold"] = max(cold, key=lambda r: r["images_per_s"])
    result["fusionkit_cold_runs"] = [r["images_per_s"] for r in cold]
    warm = [fusionkit_run(ds, enc, work / "cache0", dev) for _ in range(3)]
    result["fusionkit_warm"] = min(warm, key=lambda r: r["seconds"])
    result["peak_rss_mb"] = round(peak_mb(), 1)
    if dev.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    ext = []
    for bs in (64, 128, 256):
        for workers in [w for w in (2, 4, 8) if w <= (os.cpu_count() or 1)] or [0]:
            r = fusionkit_run(ds, enc, work / f"sweep{bs}-{workers}", dev, batch_size=bs, num_workers=workers)
            ext.append({"batch_size": bs, "num_workers": workers, "images_per_s": r["images_per_s"]})
            print(f"  fusionkit bs={bs:<4d}workers={workers}: {r['images_per_s']:9.1f} img/s", flush=True)
    result["extract_sweep"] = ext
    ratio = result["fusionkit_cold"]["images_per_s"] / best["images_per_s"]
    speedup = result["fusionkit_cold"]["seconds"] / max(result["fusionkit_warm"]["seconds"], 1e-9)
    result["ratio_fusionkit_over_ceiling"] = round(ratio, 3)
    result["ratio_warm_over_cold_speed"] = round(speedup, 1)
    result["targets"] = {"fusionkit_over_ceiling >= 0.85": ratio >= 0.85, "warm_over_cold >= 50": speedup >= 50}
    result["wall_seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"ceiling  {best['images_per_s']:9.1f} img/s (batch {best['batch_size']}, "
          f"{'channels_last' if best['channels_last'] else 'contiguous'})")  # fmt: skip
    print(f"fusionkit {result['fusionkit_cold']['images_per_s']:8.1f} img/s cold -> {ratio:.3f} of the ceiling")
    print(f"warm     {result['fusionkit_warm']['seconds'] * 1e3:9.1f} ms -> {speedup:.0f}x faster than cold")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
