"""The headline: what ``03_fusion_comparison`` hands to the report, as one typed object.

03 builds it from its tables (:meth:`Headline.from_comparison`) and logs it as the step's W&B
summary (:meth:`Headline.as_summary`, the keys below); ``06_report`` reads it back from the run's
local mirror (:meth:`Headline.from_summary`) - the report never re-derives it from tables.

Keys (all under step ``03_fusion_comparison``): ``best_fusion_method``, ``best_fusion_accuracy``,
``best_fusion_accuracy_ci95``, ``best_unimodal``, ``best_unimodal_accuracy``, ``n_methods``,
``n_seeds``, ``search_trials`` (0: no search); with the interpretability check ``weights_point_to_informative`` ("k/n" pairs); with
the robustness study ``most_robust_method`` and ``most_robust_relative_robustness``.

On a regression target the headline's score is test R^2 (higher is better, so the margin reads the
same way; its documented ceilings are R^2 too): the keys ``best_fusion_r2``, ``best_fusion_r2_ci95``,
``best_unimodal_r2`` replace the accuracies, with ``best_fusion_mse`` and ``best_fusion_mse_ci95``
(the test MSE in the target's units, lower is better) and ``headline_metric`` = ``"r2"``. The best
fusion method and the best single modality are still chosen on validation (the lowest MSE).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fusionkit.compare import UNIMODAL_PREFIX

STEP = "03_fusion_comparison"


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


#: the headline's score on a regression target (test R^2) and the name it is logged under
R2 = "r2"


@dataclass
class Headline:
    best_fusion_method: str
    best_fusion_score: float
    best_fusion_score_ci95: float
    best_unimodal: str | None
    best_unimodal_score: float | None
    n_methods: int
    n_seeds: int
    search_trials: int = 0
    weights_point_to_informative: str | None = None
    most_robust_method: str | None = None
    most_robust_relative_robustness: float | None = None
    #: what the scores are: "accuracy", or "r2" (test R^2) for a regression target
    metric: str = "accuracy"
    #: a regression target's best fusion method's test MSE (target units) and its 95% CI
    best_fusion_mse: float | None = None
    best_fusion_mse_ci95: float | None = None

    @property
    def regression(self) -> bool:
        return self.metric == R2

    @property
    def margin(self) -> float | None:
        """By how much (accuracy as a fraction, or R^2) the best fusion method beats the best
        single modality."""
        if self.best_unimodal_score is None:
            return None
        return float(self.best_fusion_score) - float(self.best_unimodal_score)

    @classmethod
    def from_comparison(
        cls,
        summary: pd.DataFrame,
        *,
        n_methods: int,
        n_seeds: int,
        search_trials: int = 0,
        known: pd.DataFrame | None = None,
        robustness_by_method: pd.DataFrame | None = None,
    ) -> Headline:
        """From :func:`fusionkit.compare.summarize`'s table (its ``is_best`` row and the single
        modality with the best validation score - the highest accuracy, or the lowest MSE on a
        regression target: both chosen on validation, reported on test), the known-information
        check and :func:`fusionkit.robustness.by_method`."""
        regression = "test_mse_mean" in summary
        metric = R2 if regression else "accuracy"
        if f"test_{metric}_mean" not in summary:
            raise ValueError(f"the headline reports test {metric}; this comparison has no test_{metric}_mean column")
        best = summary[summary.is_best].iloc[0]
        uni = summary[summary.kind == "unimodal"]
        select = "val_mse_mean" if regression else "val_accuracy_mean"
        if select in uni:  # the best single modality is chosen on validation too
            uni = uni.sort_values(select, ascending=regression, kind="stable")
        best_uni = uni.iloc[0] if len(uni) else None
        head = cls(
            best_fusion_method=str(best["method"]),
            best_fusion_score=float(best[f"test_{metric}_mean"]),
            best_fusion_score_ci95=float(best.get(f"test_{metric}_ci95", float("nan"))),
            best_unimodal=None if best_uni is None else str(best_uni["method"]),
            best_unimodal_score=None if best_uni is None else float(best_uni[f"test_{metric}_mean"]),
            n_methods=int(n_methods),
            n_seeds=int(n_seeds),
            search_trials=int(search_trials),
            metric=metric,
        )
        if regression:
            head.best_fusion_mse = float(best["test_mse_mean"])
            head.best_fusion_mse_ci95 = float(best.get("test_mse_ci95", float("nan")))
        if known is not None and len(known):
            head.weights_point_to_informative = f"{int(known.points_to_informative.sum())}/{len(known)}"
        if robustness_by_method is not None:
            rows = robustness_by_method[~robustness_by_method.method.str.startswith(UNIMODAL_PREFIX)]
            if len(rows):
                head.most_robust_method = str(rows.iloc[0]["method"])
                head.most_robust_relative_robustness = float(rows.iloc[0]["relative_robustness"])
        return head

    def as_summary(self) -> dict[str, Any]:
        """The W&B summary of step 03 (optional parts only when their study ran)."""
        m = self.metric
        out: dict[str, Any] = {
            "best_fusion_method": self.best_fusion_method,
            f"best_fusion_{m}": self.best_fusion_score,
            f"best_fusion_{m}_ci95": self.best_fusion_score_ci95,
            "best_unimodal": self.best_unimodal,
            f"best_unimodal_{m}": self.best_unimodal_score,
            "n_methods": self.n_methods,
            "n_seeds": self.n_seeds,
            "search_trials": self.search_trials,
        }
        if self.regression:
            out.update(headline_metric=m, best_fusion_mse=self.best_fusion_mse,
                       best_fusion_mse_ci95=self.best_fusion_mse_ci95)  # fmt: skip
        if self.weights_point_to_informative is not None:
            out["weights_point_to_informative"] = self.weights_point_to_informative
        if self.most_robust_method is not None:
            out["most_robust_method"] = self.most_robust_method
            out["most_robust_relative_robustness"] = self.most_robust_relative_robustness
        return out

    @classmethod
    def from_summary(cls, values: Mapping[str, Any]) -> Headline | None:
        """Read back from step 03's summary values (``{key: value}``); None when 03 logged no
        headline (it failed, or the run predates it)."""
        metric = str(values.get("headline_metric") or "accuracy")
        need = ("best_fusion_method", f"best_fusion_{metric}")
        if not all(k in values for k in need):
            return None
        blank = {None, ""}
        uni = values.get("best_unimodal")
        uni_score = values.get(f"best_unimodal_{metric}")
        try:
            return cls(
                best_fusion_method=str(values["best_fusion_method"]),
                best_fusion_score=float(values[f"best_fusion_{metric}"]),
                best_fusion_score_ci95=float(values.get(f"best_fusion_{metric}_ci95", float("nan"))),
                best_unimodal=None if uni in blank or pd.isna(uni) else str(uni),
                best_unimodal_score=None if uni_score in blank or pd.isna(uni_score) else float(uni_score),
                n_methods=int(values.get("n_methods", 0)),
                n_seeds=int(values.get("n_seeds", 0)),
                search_trials=int(values.get("search_trials", 0) or 0),
                weights_point_to_informative=values.get("weights_point_to_informative"),
                most_robust_method=values.get("most_robust_method"),
                most_robust_relative_robustness=_num(values.get("most_robust_relative_robustness")),
                metric=metric,
                best_fusion_mse=_num(values.get("best_fusion_mse")),
                best_fusion_mse_ci95=_num(values.get("best_fusion_mse_ci95")),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"step {STEP}: the logged headline is malformed ({e})") from e
