"""`fusionkit predict` / `fusionkit serve` on raw files: throughput against the bare encoder
forwards, serving latency and concurrent throughput, and agreement with the run's 05 predictions.

On flickr8k-800's image-caption pairs (``../shared/data/flickr8k-800`` or ``$FUSIONKIT_SHARED_DATA``;
800 images -> 3,200 pairs of the ``match`` target, prepared as 01 prepares them), in one run:

1. a run is made as the chain makes it: the dataset prepared (01), EfficientNet-Lite0 + MiniLM
   pooled features cached (02), a gmu classifier trained (04) and loaded back as 05 loads it; 05's
   test predictions are ``softmax(train.predict(model, test))`` as its notebook computes them; the
   run is exported (``fusionkit export``);
2. ``fusionkit predict BUNDLE DATASET --out pred.csv`` in a fresh process (interpreter start,
   imports, model loading, decoding, encoding, output writing all timed; no feature cache: the
   bundle never reads one), best of ``--rounds``, against the **bare encoder forwards on the same
   inputs** (the ceiling ``benchmarks/extract.py`` measures: EfficientNet-Lite0's
   ``extract_features`` + average pool on pre-decoded, normalised tensors at its measured batch and
   memory format, and MiniLM on pre-tokenised batches, timed after a warm-up in a fresh process
   of their own, alternating with predict's rounds, best of two passes each);
   target: ``predict_over_bare >= 0.8``. predict encodes an image or text that several rows share
   once (flickr8k-800's pairs name each image 4 times), so ``predict_over_bare_distinct`` is the
   like-for-like ratio: against the bare forwards of each distinct image and text once. One more
   predict round runs with ``OMP_WAIT_POLICY=ACTIVE`` (``predict_omp_active``: fusionkit's default
   lets idle OpenMP threads sleep, right on a shared machine, slower on one's own);
3. agreement: the bundle's predictions of the test rows against 05's: same argmax, probabilities
   within 1e-5;
4. ``fusionkit serve BUNDLE`` in a fresh process on 127.0.0.1: p50 / p99 latency of one request
   carrying one image and its caption, sequentially; then throughput with 8 concurrent clients
   over ``--requests`` requests (>= 500 for the full run); zero errors expected (every answer 200,
   its prediction that of ``pred.csv``). The request loops are bounded in count and in time.

The machine may be shared: the load average is recorded at start and end, and every figure is a
ratio or a rate within this run.

    .venv/bin/python benchmarks/predict.py            # full: 3,200 pairs, 300 + 600 requests (~10 min on 2 cores)
    .venv/bin/python benchmarks/predict.py --quick    # 100 images (400 pairs), 60 + 120 requests: it works

Writes ``benchmarks/results/predict.json`` (``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionkit.bundle import ClassifierSpec, load_classifier, save_classifier  # noqa: E402
from fusionkit.data import registry  # noqa: E402
from fusionkit.encoders import build_encoder  # noqa: E402
from fusionkit.export import export_run  # noqa: E402
from fusionkit.index import FeatureIndex  # noqa: E402
from fusionkit.model import build_model  # noqa: E402
from fusionkit.paths import shared_data_root  # noqa: E402
from fusionkit.runtime import tune_allocator  # noqa: E402
from fusionkit.train import TrainConfig, predict, train  # noqa: E402

ENCODERS = {"image": "efficientnet_lite0", "text": "minilm"}
METHOD = "gmu"
CLIENTS = 8
#: timed passes of the bare forwards in their process (best kept: interference only slows a pass)
PASSES = 2


def fusionkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from fusionkit.cli import main; sys.exit(main())", *args]


def child_env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "FUSIONKIT_NO_PROGRESS": "1"}


def text_modality(ds) -> str:
    return next(m for m, k in ds.modalities.items() if k == "text")


# ---------------------------------------------------------------------------- 1. the run
def make_run(flickr: Path, work: Path, images: int | None, epochs: int) -> dict:
    t = time.perf_counter()
    ds = registry.prepare("flickr8k", work / "flickr8k-800", source_dir=flickr, max_images=images, progress=False)
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    index = FeatureIndex.build(ds, ENCODERS, work / "cache", ["pooled"], path=run / "features.json", progress=False)
    splits, names = index.splits(target="match")
    in_dims = {m: int(x.shape[-1]) for m, x in splits["train"].features.items()}
    torch.manual_seed(0)
    model = build_model(METHOD, in_dims, len(names), hidden=64)
    train(model, splits["train"], splits["val"], TrainConfig(epochs=epochs, seed=0))
    spec = ClassifierSpec(fusion=METHOD, in_dims=in_dims, num_classes=len(names), class_names=names, target="match",
                          hidden=64)  # fmt: skip
    save_classifier(run / "model.safetensors", model, spec)
    model05, _ = load_classifier(run / "model.safetensors")  # as 05 loads it
    test = splits["test"]
    logits, _ = predict(model05, test)  # as 05 computes its test predictions
    bundle = export_run(run, work / "bundle").parent
    return {"ds": ds, "bundle": bundle, "names": names, "test_ids": test.ids, "test_probs": torch.softmax(logits, 1),
            "seconds": time.perf_counter() - t}  # fmt: skip


# ---------------------------------------------------------------------------- 2. predict vs bare
def time_predict(bundle: Path, dataset: Path, out: Path, **env: str) -> float:
    """Wall seconds of ``fusionkit predict`` in a fresh process (``env``: added to its environment)."""
    t = time.perf_counter()
    proc = subprocess.run(fusionkit_cmd("predict", str(bundle), str(dataset), "--out", str(out), "--device", "cpu"),
                          capture_output=True, text=True, env={**child_env(), **env}, check=False)  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"fusionkit predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def bare_forwards(dataset: Path) -> dict:
    """The bare encoder forwards in a fresh process (as predict runs in one: no thread or allocator
    state left by the run's extraction and training in this process)."""
    proc = subprocess.run([sys.executable, __file__, "--child-bare", str(dataset)], capture_output=True, text=True,
                          env=child_env(), check=False)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"bare-forward child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def child_bare(dataset: Path) -> None:
    """The bare encoder forwards on the rows' inputs, pre-decoded / pre-tokenised (extract.py's ceiling)."""
    from fusionkit.data.base import load_dataset

    ds = load_dataset(dataset)
    tune_allocator()
    rows = ds.samples
    img = build_encoder("image", ENCODERS["image"])
    paths = sorted({s.modalities["image"] for s in rows})
    pos = {p: i for i, p in enumerate(paths)}
    root = Path(getattr(ds, "media_root", None) or ds.root)
    fmt = torch.channels_last if img.perf["cpu"].get("channels_last") else torch.contiguous_format
    unique = img.collate([img.load(p, root) for p in paths]).float().sub_(127.0).div_(128.0)
    unique = unique.contiguous(memory_format=fmt)
    net = img.net.to(memory_format=fmt)
    which = torch.tensor([pos[s.modalities["image"]] for s in rows])
    bs = int(img.perf["cpu"]["batch_size"])
    t_img = float("inf")
    with torch.inference_mode():
        net.extract_features(unique[:bs]).mean((2, 3))
        for _ in range(PASSES):  # the first pass in a process can be several times slower: best kept
            t = time.perf_counter()
            for s in range(0, len(rows), bs):
                x = unique.index_select(0, which[s : s + bs]).contiguous(memory_format=fmt)
                net.extract_features(x).mean((2, 3))
            t_img = min(t_img, time.perf_counter() - t)
        t_img_distinct = float("inf")  # each distinct image once, as predict encodes them
        for _ in range(PASSES):
            t = time.perf_counter()
            for s in range(0, len(unique), bs):
                net.extract_features(unique[s : s + bs]).mean((2, 3))
            t_img_distinct = min(t_img_distinct, time.perf_counter() - t)
    txt = build_encoder("text", ENCODERS["text"])
    texts = [s.modalities[text_modality(ds)] for s in rows]
    tb = int(txt.perf["cpu"]["batch_size"])
    distinct = list(dict.fromkeys(texts))

    def batches_of(xs: list[str]) -> list:
        return [txt.tokenizer(xs[s : s + tb], padding=True, truncation=True, max_length=txt.max_length,
                              return_tensors="pt") for s in range(0, len(xs), tb)]  # fmt: skip

    def time_text(batches: list) -> float:
        best = float("inf")
        for _ in range(PASSES):
            t = time.perf_counter()
            for b in batches:
                h = txt.model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
            best = min(best, time.perf_counter() - t)
        return best

    every = batches_of(texts)
    with torch.inference_mode():
        txt.model(**every[0])
        t_txt = time_text(every)
        t_txt_distinct = time_text(batches_of(distinct))
    out = {"image_seconds": t_img, "text_seconds": t_txt, "image_distinct_seconds": t_img_distinct,
           "text_distinct_seconds": t_txt_distinct, "distinct_images": len(paths), "distinct_texts": len(distinct),
           "image_batch": bs, "text_batch": tb,
           "memory_format": "channels_last" if fmt == torch.channels_last else "contiguous",
           "torch_threads": torch.get_num_threads()}  # fmt: skip
    print("RESULT " + json.dumps(out))


def read_predictions(path: Path, names: list[str]) -> dict[str, tuple[str, list[float]]]:
    with open(path, newline="") as f:
        return {r["id"]: (r["prediction"], [float(r[f"prob_{c}"]) for c in names]) for r in csv.DictReader(f)}


def agreement(pred: dict, run: dict) -> dict:
    names = run["names"]
    want = run["test_probs"]
    got = torch.tensor([pred[i][1] for i in run["test_ids"]])
    same = [pred[i][0] == names[int(want[k].argmax())] for k, i in enumerate(run["test_ids"])]
    diff = float((got - want).abs().max())
    return {"test_rows": len(same), "same_argmax": sum(same), "max_abs_prob_diff": diff,
            "ok": all(same) and diff <= 1e-5}  # fmt: skip


# ---------------------------------------------------------------------------- 4. serve
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_bench(run: dict, pred: dict, n_seq: int, n_conc: int, time_limit: float) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(fusionkit_cmd("serve", str(run["bundle"]), "--host", "127.0.0.1", "--port", str(port),
                                          "--device", "cpu"), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ds = run["ds"]
    root = Path(getattr(ds, "media_root", None) or ds.root)
    samples = ds.split("test") or ds.samples
    tm = text_modality(ds)
    payloads = [(s.id, (root / s.modalities["image"]).read_bytes(), s.modalities[tm]) for s in samples]
    try:
        t0 = time.perf_counter()
        start_deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fusionkit serve exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > start_deadline:
                raise RuntimeError("fusionkit serve did not answer /health within 180 s")
            time.sleep(0.2)
        startup = time.perf_counter() - t0
        errors: list[str] = []

        def one(client, k: int) -> float:
            sid, image, caption = payloads[k % len(payloads)]
            t = time.perf_counter()
            r = client.post(f"{url}/predict", files={"image": ("x.jpg", image, "image/jpeg")},
                            data={tm: caption}, timeout=60)  # fmt: skip
            dt = time.perf_counter() - t
            if r.status_code != 200:
                errors.append(f"{sid}: {r.status_code} {r.text[:200]}")
            elif sid in pred and r.json()["prediction"] != pred[sid][0]:
                errors.append(f"{sid}: served {r.json()['prediction']!r}, fusionkit predict {pred[sid][0]!r}")
            return dt

        deadline = time.monotonic() + time_limit
        with httpx.Client() as c:
            for k in range(3):  # warm-up (first requests build kernels)
                one(c, k)
            lat = []
            for k in range(n_seq):
                if time.monotonic() > deadline:
                    break
                lat.append(one(c, k))
        lat_ms = sorted(x * 1000 for x in lat)
        counter = iter(range(n_conc))

        def client_loop() -> int:
            done = 0
            with httpx.Client() as c:
                for k in counter:  # the shared iterator: n_conc requests in all
                    if time.monotonic() > deadline:
                        break
                    one(c, k)
                    done += 1
            return done

        t = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            done = sum(pool.map(lambda _: client_loop(), range(CLIENTS)))
        wall = time.perf_counter() - t
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    q = statistics.quantiles(lat_ms, n=100, method="inclusive") if len(lat_ms) > 1 else lat_ms * 99
    return {"startup_seconds": round(startup, 2), "sequential_requests": len(lat_ms),
            "latency_ms": {"p50": round(q[49], 1), "p99": round(q[98], 1), "mean": round(statistics.fmean(lat_ms), 1),
                           "max": round(lat_ms[-1], 1)},
            "concurrent": {"clients": CLIENTS, "requests": done, "seconds": round(wall, 2),
                           "requests_per_s": round(done / wall, 1)},
            "errors": len(errors), "error_examples": errors[:5],
            "stopped_by_time_limit": len(lat_ms) < n_seq or done < n_conc}  # fmt: skip


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run that shows it works: 100 images (400 pairs)")
    ap.add_argument("--data", type=Path, default=None, help="flickr8k-800 folder (default: shared data)")
    ap.add_argument("--images", type=int, default=None, help="keep a seeded subset of this many images")
    ap.add_argument("--rounds", type=int, default=None, help="fusionkit predict runs, best kept (default 3; quick 1)")
    ap.add_argument("--sequential", type=int, default=None, help="sequential serve requests (default 300; quick 60)")
    ap.add_argument("--requests", type=int, default=None, help="concurrent serve requests (default 600; quick 120)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--time-limit", type=float, default=600, help="seconds the serve loops may run at most")
    ap.add_argument("--work", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict.json")
    ap.add_argument("--child-bare", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_bare:
        return child_bare(args.child_bare)
    images = args.images or (100 if args.quick else None)
    rounds = args.rounds or (1 if args.quick else 3)
    n_seq = args.sequential or (60 if args.quick else 300)
    n_conc = args.requests or (120 if args.quick else 600)
    flickr = args.data or (shared_data_root() / "flickr8k-800" if shared_data_root() else None)
    if flickr is None or not (flickr / "captions.txt").is_file():
        sys.exit(f"flickr8k-800 not found ({flickr}); pass --data or set FUSIONKIT_SHARED_DATA")
    t_start = time.time()
    result: dict = {"quick": args.quick, "load_avg_start": os.getloadavg(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(), "method": METHOD,
                    "encoders": ENCODERS}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fusionkit-bench-predict-") as tmp:
        work = args.work or Path(tmp)
        print("1. the run (01 prepare, 02 features, 04 train, 05 predictions, export) ...", flush=True)
        run = make_run(flickr, work, images, args.epochs)
        n = len(run["ds"].samples)
        result["pairs"] = n
        result["images"] = len({s.modalities["image"] for s in run["ds"].samples})
        result["run_seconds"] = round(run["seconds"], 1)
        print(f"2. fusionkit predict on {n} pairs vs the bare forwards ...", flush=True)
        walls, bares = [], []
        for i in range(rounds):
            walls.append(time_predict(run["bundle"], run["ds"].root, work / "pred.csv"))
            bares.append(bare_forwards(run["ds"].root))
            b = bares[-1]["image_seconds"] + bares[-1]["text_seconds"]
            print(
                f"   round {i}: predict {n / walls[-1]:.1f} pairs/s (fresh process), bare {n / b:.1f} pairs/s",
                flush=True,
            )
        # fusionkit's OpenMP threads sleep when idle (runtime.openmp_environment: safe on a shared
        # machine); on a machine one has to oneself OMP_WAIT_POLICY=ACTIVE lets them spin
        active = time_predict(run["bundle"], run["ds"].root, work / "pred_active.csv", OMP_WAIT_POLICY="ACTIVE")
        best_wall = min(walls)
        best_bare = min(bares, key=lambda b: b["image_seconds"] + b["text_seconds"])
        bare_s = best_bare["image_seconds"] + best_bare["text_seconds"]
        result["predict"] = {"seconds": [round(w, 2) for w in walls], "pairs_per_s": round(n / best_wall, 1),
                             "includes": "fresh process: interpreter, imports, model + encoder loading, decoding, "
                                         "encoding, fusion, CSV writing; no feature cache"}  # fmt: skip
        result["bare"] = {**{k: (round(v, 2) if isinstance(v, float) else v) for k, v in best_bare.items()},
                          "pairs_per_s": round(n / bare_s, 1)}  # fmt: skip
        result["ratio_predict_over_bare"] = round(bare_s / best_wall, 3)
        # like for like: the bare forwards of each distinct image and text once, as predict encodes them
        distinct_s = best_bare["image_distinct_seconds"] + best_bare["text_distinct_seconds"]
        result["ratio_predict_over_bare_distinct"] = round(distinct_s / best_wall, 3)
        result["predict_omp_active"] = {"seconds": round(active, 2), "pairs_per_s": round(n / active, 1),
                                        "ratio_over_bare_distinct": round(distinct_s / active, 3)}  # fmt: skip
        pred = read_predictions(work / "pred.csv", run["names"])
        result["agreement_with_05"] = agreement(pred, run)
        print(f"3. agreement with 05: {result['agreement_with_05']}", flush=True)
        print(f"4. fusionkit serve: {n_seq} sequential, then {n_conc} with {CLIENTS} clients ...", flush=True)
        result["serve"] = serve_bench(run, pred, n_seq, n_conc, args.time_limit)
    result["load_avg_end"] = os.getloadavg()
    result["wall_seconds"] = round(time.time() - t_start, 1)
    s = result["serve"]
    result["targets"] = {
        "predict_over_bare >= 0.8": result["ratio_predict_over_bare"] >= 0.8,
        "predict_over_bare_distinct >= 0.8 (like for like)": result["ratio_predict_over_bare_distinct"] >= 0.8,
        "serve p99 < 100 ms": s["latency_ms"]["p99"] < 100,
        "serve concurrent requests >= 500": s["concurrent"]["requests"] >= 500,
        "serve zero errors": s["errors"] == 0,
        "bundle agrees with 05 (argmax, probabilities within 1e-5)": result["agreement_with_05"]["ok"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({k: result[k] for k in ("pairs", "ratio_predict_over_bare", "ratio_predict_over_bare_distinct",
                                             "predict", "predict_omp_active", "bare", "serve",
                                             "agreement_with_05", "targets", "load_avg_start", "load_avg_end")}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
