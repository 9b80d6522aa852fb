"""Where the CPU extraction time goes, like for like: the BN-folded forward fusionkit runs, the
decoding it needs, and whether overlapping the two helps.

On the 800 Flickr8k images of ``../shared/data/flickr8k-800`` (or ``$FUSIONKIT_SHARED_DATA``),
EfficientNet-Lite0's inference module (BatchNorm folded), batch 4, channels_last, tuned allocator,
in this process:

* ``decode``: fusionkit's decode + bicubic resize + centre crop (PIL), serial;
* ``forward_uint8``: the folded forward on pre-decoded uint8 batches (normalisation included);
* ``serial``: decode a batch, then forward it (what ``extract_features`` does on a 2-core CPU);
* ``thread_prefetch``: decode the next batch in a thread while the forward runs;
* ``forward_uint8_1_thread`` / ``thread_prefetch_1_thread``: the same with one intra-op thread;
* ``alt_decode``: torchvision ``decode_jpeg`` + antialiased bicubic ``resize`` on uint8 tensors,
  per image, and its difference from fusionkit's preprocessing (grey levels).

``bound_serial = forward / (forward + decode)``: the best like-for-like ratio a pipeline that
decodes serially can reach. Writes ``benchmarks/results/extract_overlap.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionkit.encoders import build_encoder  # noqa: E402
from fusionkit.encoders.image import resized_size  # noqa: E402
from fusionkit.paths import shared_data_root  # noqa: E402
from fusionkit.runtime import tune_allocator  # noqa: E402


def best_of(f, n: int = 2) -> float:
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="flickr8k-800 folder (default: shared data)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract_overlap.json")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    flickr = args.data or ((shared_data_root() or Path("/nonexistent")) / "flickr8k-800")
    if not (flickr / "images").is_dir():
        sys.exit(f"flickr8k-800 not found at {flickr}; pass --data or set FUSIONKIT_SHARED_DATA")
    tune_allocator()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    paths = [str(p) for p in sorted((flickr / "images").glob("*.jpg"))[: args.limit]]
    n, bs = len(paths), 4
    enc = build_encoder("image", "efficientnet_lite0").eval()
    enc.set_memory_format(torch.channels_last)
    run = enc.inference_module()
    r: dict = {"n_images": n, "threads": threads, "batch_size": bs, "load_avg_start": os.getloadavg()}

    def decode_all():
        return [enc.load(p) for p in paths]

    r["decode"] = best_of(decode_all)
    imgs = decode_all()
    batches = [enc.collate(imgs[i : i + bs]) for i in range(0, n, bs)]

    def serial():
        for i in range(0, n, bs):
            run(enc.collate([enc.load(p) for p in paths[i : i + bs]]))

    def prefetched():
        q: queue.Queue = queue.Queue(2)

        def produce():
            for i in range(0, n, bs):
                q.put(enc.collate([enc.load(p) for p in paths[i : i + bs]]))
            q.put(None)

        th = threading.Thread(target=produce, daemon=True)
        th.start()
        while (x := q.get()) is not None:
            run(x)
        th.join()

    with torch.inference_mode():
        run(batches[0])  # warm-up
        r["forward_uint8"] = best_of(lambda: [run(b) for b in batches])
        r["serial"] = best_of(serial)
        r["thread_prefetch"] = best_of(prefetched)
        torch.set_num_threads(1)
        r["forward_uint8_1_thread"] = best_of(lambda: [run(b) for b in batches], 1)
        r["thread_prefetch_1_thread"] = best_of(prefetched, 1)
        torch.set_num_threads(threads)

    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as TF

    def alt(p):
        x = decode_jpeg(read_file(p), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        tw, th = resized_size(x.shape[-1], x.shape[-2], enc.resize_size)
        x = TF.resize(x, [th, tw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(x, [enc.crop_size, enc.crop_size])

    torch.set_num_threads(1)
    r["alt_decode"] = best_of(lambda: [alt(p) for p in paths])
    r["decode_1_thread"] = best_of(decode_all)
    diffs = [(alt(p).int() - ref.int()).abs() for p, ref in zip(paths, imgs)]
    r["alt_decode_max_diff"] = max(int(d.max()) for d in diffs)
    r["alt_decode_mean_diff"] = round(float(torch.stack([d.float().mean() for d in diffs]).mean()), 4)
    for k in ("decode", "forward_uint8", "serial", "thread_prefetch", "forward_uint8_1_thread",
              "thread_prefetch_1_thread", "alt_decode", "decode_1_thread"):  # fmt: skip
        r[k] = {"seconds": round(r[k], 3), "images_per_s": round(n / r[k], 1), "ms_per_image": round(r[k] / n * 1e3, 3)}
    fwd, dec = r["forward_uint8"]["seconds"], r["decode"]["seconds"]
    r["bound_serial"] = round(fwd / (fwd + dec), 3)
    r["bound_serial_alt_decode"] = round(fwd / (fwd + r["alt_decode"]["seconds"]), 3)
    r["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(r, indent=2) + "\n")
    os.replace(tmp, args.out)
    for k, v in r.items():
        if isinstance(v, dict):
            print(f"{k:26s} {v['seconds']:7.3f} s  {v['images_per_s']:8.1f} img/s  {v['ms_per_image']:.3f} ms/img")
    print(f"bound (serial decode): {r['bound_serial']}; with the torchvision decode: {r['bound_serial_alt_decode']}")
    print(f"torchvision decode vs fusionkit's: max {r['alt_decode_max_diff']}, mean {r['alt_decode_mean_diff']} levels")


if __name__ == "__main__":
    main()
