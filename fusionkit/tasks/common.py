"""What the three tasks share: the setup error, JSON and model-bundle I/O, option handling, and the
transfer-learning plumbing (defaults, configuration, where a fine-tuned copy's files live).

The tasks' result type is :class:`TaskResult` (what ``run.evaluate_task`` returns)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle
from fusionkit.bundle import json_default
from fusionkit.data import readers
from fusionkit.data.base import atomic_write_text, with_options
from fusionkit.data.problems import TaskInputError
from fusionkit.progress import progress_enabled
from fusionkit.tasks.transfer import FinetuneConfig as _FinetuneConfig
from fusionkit.tasks.transfer import trainable_state
from fusionkit.training import TrainResult

Tensor = torch.Tensor


class TaskSetupError(TaskInputError):
    """A task cannot run on this index / dataset / checkpoint folder; the message says why and what to do."""


def read_json(path: Path, what: str) -> Any:
    """A task's JSON file; ``what`` it is names a missing one."""
    if not path.is_file():
        raise TaskSetupError(f"{path}: {what} not found")
    return readers.read_json(path, error=TaskSetupError)


def write_json(path: Path, obj: Any) -> Path:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, default=json_default) + "\n")
    return path


def bars_on(progress: bool) -> bool:
    return bool(progress) and progress_enabled()


def pick_methods(method: str | Sequence[str] | None, default: Sequence[str], valid: Sequence[str] | None, what: str):
    if method is None or method == "" or method == "all" and valid is None:
        return list(default)
    if method == "all" and valid is not None:
        return list(valid)
    names = [method] if isinstance(method, str) else list(method)
    if valid is not None:
        bad = [m for m in names if m not in valid]
        if bad:
            raise ValueError(f"{what}: unknown {bad}; expected some of {list(valid)}")
    return names


def task_options(task: str, allowed: Mapping[str, Any], kw: Mapping[str, Any]) -> dict[str, Any]:
    """The task's options: its defaults ``allowed`` updated with ``kw`` (unknown keys refused)."""
    return with_options(f"train_task({task!r})", allowed, kw, error=TypeError)


def task_dir(out_dir, task: str) -> Path:
    d = Path(out_dir) / task
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def training_checkpoint(path: Path, opts: Mapping[str, Any]) -> Iterator[Path]:
    """The per-epoch training checkpoint of one model, for a ``with`` block that trains it and
    saves what it produced: on entry an existing one is kept for ``resume=True``, else (stale,
    from an earlier run) removed so that it can never be picked up by mistake; when the block
    finishes it is removed (nothing left to resume); when the block raises it stays, for a resume."""
    if not opts.get("resume") and path.exists():
        path.unlink()
    yield path
    path.unlink(missing_ok=True)


def train_settings(opts: Mapping[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    """The training settings a task's options share with the other tasks' (batch size, learning
    rate, weight decay, patience), typed, with ``epochs`` and ``seed``: keywords of the task's
    training config."""
    return {
        "epochs": epochs,
        "batch_size": int(opts["batch_size"]),
        "lr": float(opts["lr"]),
        "weight_decay": float(opts["weight_decay"]),
        "patience": int(opts["patience"]),
        "seed": seed,
    }


FINETUNE = _FinetuneConfig()


def finetune_defaults(batch_size: int, text: bool = True) -> dict[str, Any]:
    """The transfer-learning options every task shares (values from
    :class:`fusionkit.tasks.transfer.FinetuneConfig`, measured on flickr8k-800 retrieval).
    Fine-tuning runs after the frozen-feature model, starting from it; 0 blocks: frozen only.
    Slow on a CPU: EfficientNet-Lite0 with 1 block trained, 600 images: ~25 s per epoch on 2 cores."""
    d: dict[str, Any] = {"finetune_image_blocks": 0}  # last blocks of the image encoder trained
    if text:
        d["finetune_text_blocks"] = 0  # last transformer layers of the text encoder trained
    d.update({
        "augment": FINETUNE.augment,  # torchvision v2 augmentation of the training images when the image encoder trains
        "finetune_epochs": FINETUNE.epochs,
        "finetune_lr": FINETUNE.lr,  # the task model
        "encoder_lr": FINETUNE.encoder_lr,  # unfrozen encoder blocks
        "finetune_batch_size": batch_size,  # distinct images per step
        "finetune_patience": FINETUNE.patience,
    })  # fmt: skip
    return d


def finetune_config(opts: Mapping[str, Any], seed: int) -> _FinetuneConfig:
    """A task's transfer-learning options (:func:`_finetune_defaults`) as a FinetuneConfig."""
    return _FinetuneConfig(
        image_blocks=int(opts["finetune_image_blocks"]), text_blocks=int(opts.get("finetune_text_blocks", 0)),
        augment=bool(opts["augment"]), epochs=int(opts["finetune_epochs"]),
        batch_size=int(opts["finetune_batch_size"]), lr=float(opts["finetune_lr"]),
        encoder_lr=float(opts["encoder_lr"]), patience=int(opts["finetune_patience"]), seed=seed,
    )  # fmt: skip


def run_summary(prefix: str, metric: str, res: TrainResult, **extra: Any) -> dict[str, Any]:
    """The numbers ``train_task`` reports for one trained model (``prefix``: its name): its best
    validation ``metric``, best epoch, epochs run and training time, and ``extra`` ones."""
    return {
        f"{prefix}/best_{metric}": res.best_value,
        f"{prefix}/best_epoch": res.best_epoch,
        f"{prefix}/epochs_run": res.epochs_run,
        f"{prefix}/train_time_s": round(res.train_time_s, 2),
        **{f"{prefix}/{k}": v for k, v in extra.items()},
    }


def finetune_summary(prefix: str, metric: str, res: TrainResult, cfg: _FinetuneConfig) -> dict[str, Any]:
    """:func:`run_summary` of a fine-tuned model, with the encoder blocks it trained."""
    return run_summary(prefix, metric, res, image_blocks=cfg.image_blocks, text_blocks=cfg.text_blocks)


def finetuned_files(out: Path, stem: str) -> dict[str, Path]:
    """Where a fine-tuned copy of model ``stem`` lives: weights (+ json), the encoders' trained
    blocks, the fine-tuned test features, the per-epoch training checkpoint."""
    return {
        "model": out / f"{stem}_finetuned.safetensors",
        "meta": out / f"{stem}_finetuned.json",
        "encoders": out / f"{stem}_finetuned_encoders.safetensors",
        "features": out / f"{stem}_finetuned_features.safetensors",
        "checkpoint": out / f"{stem}_finetune_checkpoint.pt",
    }


def remove_files(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.exists():
            p.unlink()


def save_encoder_blocks(path: Path, image_encoder, text_encoder=None) -> None:
    """The trained blocks (and buffers) of the fine-tuned encoders, ``image.*`` / ``text.*``."""

    state = {f"image.{k}": v for k, v in trainable_state(image_encoder).items()}
    if text_encoder is not None:
        state.update({f"text.{k}": v for k, v in trainable_state(text_encoder).items()})
    bundle.save_tensors(path, state)


def validation_score(meta: Mapping[str, Any]) -> float:
    """The validation value a saved task model was early-stopped on (higher is better; a loss is
    negated), from its bundle's ``train`` record: what the tasks' "best" model is chosen by, so
    that nothing is chosen on the test split."""
    train = meta.get("train") or {}
    value = train.get("best_value", train.get("best_val_acc", train.get("best_rsum")))
    if value is None:
        raise TaskSetupError(
            f"model {meta.get('kind') or meta.get('method')!r}: its bundle records no validation value"
        )
    return -float(value) if str(train.get("monitor", "")).endswith("loss") else float(value)


def pick_best(scores: Mapping[str, float]) -> str:
    """The name with the highest validation score (ties: the first)."""
    if not scores:
        raise ValueError("no models to choose from")
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


def finetune_label(c: Mapping[str, Any]) -> str:
    """``"image last 1, text last 1, augmented"`` from a saved FinetuneConfig."""
    parts = [f"image last {c['image_blocks']}" if c["image_blocks"] else "",
             f"text last {c['text_blocks']}" if c.get("text_blocks") else ""]  # fmt: skip
    return ", ".join(x for x in parts if x) + (", augmented" if c["augment"] and c["image_blocks"] else "")


@dataclass
class TaskResult:
    """What ``run.evaluate_task`` returns: ``metrics`` one row per model / baseline (a ``model``
    column, then one column per metric), ``tables`` for W&B (``Tracker.log_table``; a column
    ``image`` holds image paths), ``plots`` what the task's figures draw
    (:func:`fusionkit.report.figures.task_figures`), ``summary`` numbers for the run summary."""

    task: str
    metrics: Any  # pandas.DataFrame
    tables: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
