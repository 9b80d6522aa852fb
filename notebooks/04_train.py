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
# # 04 · Train the chosen configuration
#
# Trains the chosen fusion method (by default the best one of the comparison) with early stopping on validation accuracy (a regression target: a regression head on the standardised target, early stopping on validation MSE), restores the best epoch, and writes the checkpoint.
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
comparison_csv: str = "../reports/runs/lab/tables/comparison_summary.csv"  # 03's summary table, read when method is "best"
checkpoint: str = "../reports/runs/lab/model.safetensors"  # written here (+ a .json with how to rebuild it)
target: str = "label"  # the target to predict
method: str = "best"  # a fusion method name, or "best" for the best of the comparison
epochs: int = 60  # maximum passes over the train split
batch_size: int = 64  # training batch size
lr: float = 0.002  # peak learning rate (linear warm-up, cosine decay)
weight_decay: float = 0.01  # AdamW / SGD weight decay
optimizer: str = "adamw"  # adamw | sgd
patience: int = 10  # early stopping: epochs without validation improvement
hidden: int = 128  # projection / fusion width
dropout: float = 0.1  # dropout in projectors and head
hyperparameters: str = "comparison"  # comparison: the method's configuration from 03 (its tuned one when 03 searched) over lr, weight_decay, hidden, dropout above | notebook: the values above
class_weights: bool = False  # inverse-frequency class weights
modality_dropout: float = 0.0  # train-time probability of dropping each modality
restarts: int = 1  # trainings from seeds seed, seed+1, ...; the one best on validation is kept (a method that has to find a cross-modal rule finds it from some initialisations only)
tasks: list[str] = []  # extra tasks to train on the same features: captioning, vqa, retrieval
task_options: dict = {}  # per task, options of fusionkit.tasks.run.train_task, e.g. {"captioning": {"decoders": ["transformer"], "epochs": 12}}
task_workers: int = 0  # tasks trained at once, each in its own process on its share of the cores (0: as many as the cores allow; 1: one after another)
resume: bool = False  # continue the tasks' interrupted trainings from their per-epoch checkpoints

# %%
from fusionkit import lineage, tracking
from fusionkit import workbook as wb
from fusionkit.report import figures

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "04_train", params, group=run_id, mode=wandb_mode)
params

# %%
import pandas as pd

from fusionkit import compare
from fusionkit.index import FeatureIndex
from fusionkit.model import build_model
from fusionkit.train import TrainConfig, train_restarts

chosen = compare.choose_method(method, comparison_csv)
index = FeatureIndex.read(features_index)
lineage.use_features(tracker, index)
splits, class_names = index.splits(target=target)
in_dims = {m: int(x.shape[-1]) for m, x in splits["train"].features.items()}
settings = compare.MethodConfig.resolve(chosen, comparison_csv if hyperparameters == "comparison" else None,
                                        lr=lr, weight_decay=weight_decay, hidden=hidden, dropout=dropout)
cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=settings.lr, weight_decay=settings.weight_decay, optimizer=optimizer,
                  patience=patience, class_weights=class_weights, modality_dropout=modality_dropout, seed=seed)
kept = train_restarts(lambda: build_model(chosen, in_dims, len(class_names), hidden=settings.hidden, dropout=settings.dropout,
                                          fusion_kwargs=settings.fusion_kwargs),
                      splits["train"], splits["val"], cfg, seeds=range(seed, seed + restarts), log_fn=tracker.log,
                      show_progress=True)
model, result = kept.model, kept.result
if restarts > 1:
    tracker.log_table("restarts", pd.DataFrame(kept.table))
    display(pd.DataFrame(kept.table))
print(f"{chosen} ({settings}): seed {kept.seed}, best epoch {result.best_epoch}, {result.monitor} {result.best_value:.4f}, {result.train_time_s:.1f} s")

# %%
fig = figures.plot_history(result.history)
tracker.log_figure("training_curves", fig)

# %%
from fusionkit.bundle import ClassifierSpec, save_classifier

spec = ClassifierSpec(fusion=chosen, in_dims=in_dims, num_classes=len(class_names), class_names=class_names,
                      target=target, hidden=settings.hidden, dropout=settings.dropout,
                      fusion_kwargs=settings.fusion_kwargs, train=result.as_dict(), config=params)
save_classifier(checkpoint, model, spec)
tracker.log_artifact_path("checkpoint", checkpoint)
best_key = "best_val_mse" if splits["train"].regression else "best_val_accuracy"
tracker.summary({"method": chosen, best_key: result.best_value, "best_epoch": result.best_epoch,
                 "epochs_run": result.epochs_run, "train_time_s": result.train_time_s, "params": model.num_parameters()})

# %% [markdown]
# ## Extra tasks
#
# Captioning (Transformer and attention-LSTM decoders over the image grid), VQA (answer classification with fusion) and retrieval (a CLIP-style dual encoder, re-ranked by a fusion matcher), each with early stopping on its validation metric; checkpoints go to the run folder, and each task's model best on validation also goes to `bundle/<task>/` (a fine-tuned copy to `bundle/<task>_finetuned/`; `fusionkit predict` runs it on new raw files; retrieval against a `fusionkit gallery`). Transfer learning is a task option: `{"vqa": {"finetune_image_blocks": 1}}` also fine-tunes the image encoder's last block with a copy of the model trained on frozen features (augmented images; `finetune_text_blocks` for the question / caption encoder of VQA and retrieval), and 05 reports both.

# %%
task_summaries = wb.train_tasks(
    tasks, features_index, run_dir, tracker, seed=seed, options=task_options, resume=resume, workers=task_workers
)
from fusionkit.export import export_run, export_tasks

bundle_dir = export_run(run_dir, f"{run_dir}/bundle", checkpoint=checkpoint, features_index=features_index).parent
# each task's model best on validation (and its fine-tuned copy), as bundles fusionkit predict runs on new raw files
export_tasks(run_dir, bundle_dir, tasks, features_index=features_index)
lineage.log_model(tracker, bundle_dir, index.dataset, run_dir, tasks,  # the W&B artifact 05 uses
                  metadata={"fusion": chosen, "target": target, "class_names": class_names, "tasks": tasks,
                            best_key: result.best_value})
tracker.finish()
task_summaries
