"""Task model bundles: ``fusionkit export RUN --task captioning|vqa|retrieval --out DIR`` writes one
of the run's trained task models (04 saves them in ``<run>/<task>/``) in the bundle format of
:mod:`fusionkit.bundle` (version 2), loadable without the run folder; :func:`load_task` reads it
back for :mod:`fusionkit.tasks.predict`.

``DIR/model.safetensors`` holds the task model's weights; ``DIR/model.json`` its own fields as the
task wrote them (hyper-parameters, dimensions, training record) plus:

``task``       ``captioning``, ``vqa`` or ``retrieval``;
``model``      which of the run's models it is (``transformer`` / ``lstm`` decoder, the VQA fusion
               method, ``dual_encoder``): by default the one best on validation among the models
               trained on frozen features (05's choice); ``<name>_finetuned`` is the run's fine-tuned
               copy of ``name`` (transfer learning: 04 exports it beside the frozen one as
               ``bundle/<task>_finetuned/``), whose encoders' trained blocks travel in the bundle
               (``finetuned`` in their entries, :func:`fusionkit.bundle.add_finetuned_blocks`);
``encoders``   per modality, as a classifier bundle's (:func:`fusionkit.bundle.encoder_entry`):
               captioning ``image`` (its ``grid`` output), VQA ``image`` (``grid`` or ``pooled``) and
               ``question`` (text, ``pooled``), retrieval ``image`` and ``text`` (``pooled``);
``tokenizer``  captioning: the output vocabulary and length limit (the word pieces are MiniLM's:
               the pinned tokenizer package, or with ``standalone`` a copy in ``DIR/tokenizer/``);
``vocab``      VQA: the answer vocabulary;
``rerank``     retrieval, when the run trained a matcher (and the model is the frozen-feature dual
               encoder): its fusion method, ``k`` and ``mix``; the matcher is ``DIR/matcher.safetensors``
               (+ json), and predict re-ranks a gallery's top ``k`` with it as 05 evaluates it;
``dataset`` / ``metrics``  what it was trained on and the run's numbers for the task.

``kind`` is the model's (``captioner``, ``vqa``, ``dual_encoder``); a captioner's decoder kind is in
``decoder``. The encoders' weights go where a classifier bundle's go (``encoders.safetensors``, a
copy of a Hugging Face folder, or this machine's pretrained files); reading them back runs the
same checks (:func:`fusionkit.bundle.load_encoder_entries`). A pretrained encoder whose weights stay
on the machine is described by the identity the feature index recorded, without building it (04
exports its task bundles in well under a second); the others are rebuilt, identity-checked.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle
from fusionkit.bundle import BundleError
from fusionkit.data.problems import TaskInputError
from fusionkit.tasks import common
from fusionkit.tasks.features import read_task_index, require_task, task_encoder

#: the task -> the kind of its exported model
KINDS = {"captioning": "captioner", "vqa": "vqa", "retrieval": "dual_encoder"}
#: the task -> its modalities and their kinds (a manifest's columns are the modality names)
MODALITIES = {
    "captioning": {"image": "image"},
    "vqa": {"image": "image", "question": "text"},
    "retrieval": {"image": "image", "text": "text"},
}
#: fields of a run's model description that are the run's, not the model's
_RUN_FIELDS = ("format", "version", "fusionkit_version", "kind", "options", "tokenizer", "test_ids", "test_keys")
#: a retrieval bundle's re-ranking matcher (and the run's: ``<run>/retrieval/matcher.safetensors``)
MATCHER = "matcher.safetensors"
#: the suffix of a fine-tuned copy's name (``film_finetuned``)
FINETUNED = "_finetuned"
#: the encoder kind -> the prefix of its trained blocks in a fine-tuned copy's encoder file
_BLOCK_PREFIX = {"image": "image.", "text": "text."}


@dataclass
class TaskSpec:
    """An exported task model's description (``model.json``): what :class:`fusionkit.predict.Predictor`
    reads of a spec (``encoders``, ``in_dims``, ``dataset``, ``target``, ``class_names``) and the
    task's own fields (``meta``)."""

    task: str
    model: str
    meta: dict[str, Any]
    encoders: dict[str, dict[str, Any]]
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    class_names: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> dict[str, str]:
        return dict(MODALITIES[self.task])

    @property
    def in_dims(self) -> dict[str, int]:  # the modalities it takes (Predictor reads the keys)
        return dict.fromkeys(MODALITIES[self.task], 0)

    @property
    def outputs(self) -> dict[str, str]:
        """Modality -> the encoder output the model reads."""
        return {m: e.get("output", "pooled") for m, e in self.encoders.items()}


# ---------------------------------------------------------------------------- which model
def _candidates(task: str, folder: Path) -> list[str]:
    if task == "captioning":
        return list(common.read_json(folder / "decoders.json", "list of trained decoders")["decoders"])
    if task == "vqa":
        return list(common.read_json(folder / "methods.json", "list of trained VQA models")["methods"])
    return ["dual_encoder"]


def finetuned_models(task: str, folder: Path) -> list[str]:
    """The names of the fine-tuned copies ``folder`` (a run's ``<task>/``) holds (``film_finetuned``)."""
    try:
        names = _candidates(task, folder)
    except TaskInputError:
        return []
    return [f"{n}{FINETUNED}" for n in names if common.finetuned_files(folder, n)["model"].is_file()]


def best_finetuned(task: str, folder: Path) -> str | None:
    """The fine-tuned copy best on validation (None: the run fine-tuned no encoder for ``task``)."""
    tuned = finetuned_models(task, folder)
    if not tuned:
        return None
    files = {n: common.finetuned_files(folder, n.removesuffix(FINETUNED))["model"] for n in tuned}
    return common.pick_best({n: common.validation_score(bundle.read_meta(f)) for n, f in files.items()})


def choose_model(task: str, folder: Path, name: str | None = None) -> tuple[str, Path]:
    """(name, weights) of the model to export: ``name`` (``<model>_finetuned``: its fine-tuned
    copy), or the one best on validation (the choice 05 makes, among the frozen-feature models)."""
    try:
        names = _candidates(task, folder)
    except TaskInputError as e:
        raise BundleError(f"{e}; the run has no trained {task} models (04 trains the profile's tasks)") from e
    if name:
        tuned = finetuned_models(task, folder)
        if name not in names + tuned:
            raise BundleError(f"{folder}: no {task} model {name!r}; the run has {names + tuned}")
        if name in tuned:
            return name, common.finetuned_files(folder, name.removesuffix(FINETUNED))["model"]
        return name, folder / f"{name}.safetensors"
    scores = {n: common.validation_score(bundle.read_meta(folder / f"{n}.safetensors")) for n in names}
    best = common.pick_best(scores)
    return best, folder / f"{best}.safetensors"


# ---------------------------------------------------------------------------- building
def build_model(task: str, meta: dict[str, Any], tokenizer=None) -> torch.nn.Module:
    """The task model ``meta`` describes (its weights not loaded)."""
    if task == "captioning":
        from fusionkit.tasks.captioning import build_captioner

        return build_captioner(meta["decoder"], tokenizer, feat_dim=meta["feat_dim"], pooled_dim=meta["pooled_dim"],
                               init_embeddings=bool(meta.get("init_embeddings")), **meta["hparams"])  # fmt: skip
    if task == "vqa":
        from fusionkit.tasks.vqa.model import build_vqa_net

        return build_vqa_net(meta)
    from fusionkit.tasks.retrieval import DualEncoder

    return DualEncoder(meta["image_dim"], meta["text_dim"], **meta["hparams"])


def tokenizer_of(folder: Path, meta: dict[str, Any]):
    """A captioning bundle's tokenizer: its vocabulary, MiniLM's word pieces (the bundle's copy if it has one)."""
    from fusionkit.tasks.captioning import CaptionTokenizer

    copy = folder / "tokenizer"
    try:
        return CaptionTokenizer.from_state_dict(meta["tokenizer"], path=copy if copy.is_dir() else None)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        raise BundleError(f"{folder / 'model.json'}: the caption tokenizer cannot be rebuilt ({e})") from e


# ---------------------------------------------------------------------------- export
def export_task(
    run: str | os.PathLike,
    out: str | os.PathLike,
    task: str,
    *,
    standalone: bool = False,
    features_index: str | os.PathLike | None = None,
    model: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of ``run``'s trained ``task`` model (``model``: which; default the best on
    validation) to the folder ``out``; returns ``out/model.safetensors``. ``metrics``: the run's
    numbers (those named ``<task>/...`` are kept)."""
    if task not in KINDS:
        raise BundleError(f"--task {task!r}; expected one of {tuple(KINDS)}")
    run = Path(run)
    folder = run / task
    index_path = Path(features_index) if features_index else run / "features.json"
    if not folder.is_dir():
        raise BundleError(f"{folder}: no trained {task} models in the run (04 trains the profile's tasks)")
    try:
        index = read_task_index(index_path)
        require_task(index, task, index_path)
    except (TaskInputError, FileNotFoundError) as e:
        raise BundleError(str(e)) from e
    name, weights = choose_model(task, folder, model)
    meta = bundle.read_meta(weights)
    fields = {k: v for k, v in meta.items() if k not in _RUN_FIELDS}
    blocks = _finetuned_blocks(task, folder, name, meta)
    tok = None
    if task == "captioning":
        # a run's captioner records its decoder kind as its kind (its fine-tuned copy: "captioner")
        fields["decoder"] = name.removesuffix(FINETUNED) if blocks else meta["kind"]
        tok = common.read_json(folder / "tokenizer.json", "caption tokenizer")
        fields["tokenizer"] = tok
        feats = index["tasks"]["features"]["images"]
        if meta.get("pooled_dim") and feats.get("pooled_from") != "grid-mean":
            raise BundleError(
                f"{index_path}: the captioner reads a pooled vector that is not the mean of the image grid "
                f"({feats.get('pooled_from')}); exporting it is not supported"
            )
    outputs = {"captioning": {"image": "grid"}, "vqa": {"image": meta.get("image", "grid"), "question": "pooled"},
               "retrieval": {"image": "pooled", "text": "pooled"}}[task]  # fmt: skip
    encoders, entries = {}, {}
    for m, kind in MODALITIES[task].items():
        rec = index["tasks"].get(f"{kind}_encoder") or {}
        spec = rec.get("build")
        if not spec:
            raise BundleError(f"{index_path}: the task features record no rebuildable {kind} encoder")
        options = spec.get("kwargs") or {}
        fine_tuned = m in blocks  # built: its trained blocks are laid over it below
        if bundle.pretrained(rec.get("identity") or {}) and not standalone and not fine_tuned:  # not built
            entries[m] = bundle.encoder_entry(None, kind, spec["name"], options, None, outputs[m], "machine",
                                              identity=rec["identity"])  # fmt: skip
            continue
        try:
            enc = task_encoder(index, kind, index_path)  # identity-checked: the one that made the features
        except TaskInputError as e:
            raise BundleError(str(e)) from e
        encoders[m] = enc
        entries[m] = bundle.encoder_entry(enc, kind, spec["name"], options, None, outputs[m],
                                          bundle.weights_mode(enc, standalone))  # fmt: skip
    # the model as the task saved it, rebuilt: weights that do not fit are refused here, not in predict
    check = build_model(task, fields, tokenizer_of(folder, {"tokenizer": tok}) if tok else None)
    bundle.load_weights(check, weights)
    matcher = _matcher(task, folder, blocks)
    if matcher is not None:
        fields["rerank"] = {"method": matcher[1]["method"], "k": int(matcher[1].get("rerank_k", 10)),
                            "mix": float(matcher[1].get("mix", 0.0))}  # fmt: skip
    dataset = {"name": index.get("dataset"), "manifest_hash": index.get("manifest_hash"), "task": task,
               "captions_file": Path(index["tasks"].get("captions_file") or "").name or None}  # fmt: skip
    kept = {k: v for k, v in (metrics or {}).items() if k.startswith(f"{task}/")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.save_encoders(out, encoders, {m: entries[m] for m in encoders})
    try:
        bundle.add_finetuned_blocks(out, entries, encoders, blocks, _trained(meta))
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{common.finetuned_files(folder, name.removesuffix(FINETUNED))['encoders']}: {e}") from e
    if standalone and task == "captioning":
        src = tokenizer_of(folder, {"tokenizer": tok}).path
        dst = out / "tokenizer"
        dst.mkdir(exist_ok=True)
        for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / f).is_file():
                shutil.copyfile(src / f, dst / f)
    if matcher is not None:  # before model.json, which names it
        bundle.save(out / MATCHER, matcher[0], "matcher", {k: v for k, v in matcher[1].items() if k not in _RUN_FIELDS})
    fields.update(task=task, model=name, encoders=entries, dataset=dataset, metrics=kept)
    return bundle.save(out / "model.safetensors", check, KINDS[task], fields)


def _matcher(task: str, folder: Path, blocks: dict) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """The run's re-ranking matcher for a retrieval bundle of the frozen-feature dual encoder (it
    scores the frozen encoders' features; a fine-tuned copy's are others): (model, its description)."""
    if task != "retrieval" or blocks or not (folder / MATCHER).is_file():
        return None
    from fusionkit.tasks.retrieval import load_matcher

    return load_matcher(folder / MATCHER)


def _finetuned_blocks(task: str, folder: Path, name: str, meta: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Modality -> the trained encoder blocks of fine-tuned copy ``name`` (empty for a frozen-feature
    model): the ``image.*`` / ``text.*`` tensors its task saved, for the task's modality of that kind."""
    if not name.endswith(FINETUNED) or "finetune" not in meta:
        return {}
    path = common.finetuned_files(folder, name.removesuffix(FINETUNED))["encoders"]
    if not path.is_file():
        raise BundleError(f"{path}: the fine-tuned encoders' blocks of {name!r} are missing; train the task again")
    saved = bundle.load_tensors(path)
    out = {}
    for m, kind in MODALITIES[task].items():
        prefix = _BLOCK_PREFIX[kind]
        state = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        if state:
            out[m] = state
    if not out:
        raise BundleError(f"{path}: no trained encoder blocks for {name!r} ({task} modalities {MODALITIES[task]})")
    return out


def _trained(meta: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned copy trained of its encoders (its FinetuneConfig's blocks and augmentation)."""
    cfg = meta.get("finetune") or {}
    return {k: cfg[k] for k in ("image_blocks", "text_blocks", "augment") if k in cfg}


# ---------------------------------------------------------------------------- loading
def task_of(doc: dict[str, Any]) -> str | None:
    """The task of a bundle description (None: a classifier or regressor)."""
    for task, kind in KINDS.items():
        if doc.get("kind") == kind and doc.get("task") == task:
            return task
    return None


def load_task(path: str | os.PathLike) -> tuple[torch.nn.Module, TaskSpec, Any]:
    """An exported task bundle (folder or its ``model.safetensors``): (model in eval mode, its
    spec, the captioning tokenizer / VQA answer vocabulary / retrieval's re-ranking matcher or
    None); BundleError naming the file
    for a missing, corrupted or incompatible one, or one the run wrote (not exported)."""
    weights = bundle.weights_file(path)
    doc = bundle.read_meta(weights)
    task = task_of(doc)
    mp = bundle.meta_path(weights)
    if task is None:
        raise BundleError(f"{mp}: a {doc.get('kind')!r} model, not a captioning, VQA or retrieval bundle")
    if not doc.get("encoders"):
        raise BundleError(
            f"{mp}: no encoders recorded (a run's {task} model, not exported); make a bundle with "
            f"`fusionkit export RUN --task {task} --out DIR`"
        )
    folder = weights.parent
    try:
        spec = TaskSpec(task, str(doc["model"]), {k: v for k, v in doc.items() if k not in ("encoders", "dataset",
                        "metrics")}, {k: dict(v) for k, v in doc["encoders"].items()}, dict(doc.get("dataset") or {}),
                        dict(doc.get("metrics") or {}))  # fmt: skip
        extra = None
        if task == "captioning":
            extra = tokenizer_of(folder, doc)
        elif task == "vqa":
            from fusionkit.tasks.vqa import AnswerVocab

            extra = AnswerVocab.from_state_dict(doc["vocab"])
        elif doc.get("rerank"):  # retrieval: the matcher that re-ranks the gallery's top candidates
            from fusionkit.tasks.retrieval import load_matcher

            extra = load_matcher(folder / MATCHER)[0]
        model = build_model(task, spec.meta, extra if task == "captioning" else None)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{mp}: missing or malformed field {e}") from e
    return bundle.load_weights(model, weights), spec, extra


__all__ = [
    "FINETUNED",
    "KINDS",
    "MODALITIES",
    "TaskSpec",
    "build_model",
    "choose_model",
    "export_task",
    "finetuned_models",
    "load_task",
    "task_of",
]
