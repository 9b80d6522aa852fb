"""Where the CPU extraction time goes, like for like: the BN-folded forward fusionkit runs, the
decoding it needs, and how the two are interleaved.

On the 800 Flickr8k images of ``../shared/data/flickr8k-800`` (or ``$FUSIONKIT_SHARED_DATA``),
EfficientNet-Lite0's inference module (BatchNorm folded), batch 4, channels_last, tuned allocator,
in this process:

* ``decode``: fusionkit's ``ImageEncoder.load`` (TorchCodec JPEG decode + uint8 antialiased tensor
  resize + centre crop), serial;
* ``decode_pil``: the usual PIL pipeline for comparison (PIL decode, torchvision ``Resize`` +
  ``CenterCrop`` on the PIL image), and its difference from fusionkit's pixels (grey levels);
* ``forward_uint8``: the folded forward on pre-decoded uint8 batches (normalisation included);
* ``serial``: decode a batch, then forward it;
* ``grouped``: decode ``decode_group`` images, then forward them batch by batch (what
  ``extract_features`` does on a CPU without spare cores); forward, serial and grouped run
  interleaved for ``--rounds`` rounds, and each round's ratios are kept;
* ``thread_prefetch``: decode the next batch in a thread while the forward runs;
* ``forward_uint8_1_thread`` / ``thread_prefetch_1_thread``: the same with one intra-op thread.

``bound_serial = forward / (forward + decode)``: the best like-for-like ratio a pipeline that
decodes serially can reach; ``ratio_*`` = ``forward_uint8`` over each pipeline. Writes
``benchmarks/results/extract_overlap.json``.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionkit.encoders import build_encoder  # noqa: E402
from fusionkit.encoders.image import decode_image  # noqa: E402
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
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of forward / serial / grouped")
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

    group = int(enc.perf["cpu"]["decode_group"])
    r["decode_group"] = group

    def grouped():
        for g in range(0, n, group):
            xs = [enc.load(p) for p in paths[g : g + group]]
            for i in range(0, len(xs), bs):
                run(enc.collate(xs[i : i + bs]))

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
        # forward, serial and grouped interleaved round by round (the machine is shared: a slow
        # spell hits all three), each round's ratios kept, the best time of each reported
        fns = {"forward_uint8": lambda: [run(b) for b in batches], "serial": serial, "grouped": grouped}
        rounds = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, f in fns.items():
                rounds[k].append(best_of(f, 1))
        r.update({k: min(v) for k, v in rounds.items()})
        r["rounds"] = {k: [round(t, 3) for t in v] for k, v in rounds.items()}
        for k in ("serial", "grouped"):
            per_round = [f / t for f, t in zip(rounds["forward_uint8"], rounds[k], strict=True)]
            r[f"ratio_{k}_per_round"] = [round(x, 3) for x in per_round]
            r[f"ratio_{k}_median"] = round(sorted(per_round)[len(per_round) // 2], 3)
        r["thread_prefetch"] = best_of(prefetched)
        torch.set_num_threads(1)
        r["forward_uint8_1_thread"] = best_of(lambda: [run(b) for b in batches], 1)
        r["thread_prefetch_1_thread"] = best_of(prefetched, 1)
        torch.set_num_threads(threads)

    from torchvision.transforms import v2

    pil = v2.Compose(
        [v2.Resize(enc.resize_size, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(enc.crop_size)]
    )

    def decode_pil(p):
        return torch.from_numpy(np.array(pil(decode_image(p, enc.resize_size)), dtype=np.uint8)).permute(2, 0, 1)

    torch.set_num_threads(1)
    r["decode_pil"] = best_of(lambda: [decode_pil(p) for p in paths])
    r["decode_1_thread"] = best_of(decode_all)
    torch.set_num_threads(threads)
    diffs = [(decode_pil(p).int() - ref.int()).abs() for p, ref in zip(paths, imgs)]
    r["decode_pil_max_diff"] = max(int(d.max()) for d in diffs)
    r["decode_pil_mean_diff"] = round(float(torch.stack([d.float().mean() for d in diffs]).mean()), 4)
    keys = ("decode", "decode_pil", "decode_1_thread", "forward_uint8", "serial", "grouped", "thread_prefetch",
            "forward_uint8_1_thread", "thread_prefetch_1_thread")  # fmt: skip
    for k in keys:
        r[k] = {"seconds": round(r[k], 3), "images_per_s": round(n / r[k], 1), "ms_per_image": round(r[k] / n * 1e3, 3)}
    fwd, dec = r["forward_uint8"]["seconds"], r["decode"]["seconds"]
    r["bound_serial"] = round(fwd / (fwd + dec), 3)
    r["bound_serial_pil_decode"] = round(fwd / (fwd + r["decode_pil"]["seconds"]), 3)
    for k in ("serial", "grouped", "thread_prefetch"):
        r[f"ratio_{k}"] = round(fwd / r[k]["seconds"], 3)
    r["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(r, indent=2) + "\n")
    os.replace(tmp, args.out)
    for k, v in r.items():
        if isinstance(v, dict) and "seconds" in v:
            print(f"{k:26s} {v['seconds']:7.3f} s  {v['images_per_s']:8.1f} img/s  {v['ms_per_image']:.3f} ms/img")
    print(f"bound (serial decode): {r['bound_serial']}; with the PIL pipeline: {r['bound_serial_pil_decode']}")
    print(f"forward / pipeline (best times): serial {r['ratio_serial']}, grouped {r['ratio_grouped']}, "
          f"thread prefetch {r['ratio_thread_prefetch']}")  # fmt: skip
    print(f"per round (median): serial {r['ratio_serial_per_round']} ({r['ratio_serial_median']}), "
          f"grouped {r['ratio_grouped_per_round']} ({r['ratio_grouped_median']})")  # fmt: skip
    print(
        f"PIL pipeline vs fusionkit's pixels: max {r['decode_pil_max_diff']}, mean {r['decode_pil_mean_diff']} levels"
    )


if __name__ == "__main__":
    main()
