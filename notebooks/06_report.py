# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (fusionkit)
#     language: python
#     name: fusionkit
# ---

# %% [markdown]
# # 06 · Report
#
# Collects the run (the local mirror `metrics.jsonl`, tables and figures; never the W&B API) into `summary.csv` and a self-contained `report.html`.
#
# The next cell installs fusionkit where it is missing (Colab, a fresh environment) and does nothing elsewhere. Parameters are in the cell after it (tagged `parameters`): `fusionkit run` and papermill override them; run top to bottom in JupyterLab (from `notebooks/`) with the defaults.

# %% tags=["install"]
# Colab or a fresh environment: installs fusionkit (with the pinned torch) when it is not importable; else a no-op.
FUSIONKIT_SOURCE = ""  # a path, wheel or git URL to install from ("": this checkout, else the project's repository)
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("fusionkit") is None:
    _src = FUSIONKIT_SOURCE or (".." if pathlib.Path("../pyproject.toml").is_file() else "git+https://github.com/fusionkit/fusionkit.git")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1", _src], check=True)
del FUSIONKIT_SOURCE  # not a parameter of the notebook

# %% tags=["parameters"]
run_dir: str = "../reports/runs/lab"  # run folder: figures, tables, metrics.jsonl (set by `fusionkit run`)
run_id: str = "lab"  # pipeline run id; groups this notebook's W&B run with the others of the chain
wandb_mode: str = "auto"  # online | offline | disabled | auto (offline when no WANDB_API_KEY is set)
seed: int = 0  # random seed


# %%
from fusionkit import tracking
from fusionkit import workbook as wb

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "06_report", params, group=run_id, mode=wandb_mode)
params

# %%
from pathlib import Path

from IPython.display import HTML, display

from fusionkit import report

head = report.build_report(run_dir)
display(report.collect_summary(run_dir))
head

# %%
tracker.summary({k: v for k, v in head.items() if v is not None})
tracker.finish()
print("report:", Path(run_dir).resolve() / "report.html")
