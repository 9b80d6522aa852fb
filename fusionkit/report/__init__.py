"""The run's report: ``html`` builds ``summary.csv`` and ``report.html`` from the run folder's
local mirror; ``figures`` draws every figure the notebooks log; ``wandb_report`` builds the run's
W&B Report (``fusionkit report wandb``)."""

from fusionkit.report.html import build_report, collect_summary, headline

__all__ = ["build_report", "collect_summary", "headline"]
