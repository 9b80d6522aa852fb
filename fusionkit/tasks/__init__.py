"""The tasks beside classification - captioning, VQA, retrieval - on the feature cache.

* :mod:`fusionkit.tasks.features` - what 02 caches for them and records in the feature index;
* :mod:`fusionkit.tasks.run` - ``train_task`` (04) and ``evaluate_task`` (05), dispatching to
  each task package's ``task`` module (its ``DEFAULTS``, ``EPOCHS``, ``train``, ``evaluate``);
* :mod:`fusionkit.tasks.captioning` - tokenizer, caption data, Transformer / Show-Attend-Tell
  decoders, training, greedy/beam search, caption metrics, nearest-neighbour baseline, attention;
* :mod:`fusionkit.tasks.vqa` - VQA tables, answer vocabulary, the official VQA accuracy, the
  answer classifier (``VQANet``);
* :mod:`fusionkit.tasks.retrieval` - ranks and Recall@K in blocks, dual encoder, ridge baseline,
  re-ranking with a fusion matching model;
* :mod:`fusionkit.tasks.transfer` - fine-tuning the last encoder blocks with a task model;
* :mod:`fusionkit.tasks.common` - what they share (setup errors, bundle I/O, options,
  fine-tuning plumbing, ``TaskResult``).

A task package's face (``fusionkit.tasks.captioning`` etc.) re-exports its models, data and
metrics but not its ``task`` module, so importing one task does not pay for the others.
"""

from fusionkit.data.problems import InputReport, TaskInputError

__all__ = ["InputReport", "TaskInputError"]
