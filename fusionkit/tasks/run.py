"""The three tasks end to end, as 04 and 05 call them (02 caches their features:
:mod:`fusionkit.tasks.features`)::

    summary = train_task("captioning", features_index, run_dir, seed=seed)      # 04_train
    res = evaluate_task("captioning", features_index, run_dir, n_examples=8)    # 05_evaluate
    res.metrics, res.tables["samples"], res.plots["attention"], res.summary

Each task is a package (``captioning``, ``vqa``, ``retrieval``) whose ``task`` module holds its
options (``DEFAULTS``), its maximum epochs (``EPOCHS``), ``train(...)`` and ``evaluate(...)``;
this module checks the arguments, dispatches and writes ``summary.json`` / ``test_metrics.json``.

Training (:func:`train_task`) and evaluation (:func:`evaluate_task`)
    ``out_dir/<task>/``: ``*.safetensors`` weights + a ``.json`` each (what rebuilds the model,
    the training history, the hyper-parameters) and ``summary.json``. Early stopping on the task's
    validation metric (CIDEr-D of greedy captions; VQA accuracy of the top answer; RSUM), best state
    restored before saving. ``evaluate_task`` loads the checkpoints and scores the *test* split:

    captioning  Transformer and Show-Attend-Tell decoders, greedy and beam, plus the nearest-neighbour
                baseline: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, PTB tokenised); a table of
                test images (path, captions, references, per-image scores); attention maps.
    vqa         every trained fusion method: VQA accuracy overall, per answer type and per question type.
    retrieval   dual encoder vs ridge map: R@1/5/10 both directions, medr, meanr, RSUM; the fusion
                matcher's re-ranking of the dual encoder's top-k (before / after).

Transfer learning (``finetune_image_blocks`` / ``finetune_text_blocks`` > 0, every task)
    After the model trained on frozen features, a copy of it is fine-tuned together with the last
    blocks of the encoder(s) that made the features (rebuilt from the index, checked by identity),
    on augmented training images (:mod:`fusionkit.tasks.transfer`), early-stopped on the same
    validation metric. The copy, the encoders' trained blocks and the fine-tuned test features are
    saved next to the frozen model (``<model>_finetuned*``); ``evaluate_task`` reports both. A
    training run without fine-tuning removes them, so evaluation never reports a stale model.
    Captioning fine-tunes the image encoder only (its decoder reads word pieces, not the text
    encoder); VQA the image encoder and / or the question encoder; retrieval either or both.

Training and evaluation run on :func:`fusionkit.runtime.work_threads` intra-op threads: the cores
this process may use (affinity, cgroup quota, a Ray trial's CPUs), never more than torch is set to.
Progress bars honour ``FUSIONKIT_NO_PROGRESS`` (``fusionkit.progress``).

Several tasks at once (:func:`train_tasks`, what 04 calls)
    The task models are small enough that a CPU step is bound by the number of ops more than by
    arithmetic, so two cores train two tasks side by side (one thread each) faster than one task
    after the other on two threads. ``workers`` processes (``spawn``; 0: as many as the tasks and
    the cores allow) each train one task at a time on ``available_cpus() // workers`` threads.
    The thread count is part of a task's training, as in the comparison: the same ``workers`` on
    the same cores gives the same models. A task that fails does not stop the others; the first
    failure is raised, naming its task, once they have all finished.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from fusionkit.runtime import available_cpus, cpu_threads, tune_allocator, work_threads
from fusionkit.tasks.captioning import task as captioning_task
from fusionkit.tasks.common import TaskResult, TaskSetupError, task_dir, task_options, write_json
from fusionkit.tasks.features import TASKS, read_task_index, require_task
from fusionkit.tasks.retrieval import task as retrieval_task
from fusionkit.tasks.vqa import task as vqa_task

Tensor = torch.Tensor

#: each task's module: its ``DEFAULTS`` (options), ``EPOCHS``, ``train(...)`` and ``evaluate(...)``
TASK_MODULES = {"captioning": captioning_task, "vqa": vqa_task, "retrieval": retrieval_task}


def train_task(
    task: str,
    index_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    epochs: int | None = None,
    method: str | Sequence[str] | None = None,
    progress: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """Train ``task``'s models on the cached features, early-stopped on its validation metric
    with the best state restored, and save them in ``out_dir/<task>/`` (safetensors + json).
    Returns a summary of numbers (also written to ``out_dir/<task>/summary.json``).

    ``epochs``: maximum epochs (default: the task module's ``EPOCHS``). ``method``: captioning - the
    decoder(s) ``"transformer"``, ``"lstm"`` (default both); vqa - the fusion method(s) (default
    ``"film"``; a list trains and compares several); retrieval - the re-ranking matcher's fusion
    method (default ``"film"``; ``"none"`` skips re-ranking). Further keywords: the task's options
    in :data:`CAPTION_DEFAULTS`, :data:`VQA_DEFAULTS`, :data:`RETRIEVAL_DEFAULTS`.

    Every model's training state is checkpointed after each epoch
    (``<out_dir>/<task>/<model>_checkpoint.pt``, removed when it finishes): after an interrupt,
    the same call with ``resume=True`` continues from the last epoch and saves the same model an
    uninterrupted run saves."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs={epochs!r}; expected a positive integer")
    index = read_task_index(index_path)
    require_task(index, task, index_path)
    opts = task_options(task, TASK_MODULES[task].DEFAULTS, kw)
    tune_allocator()  # fusionkit.runtime: no page faults for every batch-sized tensor
    epochs = int(epochs or TASK_MODULES[task].EPOCHS)
    out = task_dir(out_dir, task)
    t0 = time.perf_counter()
    with cpu_threads(work_threads()):  # the cores this process may use (fusionkit.runtime)
        summary = TASK_MODULES[task].train(index, Path(index_path), out, seed, epochs, method, opts, progress)
    summary["train_time_s"] = round(time.perf_counter() - t0, 2)
    write_json(out / "summary.json", summary)
    return summary


def task_workers(n_tasks: int, workers: int = 0) -> int:
    """How many tasks :func:`train_tasks` trains at once: ``workers``, or for 0 as many as there are
    tasks and cores (:func:`fusionkit.runtime.available_cpus`)."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r}; expected an integer >= 0 (0: as many as the cores allow)")
    return max(1, min(n_tasks, workers or available_cpus()))


def _train_in_worker(task: str, index_path: str, out_dir: str, seed: int, threads: int, kw: dict[str, Any]):
    torch.set_num_threads(threads)  # work_threads() then gives this process its share of the cores
    return train_task(task, index_path, out_dir, seed=seed, progress=False, **kw)


def train_tasks(
    tasks: Sequence[str],
    index_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    workers: int = 0,
    on_done=None,
) -> dict[str, dict[str, Any]]:
    """:func:`train_task` for each of ``tasks`` (``options``: task -> its keywords), ``workers`` at
    a time in processes of their own (module docstring; 1: one after another in this process).
    Returns the summaries in the order of ``tasks``; ``on_done(task, summary)`` is called as each
    finishes."""
    options = {t: dict(options.get(t) or {}) for t in tasks} if options else {t: {} for t in tasks}
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    n = task_workers(len(tasks), workers)
    done: dict[str, dict[str, Any]] = {}
    if n == 1:
        for task in tasks:
            done[task] = train_task(task, index_path, out_dir, seed=seed, **options[task])
            if on_done is not None:
                on_done(task, done[task])
        return done
    threads = max(1, available_cpus() // n)
    errors: dict[str, BaseException] = {}
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, t, str(index_path), str(out_dir), seed, threads, options[t]): t
                   for t in tasks}  # fmt: skip
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                done[task] = fut.result()
            except BaseException as exc:  # noqa: BLE001 - the others go on; raised below with its task
                errors[task] = exc
                continue
            if on_done is not None:
                on_done(task, done[task])
    for task in tasks:
        if task in errors:
            exc = errors[task]
            try:
                named = type(exc)(f"{task} training failed: {exc}")
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                named = RuntimeError(f"{task} training failed: {exc!r}")
            raise named from exc
    return {t: done[t] for t in tasks}


def evaluate_task(
    task: str, index_path: str | os.PathLike, out_dir: str | os.PathLike, *, n_examples: int = 8, progress: bool = True
) -> TaskResult:
    """Load ``task``'s checkpoints from ``out_dir/<task>/`` and score them on the test split
    (see the module docstring); ``n_examples``: images in the attention-map figure (captioning) /
    rows of the sample tables."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(n_examples, int) or n_examples < 0:
        raise ValueError(f"n_examples={n_examples!r}; expected an integer >= 0")
    index = read_task_index(index_path)
    require_task(index, task, index_path)
    folder = Path(out_dir) / task
    if not folder.is_dir():
        raise TaskSetupError(f"{folder}: no trained {task} models here; run train_task({task!r}, ...) first")
    with cpu_threads(work_threads()):
        res = TASK_MODULES[task].evaluate(index, Path(index_path), folder, n_examples, progress)
    write_json(folder / "test_metrics.json", {"metrics": res.metrics.to_dict(orient="records"), "summary": res.summary})
    return res
