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
# # 02 · Feature extraction
#
# Encodes every modality with a pretrained encoder into the feature cache (computed once per dataset x encoder x split; a warm cache does no forward pass), then looks at the features: statistics and a 2-D projection coloured by label.
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
dataset_dir: str = "../data/processed/shapes"  # the prepared dataset (01_data_prep)
cache_dir: str = "../data/processed/features"  # feature cache, shared across runs
image_encoder: str = "efficientnet_lite0"  # image encoder (fusionkit.encoders.available_encoders())
text_encoder: str = "minilm"  # text encoder: minilm (packaged all-MiniLM-L6-v2) or hf:<name or path>
audio_encoder: str = "logmel"  # audio features: logmel | mfcc | audio_cnn
encoder_options: dict = {}  # constructor options per encoder kind, e.g. {"audio": {"cmvn": True, "segments": 4}} (fusionkit.encoders.audio)
outputs: list[str] = ["pooled"]  # pooled vectors and/or grid (regions/tokens/frames) features
batch_size: int = 0  # 0 means the measured default for this device
target: str = "label"  # target used to colour the projections
features_index: str = "../reports/runs/lab/features.json"  # written here: where each feature file is
tasks: list[str] = []  # extra tasks whose features to extract too: captioning, vqa, retrieval

# %%
from fusionkit import lineage, tracking
from fusionkit import workbook as wb
from fusionkit.report import figures

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "02_feature_extraction", params, group=run_id, mode=wandb_mode)
params

# %%
from fusionkit.data import load_dataset
from fusionkit.index import FeatureIndex
from fusionkit.tasks import features as task_features

ds = load_dataset(dataset_dir)
lineage.use_dataset(tracker, ds)
# `also`: the image grids the tasks read, from the same pass of the image encoder as the pooled vectors
index = FeatureIndex.build(ds, {"image": image_encoder, "text": text_encoder, "audio": audio_encoder}, cache_dir,
                           outputs, path=features_index, batch_size=batch_size,
                           options=encoder_options, also=task_features.shared_outputs(ds, tasks))
{m: e.encoder for m, e in index.modalities.items()}

# %% [markdown]
# Features the extra tasks need (image grids for captioning attention, every reference caption for retrieval, every question for VQA), in the same cache:

# %%
if tasks:
    task_features.extract_task_features(ds, features_index, tasks, cache_dir, image_encoder=image_encoder,
                                      text_encoder=text_encoder)
    display(task_features.task_status(features_index))

# %% [markdown]
# ## Feature statistics

# %%
splits, class_names = index.splits(target=target)
stats = wb.feature_stats(splits)
tracker.log_table("feature_stats", stats)
stats

# %% [markdown]
# ## 2-D projection of each modality, coloured by the target
#
# A modality that separates the classes by itself shows clusters here; one that only carries part of the label shows merged clusters.

# %%
fig = figures.plot_projection(splits["train"], class_names, seed=seed)
tracker.log_figure("feature_projection", fig)

# %%
tracker.summary({f"dim_{m}": e.dims["pooled"][-1] for m, e in index.modalities.items() if "pooled" in e.dims})
lineage.log_features(tracker, FeatureIndex.read(features_index))  # the W&B artifact 04 and 05 use
tracker.finish()
