"""VQA-RAD: the vqarad profile's VQA part (01 prepare, 02 features, 04 train, 05 evaluate) over
several seeds, with the paired comparison of the best fusion method against the question-only
baseline on closed questions.

    python benchmarks/vqarad.py --seeds 0 1 2 [--methods film mfb concat] [--finetune-blocks 1]

Writes ``benchmarks/results/vqarad.json``: per seed, every model's closed / open / all accuracy on
the test split (carved from the training questions by image while ``testset.json`` is absent:
validation numbers, not comparable with the published ones), and the paired t-test over seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fusionkit import pipeline
from fusionkit.data import load_dataset, registry
from fusionkit.index import FeatureIndex
from fusionkit.paths import repo_root
from fusionkit.tasks import features as task_features
from fusionkit.tasks.run import evaluate_task, train_task


def main(argv: list[str] | None = None) -> dict:
    prof = pipeline.build_parameters(pipeline.load_profile("vqarad"), {})  # paths resolved as `fusionkit run` does
    vqa_opts = dict(prof["04_train"]["task_options"]["vqa"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(vqa_opts.pop("methods")))
    ap.add_argument("--finetune-blocks", type=int, default=int(vqa_opts.pop("finetune_image_blocks", 0)))
    ap.add_argument("--work", default=str(repo_root() / "data" / "processed" / "bench-vqarad"))
    ap.add_argument("--out", default=str(repo_root() / "benchmarks" / "results" / "vqarad.json"))
    a = ap.parse_args(argv)
    vqa_opts.pop("methods", None)
    vqa_opts.pop("finetune_image_blocks", None)
    epochs = vqa_opts.pop("epochs", None)
    work = Path(a.work)
    t0 = time.perf_counter()
    prep = prof["01_data_prep"]
    src = prep["source_dir"]
    ds = registry.prepare("vqarad", work / "dataset", source_dir=src, seed=0, progress=False)
    enc = prof["02_feature_extraction"]
    index_path = work / "features.json"
    # the index's own features: the questions only (its image rows are one per *question*, 3,064
    # decodes of 315 images; the VQA task extracts each image once below)
    FeatureIndex.build(ds, {"text": enc["text_encoder"]}, work / "cache", ["pooled"], path=index_path,
                       progress=False)  # fmt: skip
    task_features.extract_task_features(load_dataset(work / "dataset"), index_path, ["vqa"], work / "cache",
                                        image_encoder=enc["image_encoder"], text_encoder=enc["text_encoder"],
                                        progress=False)  # fmt: skip
    t_feat = time.perf_counter() - t0
    runs = []
    for seed in a.seeds:
        t1 = time.perf_counter()
        out = work / f"run-{seed}"
        train_task("vqa", index_path, out, seed=seed, epochs=epochs, method=a.methods, progress=False,
                   finetune_image_blocks=a.finetune_blocks, **vqa_opts)  # fmt: skip
        res = evaluate_task("vqa", index_path, out, n_examples=0, progress=False)
        table = res.tables["vqarad_vs_published"]
        ours = table[table.kind != "published"]
        runs.append({"seed": seed, "seconds": round(time.perf_counter() - t1, 1),
                     "best": str(res.metrics.loc[res.metrics.best, "model"].iloc[0]),
                     "models": ours.drop(columns=["kind"]).to_dict(orient="records")})  # fmt: skip
        print(json.dumps(runs[-1], indent=1, default=str), flush=True)
    doc = {"command": "python benchmarks/vqarad.py " + " ".join(argv or []), "seeds": a.seeds, "methods": a.methods,
           "finetune_image_blocks": a.finetune_blocks, "features_seconds": round(t_feat, 1),
           "total_seconds": round(time.perf_counter() - t0, 1), "runs": runs, "paired": paired(runs)}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return doc


def paired(runs: list[dict]) -> dict:
    """Every model's mean closed / open / all over seeds, and the paired t-test (over seeds) of each
    model against the question-only baseline on closed questions."""
    import numpy as np
    from scipy import stats

    names = [m["model"] for m in runs[0]["models"]]
    by = {n: {k: np.array([next(m[k] for m in r["models"] if m["model"] == n) for r in runs])
              for k in ("closed", "open", "all")} for n in names}  # fmt: skip
    out = {n: {k: round(float(v.mean()), 2) for k, v in d.items()} for n, d in by.items()}
    if "question_only" in by and len(runs) > 1:
        q = by["question_only"]["closed"]
        for n in names:
            if n in ("question_only", "majority"):
                continue
            d = by[n]["closed"] - q
            t = stats.ttest_rel(by[n]["closed"], q, alternative="greater") if d.std() > 0 else None
            out[n]["closed_minus_question_only"] = round(float(d.mean()), 2)
            out[n]["p_greater_than_question_only"] = None if t is None else round(float(t.pvalue), 4)
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
