"""Which modality did a model rely on?

Two views, side by side:

* the **learned per-sample modality weights** of the methods that have them (late fusion with
  learned weights, weighted softmax, additive attention, GMU gates): their distribution per method
  and per class;
* the **drop importance** of each modality: test accuracy (a regression target: R^2) lost when it
  is masked as missing - what the model actually needs, whatever its weights say.

On a dataset that documents which modalities carry each target's information by construction
(``info["informative_modalities"]``, e.g. the synthetic shapes: ``tone`` is in the audio only,
``has_red`` in the image and the caption), :func:`known_information_check` trains each weighted
method on each such target and states whether its highest weight falls on an informative modality
(targets every modality informs are left out - the check could not fail - and so is a target whose
labels repeat an earlier one's, such as the shapes' ``redundant``, which is ``has_red``).
"""

from __future__ import annotations

import pandas as pd
import torch

from fusionkit.evaluate import quintiles, score
from fusionkit.grid.executors import Executor, SerialExecutor
from fusionkit.grid.jobs import TrainJob, in_dims_of
from fusionkit.grid.space import default_config
from fusionkit.model import MultimodalModel
from fusionkit.train import SplitData, TrainConfig, accuracy, predict


def weight_samples(models: dict[str, MultimodalModel], test: SplitData, class_names: list[str]) -> pd.DataFrame:
    """One row per (method, sample, modality) with the learned weight (methods without weights are
    left out). ``class``: the sample's class; on a regression target its quintile of the test
    values (``q1`` lowest ... ``q5``)."""
    if test.regression:
        labels, class_names = quintiles(test.labels)
    else:
        labels = test.labels.tolist()
    rows = []
    for name, model in models.items():
        _, weights = predict(model, test)
        if not weights:
            continue
        for m, w in weights.items():
            for i, v in enumerate(w.tolist()):
                rows.append({"method": name, "modality": m, "class": class_names[labels[i]], "weight": v})
    return pd.DataFrame(rows, columns=["method", "modality", "class", "weight"])


def drop_importance(models: dict[str, MultimodalModel], test: SplitData) -> pd.DataFrame:
    """Accuracy (R^2 on a regression target) lost when each modality is masked (rows: method,
    modality, importance)."""
    mods = sorted(test.features)
    n = len(test)
    rows = []
    for name, model in models.items():
        full = score(predict(model, test)[0], test.labels)[1]
        for m in mods:
            mask = {k: torch.full((n,), 0.0 if k == m else 1.0) for k in mods}
            rows.append(
                {
                    "method": name,
                    "modality": m,
                    "importance": full - score(predict(model, test, mask)[0], test.labels)[1],
                }
            )
    return pd.DataFrame(rows)


def weights_vs_importance(weights: pd.DataFrame, importance: pd.DataFrame) -> pd.DataFrame:
    """Mean weight and drop importance per method x modality, and whether the most-weighted
    modality is also the most needed one."""
    if weights.empty:
        return pd.DataFrame()
    mean_w = weights.groupby(["method", "modality"])["weight"].mean().rename("mean_weight").reset_index()
    merged = mean_w.merge(importance, on=["method", "modality"], how="left")
    out = []
    for _method, g in merged.groupby("method"):
        top_w = g.loc[g["mean_weight"].idxmax(), "modality"]
        top_i = g.loc[g["importance"].idxmax(), "modality"]
        for _, r in g.iterrows():
            out.append({**r.to_dict(), "top_weighted": top_w, "most_needed": top_i, "agree": top_w == top_i})
    return pd.DataFrame(out)


def known_information_check(
    methods: list[str],
    data: dict[str, SplitData],
    targets: dict[str, torch.Tensor | dict[str, torch.Tensor]],
    informative: dict[str, list[str]],
    cfg: TrainConfig,
    hidden: int = 128,
    dropout: float = 0.1,
    configs: dict[str, dict] | None = None,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """For each method with modality weights and each target whose informative modalities are
    known, train on that target (one seed, ``cfg.seed``; the method's configuration from
    ``configs``, else its defaults) and report the mean test weight per modality, whether the
    top-weighted modality is informative, and the test accuracy. The trainings run on
    ``executor`` (default: this process).

    ``targets``: target name -> {split: labels} for the splits in ``data``. Left out: targets
    without an ``informative`` entry, targets every modality of ``data`` informs (any top weight
    would "point to an informative modality") and targets whose labels equal an earlier target's
    on every split (the same trainings again)."""
    datasets, jobs, kept = {}, [], []
    modalities = {m for d in data.values() for m in d.features}
    for target, labels in targets.items():
        if target not in informative or modalities <= set(informative[target]):
            continue
        if any(all(torch.equal(labels[s], targets[k][s]) for s in data) for k in kept):
            continue
        kept.append(target)
        split_data = {s: SplitData(d.features, labels[s], d.ids, d.mask) for s, d in data.items()}
        num_classes = int(max(int(v.max()) for v in labels.values())) + 1
        datasets[f"target:{target}"] = (split_data, num_classes)
        for method in methods:
            config = (configs or {}).get(method) or default_config(method, cfg, hidden, dropout)
            jobs.append(
                TrainJob(method, cfg.seed, config, cfg, data=f"target:{target}", keep=True, tag="known_information")
            )
    ex = executor or SerialExecutor(show_progress=False)
    rows = []
    for out in ex.run(jobs, datasets, desc="known-information check"):
        if not out.ok:
            raise RuntimeError(f"known-information check: {out.error}")
        split_data, num_classes = datasets[out.job.data]
        target = out.job.data.removeprefix("target:")
        model = out.model(in_dims_of(split_data), num_classes)
        logits, weights = predict(model, split_data["test"])
        if not weights:
            continue
        mean = {m: float(w.mean()) for m, w in weights.items()}
        if max(mean.values()) - min(mean.values()) < 1e-6:
            continue  # fixed, equal weights (late fusion's plain average): nothing was learned
        top = max(mean, key=mean.get)
        rows.append(
            {
                "method": out.job.method,
                "target": target,
                "informative": ", ".join(informative[target]),
                "top_weighted": top,
                "points_to_informative": top in informative[target],
                "test_accuracy": accuracy(logits, split_data["test"].labels),
                **{f"weight_{m}": v for m, v in sorted(mean.items())},
            }
        )
    return pd.DataFrame(rows)


def has_weights(model: MultimodalModel, data: SplitData) -> bool:
    """Whether the model's fusion method returns per-sample modality weights."""
    small = SplitData({m: x[:2] for m, x in data.features.items()}, data.labels[:2], data.ids[:2])
    return predict(model, small)[1] is not None
