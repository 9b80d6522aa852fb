"""Visual question answering as answer classification over the most frequent answers.

::

    train_tab = load_shapes_vqa(root, "train")          # or load_vqa(questions.json, annotations.json, image_key=...)
    vocab     = AnswerVocab.build(train_tab, top_k=1000)
    q_feats   = text_encoder(train_tab.questions)       # notebooks encode train_tab.questions
    train     = vqa_split_data(train_tab, vocab, image_ids, image_feats, q_feats)      # SplitData
    model     = build_vqa_model("film", image_dim, question_dim, len(vocab))
    fusionkit.train.train(model, train, val, TrainConfig(...))
    evaluate_vqa(model, test_data, test_tab, vocab)     # VQA accuracy, per answer / question type

Metric (:func:`vqa_score`, :func:`vqa_accuracy`): the VQA v2 evaluation (``vqaEval.py`` of
GT-Vision-Lab/VQA), ported line by line: the predicted answer is normalised
(:func:`process_punctuation` then :func:`process_digit_article`: punctuation, number words ->
digits, articles dropped, contractions restored); the ground-truth answers get the punctuation
step only, and only when the annotators disagree (the official code's behaviour - VQA's stored
answers are already normalised); then ``acc = mean over the 10 leave-one-annotator-out subsets
of min(1, #matching answers among the other 9 / 3)``. With a single ground-truth answer (a plain
classification dataset) the score is exact match after normalising both sides. Scores are
fractions in [0, 1] (the official script prints percentages rounded to 2 decimals).

Model (:func:`build_vqa_model`): ``fusionkit.model.build_model`` with modalities ``"image"``
(pooled ``(N, D)`` or grid ``(N, L, D)``) and ``"question"`` (pooled or token states), any
registered fusion method, and a classifier over the answer vocabulary. It trains with the
package's loop (``fusionkit.train.train`` on :class:`~fusionkit.train.SplitData`): early
stopping on validation accuracy of the top answer, which equals VQA accuracy when annotators
agree. Questions whose answer is outside the vocabulary are left out of training and validation
data (``vqa_split_data(..., answerable_only=True)``) but kept for the test score, where they count
as the model gets them.

Bad input: questions without an annotation or with an empty answer list, duplicated question ids,
annotations for unknown questions, empty question text, images without a key or without
features: :class:`~fusionkit.data.problems.TaskInputError` naming the file and the record, or
(``on_error="skip"``) dropped and listed in ``table.report``.
"""

from fusionkit.tasks.vqa.data import (
    AnswerVocab,
    VQARecord,
    VQATable,
    image_keys_from_karpathy,
    load_shapes_vqa,
    load_vqa,
)
from fusionkit.tasks.vqa.metrics import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqa_score,
)
from fusionkit.tasks.vqa.model import VQANet

__all__ = [
    "AnswerVocab",
    "VQANet",
    "VQARecord",
    "VQATable",
    "image_keys_from_karpathy",
    "load_shapes_vqa",
    "load_vqa",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "vqa_accuracy",
    "vqa_score",
]
