"""Task modules: heads, losses and metrics per task, all working on feature tensors.

* :mod:`fusionkit.tasks.captioning` - tokenizer, caption data, Transformer / Show-Attend-Tell
  decoders, training, greedy/beam decoding, nearest-neighbour baseline, attention maps;
* :mod:`fusionkit.tasks.metrics` - caption metrics through pycocoevalcap;
* :mod:`fusionkit.tasks.vqa` - VQA tables, answer vocabulary, the official VQA accuracy, models;
* :mod:`fusionkit.tasks.retrieval` - Recall@K / ranks in blocks, dual encoder, ridge baseline,
  re-ranking with a fusion matching model.

Submodules are imported on demand (``from fusionkit.tasks import retrieval``) so that importing
one task does not pay for the others.
"""

from fusionkit.data.problems import InputReport, TaskInputError

__all__ = ["InputReport", "TaskInputError"]
