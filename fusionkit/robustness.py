"""Robustness to missing and noisy modalities, in MultiBench's protocol (Liang et al. 2021).

* **Missing**: at test time each modality is dropped (mask = 0) in turn.
* **Noisy**: each modality's *raw* test inputs are corrupted (``fusionkit.perturb``: image Gaussian
  noise / blur / occlusion, text word dropout / typos, audio white noise) at 10 levels, re-encoded
  with the same frozen encoder, and every trained model is evaluated with the other modalities clean.
* **Relative robustness** of a method on one corruption: area under its accuracy-vs-level curve
  (levels 0 = clean ... 1, trapezoids; 1.0 would be perfect accuracy at every level).
* **Effective robustness**: relative robustness minus late fusion's, scaled to the same clean
  accuracy: ``RR(m) - RR(late) * acc0(m) / acc0(late)`` - the robustness a method gains over late
  fusion beyond what its clean accuracy alone would predict.

On a regression target (float labels) every number is R^2 instead of accuracy (columns ``r2``,
``clean_r2``, ``worst_r2``; :func:`score`): higher is better in both. A tabular modality has no
corruption yet (``fusionkit.perturb``): the noisy study leaves it clean; the missing one drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from fusionkit.data.base import Dataset, Sample
from fusionkit.encoders.base import InputError
from fusionkit.evaluate import score
from fusionkit.grid.executors import Executor, SerialExecutor
from fusionkit.grid.jobs import TrainJob, in_dims_of
from fusionkit.grid.space import default_config
from fusionkit.model import MultimodalModel
from fusionkit.perturb import CORRUPTIONS, LEVELS
from fusionkit.progress import progress
from fusionkit.runtime import cpu_threads, tune_allocator, work_threads
from fusionkit.train import SplitData, TrainConfig, predict


def score_column(frame: pd.DataFrame) -> str:
    """The score column of a robustness table: ``r2`` for a regression target's, else ``accuracy``."""
    return "r2" if "r2" in frame.columns or "clean_r2" in frame.columns else "accuracy"


@torch.inference_mode()
def encode_corrupted(
    encoder,
    ds: Dataset,
    samples: list[Sample],
    modality: str,
    corruption: str,
    level: float,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Pooled features of ``samples``' modality after corrupting each raw input (seeded per
    sample, so the result does not depend on the batch size). Runs like ``extract_features``: the
    encoder's measured batch size and memory format for its device (``encoder.perf``), its
    inference module (EfficientNet-Lite0: BatchNorm folded), ``torch.inference_mode``, on
    :func:`fusionkit.runtime.work_threads` threads."""
    tune_allocator()  # fusionkit.runtime: no page faults for every activation of every batch
    fn = CORRUPTIONS[ds.modalities[modality]][corruption]
    root = ds.media_root
    first = next(iter(encoder.parameters()), None) if hasattr(encoder, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")
    perf = getattr(encoder, "perf", {}).get(device.type) or getattr(encoder, "perf", {}).get("cpu", {})
    bs = int(batch_size or perf.get("batch_size", 32))
    encoder.eval()
    if perf.get("channels_last") and hasattr(encoder, "set_memory_format"):
        encoder.set_memory_format(torch.channels_last)
    runner = encoder.inference_module() if hasattr(encoder, "inference_module") else encoder
    out = []
    with torch.inference_mode(), cpu_threads(work_threads()):
        for start in range(0, len(samples), bs):
            items = []
            for i, s in enumerate(samples[start : start + bs]):
                rng = np.random.default_rng([seed, start + i, int(level * 1000)])
                try:
                    raw = encoder.load(s.modalities[modality], root)
                except InputError as e:  # name the sample too, not only the file
                    raise e.with_record(s.id) from e
                items.append(_corrupt(raw, fn, level, rng))
            batch = encoder.collate(items)
            if hasattr(encoder, "batch_to"):
                batch = encoder.batch_to(batch, device)
            out.append(runner(batch)["pooled"].float().cpu())
    return torch.cat(out)


def _corrupt(raw, fn, level: float, rng: np.random.Generator):
    """Apply a corruption to what ``Encoder.load`` returned: a uint8 (3, H, W) image tensor, a
    string, or a waveform tensor / array."""
    if isinstance(raw, str):
        return fn(raw, level, rng)
    if isinstance(raw, torch.Tensor) and raw.dtype == torch.uint8 and raw.dim() == 3:
        hwc = raw.permute(1, 2, 0).contiguous().numpy()
        return torch.from_numpy(np.array(fn(hwc, level, rng), dtype=np.uint8)).permute(2, 0, 1)  # a writable copy
    if isinstance(raw, torch.Tensor):
        return torch.from_numpy(np.asarray(fn(raw.numpy(), level, rng), dtype=np.float32)).to(raw.dtype)
    if isinstance(raw, np.ndarray):
        return fn(raw, level, rng)
    if hasattr(raw, "wave") and hasattr(raw, "_replace"):  # AudioClip(wave, length): noise on the real samples only
        n = int(getattr(raw, "length", len(raw.wave)))
        wave = raw.wave.clone()
        wave[:n] = _corrupt(raw.wave[:n].contiguous(), fn, level, rng)
        return raw._replace(wave=wave)
    raise TypeError(f"cannot corrupt an input of type {type(raw).__name__}")


def missing_modality(models: dict[str, MultimodalModel], test: SplitData) -> pd.DataFrame:
    """Accuracy (a regression target: R^2) of each model with all modalities and with each one dropped."""
    mods = sorted(test.features)
    n = len(test)
    rows = []
    for name, model in models.items():
        for dropped in [None, *mods]:
            mask = {m: torch.full((n,), 0.0 if m == dropped else 1.0) for m in mods}
            logits, _ = predict(model, test, mask)
            rows.append({"method": name, "dropped": dropped or "none", **dict([score(logits, test.labels)])})
    return pd.DataFrame(rows)


def noise_curves(
    models: dict[str, MultimodalModel],
    test: SplitData,
    ds: Dataset,
    encoders: dict[str, object],
    levels: Iterable[float] = LEVELS,
    seed: int = 0,
    corruptions: dict[str, list[str]] | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Accuracy (R^2 on a regression target) of every model for every (modality, corruption,
    level); level 0 is the clean input.
    ``encoders``: modality -> the frozen encoder that made the cached features."""
    by_id = {s.id: s for s in ds.samples}
    samples = [by_id[i] for i in test.ids]
    levels = list(levels)
    jobs = []
    for modality, enc in sorted(encoders.items()):
        kind = ds.modalities[modality]
        for corruption in (corruptions or {}).get(modality, list(CORRUPTIONS.get(kind, ()))):
            for level in levels:
                jobs.append((modality, enc, corruption, level))
    clean = {name: score(predict(m, test)[0], test.labels) for name, m in models.items()}
    rows = []
    for modality in sorted(encoders):
        for corruption in {j[2] for j in jobs if j[0] == modality}:
            for name, (metric, acc) in clean.items():
                rows.append({"method": name, "modality": modality, "corruption": corruption, "level": 0.0, metric: acc})
    for modality, enc, corruption, level in progress(jobs, enabled=show_progress, desc="corruptions"):
        feats = dict(test.features)
        feats[modality] = encode_corrupted(enc, ds, samples, modality, corruption, level, seed=seed)
        noisy = SplitData(feats, test.labels, test.ids, test.mask)
        for name, model in models.items():
            logits, _ = predict(model, noisy)
            rows.append(
                {
                    "method": name,
                    "modality": modality,
                    "corruption": corruption,
                    "level": float(level),
                    **dict([score(logits, test.labels)]),
                }
            )
    return pd.DataFrame(rows).sort_values(["method", "modality", "corruption", "level"]).reset_index(drop=True)


def robustness_summary(curves: pd.DataFrame, reference: str = "late") -> pd.DataFrame:
    """Relative robustness (AUC over levels) and effective robustness (vs ``reference``) per
    method x modality x corruption, plus each method's mean over corruptions (of accuracy, or of
    R^2 for a regression target's curves)."""
    metric = score_column(curves)
    rows = []
    for (method, modality, corruption), g in curves.groupby(["method", "modality", "corruption"]):
        g = g.sort_values("level")
        lv, acc = g["level"].to_numpy(), g[metric].to_numpy()
        auc = float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(lv)) / (lv[-1] - lv[0])) if len(lv) > 1 else float(acc[0])
        rows.append(
            {
                "method": method,
                "modality": modality,
                "corruption": corruption,
                f"clean_{metric}": float(acc[0]),
                f"worst_{metric}": float(acc.min()),
                "relative_robustness": auc,
            }
        )
    out = pd.DataFrame(rows)
    if reference in set(out["method"]):
        ref = out[out.method == reference].set_index(["modality", "corruption"])

        def eff(r):
            base = ref.loc[(r["modality"], r["corruption"])]
            clean = f"clean_{metric}"
            scale = r[clean] / base[clean] if base[clean] > 0 else 1.0
            return r["relative_robustness"] - base["relative_robustness"] * scale

        out["effective_robustness"] = out.apply(eff, axis=1)
    else:
        out["effective_robustness"] = np.nan
    return out


def by_method(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean clean accuracy, relative and effective robustness of each method over every
    (modality, corruption), most robust first."""
    metric = score_column(summary)
    cols = [f"clean_{metric}", f"worst_{metric}", "relative_robustness", "effective_robustness"]
    out = summary.groupby("method")[cols].mean().reset_index()
    return out.sort_values("relative_robustness", ascending=False).reset_index(drop=True)


def modality_dropout_study(
    method: str,
    splits: dict[str, SplitData],
    cfg: TrainConfig,
    num_classes: int,
    *,
    rate: float,
    reference: MultimodalModel,
    hidden: int = 128,
    dropout: float = 0.1,
    config: dict | None = None,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """What training with modality dropout buys: ``method`` retrained (seed ``cfg.seed``, the
    configuration it was compared with: ``config``, else its defaults) with each modality dropped
    per training sample with probability ``rate``, next to ``reference`` (the same method trained
    without), each with every modality dropped at test time in turn (:func:`missing_modality`).
    The retraining runs on ``executor`` (default: this process)."""
    config = config or default_config(method, cfg, hidden, dropout)
    job = TrainJob(method, cfg.seed, config, replace(cfg, modality_dropout=rate), keep=True, tag="dropout_study")
    ex = executor or SerialExecutor(show_progress=False)
    (out,) = ex.run([job], {"main": (splits, num_classes)}, desc="modality-dropout study")
    if not out.ok:
        raise RuntimeError(f"modality-dropout study: {out.error}")
    model = out.model(in_dims_of(splits), num_classes)
    return missing_modality({f"{method} (p={rate})": model, method: reference}, splits["test"])
