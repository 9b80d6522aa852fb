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
# # 03 · Fusion-method comparison
#
# Trains every fusion method (and each modality alone) on the cached features, several seeds each, with the same budget - optionally after searching each method's hyper-parameters with the same number of trials, chosen on the validation split only; reports mean and 95% confidence interval of the test metrics, parameters, train time and inference throughput, and a paired test against the best method. Then: robustness to missing and noisy modalities (MultiBench's protocol), the effect of training with modality dropout, and which modality each model relied on.
#
# Every training is a Ray Tune trial: a local Ray on this machine's cores by default, a cluster when `ray_address` names one (README, "Running on a Ray cluster").
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
target: str = "label"  # the target to predict
methods: list[str] = ["all"]  # fusion methods to compare; "all" means every registered method
n_seeds: int = 5  # seeds per method
unimodal: bool = True  # also train one model per single modality
interaction_targets: list[str] = []  # targets by interaction type to compare every method on too (e.g. redundant, unique, synergy); [] skips
interaction_methods: list[str] = ["all"]  # methods of the interaction-type comparison ("all": every registered method)
interaction_seeds: int = 3  # seeds per method and interaction target
profile_seeds: int = 2  # seeds of the interaction profile of `target` (redundancy, uniqueness, synergy per modality pair); 0 skips
epochs: int = 40  # maximum passes over the train split
batch_size: int = 64  # training batch size
lr: float = 0.002  # peak learning rate (linear warm-up, cosine decay)
weight_decay: float = 0.01  # AdamW / SGD weight decay
optimizer: str = "adamw"  # adamw | sgd
patience: int = 8  # early stopping: epochs without validation improvement
hidden: int = 128  # projection / fusion width
dropout: float = 0.1  # dropout in projectors and head
class_weights: bool = False  # inverse-frequency class weights for imbalanced labels
modality_dropout: float = 0.0  # train-time probability of dropping each modality, for every method
robustness_levels: int = 10  # noise levels per corruption in the robustness study (0 skips it)
dropout_study: float = 0.3  # modality-dropout rate whose effect is shown on the best method (0 skips it)
interpret: bool = True  # learned modality weights vs what each modality is known to carry
search_trials: int = 0  # hyper-parameter search: trials per method, the same for all (0: each method at the settings above, still selected on validation)
untuned_seeds: int = 0  # with a search: seeds of the untuned ranking shown beside the tuned one (0: n_seeds; its first seed is the search's trial 0)
search_metric: str = ""  # what the search optimises, a validation metric ("": the target's own - val_accuracy, or val_mse for a regression target)
search_space: dict = {}  # overrides of the search space, e.g. {"lr": {"low": 0.0001, "high": 0.01, "log": True}, "hidden": [64, 128], "dropout": 0.1}
executor: str = "ray"  # ray: every training a Ray Tune trial (local Ray or the cluster at ray_address) | serial: one after another in this process
ray_address: str = ""  # "" starts a local Ray on this machine's cores; "auto" or "host:port" / "ray://host:port" joins a cluster (else $RAY_ADDRESS)
ray_storage: str = ""  # Ray Tune's files and the trained weights ("": a temporary folder; on a cluster a folder every node sees, default <run_dir>/ray)
max_failures: int = 2  # retries of a training that fails (also one lost with its node)
protocol: str = "split"  # split: the dataset's own train / val / test | loso: also leave one group (speaker) out - the comparison once per fold, validated on another held-out group
loso_methods: list[str] = ["all"]  # fusion methods compared under LOSO ("all": every registered method)
loso_seeds: int = 3  # seeds per method and fold
loso_dropout_methods: list[str] = ["concat", "gmu"]  # also trained with modality dropout under LOSO (robust option)
loso_modality_dropout: float = 0.3  # their modality-dropout rate (0 skips them)
loso_anchor: dict = {"audio": {"encoder": "mfcc", "options": {"segments": 4}}}  # modality -> encoder (+ options) of its logistic-regression anchor under LOSO ({} skips it)

# %%
from fusionkit import tracking
from fusionkit import workbook as wb
from fusionkit.report import figures

params = wb.parameters_from(globals())
tracker = tracking.start(run_dir, "03_fusion_comparison", params, group=run_id, mode=wandb_mode)
params

# %%
import pandas as pd

import fusionkit.fusion as fusion
from fusionkit import compare, grid, interactions, interpret, robustness
from fusionkit.index import FeatureIndex
from fusionkit.train import TrainConfig

index = FeatureIndex.read(features_index)
splits, class_names = index.splits(target=target)
ds = index.load_dataset()
method_list = fusion.named(methods)
cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                  patience=patience, class_weights=class_weights, modality_dropout=modality_dropout, seed=seed)
print("methods:", method_list)
ex = grid.executor(executor, ray_address, max_failures=max_failures, storage_path=ray_storage, run_dir=run_dir)

# %% [markdown]
# ## Every method x every seed
#
# One W&B run per method and seed (grouped with the rest of the chain); the first seed's model of each method is kept for the robustness and interpretability studies below. With `search_trials` > 0, each method is first searched (the same number of trials and epochs for every method, the unimodal baselines too; trial 0 is its defaults), its best configuration on validation is retrained with every seed, and that is the comparison reported; the untuned one is shown beside it.

# %%
# each per-seed training is a W&B run of its own; with a search, the tuned retrainings are named method/seedN/tuned
runs = compare.PerRunLogger(run_dir, "03_fusion_comparison", params, group=run_id, mode=wandb_mode)
comparison = compare.run(method_list, splits, cfg, num_classes=len(class_names), seeds=range(seed, seed + n_seeds),
                         unimodal=unimodal, hidden=hidden, dropout=dropout, search_trials=search_trials,
                         search_metric=search_metric, search_space=search_space, untuned_seeds=untuned_seeds,
                         executor=ex, on_result=runs)
results, summary, models = comparison.runs, comparison.summary, comparison.models
tracker.log_table("comparison_runs", results)
tracker.log_table("comparison_summary", summary)
if comparison.failed:
    failed = pd.DataFrame({"method": list(comparison.failed), "error": list(comparison.failed.values())})
    tracker.log_table("failed_methods", failed)
    display(failed)
summary

# %% [markdown]
# ## Tuned vs untuned
#
# Each method's rank at its default settings and after its search, side by side (mean test accuracy with 95% CI; the best method - `is_best` - is chosen on validation), with the configuration it was reported with; then each method's search: the validation score of every trial and the best so far.

# %%
rankings = comparison.rankings()
tracker.log_table("rankings", rankings)
if comparison.tuned:
    tracker.log_table("comparison_untuned_runs", comparison.untuned_runs)
    tracker.log_table("comparison_untuned_summary", comparison.untuned_summary)
    tracker.log_table("search_trials", comparison.search.trials)
    tracker.log_table("search_chosen", comparison.search.chosen())
    for m, trials in comparison.search.trials.groupby("method", sort=False):  # one W&B table per method
        tracker.log_table(f"search_{m}", trials)
    fig = figures.plot_search(comparison.search.trials, metric=search_metric)
    tracker.log_figure("search_curves", fig)
rankings

# %% [markdown]
# ## Accuracy per method (a regression target: R^2)
#
# Bars: mean over seeds with 95% CI; dots: single seeds; vertical lines: the dataset's documented ceilings. `worse_than_best` in the table above marks methods significantly worse than the best (paired t-test over seeds, p < 0.05).

# %%
ceilings = ds.ceilings(target)
fig = figures.plot_comparison(results, summary, ceilings=ceilings)
tracker.log_figure("comparison", fig)

# %% [markdown]
# **Leave one speaker out** (`protocol: loso`; any dataset whose samples have a `group`): fold k tests on group k and validates on the next group, so the best method, each training's early-stopping epoch, the best single modality and the late-fusion weights are all chosen on a voice the model has never heard. Per fold and over folds (mean ± 95% CI over folds): every method, each modality alone, the robust options (modality dropout, late fusion with weights calibrated on the validation group, GMU) and the linear anchor (MFCC + logistic regression), with each method's gain over the fold's best single modality and its one-sided paired t-test over folds.

# %%
loso = None
if protocol == "loso":  # every choice (best method, single modality, epoch, late-fusion weights) on the fold's validation group
    folds, fold_list = index.by_fold(target)
    anchors = index.anchors_by_fold(loso_anchor, target)
    l_methods = fusion.named(loso_methods)
    loso = compare.across_folds(l_methods, folds, cfg, seeds=range(seed, seed + loso_seeds), hidden=hidden, dropout=dropout,
                                dropout_methods=loso_dropout_methods, modality_dropout=loso_modality_dropout,
                                anchors=anchors, executor=ex)
    tracker.log_table("loso_runs", loso.runs)
    tracker.log_table("loso_per_fold", loso.per_fold)
    tracker.log_table("loso_summary", loso.summary)
    display(pd.DataFrame([f.row() for f in fold_list]))
    display(loso.table().round(3))
    display(loso.summary.round(3))

# %% [markdown]
# ## By interaction type
#
# Every method (and each modality alone) at its defaults on each target of `interaction_targets`: on the synthetic shapes, targets whose information is redundant (in two modalities), unique (in one), synergistic (only in the combination), carried by an unreliable modality, or a mix (`fusionkit/data/shapes.py` derives each one's ceilings). Framed: the best method on validation; grey: no better than late fusion (one-sided paired t-test over seeds, p < 0.05). The table under it names, per target, the methods no better than late fusion or than the best single modality.

# %%
by_target = None
if interaction_targets:
    t_methods = fusion.named(interaction_methods)
    by_target = compare.across_targets(t_methods, index.by_target(interaction_targets), cfg, seeds=range(seed, seed + interaction_seeds),
                                       unimodal=True, hidden=hidden, dropout=dropout, executor=ex)
    t_ceilings = {t: ds.ceilings(t) for t in interaction_targets}
    tracker.log_table("comparison_by_target", by_target.summary)
    verdicts = by_target.verdicts(t_ceilings)
    tracker.log_table("interaction_verdicts", verdicts)
    fig = figures.plot_targets(by_target.summary, t_ceilings)
    tracker.log_figure("interactions_heatmap", fig)
    display(verdicts)

# %% [markdown]
# ## What kind of interaction does this data have?
#
# For each modality pair, how the information about `target` splits into redundancy (in either modality), each modality's unique information and synergy (only in the combination; split into what late fusion already extracts and what only a non-additive fusion adds), in bits, estimated from the held-out cross-entropy of the comparison's own models (`fusionkit/interactions.py` says how). Next to it, the simpler evidence: each modality alone, late fusion, a joint model and the comparison's best method. The same from a terminal: `fusionkit data interactions RUN`.

# %%
inter = None
if profile_seeds > 0:
    inter = interactions.profile(index, target, seeds=range(seed, seed + profile_seeds), cfg=cfg, hidden=hidden,
                                 dropout=dropout, comparison=summary, executor=ex)
    tracker.log_table("interaction_profile", inter.table())
    tracker.log_table("interaction_evidence", inter.evidence_table())
    fig = figures.plot_interactions(inter.table(), inter.evidence_table())
    tracker.log_figure("interaction_profile", fig)
    print(inter.render())

# %% [markdown]
# ## Robustness: missing and noisy modalities
#
# Each modality dropped at test time; then each modality's raw test inputs corrupted at increasing levels and re-encoded with the same frozen encoder. Relative robustness is the area under the accuracy-vs-level curve; effective robustness is the gain over late fusion at equal clean accuracy.

# %%
missing = robustness.missing_modality(models, splits["test"])
tracker.log_table("missing_modality", missing)
missing.pivot(index="method", columns="dropped", values=robustness.score_column(missing)).round(3)

# %%
by_method = None
if robustness_levels > 0:
    encoders = index.encoders()
    levels = [round((i + 1) / robustness_levels, 3) for i in range(robustness_levels)]
    curves = robustness.noise_curves(models, splits["test"], ds, encoders, levels=levels, seed=seed)
    tracker.log_table("noise_curves", curves)
    fig = figures.plot_curves(curves)
    tracker.log_figure("noise_curves", fig)
    robust = robustness.robustness_summary(curves)
    tracker.log_table("robustness_summary", robust)
    by_method = robustness.by_method(robust)
    tracker.log_table("robustness_by_method", by_method)
    display(by_method.round(3))

# %% [markdown]
# ## Training with modality dropout
#
# The best fusion method retrained with modality dropout, same seeds: clean accuracy against accuracy with each modality missing.

# %%
best_method = compare.best_method(summary)
if dropout_study > 0:
    study = robustness.modality_dropout_study(best_method, splits, cfg, len(class_names), rate=dropout_study,
                                              reference=models[best_method], hidden=hidden, dropout=dropout,
                                              config=comparison.configs[best_method], executor=ex)
    tracker.log_table("modality_dropout_study", study)
    display(study.pivot(index="method", columns="dropped", values=robustness.score_column(study)).round(3))

# %% [markdown]
# ## Which modality did each model rely on?
#
# The learned per-sample modality weights (methods that have them) next to the accuracy lost when a modality is dropped.

# %%
if interpret:
    weights = interpret.weight_samples(models, splits["test"], class_names)
    importance = interpret.drop_importance(models, splits["test"])
    tracker.log_table("drop_importance", importance)
    if not weights.empty:
        fig = figures.plot_weights(weights)
        tracker.log_figure("modality_weights", fig)
        agreement = interpret.weights_vs_importance(weights, importance)
        tracker.log_table("weights_vs_importance", agreement)
        display(agreement.round(3))

# %% [markdown]
# On a dataset that documents which modality carries each target (the synthetic shapes: the tone only in the audio, the red shape in the image and caption), each weighted method is trained on those targets and we check whether its weights point to the informative modality.

# %%
informative = ds.info.get("informative_modalities", {})
known = None
if interpret and informative:
    aux = {t: index.labels(splits, t) for t in informative if t in ds.targets and t != target}
    weighted_methods = [m for m in models if not m.startswith("unimodal:") and interpret.has_weights(models[m], splits["test"])]
    known = interpret.known_information_check(weighted_methods, splits, aux, informative, cfg, hidden, dropout,
                                              configs=comparison.configs, executor=ex)
    tracker.log_table("known_information_check", known)
    display(known.round(3))

# %%
from fusionkit.headline import Headline

head = Headline.from_comparison(summary, n_methods=len(method_list), n_seeds=n_seeds, known=known, search_trials=search_trials,
                                robustness_by_method=by_method)
ex.close()
tracker.summary({**head.as_summary(), **(loso.headline() if loso is not None else {})})
tracker.finish()
head
