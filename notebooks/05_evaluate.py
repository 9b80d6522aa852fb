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
# # 05 · Evaluation
#
# Test-split metrics of the trained model (a regression target: MSE, MAE and R^2 in its own units), its confusion matrix (a regression target: predicted against true values), what happens when each modality is dropped at test time, the per-modality weights the model learned, and a table of sample predictions (logged to W&B with the images).
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
features_index: str = "../reports/runs/lab/features.json"  # feature index from 02_feature_extraction
checkpoint: str = "../reports/runs/lab/model.safetensors"  # the model from 04_train
n_predictions: int = 16  # sample predictions to show and log
tasks: list[str] = []  # extra tasks to evaluate: captioning, vqa, retrieval

# %%
from fusionkit import lineage, tracking
from fusionkit import workbook as wb
from fusionkit.report import figures

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "05_evaluate", params, group=run_id, mode=wandb_mode)
params

# %%
import pandas as pd

from fusionkit import evaluate
from fusionkit.bundle import load_classifier
from fusionkit.index import FeatureIndex
from fusionkit.train import predict

model, spec = load_classifier(checkpoint)
class_names = spec.class_names
index = FeatureIndex.read(features_index)
lineage.use_model(tracker, index.dataset)
lineage.use_features(tracker, index)
splits, _ = index.splits(target=spec.target)
test = splits["test"]
logits, weights = predict(model, test)
metrics = evaluate.target_metrics(logits, test.labels, len(class_names))
metrics

# %% [markdown]
# ## Confusion matrix (a regression target: predicted vs true)

# %%
if spec.regression:
    fig = figures.plot_predicted_vs_true(logits[:, 0], test.labels, spec.target)
    tracker.log_figure("predicted_vs_true", fig)
else:
    fig = figures.plot_confusion(evaluate.confusion(logits, test.labels, len(class_names)), class_names)
    tracker.log_figure("confusion_matrix", fig)

# %% [markdown]
# ## Per-modality ablation
#
# Each modality is masked as missing at test time (the fusion methods all accept a missing-modality mask).

# %%
ablation = evaluate.modality_ablation(model, test, len(class_names))
tracker.log_table("ablation", pd.DataFrame(ablation))
fig = figures.plot_ablation(ablation)
tracker.log_figure("modality_ablation", fig)

# %% [markdown]
# ## Learned modality weights per class (a regression target: per quintile of its values; methods that have them)

# %%
weight_rows = evaluate.mean_weights(weights, test.labels, class_names)
if weight_rows:
    wdf = pd.DataFrame(weight_rows)
    tracker.log_table("modality_weights", wdf)
    display(wdf.pivot(index="class", columns="modality", values="weight").round(3))
else:
    print(f"{spec.fusion} has no per-sample modality weights")

# %% [markdown]
# ## Sample predictions

# %%
ds = index.load_dataset(check_files=True)
preds = wb.predictions_table(ds, test, logits, class_names, n=n_predictions, weights=weights)
tracker.log_table("predictions", preds, image_columns=["image"] if "image" in preds else [])
score = "r2" if spec.regression else "accuracy"
tracker.summary({f"test_{k}": v for k, v in metrics.items()} | {f"ablation/{r['condition']}": r[score] for r in ablation})
preds.drop(columns=["image"], errors="ignore")

# %% [markdown]
# ## Extra tasks: test metrics
#
# Captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) of each decoder and decoding, next to the nearest-neighbour caption baseline, and attention maps drawn over test images. VQA: official VQA accuracy with per-type breakdown. Retrieval: Recall@K both directions of the dual encoder vs the ridge baseline, before and after re-ranking.

# %%
for task in tasks:
    res = wb.evaluate_task(task, features_index, run_dir, tracker, n_examples=min(n_predictions, 8))
    display(res.metrics)
tracker.finish()
