"""The captioning task on a feature index: train the decoders (and their fine-tuned copies) into
``<out>/captioning/``, and evaluate them on the test split next to the nearest-neighbour baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle
from fusionkit.data.base import SPLITS
from fusionkit.tasks import captioning as C
from fusionkit.tasks import common
from fusionkit.tasks import transfer as T
from fusionkit.tasks.captioning.metrics import caption_metrics
from fusionkit.tasks.features import caption_data, split_images, task_encoder
from fusionkit.train import seed_everything

Tensor = torch.Tensor


DEFAULTS: dict[str, Any] = {
    "decoders": ("transformer", "lstm"),
    "max_len": 0,  # 0: from the training captions (95th percentile of pieces + BOS/EOS, at most 40)
    "min_count": 1,  # vocabulary: pieces seen at least this often in the training captions
    "d_model": 256,
    "layers": 2,
    "heads": 4,
    "dropout": 0.1,
    "lstm_dropout": 0.3,
    "att_dim": 256,
    "alpha_c": 1.0,
    "init_embeddings": False,  # word embeddings from MiniLM's
    "use_pooled": True,  # the pooled vector as one more memory slot / in the LSTM's initial state
    "lr": 5e-4,
    "batch_size": 64,
    "weight_decay": 1e-2,
    "label_smoothing": 0.1,
    "patience": 5,
    "val_max_images": 300,
    "beam_size": 3,
    "length_penalty": 1.0,
    "nn_k": 1,
    "resume": False,  # continue an interrupted training from <out>/captioning/<decoder>[_finetune]_checkpoint.pt
    **common.finetune_defaults(32, text=False),  # 32 images per step, each with all its captions
}


EPOCHS = 30


def auto_max_len(tok, captions: Sequence[str], cap: int = 40) -> int:
    import numpy as np

    lengths = [len(p) + 2 for p in tok._tk.encode_batch(list(captions), add_special_tokens=False)]
    return int(min(cap, max(8, math.ceil(float(np.percentile(lengths, 95))))))


def train(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:

    kinds = common.pick_methods(method, opts["decoders"], ("transformer", "lstm"), "captioning decoders")
    if method in ("both",):
        kinds = ["transformer", "lstm"]
    data = caption_data(index, index_path)
    caps = data.caps
    train_caps = caps.captions("train")
    tok = C.CaptionTokenizer.build(train_caps, max_len=64, min_count=int(opts["min_count"]))
    max_len = int(opts["max_len"]) or auto_max_len(tok, train_caps)
    tok = C.CaptionTokenizer(tok.itos, max_len=max_len, path=tok.path)
    tok.save(out / "tokenizer.json")
    pooled = {sp: (data.pooled[sp] if opts["use_pooled"] else None) for sp in SPLITS}
    splits = {sp: C.caption_split(caps, sp, tok, data.ids[sp], data.grid[sp], pooled[sp]) for sp in ("train", "val")}
    feat_dim = int(splits["train"].grid.shape[-1])
    pooled_dim = int(data.pooled["train"].shape[-1]) if opts["use_pooled"] else None
    if int(opts["finetune_image_blocks"]):
        splits["test"] = C.caption_split(caps, "test", tok, data.ids["test"], data.grid["test"], pooled["test"])
    decoded: dict[str, Tensor] = {}  # the split's images, decoded once for every decoder's fine-tuning
    summary: dict[str, Any] = {
        "vocab_size": tok.vocab_size,
        "max_len": max_len,
        "n_train_images": len(splits["train"]),
        "n_train_captions": int(len(splits["train"].tokens)),
        "n_truncated": int(splits["train"].n_truncated),
    }
    for kind in kinds:
        if kind == "transformer":
            hp = {"d_model": opts["d_model"], "heads": opts["heads"], "layers": opts["layers"], "dropout": opts["dropout"],
                  "max_regions": max(256, int(splits["train"].grid.shape[1]))}  # fmt: skip
        else:
            hp = {"d_model": opts["d_model"], "att_dim": opts["att_dim"], "dropout": opts["lstm_dropout"],
                  "alpha_c": opts["alpha_c"]}  # fmt: skip
        seed_everything(seed)
        model = C.build_captioner(
            kind, tok, feat_dim=feat_dim, pooled_dim=pooled_dim, init_embeddings=bool(opts["init_embeddings"]), **hp
        )
        cfg = C.CaptionTrainConfig(
            **common.train_settings(opts, epochs, seed),
            label_smoothing=float(opts["label_smoothing"]),
            val_max_images=int(opts["val_max_images"]) or None,
        )
        with common.training_checkpoint(out / f"{kind}_checkpoint.pt", opts) as ckpt:
            res = C.train_captioner(model, splits["train"], splits["val"], tok, cfg,
                                    show_progress=common.bars_on(progress), checkpoint=ckpt,
                                    resume=bool(opts["resume"]))  # fmt: skip
        meta = {
            "task": "captioning",
            "kind": kind,
            "feat_dim": feat_dim,
            "pooled_dim": pooled_dim,
            "hparams": hp,
            "init_embeddings": bool(opts["init_embeddings"]),
            "tokenizer": "tokenizer.json",
            "decode": {"beam_size": int(opts["beam_size"]), "length_penalty": float(opts["length_penalty"])},
            "nn_k": int(opts["nn_k"]),
            "options": opts,
            "seed": seed,
            "train": res.as_dict(),
            "params": model.num_parameters(),
        }
        bundle.save(out / f"{kind}.safetensors", model, "captioner", meta)
        summary.update(finetune(index, index_path, out, kind, model, meta, tok, splits, opts, seed,
                                            progress, decoded))  # fmt: skip
        summary.update(common.run_summary(kind, "val_cider", res, params=model.num_parameters()))
    common.write_json(out / "decoders.json", {"decoders": kinds})
    return summary


def finetune(
    index, index_path, out: Path, kind: str, model, meta, tok, splits, opts, seed, progress, decoded: dict[str, Tensor]
) -> dict[str, Any]:
    """Transfer learning for one decoder (see :mod:`fusionkit.tasks.transfer`): a copy of the
    frozen-feature decoder fine-tuned with the last blocks of the image encoder; saves it, the
    encoder's trained blocks and the fine-tuned test features (``<kind>_finetuned*``)."""
    import copy

    files = common.finetuned_files(out, kind)
    cfg = common.finetune_config(opts, seed)
    if not cfg.image_blocks:
        common.remove_files(files.values())
        return {}
    enc = task_encoder(index, "image", index_path)
    show = common.bars_on(progress)
    for sp in ("train", "val", "test"):
        if sp not in decoded:
            decoded[sp] = T.decode_for_training(enc, split_images(index, splits[sp].image_ids), show)
    ft = copy.deepcopy(model)
    from dataclasses import asdict

    with common.training_checkpoint(files["checkpoint"], opts) as ckpt:
        res = T.finetune_captioner(
            ft, enc, splits["train"], decoded["train"], splits["val"], decoded["val"], tok, cfg,
            label_smoothing=float(opts["label_smoothing"]), val_max_images=int(opts["val_max_images"]) or None,
            checkpoint=ckpt, resume=bool(opts["resume"]), show_progress=show,
        )  # fmt: skip
        bundle.save(files["model"], ft, "captioner", {**meta, "finetune": asdict(cfg), "train": res.as_dict(),
                                   "image_encoder": index["tasks"]["image_encoder"]["name"],
                                   "test_ids": list(splits["test"].image_ids)})  # fmt: skip
        common.save_encoder_blocks(files["encoders"], enc)
        f = T.encode_image_features(enc, decoded["test"])
        bundle.save_tensors(files["features"], {f"test/{k}": v for k, v in f.items()})
    return common.finetune_summary(f"{kind}_finetuned", "val_cider", res, cfg)


def evaluate(index, index_path, folder: Path, n_examples: int, progress: bool) -> common.TaskResult:
    import pandas as pd

    kinds = common.read_json(folder / "decoders.json", "list of trained decoders")["decoders"]
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise common.TaskSetupError(f"{tok_path}: not found; run train_task('captioning', ...) first")
    tok = C.CaptionTokenizer.load(tok_path)
    data = caption_data(index, index_path)
    caps = data.caps
    metas = {k: bundle.read_meta(folder / f"{k}.safetensors") for k in kinds}
    use_pooled = any(m["pooled_dim"] for m in metas.values())
    test = C.caption_split(
        caps, "test", tok, data.ids["test"], data.grid["test"], data.pooled["test"] if use_pooled else None
    )
    refs = test.reference_dict()
    rows, preds_all, per_image_all = [], {}, {}
    models, splits = {}, {}
    notes: list[str] = []
    # (name, decoder kind, meta, weights, test grid, test pooled): each decoder, then its fine-tuned copy
    entries = [(k, k, m, folder / f"{k}.safetensors", test.grid, test.pooled) for k, m in metas.items()]
    for kind in metas:
        files = common.finetuned_files(folder, kind)
        if files["model"].is_file():
            fm = bundle.read_meta(files["model"])
            if fm.get("test_ids") != list(test.image_ids):
                raise common.TaskSetupError(
                    f"{files['features']}: fine-tuned features of other test images; train again"
                )
            f = bundle.load_tensors(files["features"])
            entries.append((f"{kind}_finetuned", kind, fm, files["model"], f["test/grid"], f.get("test/pooled")))
    finetuned: dict[str, str] = {}
    for name_, kind, meta, weights, grid, pooled in entries:
        # init_embeddings decides the embedding table's shape (384-d MiniLM rows + a projection)
        model = C.build_captioner(kind, tok, feat_dim=meta["feat_dim"], pooled_dim=meta["pooled_dim"],
                                  init_embeddings=bool(meta.get("init_embeddings")), **meta["hparams"])  # fmt: skip
        bundle.load_weights(model, weights)
        models[name_] = model
        if "finetune" in meta:
            finetuned[name_] = common.finetune_label(meta["finetune"])
        split = C.CaptionSplit(test.image_ids, grid, pooled if meta["pooled_dim"] else None, test.references,
                               test.tokens, test.caption_image, test.n_truncated)  # fmt: skip
        splits[name_] = split
        dec = meta.get("decode", {})
        for how, kw in (("greedy", {"method": "greedy"}),
                        ("beam", {"method": "beam", "beam_size": int(dec.get("beam_size", 3)),
                                  "length_penalty": float(dec.get("length_penalty", 1.0))})):  # fmt: skip
            name = f"{name_}/{how}"
            preds = C.predict_captions(model, tok, split, **kw)
            m = caption_metrics(refs, preds, per_image=True)
            notes += [n for n in m.pop("notes", []) if n not in notes]
            per_image_all[name] = m.pop("per_image")
            preds_all[name] = preds
            rows.append({"model": name, **{k: v for k, v in m.items() if k != "n_images"}, "n_images": m["n_images"],
                         "encoders": finetuned.get(name_, "frozen")})  # fmt: skip
    nn_k = int(next(iter(metas.values())).get("nn_k", 1)) if metas else 1
    nn_preds = C.nearest_neighbour_captions(
        data.pooled["train"],
        data.ids["train"],
        caps.reference_dict("train"),
        data.pooled["test"],
        data.ids["test"],
        k=nn_k,
    )
    m = caption_metrics(refs, nn_preds, per_image=True)
    m.pop("notes", None)
    per_image_all["nearest_neighbour"] = m.pop("per_image")
    preds_all["nearest_neighbour"] = nn_preds
    rows.append(
        {
            "model": "nearest_neighbour",
            **{k: v for k, v in m.items() if k != "n_images"},
            "n_images": m["n_images"],
            "encoders": "frozen",
        }
    )
    metrics = pd.DataFrame(rows)
    # the best model: the decoder (frozen or fine-tuned) with the best validation CIDEr, decoded
    # greedily as validation did; never chosen by its test score
    val = {f"{name_}/greedy": common.validation_score(meta) for name_, _, meta, *_ in entries}
    metrics["val_score"] = [val.get(m.rsplit("/", 1)[0] + "/greedy") for m in metrics.model]
    best = common.pick_best(val) if val else "nearest_neighbour"
    metrics["best"] = metrics["model"] == best
    image_paths = {i: str(data.media_root / caps.files[i]) for i in test.image_ids}
    table = C.caption_table(refs, preds_all[best], per_image_all[best], image_paths, ids=test.image_ids)
    table.insert(3, "nearest_neighbour", [nn_preds[i] for i in test.image_ids])
    table.insert(1, "model", best)
    tables = {"samples": table}
    plots = {}
    if n_examples and models:
        name_ = best.split("/")[0]
        hw = tuple(index["tasks"]["features"]["images"].get("grid_hw") or ())
        maps = C.attention_maps(models[name_], tok, splits[name_], n=n_examples, grid_hw=hw if len(hw) == 2 else None)
        plots["attention"] = (maps, image_paths)
    summary: dict[str, float] = {}
    for r in rows:
        for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"):
            if k in r:
                summary[f"captioning/{r['model']}/{k}"] = float(r[k])
    bm = metrics[metrics.model == best].iloc[0]
    nnm = metrics[metrics.model == "nearest_neighbour"].iloc[0]
    for k in ("BLEU-4", "CIDEr", "METEOR", "ROUGE-L"):
        summary[f"captioning/best/{k}"] = float(bm[k])
        summary[f"captioning/nn_baseline/{k}"] = float(nnm[k])
    return common.TaskResult("captioning", metrics, tables, plots, summary, notes)
