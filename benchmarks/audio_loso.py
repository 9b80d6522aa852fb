"""Issue 16: audio alone under leave-one-speaker-out on FSDD (``../shared/data/fsdd`` or
``$FUSIONKIT_SHARED_DATA``), each audio encoder configuration's pooled features + the package's
logistic regression (:func:`fusionkit.baseline.logistic_regression`, C chosen on the fold's
validation speaker), against the MFCC + LR anchor (``mfcc`` with 4 segments, 03's ``loso_anchor``).
Folds: :func:`fusionkit.data.groups.loso_folds` (test speaker k, validation speaker k+1).

    nice -n 19 .venv/bin/python benchmarks/audio_loso.py

Writes ``benchmarks/results/audio_loso.json``: per-fold test accuracy, mean and 95% CI over folds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from fusionkit.baseline import logistic_regression
from fusionkit.compare import ci95
from fusionkit.data.groups import loso_folds
from fusionkit.encoders import build_encoder
from fusionkit.paths import shared_data_root
from fusionkit.train import SplitData

NATIVE = {"sample_rate": 8000, "n_mels": 40, "n_fft": 200, "hop_length": 80}  # FSDD is 8 kHz
CONFIGS = {
    "anchor: mfcc segments=4": ("mfcc", {"segments": 4}),
    "mfcc cmvn segments=4": ("mfcc", {"cmvn": True, "segments": 4}),
    "mfcc cmvn segments=4 @8kHz 40 mels": ("mfcc", {"cmvn": True, "segments": 4, **NATIVE}),
    "mfcc cmvn segments=8 @8kHz 40 mels": ("mfcc", {"cmvn": True, "segments": 8, **NATIVE}),
}


def main() -> None:
    root = shared_data_root()
    if root is None:
        raise SystemExit("no shared data (../shared/data or $FUSIONKIT_SHARED_DATA)")
    files = sorted((root / "fsdd" / "recordings").glob("*.wav"))
    stems = [f.stem.split("_") for f in files]
    labels = torch.tensor([int(s[0]) for s in stems])
    speakers = [s[1] for s in stems]
    folds = loso_folds(speakers, where="fsdd")
    out: dict = {"folds": [f.row() for f in folds], "load_average": os.getloadavg(), "configs": {}}
    for label, (name, kw) in CONFIGS.items():
        t0 = time.time()
        enc = build_encoder("audio", name, **kw)
        x = torch.cat([enc.encode([str(f) for f in files[i : i + 250]])["pooled"] for i in range(0, len(files), 250)])
        per_fold = {}
        for fold in folds:
            rows: dict[str, list[int]] = {"train": [], "val": [], "test": []}
            for i, g in enumerate(speakers):
                rows[fold.split_of(g)].append(i)
            splits = {sp: SplitData({"audio": x[r]}, labels[r], [files[i].stem for i in r]) for sp, r in rows.items()}
            per_fold[fold.test] = logistic_regression(splits, "audio")
        acc = np.array([r["test_accuracy"] for r in per_fold.values()])
        out["configs"][label] = {"encoder": name, "options": kw, "per_fold": per_fold, "mean": float(acc.mean()),
                                 "ci95": ci95(acc), "seconds": round(time.time() - t0, 1)}  # fmt: skip
        print(f"{label}: {np.round(acc, 3).tolist()} mean {acc.mean():.3f} +- {ci95(acc):.3f}", flush=True)
    dest = Path(__file__).parent / "results" / "audio_loso.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1, default=float) + "\n")
    tmp.replace(dest)


if __name__ == "__main__":
    main()
