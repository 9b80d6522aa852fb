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
# # 01 · Data preparation
#
# Builds (or reuses) the dataset, validates it, and shows what is in it: images with their captions, questions and answers, and the class balance of every target.
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
target: str = ""  # the target whose ceilings are shown ("": the dataset's first)
dataset: str = "shapes"  # shapes (synthetic default), flickr8k, flickr30k, coco, vqa, vqarad, avdigits, manifest, imagefolder
dataset_dir: str = "../data/processed/shapes"  # where the prepared dataset is written
source_dir: str = ""  # raw data folder, for real datasets (see `fusionkit data download`)
dataset_options: dict = {}  # loader options for real datasets (`fusionkit data list` shows them)
n_scenes: int = 1200  # number of synthetic scenes
image_size: int = 128  # side of the synthetic images, pixels
n_examples: int = 8  # example images to show

# %%
from fusionkit import lineage, tracking
from fusionkit import workbook as wb
from fusionkit.report import figures

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "01_data_prep", params, group=run_id, mode=wandb_mode)
params

# %% [markdown]
# ## Build and validate

# %%
ds = wb.prepare_dataset(dataset, dataset_dir, n_scenes=n_scenes, image_size=image_size, seed=seed,
                        source_dir=source_dir, options=dataset_options)
summary = ds.summary()
print(f"{ds.name}: {len(ds)} samples, modalities {ds.modalities}, splits {summary['splits']}")

# %% [markdown]
# ## Examples: images, captions and targets

# %%
fig = figures.plot_examples(ds, n=n_examples, seed=seed, captions=wb.captions_by_sample(ds))
tracker.log_figure("examples", fig)

# %% [markdown]
# ## Questions and answers (VQA-style datasets)

# %%
questions = wb.questions_table(ds, n=12)
questions if len(questions) else print("this dataset has no VQA questions")

# %% [markdown]
# ## Class balance

# %%
balance = wb.balance_table(ds)
fig = figures.plot_class_balance(balance)
tracker.log_figure("class_balance", fig)
tracker.log_table("class_balance", balance)
balance.pivot_table(index=["target", "class"], columns="split", values="count", fill_value=0)

# %% [markdown]
# The documented ceilings of the target, where the dataset has them (accuracy; R^2 for a regression target such as the shapes' `score`) (what each modality alone can reach, and all together; on the synthetic shapes also what additive late fusion can reach, `late`):

# %%
ceilings = ds.ceilings(target or None)
tracker.summary({"n_samples": len(ds), "dataset": ds.name, "manifest_hash": ds.manifest_hash(), "ceilings": ceilings,
                 **{f"n_{k}": v for k, v in summary["splits"].items()}})
lineage.log_dataset(tracker, ds)  # the W&B artifact 02 uses
tracker.finish()
ceilings
