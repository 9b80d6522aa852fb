"""The VQA task on a feature index: train one answer classifier per fusion method (and fine-tuned
copies) into ``<out>/vqa/``, and evaluate them on the test split with the table's metric (VQA v2's
accuracy, or exact match for VQA-RAD), overall, per answer type, question type and organ.

Baselines (option ``baselines``): the majority answer of the training questions per answer type,
and the question-only model (:class:`~fusionkit.tasks.vqa.model.QuestionOnlyNet`: the question
encoder's features and the same answer classifier, no image), trained like the fusion models;
neither is a candidate for the best model. On VQA-RAD (the annotation files' ``benchmark``)
evaluation adds the table ``vqarad_vs_published``: every model's closed / open / all accuracy next
to :data:`fusionkit.data.vqarad.PUBLISHED`, each row saying what it was evaluated on."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from fusionkit import bundle
from fusionkit.data.vqarad import PUBLISHED
from fusionkit.fusion import available
from fusionkit.tasks import common
from fusionkit.tasks import transfer as T
from fusionkit.tasks.features import (
    image_features,
    image_paths,
    load_rows,
    split_images,
    task_encoder,
    text_key,
    vqa_tables,
)
from fusionkit.tasks.transfer import encode_texts
from fusionkit.tasks.vqa import AnswerVocab, vqa_accuracy
from fusionkit.tasks.vqa.metrics import answer_normaliser
from fusionkit.tasks.vqa.model import QUESTION_ONLY, QuestionOnlyNet, VQANet, build_vqa_net
from fusionkit.training import Step, TrainResult, adamw, fit, seed_everything, warmup_cosine

Tensor = torch.Tensor


DEFAULTS: dict[str, Any] = {
    "methods": ("film",),  # fusion method(s); several are trained and compared
    "image": "grid",  # "grid" (regions) or "pooled"
    "hidden": 128,
    "context_layers": 1,  # Transformer layers over the regions (per image) before the fusion
    "heads": 4,
    "glimpses": 2,  # question-guided attention glimpses over the regions (0: the fusion sees every region)
    "pca_dim": 0,  # whiten the image features to this many principal components first (0: off)
    "dropout": 0.1,
    "lr": 2e-3,
    "images_per_batch": 16,  # each batch: these images with all their questions (~5 each)
    "weight_decay": 1e-2,
    "label_smoothing": 0.0,
    "patience": 8,
    "top_k": 1000,
    "baselines": False,  # also the majority answer per answer type and the question-only model (no image)
    "resume": False,  # continue an interrupted training from <out>/vqa/<method>[_finetune]_checkpoint.pt
    **common.finetune_defaults(16),  # 16 images per step, each with all its questions
}


EPOCHS = 40


@dataclass
class VQAArrays:
    images: Tensor  # (N_img, L, D) or (N_img, D)
    image_keys: list[str]
    questions: Tensor  # (Q, Dq)
    q_image: Tensor  # (Q,) image row of each question
    labels: Tensor  # (Q,) answer index, -1 outside the vocabulary
    table: Any  # the VQATable (rows = questions)


def vqa_keys(table) -> list[str]:
    """The image rows of a VQA split: its distinct image keys, sorted."""
    return sorted({r.image_key for r in table.records})


def vqa_arrays(index, index_path, table, vocab, image_kind: str) -> VQAArrays:
    keys = vqa_keys(table)
    grid, pooled = image_features(index, keys)
    if image_kind == "grid":
        if grid is None:
            raise common.TaskSetupError(f"{index_path}: no image grid features for VQA (use image='pooled')")
        images = grid
    elif image_kind == "pooled":
        images = pooled
    else:
        raise ValueError(f"image={image_kind!r}; expected 'grid' or 'pooled'")
    files = index["tasks"]["features"]["questions"]["files"]["pooled"]
    q, _ = load_rows(files, [text_key(t) for t in table.questions], "question features")
    row = {k: i for i, k in enumerate(keys)}
    q_image = torch.as_tensor([row[r.image_key] for r in table.records], dtype=torch.long)
    for name, x in (("image", images), ("question", q)):
        if not torch.isfinite(x).all():
            raise common.TaskSetupError(f"{index_path}: {name} features have NaN/inf values")
    return VQAArrays(images.float(), keys, q.float(), q_image, table.labels(vocab), table)


@torch.inference_mode()
def vqa_logits(model: VQANet, a: VQAArrays, batch_images: int = 64) -> Tensor:
    model.eval()
    out = torch.empty(len(a.labels), 0)
    chunks = []
    order = []
    for s in range(0, len(a.images), batch_images):
        rows = torch.arange(s, min(s + batch_images, len(a.images)))
        qs = ((a.q_image >= s) & (a.q_image < s + len(rows))).nonzero().flatten()
        if not len(qs):
            continue
        chunks.append(model(a.images[rows], a.questions[qs], a.q_image[qs] - s).float())
        order.append(qs)
    if not chunks:
        return out
    logits = torch.cat(chunks)
    res = torch.empty_like(logits)
    res[torch.cat(order)] = logits
    return res


def fit_vqa(
    model: VQANet, train: VQAArrays, val: VQAArrays, opts, epochs: int, seed: int, progress: bool, checkpoint=None
) -> TrainResult:
    """Batches of ``images_per_batch`` images with all their (answerable) questions: the image
    branch runs once per image. AdamW, warm-up + cosine, label smoothing, early stopping on the
    validation accuracy of the top answer (questions outside the vocabulary count as wrong).
    ``checkpoint``: training state after every epoch; ``opts["resume"]``: continue from it."""
    ok = train.labels >= 0
    by_image: list[list[int]] = [[] for _ in range(len(train.images))]
    for qi, (img, good) in enumerate(zip(train.q_image.tolist(), ok.tolist())):
        if good:
            by_image[img].append(qi)
    has_q = torch.as_tensor([i for i, b in enumerate(by_image) if b], dtype=torch.long)
    if not len(has_q):
        raise common.TaskSetupError("VQA: no training question has its answer in the vocabulary")
    bpi = max(1, int(opts["images_per_batch"]))
    steps = epochs * math.ceil(len(has_q) / bpi)
    opt = adamw(model.parameters(), lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]))
    sched = warmup_cosine(opt, steps, int(0.05 * steps))

    def batches(gen: torch.Generator):
        perm = has_q[torch.randperm(len(has_q), generator=gen)]
        for s in range(0, len(perm), bpi):
            yield perm[s : s + bpi]

    def step(imgs: Tensor, gen: torch.Generator) -> Step:
        qs = torch.as_tensor([q for i in imgs.tolist() for q in by_image[i]], dtype=torch.long)
        local = torch.full((len(train.images),), -1, dtype=torch.long)
        local[imgs] = torch.arange(len(imgs))
        logits = model(train.images[imgs], train.questions[qs], local[train.q_image[qs]])
        y = train.labels[qs]
        loss = F.cross_entropy(logits, y, label_smoothing=float(opts["label_smoothing"]))
        return Step(loss, len(qs), sums={"train_acc": int((logits.argmax(1) == y).sum())})

    def evaluate() -> dict[str, float]:
        vl = vqa_logits(model, val)
        val_acc = float((vl.argmax(1) == val.labels).float().mean()) if len(vl) else float("nan")
        return {"val_acc": val_acc, "lr": sched.get_last_lr()[0]}

    return fit(model, opt, sched, batches, step, evaluate, epochs=epochs, seed=seed, monitor="val_acc",
               patience=int(opts["patience"]), grad_clip=5.0, checkpoint=checkpoint, resume=bool(opts["resume"]),
               show_progress=common.bars_on(progress), desc="vqa epochs")  # fmt: skip


def train(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:

    methods = common.pick_methods(method, opts["methods"], available(), "vqa fusion methods")
    tables = vqa_tables(index, index_path)
    vocab = AnswerVocab.build(tables["train"], top_k=int(opts["top_k"]), metric=tables["train"].metric)
    train = vqa_arrays(index, index_path, tables["train"], vocab, opts["image"])
    val = vqa_arrays(index, index_path, tables["val"], vocab, opts["image"])
    image_dim = int(train.images.shape[-1])
    q_dim = int(train.questions.shape[-1])
    n_regions = int(train.images.shape[1]) if train.images.dim() == 3 else 0
    decoded: dict[str, Tensor] = {}  # the splits' images, decoded once for every method's fine-tuning
    summary: dict[str, Any] = {
        "n_answers": len(vocab),
        "answer_coverage_val": vocab.coverage(tables["val"]),
        "n_train_questions": int((train.labels >= 0).sum()),
    }
    trained = methods + ([QUESTION_ONLY] if opts["baselines"] else [])
    for m in trained:
        seed_everything(seed)
        hp = {"n_regions": n_regions, "hidden": int(opts["hidden"]), "dropout": float(opts["dropout"]),
              "context_layers": int(opts["context_layers"]), "heads": int(opts["heads"]),
              "glimpses": int(opts["glimpses"]), "pca_dim": int(opts["pca_dim"])}  # fmt: skip
        if m == QUESTION_ONLY:
            hp = {"hidden": hp["hidden"], "dropout": hp["dropout"]}
            model = QuestionOnlyNet(q_dim, len(vocab), **hp)
        else:
            model = VQANet(m, image_dim, q_dim, len(vocab), **hp)
        model.fit_pca(train.images)
        with common.training_checkpoint(out / f"{m}_checkpoint.pt", opts) as ckpt:
            res = fit_vqa(model, train, val, opts, epochs, seed, progress, checkpoint=ckpt)
        meta = {
            "task": "vqa",
            "method": m,
            "image_dim": image_dim,
            "question_dim": q_dim,
            "num_answers": len(vocab),
            "hparams": hp,
            "image": opts["image"],
            "vocab": vocab.state_dict(),
            "options": opts,
            "seed": seed,
            "train": res.as_dict(),
            "params": model.num_parameters(),
        }
        bundle.save(out / f"{m}.safetensors", model, "vqa", meta)
        if m != QUESTION_ONLY:  # the baseline has no image encoder to fine-tune
            summary.update(finetune(index, index_path, out, m, model, meta, train, val, tables, opts, seed, progress,
                                         decoded))  # fmt: skip
        summary.update(common.run_summary(m, "val_accuracy", res, params=model.num_parameters()))
    common.write_json(out / "methods.json", {"methods": methods, "baselines": bool(opts["baselines"])})
    return summary


def encode_distinct(encoder, texts: Sequence[str]) -> Tensor:
    """Pooled features of ``texts``, each distinct text encoded once."""

    uniq = sorted(set(texts))
    row = {t: i for i, t in enumerate(uniq)}
    return encode_texts(encoder, uniq)[torch.as_tensor([row[t] for t in texts], dtype=torch.long)]


def finetune(index, index_path, out: Path, method: str, model, meta, train: VQAArrays, val: VQAArrays, tables,
                  opts, seed, progress, decoded: dict[str, Tensor]) -> dict[str, Any]:  # fmt: skip
    """Transfer learning for one VQA model (see :mod:`fusionkit.tasks.transfer`): a copy of the
    frozen-feature model fine-tuned with the last blocks of the image and / or question encoder.
    Each step: ``finetune_batch_size`` images with all their answerable questions. Saves the
    copy, the encoders' trained blocks and the fine-tuned test features (``<method>_finetuned*``)."""
    import copy
    import dataclasses

    from torch.nn import functional as F

    files = common.finetuned_files(out, method)
    cfg = common.finetune_config(opts, seed)
    if not cfg.image_blocks and not cfg.text_blocks:
        common.remove_files(files.values())
        return {}
    img_enc = task_encoder(index, "image", index_path)
    txt_enc = task_encoder(index, "text", index_path) if cfg.text_blocks else None
    show = common.bars_on(progress)
    keys = {"train": train.image_keys, "val": val.image_keys, "test": vqa_keys(tables["test"])}
    for sp, k in keys.items():
        if sp not in decoded:
            decoded[sp] = T.decode_for_training(img_enc, split_images(index, k), show)
    kind = meta["image"]
    by_image: list[list[int]] = [[] for _ in range(len(train.image_keys))]
    for qi, (img, y) in enumerate(zip(train.q_image.tolist(), train.labels.tolist())):
        if y >= 0:
            by_image[img].append(qi)
    rows_with_q = torch.as_tensor([i for i, b in enumerate(by_image) if b], dtype=torch.long)
    smoothing = float(opts["label_smoothing"])
    model_ft = copy.deepcopy(model)

    def batch_loss(feats, rows, gen):
        qs = torch.as_tensor([q for r in rows.tolist() for q in by_image[r]], dtype=torch.long)
        local = torch.as_tensor([j for j, r in enumerate(rows.tolist()) for _ in by_image[r]], dtype=torch.long)
        if txt_enc is not None:
            q = txt_enc(txt_enc.collate([train.table.questions[int(i)] for i in qs]))["pooled"]
        else:
            q = train.questions[qs]
        logits = model_ft(feats[kind], q, local)
        return F.cross_entropy(logits, train.labels[qs], label_smoothing=smoothing), len(qs)

    def arrays(a: VQAArrays, feats: dict[str, Tensor]) -> VQAArrays:
        q = encode_distinct(txt_enc, a.table.questions) if txt_enc is not None else a.questions
        return dataclasses.replace(a, images=feats[kind], questions=q)

    def validate(feats):
        logits = vqa_logits(model_ft, arrays(val, feats))
        return {"val_acc": float((logits.argmax(1) == val.labels).float().mean()) if len(logits) else float("nan")}

    from dataclasses import asdict

    with common.training_checkpoint(files["checkpoint"], opts) as ckpt:
        res = T.finetune_on_images(
            model_ft, img_enc, decoded["train"], decoded["val"], batch_loss, validate, cfg, monitor="val_acc",
            train_rows=rows_with_q, text_encoder=txt_enc, checkpoint=ckpt, resume=bool(opts["resume"]),
            show_progress=show, desc="vqa fine-tune epochs",
        )  # fmt: skip
        bundle.save(files["model"], model_ft, "vqa", {**meta, "finetune": asdict(cfg), "train": res.as_dict(),
                                         "test_keys": keys["test"],
                                         "image_encoder": index["tasks"]["image_encoder"]["name"],
                                         "text_encoder": index["tasks"]["text_encoder"]["name"]})  # fmt: skip
        common.save_encoder_blocks(files["encoders"], img_enc, txt_enc)
        f = T.encode_image_features(img_enc, decoded["test"])
        feats = {"test/image": f[kind].contiguous()}
        if txt_enc is not None:
            feats["test/questions"] = encode_distinct(txt_enc, tables["test"].questions).contiguous()
        bundle.save_tensors(files["features"], feats)
    return common.finetune_summary(f"{method}_finetuned", "val_accuracy", res, cfg)


def majority_by_answer_type(table, metric: str) -> dict[str, str]:
    """The most frequent (normalised) training answer of each answer type (ties: alphabetical),
    with ``""`` for the most frequent answer overall (a type the training questions lack)."""
    from collections import Counter

    norm = answer_normaliser(metric)
    by_type: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for r in table.records:
        a = norm(r.multiple_choice_answer)
        by_type.setdefault(r.answer_type, Counter())[a] += 1
        overall[a] += 1

    def top(c: Counter[str]) -> str:
        return min(c, key=lambda a: (-c[a], a))

    return {"": top(overall), **{t: top(c) for t, c in sorted(by_type.items())}}


def majority_predictions(train_table, table, metric: str) -> dict[Any, str]:
    """The majority baseline's answer to each question of ``table``: its answer type's majority answer."""
    maj = majority_by_answer_type(train_table, metric)
    return {r.question_id: maj.get(r.answer_type, maj[""]) for r in table.records}


def published_table(rows: list[dict[str, Any]], table) -> Any:
    """fusionkit's closed / open / all accuracy (percent) per model next to the published VQA-RAD
    numbers (:data:`fusionkit.data.vqarad.PUBLISHED`); ``evaluated_on`` says which split each row
    comes from, so numbers from a split carved from the training questions are never mistaken
    for official test numbers."""
    import pandas as pd

    ours = (
        "official test (testset.json)"
        if table.info.get("official_test")
        else "validation, not comparable (test split carved from trainset.json by image)"
    )
    out = []
    for r in rows:
        out.append({"model": r["model"], "kind": r["kind"], "closed": 100 * r.get("answer_type/CLOSED", float("nan")),
                    "open": 100 * r.get("answer_type/OPEN", float("nan")), "all": 100 * r["accuracy"],
                    "n": r["n"], "evaluated_on": ours})  # fmt: skip
    for p in PUBLISHED:
        out.append({"model": p.method, "kind": "published", "closed": p.closed, "open": p.open,
                    "all": float("nan"), "n": 451, "evaluated_on": f"official test ({p.source})"})  # fmt: skip
    return pd.DataFrame(out)


def evaluate(index, index_path, folder: Path, n_examples: int, progress: bool) -> common.TaskResult:
    import pandas as pd

    trained = common.read_json(folder / "methods.json", "list of trained VQA models")
    methods = trained["methods"]
    tables = vqa_tables(index, index_path)
    table = tables["test"]
    metric = table.metric
    rows, per_type = [], []
    arrays: dict[str, VQAArrays] = {}
    results, val_scores = {}, {}

    def score(name: str, kind: str, preds: dict[Any, str], extra: dict[str, Any]) -> dict[str, Any]:
        acc = vqa_accuracy(preds, table.annotations(), metric=metric)
        results[name] = (acc, preds)
        row = {"model": name, "kind": kind, "accuracy": acc["overall"]}
        for key, col in (("per_answer_type", "answer_type"), ("per_question_type", "question_type"),
                         ("per_image_organ", "image_organ")):  # fmt: skip
            for k, v in acc.get(key, {}).items():
                row[f"{col}/{k}"] = v
                per_type.append({"model": name, "kind": col, "type": k, "accuracy": v})
        row.update(n=acc["n"], **extra)
        rows.append(row)
        return acc

    # (name, weights): each method, then its fine-tuned copy, then the question-only baseline
    entries = [(m, folder / f"{m}.safetensors") for m in methods]
    entries += [(f"{m}_finetuned", f) for m in methods if (f := common.finetuned_files(folder, m)["model"]).is_file()]
    if trained.get("baselines"):
        entries.append((QUESTION_ONLY, folder / f"{QUESTION_ONLY}.safetensors"))
    for m, weights in entries:
        meta = bundle.read_meta(weights)
        vocab = AnswerVocab.from_state_dict(meta["vocab"])
        key = json.dumps([meta["image"], meta["vocab"]["answers"]])
        if key not in arrays:
            arrays[key] = vqa_arrays(index, index_path, table, vocab, meta["image"])
        a = arrays[key]
        if "finetune" in meta:
            if meta.get("test_keys") != a.image_keys:
                raise common.TaskSetupError(
                    f"{weights}: fine-tuned on other test images than this index's; train again"
                )
            f = bundle.load_tensors(common.finetuned_files(folder, m.removesuffix("_finetuned"))["features"])
            a = dataclasses.replace(a, images=f["test/image"], questions=f.get("test/questions", a.questions))
        model = bundle.load_weights(build_vqa_net(meta), weights)
        answers = vocab.decode_logits(vqa_logits(model, a))
        preds = {r.question_id: ans for r, ans in zip(table.records, answers)}
        baseline = m == QUESTION_ONLY
        encoders = common.finetune_label(meta["finetune"]) if "finetune" in meta else "frozen"
        score(m, "baseline" if baseline else "fusion", preds,
              {"params": model.num_parameters(), "encoders": "question only" if baseline else encoders,
               "val_accuracy": common.validation_score(meta)})  # fmt: skip
        if not baseline:
            val_scores[m] = common.validation_score(meta)
    if trained.get("baselines"):
        val_preds = majority_predictions(tables["train"], tables["val"], metric)
        val_acc = vqa_accuracy(val_preds, tables["val"].annotations(), metric=metric)["overall"]
        score("majority", "baseline", majority_predictions(tables["train"], table, metric),
              {"params": 0, "encoders": "none: majority answer per answer type", "val_accuracy": val_acc})  # fmt: skip
    metrics = pd.DataFrame(rows)
    if not trained.get("baselines"):  # every row is a fusion model
        metrics = metrics.drop(columns="kind")
    best = common.pick_best(val_scores)  # chosen on validation, among the fusion models, reported on test
    metrics["best"] = metrics["model"] == best
    breakdown = pd.DataFrame(per_type)
    tables_out = {}
    for col in ("question_type", "answer_type", "image_organ"):
        part = breakdown[breakdown.kind == col]
        if len(part):
            pivot = part.pivot(index="type", columns="model", values="accuracy")
            tables_out[f"per_{col}"] = pivot.rename_axis(col).reset_index()
    by_qtype = breakdown[breakdown.kind == "question_type"].pivot(index="type", columns="model", values="accuracy")
    if table.info.get("benchmark") == "vqa-rad":
        tables_out["vqarad_vs_published"] = published_table(rows, table)
    acc, preds = results[best]
    if n_examples:
        paths = image_paths(index, table)
        sample_rows = []
        for r in table.records[:n_examples]:
            sample_rows.append({"image": paths.get(r.image_key, ""), "question_id": r.question_id,
                                "question": r.question, "answer": r.multiple_choice_answer,
                                "prediction": preds[r.question_id], "accuracy": acc["per_question"][r.question_id],
                                "question_type": r.question_type, "model": best})  # fmt: skip
        tables_out["samples"] = pd.DataFrame(sample_rows)
    plots = {"per_question_type": by_qtype}
    summary = {f"vqa/{r['model']}/accuracy": float(r["accuracy"]) for r in rows}
    summary["vqa/best/accuracy"] = float(acc["overall"])
    for key, col in (("per_question_type", "question_type"), ("per_answer_type", "answer_type"),
                     ("per_image_organ", "image_organ")):  # fmt: skip
        for k, v in acc.get(key, {}).items():
            summary[f"vqa/best/{col}/{k}"] = float(v)
    notes = []
    if table.info.get("benchmark") == "vqa-rad" and not table.info.get("official_test"):
        notes.append("VQA-RAD: the test split is carved from the training questions by image (no testset.json): "
                     "validation numbers, not comparable with the published ones")  # fmt: skip
    return common.TaskResult("vqa", metrics, tables_out, plots, summary, notes)
