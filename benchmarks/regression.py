"""The synthetic regression target and tabular modality (issue 17's numbers): the shapes dataset
with its tabular ``record`` (``generate(..., tabular=True)``), target ``score``.

    python benchmarks/regression.py [--seeds 5] [--methods late concat lmf gmu simbamm]
                                    [--image-encoders efficientnet_lite0 color_histogram]

1. Each modality alone, late fusion and the best fusion method (chosen on validation MSE) against
   the documented R^2 ceilings: the population's (``info["r2_ceilings"]``, derived in
   ``fusionkit/data/shapes.py``) and the test split's own (``shapes_scene.score_oracle_r2``: the
   same oracle on the test scenes, whose dose and noise vary a few points from the population's);
   ``gap`` is against the test split's.
2. The same comparison without the record: the best fused model with the tabular modality against
   the best without it, one-sided paired t-test over the seeds on test R^2.
3. Both once per image encoder (``image_encoders``: the frozen EfficientNet-Lite0, the default, and
   the colour histogram), with what a linear probe of the image features reads of ``has_red``
   (``image_probe``: logistic regression on the standardised training features, C chosen on
   validation, test accuracy) - the part of the score the image carries. An encoder not named in
   ``--image-encoders`` keeps its earlier entry when the seeds, methods and epochs are the same.

Writes ``benchmarks/results/regression.json``. Every training is one thread, serial (the numbers
do not depend on the executor).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from fusionkit import compare
from fusionkit.data import shapes
from fusionkit.data.shapes_scene import SCORE, TABULAR, score_oracle_r2
from fusionkit.index import FeatureIndex
from fusionkit.paths import repo_root
from fusionkit.train import TrainConfig

UNI = compare.UNIMODAL_PREFIX


def _per_seed(runs, method: str) -> list[float]:
    return [float(v) for v in runs[runs["method"] == method].sort_values("seed")["test_r2"]]


def _probe(splits, red) -> dict:
    """Test accuracy of a logistic regression reading has_red from the image features (C on validation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = {k: v.features["image"].reshape(len(v), -1).numpy() for k, v in splits.items()}
    sc = StandardScaler().fit(x["train"])
    x = {k: sc.transform(v) for k, v in x.items()}
    best = None
    for c in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        m = LogisticRegression(C=c, max_iter=3000).fit(x["train"], red["train"])
        acc = float((m.predict(x["val"]) == red["val"]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, float((m.predict(x["test"]) == red["test"]).mean()))
    return {"val_accuracy": round(best[0], 4), "C": best[1], "test_accuracy": round(best[2], 4),
            "chance": round(float(np.mean(red["test"] == np.bincount(red["train"]).argmax())), 4)}  # fmt: skip


def _one_encoder(a, ds, work: Path, image_encoder: str, test_scenes, has_red) -> dict:
    t0 = time.perf_counter()
    index = FeatureIndex.build(ds, {"image": image_encoder, "text": "minilm", "audio": "logmel"}, a.cache,
                               ["pooled"], path=work / f"features-{image_encoder}.json", progress=False)  # fmt: skip
    t_feat = time.perf_counter() - t0
    with_tab, _ = index.splits(target=SCORE)
    red = {k: np.array([has_red[i] for i in v.ids]) for k, v in with_tab.items()}
    without = {k: v.select(sorted(m for m in v.features if m != TABULAR)) for k, v in with_tab.items()}
    cfg = TrainConfig(epochs=a.epochs)
    seeds = range(a.seeds)
    out: dict = {"features_s": round(t_feat, 1), "image_probe": {"has_red": _probe(with_tab, red)}}
    ceilings = {True: ds.info["r2_ceilings"][SCORE], False: shapes.score_ceilings(tabular=False)}
    for tab, data in ((True, with_tab), (False, without)):
        t1 = time.perf_counter()
        comp = compare.run(a.methods, data, cfg, 0, seeds=seeds, show_progress=False)
        runs, summary = comp.runs, comp.summary
        best = str(summary[summary.is_best].iloc[0]["method"])  # compare.summarize: lowest validation MSE
        ceil = ceilings[tab]
        mods = sorted(data["train"].features)
        rows = {f"{UNI}{m}": [m] for m in mods} | {"late": mods, best: mods}
        by_method = summary.set_index("method")
        table = {}
        for name, shown in rows.items():
            split_ceiling = score_oracle_r2(test_scenes, shown)
            r2 = float(by_method.loc[name, "test_r2_mean"])
            table[name] = {
                "ceiling_population": round(ceil["+".join(shown)], 4),
                "ceiling_test_split": round(split_ceiling, 4),
                "test_r2_mean": round(r2, 4),
                "test_r2_ci95": round(float(by_method.loc[name, "test_r2_ci95"]), 4),
                "gap": round(split_ceiling - r2, 4),
            }
        out["with_tabular" if tab else "without_tabular"] = {
            "modalities": mods,
            "best_fusion": best,
            "vs_ceilings": table,
            "within_0.05": {k: abs(v["gap"]) <= 0.05 for k, v in table.items()},
            "per_seed_test_r2": {m: _per_seed(runs, m) for m in summary["method"]},
            "wall_s": round(time.perf_counter() - t1, 1),
        }
    w, wo = out["with_tabular"], out["without_tabular"]
    a_r2 = w["per_seed_test_r2"][w["best_fusion"]]
    b_r2 = wo["per_seed_test_r2"][wo["best_fusion"]]
    t = stats.ttest_rel(a_r2, b_r2, alternative="greater")
    out["tabular_vs_none"] = {
        "with": w["best_fusion"],
        "without": wo["best_fusion"],
        "mean_gain_r2": round(sum(x - y for x, y in zip(a_r2, b_r2, strict=True)) / len(a_r2), 4),
        "t": round(float(t.statistic), 3),
        "p": float(t.pvalue),
        "met": bool(t.pvalue < 0.05),
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["late", "concat", "lmf", "gmu", "simbamm"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--image-encoders", nargs="+", default=["efficientnet_lite0", "color_histogram"])
    ap.add_argument("--work", default=str(repo_root() / "data" / "processed" / "bench-regression"))
    ap.add_argument("--cache", default=str(repo_root() / "data" / "processed" / "features"))
    ap.add_argument("--out", default=str(repo_root() / "benchmarks" / "results" / "regression.json"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    ds = shapes.generate(work / "shapes-1200-tabular", n=1200, tabular=True, progress=False)
    test_scenes = [json.loads(line) for line in (Path(ds.root) / "scenes.jsonl").read_text().splitlines()]
    has_red = {s["id"]: int(s["has_red"]) for s in test_scenes}
    test_scenes = [sc for sc in test_scenes if sc["split"] == "test"]
    out: dict = {"seeds": a.seeds, "methods": a.methods, "epochs": a.epochs, "image_encoders": {}}
    earlier = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    if all(earlier.get(k) == out[k] for k in ("seeds", "methods", "epochs")):  # the same settings: keep the others
        out["image_encoders"] = {
            k: v for k, v in earlier.get("image_encoders", {}).items() if k not in a.image_encoders
        }
    for image_encoder in a.image_encoders:
        out["image_encoders"][image_encoder] = _one_encoder(a, ds, work, image_encoder, test_scenes, has_red)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    for enc, res in out["image_encoders"].items():
        print(enc, json.dumps({"image_probe": res["image_probe"], "tabular_vs_none": res["tabular_vs_none"]}, indent=1))
        for key in ("with_tabular", "without_tabular"):
            print(
                enc,
                key,
                json.dumps(res[key]["within_0.05"]),
                json.dumps({k: v["test_r2_mean"] for k, v in res[key]["vs_ceilings"].items()}),
            )
    return out


if __name__ == "__main__":
    main()
