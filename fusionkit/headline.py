"""The headline: what ``03_fusion_comparison`` hands to the report, as one typed object.

03 builds it from its tables (:meth:`Headline.from_comparison`) and logs it as the step's W&B
summary (:meth:`Headline.as_summary`, the keys below); ``06_report`` reads it back from the run's
local mirror (:meth:`Headline.from_summary`) - the report never re-derives it from tables.

Keys (all under step ``03_fusion_comparison``): ``best_fusion_method``, ``best_fusion_accuracy``,
``best_fusion_accuracy_ci95``, ``best_unimodal``, ``best_unimodal_accuracy``, ``n_methods``,
``n_seeds``, ``search_trials`` (0: no search); with the interpretability check ``weights_point_to_informative`` ("k/n" pairs); with
the robustness study ``most_robust_method`` and ``most_robust_relative_robustness``.
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


@dataclass
class Headline:
    best_fusion_method: str
    best_fusion_accuracy: float
    best_fusion_accuracy_ci95: float
    best_unimodal: str | None
    best_unimodal_accuracy: float | None
    n_methods: int
    n_seeds: int
    search_trials: int = 0
    weights_point_to_informative: str | None = None
    most_robust_method: str | None = None
    most_robust_relative_robustness: float | None = None

    @property
    def margin(self) -> float | None:
        """Points (as a fraction) by which the best fusion method beats the best single modality."""
        if self.best_unimodal_accuracy is None:
            return None
        return float(self.best_fusion_accuracy) - float(self.best_unimodal_accuracy)

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
        modality with the best validation accuracy: both chosen on validation, reported on test),
        the known-information check and :func:`fusionkit.robustness.by_method`."""
        if "test_accuracy_mean" not in summary:
            raise ValueError(
                "the headline reports test accuracy; this comparison has none (a regression target: its headline, "
                "in MSE / R^2, is not written yet - read compare.summarize's table)"
            )
        best = summary[summary.is_best].iloc[0]
        uni = summary[summary.kind == "unimodal"]
        if "val_accuracy_mean" in uni:  # the best single modality is chosen on validation too
            uni = uni.sort_values("val_accuracy_mean", ascending=False, kind="stable")
        best_uni = uni.iloc[0] if len(uni) else None
        head = cls(
            best_fusion_method=str(best["method"]),
            best_fusion_accuracy=float(best["test_accuracy_mean"]),
            best_fusion_accuracy_ci95=float(best["test_accuracy_ci95"]),
            best_unimodal=None if best_uni is None else str(best_uni["method"]),
            best_unimodal_accuracy=None if best_uni is None else float(best_uni["test_accuracy_mean"]),
            n_methods=int(n_methods),
            n_seeds=int(n_seeds),
            search_trials=int(search_trials),
        )
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
        out: dict[str, Any] = {
            "best_fusion_method": self.best_fusion_method,
            "best_fusion_accuracy": self.best_fusion_accuracy,
            "best_fusion_accuracy_ci95": self.best_fusion_accuracy_ci95,
            "best_unimodal": self.best_unimodal,
            "best_unimodal_accuracy": self.best_unimodal_accuracy,
            "n_methods": self.n_methods,
            "n_seeds": self.n_seeds,
            "search_trials": self.search_trials,
        }
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
        need = ("best_fusion_method", "best_fusion_accuracy")
        if not all(k in values for k in need):
            return None
        blank = {None, ""}
        uni = values.get("best_unimodal")
        uni_acc = values.get("best_unimodal_accuracy")
        try:
            return cls(
                best_fusion_method=str(values["best_fusion_method"]),
                best_fusion_accuracy=float(values["best_fusion_accuracy"]),
                best_fusion_accuracy_ci95=float(values.get("best_fusion_accuracy_ci95", float("nan"))),
                best_unimodal=None if uni in blank or pd.isna(uni) else str(uni),
                best_unimodal_accuracy=None if uni_acc in blank or pd.isna(uni_acc) else float(uni_acc),
                n_methods=int(values.get("n_methods", 0)),
                n_seeds=int(values.get("n_seeds", 0)),
                search_trials=int(values.get("search_trials", 0) or 0),
                weights_point_to_informative=values.get("weights_point_to_informative"),
                most_robust_method=values.get("most_robust_method"),
                most_robust_relative_robustness=_num(values.get("most_robust_relative_robustness")),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"step {STEP}: the logged headline is malformed ({e})") from e
