"""What kind of interaction a dataset's modalities have with its target: redundancy, uniqueness
and synergy per modality pair (a partial information decomposition, PID), with the plain evidence
next to it - each modality alone, late fusion, a fused model, the comparison's best method.

The estimator
-------------
**Mutual information as usable information.** ``I(X; Y)`` is estimated as the predictive
V-information of Xu et al. (2020), "A Theory of Usable Information under Computational
Constraints" (ICLR): ``I_V(X -> Y) = H_V(Y) - H_V(Y | X)``, where ``H_V(Y | X)`` is the held-out
cross-entropy of a classifier trained on ``X`` and ``H_V(Y)`` that of the best constant predictor,
the empirical label entropy of the held-out split. The classifiers are fusionkit's own trainings
(``fusionkit.grid.run_job``, the comparison's jobs at the comparison's default configuration):
``unimodal:<m>`` for ``I(m; Y)``, ``late`` (additive: a sum of per-modality logits) for the
information additive fusion extracts, and ``joint`` (default :data:`JOINT`, ``lmf``: Low-rank
Multimodal Fusion, whose products of the modalities' projections, each with an appended 1, hold
every additive rule and the cross-modal ones such as an XOR) for ``I(a, b; Y)``. ``concat`` (an MLP
over both) could learn an XOR in principle, but on the shapes' ``synergy`` target it stays at
chance (test accuracy 0.470 over 3 seeds, so ``S = 0`` on every pair) where ``lmf`` reaches 0.865
and finds the synergy of the audio with the caption (0.71 bits, every seed). Each is trained on the train split,
early-stopped on validation, its logits' temperature fitted on validation (minimum NLL; a
classifier early-stopped on accuracy can be over-confident, and a scaled predictor is in the same
family), and scored on ``split`` (default: test, which nothing here chooses anything on).
Bits throughout. Two consequences of the definition are enforced and reported:

* ``I >= 0``: the family contains the constant predictor, so a classifier worse than the prior
  says "no usable information", ``0``;
* monotonicity: predictors on ``(a, b)`` include those on ``a`` alone, ``b`` alone and the additive
  ones, so ``I(a, b; Y) := max(I_joint, I_late, I(a; Y), I(b; Y))`` and
  ``I_late := max(I_late, I(a; Y), I(b; Y))``; ``joint_shortfall`` is how far the raw joint
  estimate fell below (a sign the joint model under-fitted).

**The decomposition: minimum mutual information (MMI) PID** (Barrett 2015, "Exploration of
synergistic and redundant information sharing in static and dynamical Gaussian systems", Phys.
Rev. E 91; the ``I_min``-style choice of Williams & Beer 2010 for two sources)::

    R   = min(I(a; Y), I(b; Y))
    U_a = I(a; Y) - R,   U_b = I(b; Y) - R            (one of them is 0)
    S   = I(a, b; Y) - I(a; Y) - I(b; Y) + R = I(a, b; Y) - max(I(a; Y), I(b; Y))   (>= 0 here)

so ``R + U_a + U_b + S = I(a, b; Y)``. It needs only the three mutual informations, which the
classifiers estimate well from high-dimensional features, where the convex (BROJA) estimators of
Liang et al. (2023), "Quantifying & Modeling Multimodal Interactions: An Information
Decomposition Framework" (NeurIPS), need the features discretised (clustered) first. Its known
bias: ``R`` is the largest redundancy the marginals allow. When the modalities carry *different*
information about ``Y`` (say ``Y = 3 * bit + tone``, ``bit`` in one modality and ``tone`` in the
other) the weaker one's information shows up as ``R`` and the same amount as ``S``. The
additive split of ``S`` tells such synergy apart from true interaction:

    S_late   = I_late - max(I(a; Y), I(b; Y))   what late (additive) fusion already gains over
                                                the better modality (complementary information);
    S_beyond = I(a, b; Y) - I_late              what only a non-additive fusion extracts.

``S = S_late + S_beyond``. On the bit + tone example ``S`` is all ``S_late``; on an XOR it is all
``S_beyond``.

**Validation** (``tests/test_interactions.py``): on synthetic features whose interaction type is
known by construction - redundant (the same bit in both modalities), unique (the bit in one
modality only), synergistic (``Y = a XOR b``, ``a`` in one modality, ``b`` in the other) - the
component that defines the type is the largest one in every seed. On the synthetic shapes'
targets (default profile's features, 3 seeds, ``fusionkit data interactions RUN --target T
--seeds 3``): ``redundant`` -> redundancy on image / text, ``unique`` -> unique:audio on both
audio pairs, ``synergy`` -> synergy on audio / text, each in every seed (on audio / image, where
the image's has_red is the noisier cue, the synergy shows in one seed of three).

::

    prof = profile(FeatureIndex.read("reports/latest/features.json"), target="label", seeds=(0, 1, 2))
    print(prof.render())            # the table ``fusionkit data interactions RUN`` prints
    prof.table(); prof.evidence_table()
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats
from torch.nn import functional as F

from fusionkit.fusion import get as get_fusion
from fusionkit.grid.executors import Executor, SerialExecutor
from fusionkit.grid.jobs import UNIMODAL_PREFIX, JobOutcome, TrainJob, in_dims_of
from fusionkit.grid.space import default_config
from fusionkit.index import FeatureIndex
from fusionkit.train import SplitData, TrainConfig, predict

LN2 = math.log(2.0)
#: the components of one pair's decomposition, in the order they are shown
COMPONENTS = ("redundancy", "unique_a", "unique_b", "synergy")
#: below this many bits no component is called the largest ("none": nothing usable was found)
NONE_BELOW = 0.01
ESTIMATION_SPLITS = ("val", "test")
#: the fusion method that estimates ``I(a, b; Y)`` by default (module docstring)
JOINT = "lmf"


class InteractionError(ValueError):
    """Input the profile cannot be computed from; the message lists what is valid."""


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Decomposition:
    """One modality pair, one seed, in bits (see the module docstring): the label entropy of the
    estimation split, the usable informations (after the monotone closure), and the MMI PID."""

    seed: int
    h_y: float
    i_a: float
    i_b: float
    i_late: float
    i_ab: float
    #: how far the raw joint estimate fell below ``max(I_late, I_a, I_b)`` (0 when it did not)
    joint_shortfall: float = 0.0

    @property
    def redundancy(self) -> float:
        return min(self.i_a, self.i_b)

    @property
    def unique_a(self) -> float:
        return self.i_a - self.redundancy

    @property
    def unique_b(self) -> float:
        return self.i_b - self.redundancy

    @property
    def synergy(self) -> float:
        return self.i_ab - self.i_a - self.i_b + self.redundancy

    @property
    def synergy_late(self) -> float:
        """The part of ``synergy`` late (additive) fusion already extracts."""
        return self.i_late - max(self.i_a, self.i_b)

    @property
    def synergy_beyond_late(self) -> float:
        """The part of ``synergy`` only a non-additive fusion extracts."""
        return self.i_ab - self.i_late

    def components(self) -> dict[str, float]:
        return {c: getattr(self, c) for c in COMPONENTS}

    @property
    def largest(self) -> str:
        """The largest component (ties: the first in ``COMPONENTS``); "none" when every one is
        below ``NONE_BELOW`` bits."""
        return _largest(self.components())


@dataclass(frozen=True)
class Score:
    """Accuracy of one model over seeds: mean and standard deviation (0 with one seed)."""

    val: float
    test: float
    val_sd: float = 0.0
    test_sd: float = 0.0
    n: int = 1

    @classmethod
    def of(cls, val: Sequence[float], test: Sequence[float]) -> Score:
        return cls(float(np.mean(val)), float(np.mean(test)), _sd(val), _sd(test), len(test))


@dataclass(frozen=True)
class Evidence:
    """The plain evidence on ``modalities``: each one alone, late fusion, the joint model this
    profile trained (``joint_method``) and, from a comparison table, the best fusion method
    (chosen on validation there)."""

    modalities: tuple[str, ...]
    unimodal: dict[str, Score]
    late: Score
    joint: Score
    joint_method: str = "lmf"
    best_fusion: Score | None = None
    best_fusion_method: str | None = None

    @property
    def best_unimodal(self) -> str:
        """The single modality with the highest mean validation accuracy."""
        return max(sorted(self.unimodal), key=lambda m: self.unimodal[m].val)

    def gaps(self) -> dict[str, float]:
        """Test-accuracy gaps: late fusion over the best single modality, the joint model (and the
        comparison's best method) over late fusion and over the best single modality."""
        uni = self.unimodal[self.best_unimodal].test
        out = {"late - best unimodal": self.late.test - uni, "joint - late": self.joint.test - self.late.test,
               "joint - best unimodal": self.joint.test - uni}  # fmt: skip
        if self.best_fusion is not None:
            out["best fusion - late"] = self.best_fusion.test - self.late.test
            out["best fusion - best unimodal"] = self.best_fusion.test - uni
        return out

    def table(self, unimodal: bool = True) -> pd.DataFrame:
        """One row per model: accuracy on validation and test, mean and sd over seeds."""
        rows = [("unimodal", m, s) for m, s in sorted(self.unimodal.items())] if unimodal else []
        rows += [("late", "late", self.late), ("joint", self.joint_method, self.joint)]
        if self.best_fusion is not None:
            rows.append(("best fusion (comparison)", str(self.best_fusion_method), self.best_fusion))
        return pd.DataFrame(
            [{"modalities": "+".join(self.modalities), "model": kind, "method": name, "val_accuracy": s.val,
              "val_accuracy_sd": s.val_sd, "test_accuracy": s.test, "test_accuracy_sd": s.test_sd, "n_seeds": s.n}
             for kind, name, s in rows]
        )  # fmt: skip


@dataclass(frozen=True)
class PairInteraction:
    """One modality pair: its decomposition in every seed and the evidence on the pair."""

    a: str
    b: str
    per_seed: tuple[Decomposition, ...]
    evidence: Evidence

    @property
    def name(self) -> str:
        return f"{self.a}+{self.b}"

    def values(self, quantity: str) -> np.ndarray:
        """``quantity`` (a component, ``i_a``, ``synergy_late``, ...) in every seed."""
        return np.array([getattr(d, quantity) for d in self.per_seed], dtype=float)

    def mean(self, quantity: str) -> float:
        return float(self.values(quantity).mean())

    def sd(self, quantity: str) -> float:
        return _sd(self.values(quantity))

    @property
    def largest(self) -> str:
        """The largest component of the means ("none" when every one is below ``NONE_BELOW``)."""
        return _largest({c: self.mean(c) for c in COMPONENTS})

    @property
    def largest_every_seed(self) -> bool:
        """Whether every seed's largest component is the means' largest."""
        return all(d.largest == self.largest for d in self.per_seed)

    def label(self, component: str) -> str:
        """``unique_a`` -> ``unique:<a>`` (the names shown)."""
        return {"unique_a": f"unique:{self.a}", "unique_b": f"unique:{self.b}"}.get(component, component)


QUANTITIES = ("h_y", "i_a", "i_b", "i_late", "i_ab", *COMPONENTS, "synergy_late", "synergy_beyond_late",
              "joint_shortfall")  # fmt: skip


@dataclass(frozen=True)
class InteractionProfile:
    """Every modality pair's decomposition (bits) and the evidence, on ``target`` of ``dataset``,
    estimated on ``split`` with ``seeds``. ``evidence``: on all the profiled modalities (the only
    pair's own when there are two)."""

    dataset: str
    target: str
    split: str
    seeds: tuple[int, ...]
    num_classes: int
    pairs: tuple[PairInteraction, ...]
    evidence: Evidence
    joint_method: str = "lmf"
    class_names: tuple[str, ...] = field(default=())

    def pair(self, a: str, b: str) -> PairInteraction:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise InteractionError(f"no pair {a}+{b}; the profile has {', '.join(p.name for p in self.pairs)}")

    def table(self) -> pd.DataFrame:
        """One row per pair: mean and sd over seeds of every quantity, the largest component."""
        rows = []
        for p in self.pairs:
            row: dict[str, Any] = {"pair": p.name, "a": p.a, "b": p.b}
            for q in QUANTITIES:
                row[q] = p.mean(q)
                row[f"{q}_sd"] = p.sd(q)
            row["largest"] = p.label(p.largest)
            row["largest_every_seed"] = p.largest_every_seed
            rows.append(row)
        return pd.DataFrame(rows)

    def per_seed_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"pair": p.name, "seed": d.seed, **{q: getattr(d, q) for q in QUANTITIES}, "largest": p.label(d.largest)}
             for p in self.pairs for d in p.per_seed]
        )  # fmt: skip

    def evidence_table(self) -> pd.DataFrame:
        """The evidence on all modalities, then late fusion and the joint model on each pair (when
        there are more than two)."""
        tables = [self.evidence.table()]
        if len(self.evidence.modalities) > 2:
            tables += [p.evidence.table(unimodal=False) for p in self.pairs]
        return pd.concat(tables, ignore_index=True)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "target": self.target, "split": self.split, "seeds": list(self.seeds),
                "num_classes": self.num_classes, "joint_method": self.joint_method, "units": "bits",
                "pairs": self.table().to_dict(orient="records"), "per_seed": self.per_seed_table().to_dict("records"),
                "evidence": self.evidence_table().to_dict(orient="records"),
                "gaps": self.evidence.gaps()}  # fmt: skip

    def render(self) -> str:
        """The readable table: the decomposition per pair, then the evidence and its gaps."""
        n = len(self.seeds)
        spread = f"mean +- sd over {n} seeds" if n > 1 else "1 seed"
        lines = [
            f"interactions with target {self.target!r} of {self.dataset} ({self.num_classes} classes), in bits, "
            f"estimated on {self.split} ({spread}); H(Y) = {self.pairs[0].mean('h_y'):.3f}",
            "MMI decomposition: R = min(I_a, I_b), U = I - R, S = I_ab - max(I_a, I_b) = S_late + S_beyond "
            "(S_late: what late fusion already gains; S_beyond: what only a non-additive fusion adds)",
            "",
        ]
        cols = [("I_a", "i_a"), ("I_b", "i_b"), ("I_ab", "i_ab"), ("R", "redundancy"), ("U_a", "unique_a"),
                ("U_b", "unique_b"), ("S", "synergy"), ("S_late", "synergy_late"),
                ("S_beyond", "synergy_beyond_late")]  # fmt: skip
        rows = []
        for p in self.pairs:
            cells = [f"{p.a} / {p.b}"]
            for _, q in cols:
                cells.append(f"{p.mean(q):.3f}" + (f"+-{p.sd(q):.3f}" if n > 1 else ""))
            largest = p.label(p.largest) + ("" if p.largest_every_seed or n == 1 else " (not in every seed)")
            cells.append(largest)
            rows.append(cells)
        lines += _format_rows(["a / b", *(h for h, _ in cols), "largest"], rows)
        short = [p for p in self.pairs if p.mean("joint_shortfall") > 0.02]
        for p in short:
            lines.append(f"note: on {p.name} the {self.joint_method} model fell {p.mean('joint_shortfall'):.3f} bits "
                         "below the better of late fusion and each modality alone (it under-fitted); I_ab uses that")  # fmt: skip
        ev = self.evidence
        lines += ["", f"evidence on {' + '.join(ev.modalities)} (accuracy, chance {1 / self.num_classes:.3f}):"]
        ev_rows = [[r.model, r.method, _pm(r.val_accuracy, r.val_accuracy_sd, n), _pm(r.test_accuracy,
                   r.test_accuracy_sd, r.n_seeds)] for r in ev.table().itertuples()]  # fmt: skip
        lines += _format_rows(["model", "method", "validation", "test"], ev_rows)
        lines.append(f"best unimodal (on validation): {ev.best_unimodal}; test-accuracy gaps: "
                     + ", ".join(f"{k} {v:+.3f}" for k, v in ev.gaps().items()))  # fmt: skip
        return "\n".join(lines)


def _largest(components: dict[str, float]) -> str:
    best = max(components, key=lambda c: components[c])
    return best if components[best] >= NONE_BELOW else "none"


def _pm(mean: float, sd: float, n: int) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.3f}" + (f" +- {sd:.3f}" if n > 1 and np.isfinite(sd) else "")


def _format_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return [line(header), *(line(r) for r in rows)]


def _sd(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------ usable information
def label_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Empirical entropy of ``labels`` in bits (the cross-entropy of the best constant predictor)."""
    p = torch.bincount(labels, minlength=num_classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum()) / LN2


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` minimising the NLL of ``logits / T`` (searched on log T in [-4, 4])."""
    logits = logits.double()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    res = optimize.minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def usable_information(
    val_logits: torch.Tensor, val_labels: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> float:
    """V-information in bits: the label entropy of (``logits``, ``labels``)'s split minus the
    cross-entropy there of the classifier, its temperature fitted on the validation logits;
    clipped at 0 (the constant predictor is in the family)."""
    t = fit_temperature(val_logits, val_labels)
    ce = float(F.cross_entropy(logits.double() / t, labels)) / LN2
    return max(0.0, label_entropy(labels, num_classes) - ce)


# ------------------------------------------------------------------------------------- the profile
def profile(
    source: FeatureIndex | dict[str, SplitData],
    target: str = "label",
    *,
    seeds: Iterable[int] = (0, 1, 2),
    modalities: Sequence[str] | None = None,
    cfg: TrainConfig | None = None,
    hidden: int = 128,
    dropout: float = 0.1,
    joint: str = JOINT,
    split: str = "test",
    comparison: pd.DataFrame | str | Path | None = None,
    output: str = "pooled",
    class_names: Sequence[str] | None = None,
    executor: Executor | None = None,
    show_progress: bool = False,
) -> InteractionProfile:
    """The interaction profile of ``target`` (module docstring).

    ``source``: a feature index (``features.json`` of a run; ``target`` one of its dataset's
    targets, ``output`` the cached feature output) or the splits themselves (``train``, ``val``,
    ``test`` :class:`SplitData`; ``target`` is then only the name shown). ``modalities``: the ones
    to pair (default: all, at least two). Every training is a :class:`~fusionkit.grid.TrainJob` at
    the comparison's default configuration (``cfg``, ``hidden``, ``dropout``) with each of
    ``seeds``, run on ``executor`` (default: this process). ``joint``: the fusion method that
    estimates ``I(a, b; Y)``. ``split``: where the informations are estimated (``test`` or ``val``).
    ``comparison``: a comparison summary (``tables/comparison_summary.csv`` or its DataFrame, on
    the same target and modalities) whose best method joins the evidence."""
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise InteractionError("seeds is empty; give at least one")
    if split not in ESTIMATION_SPLITS:
        raise InteractionError(f"split {split!r}; expected one of {', '.join(ESTIMATION_SPLITS)}")
    get_fusion(joint)  # an unknown method fails here with the list of valid ones
    data, dataset, names, mods = _inputs(source, target, modalities, output, class_names)
    num_classes = len(names) if names else int(max(int(d.labels.max()) for d in data.values())) + 1
    cfg = cfg or TrainConfig()
    pairs = list(itertools.combinations(mods, 2))
    datasets = {"main": (data, num_classes)}
    pair_data = {}
    for a, b in pairs:
        key = "main" if len(mods) == 2 else f"pair:{a}+{b}"
        if key != "main":
            datasets[key] = ({s: d.select([a, b]) for s, d in data.items()}, num_classes)
        pair_data[(a, b)] = key
    groups = [*dict.fromkeys(pair_data.values()), *([] if len(mods) == 2 else ["main"])]

    def job(method: str, seed: int, on: str) -> TrainJob:
        return TrainJob(method, seed, default_config(method, cfg, hidden, dropout), cfg, data=on, keep=True,
                        tag="interactions")  # fmt: skip

    jobs = [job(f"{UNIMODAL_PREFIX}{m}", s, "main") for s in seeds for m in mods]
    jobs += [job(method, s, g) for s in seeds for g in groups for method in ("late", joint)]
    ex = executor or SerialExecutor(show_progress=show_progress)
    outcomes = ex.run(jobs, datasets, desc="interaction profile")
    failed = [o.error for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"interaction profile: {len(failed)} training(s) failed; the first: {failed[0]}")
    info = {(o.job.method, o.job.seed, o.job.data): _information(o, datasets, split) for o in outcomes}
    acc = {(o.job.method, o.job.seed, o.job.data): (float(o.row["val_accuracy"]), float(o.row["test_accuracy"]))
           for o in outcomes}  # fmt: skip
    h_y = label_entropy(data[split].labels, num_classes)

    def evidence(on: str, group: tuple[str, ...]) -> Evidence:
        def score(method: str, where: str) -> Score:
            vals = [acc[(method, s, where)] for s in seeds]
            return Score.of([v for v, _ in vals], [t for _, t in vals])

        uni = {m: score(f"{UNIMODAL_PREFIX}{m}", "main") for m in group}
        return Evidence(group, uni, score("late", on), score(joint, on), joint)

    results = []
    for a, b in pairs:
        on = pair_data[(a, b)]
        per_seed = []
        for s in seeds:
            i_a, i_b = info[(f"{UNIMODAL_PREFIX}{a}", s, "main")], info[(f"{UNIMODAL_PREFIX}{b}", s, "main")]
            i_late = max(info[("late", s, on)], i_a, i_b)
            raw = info[(joint, s, on)]
            per_seed.append(Decomposition(s, h_y, i_a, i_b, i_late, max(raw, i_late), max(0.0, i_late - raw)))
        results.append(PairInteraction(a, b, tuple(per_seed), evidence(on, (a, b))))
    overall = results[0].evidence if len(mods) == 2 else evidence("main", tuple(mods))
    if comparison is not None:
        overall = with_comparison(overall, comparison)
        if len(mods) == 2:
            results[0] = replace(results[0], evidence=overall)
    return InteractionProfile(dataset, target, split, seeds, num_classes, tuple(results), overall, joint,
                              tuple(names or ()))  # fmt: skip


def _inputs(source, target, modalities, output, class_names):
    """(splits restricted to the modalities, dataset name, class names, modalities), checked."""
    if isinstance(source, FeatureIndex):
        if target not in source.targets:
            raise InteractionError(
                f"target {target!r} not in dataset {source.dataset} ({source.path or 'feature index'}); "
                f"valid: {', '.join(source.targets)}"
            )
        available = sorted(source.modalities)
    elif isinstance(source, dict):
        missing = [s for s in ("train", "val", "test") if s not in source]
        if missing:
            raise InteractionError(f"splits {missing} missing; the data has {sorted(source)} (needs train, val, test)")
        available = sorted(source["train"].features)
    else:
        raise InteractionError(f"source must be a FeatureIndex or a dict of SplitData, got {type(source).__name__}")
    mods = sorted(dict.fromkeys(modalities)) if modalities else available
    unknown = [m for m in mods if m not in available]
    if unknown:
        raise InteractionError(f"unknown modalities {unknown}; valid: {', '.join(available)}")
    if len(mods) < 2:
        raise InteractionError(
            f"an interaction profile needs at least two modalities; got {mods} (available: {', '.join(available)})"
        )
    if isinstance(source, FeatureIndex):
        data, names = source.splits(target=target, output=output, modalities=mods)
        if data["train"].regression:
            raise InteractionError(
                f"target {target!r} of {source.dataset} is a regression target; the interaction profile (usable "
                "information in bits) is defined for class targets only"
            )
        missing = [s for s in ("train", "val", "test") if s not in data]
        if missing:
            raise InteractionError(
                f"dataset {source.dataset} has no {', '.join(missing)} split (needs train, val, test)"
            )
        return data, source.dataset, list(class_names or names), mods
    data = {s: d.select(mods) for s, d in source.items() if s in ("train", "val", "test")}
    if data["train"].regression:
        raise InteractionError("regression targets (float labels): the interaction profile is for class targets only")
    return data, "data", list(class_names or []), mods


def _information(out: JobOutcome, datasets, split: str) -> float:
    """The usable information of a finished job's model on ``split`` (bits)."""
    data, num_classes = datasets[out.job.data]
    model = out.model(in_dims_of(data), num_classes)
    own = out.job.splits(data)
    val_logits, _ = predict(model, own["val"])
    logits, _ = predict(model, own[split])
    return usable_information(val_logits, own["val"].labels, logits, own[split].labels, num_classes)


def with_comparison(evidence: Evidence, comparison: pd.DataFrame | str | Path) -> Evidence:
    """``evidence`` with the best fusion method of a comparison summary (``compare.summarize``:
    ``is_best``, chosen on validation; its test accuracy's sd from the 95% CI and ``n_seeds``)."""
    df = pd.read_csv(comparison) if isinstance(comparison, str | Path) else comparison
    need = {"method", "is_best", "val_accuracy_mean", "test_accuracy_mean"}
    if not need <= set(df.columns):
        raise InteractionError(f"comparison table lacks columns {sorted(need - set(df.columns))}")
    best = df[df["is_best"].astype(bool)]
    if best.empty:
        raise InteractionError("the comparison table marks no method as best (is_best)")
    r = best.iloc[0]
    n = int(r.get("n_seeds", 1))
    ci = float(r.get("test_accuracy_ci95", float("nan")))
    sd = ci * math.sqrt(n) / float(stats.t.ppf(0.975, n - 1)) if n > 1 and np.isfinite(ci) else 0.0
    score = Score(float(r["val_accuracy_mean"]), float(r["test_accuracy_mean"]), float("nan"), sd, n)
    return replace(evidence, best_fusion=score, best_fusion_method=str(r["method"]))


def comparison_target(run_dir: str | Path) -> str | None:
    """The target 03 compared on in a run folder (its ``run.json``), or None when it does not say."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        params = json.loads(path.read_text(encoding="utf-8")).get("parameters", {})
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(params, dict) or "03_fusion_comparison" not in params:
        return None
    return str((params["03_fusion_comparison"] or {}).get("target", "label"))  # the notebook's default
