"""The retrieval task on a feature index: the dual encoder, the ridge baseline and the re-ranking
matcher (and a fine-tuned copy) into ``<out>/retrieval/``, evaluated on the test split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusionkit import bundle
from fusionkit.fusion import available
from fusionkit.tasks import common
from fusionkit.tasks import retrieval as R
from fusionkit.tasks import transfer as T
from fusionkit.tasks.captioning import CaptionDataset
from fusionkit.tasks.features import caption_data, load_rows, split_images, task_encoder, text_key
from fusionkit.tasks.retrieval import retrieval_split
from fusionkit.train import seed_everything

Tensor = torch.Tensor


DEFAULTS: dict[str, Any] = {
    # dual encoder (chosen on the validation RSUM of the default and flickr8k-800 datasets)
    "embed_dim": 256,
    "hidden": 0,  # 0: linear projection heads (an MLP head, e.g. 512, overfits a few hundred images)
    "dropout": 0.1,
    "input_dropout": 0.5,  # dropout on the features entering both heads
    "text_head": "project",  # "identity": text features as they are, only the image head learns
    "lr": 3e-4,
    "batch_size": 512,
    "weight_decay": 1e-2,
    "patience": 10,
    "ridge_alphas": (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0),
    **common.finetune_defaults(common.FINETUNE.batch_size),  # 64 images per step, each with one random caption
    # continue an interrupted training from <out>/retrieval/{dual,finetune}_checkpoint.pt
    "resume": False,
    "matcher": "film",  # fusion method of the re-ranking model ("" : no re-ranking)
    "matcher_epochs": 20,
    "matcher_hidden": 128,
    "rerank_k": 10,
    # final re-ranking score = matcher logit + mix x dual-encoder cosine; mix picked on validation RSUM
    "rerank_mix": (0.0, 1.0, 3.0, 10.0, 30.0, 100.0),
    "hard_k": 10,
    "n_negatives": 4,
}


EPOCHS = 100


def retrieval_splits(index, index_path, splits: Sequence[str]):

    data = caption_data(index, index_path, need_grid=False)
    files = index["tasks"]["features"]["captions"]["files"]["pooled"]
    out = {}
    for sp in splits:
        _, texts, _ = data.caps.pairs(sp)
        txt, _ = load_rows(files, [text_key(t) for t in texts], "caption features")
        out[sp] = retrieval_split(data.caps, sp, data.ids[sp], data.pooled[sp], txt)
    return data, out


def train(index, index_path, out, seed, epochs, method, opts, progress) -> dict[str, Any]:

    matcher_method = opts["matcher"] if method is None else method
    if isinstance(matcher_method, (list, tuple)):
        raise ValueError("retrieval: method is one matcher fusion method (or 'none')")
    if matcher_method in ("", "none", None):
        matcher_method = ""
    else:
        if matcher_method not in available():
            raise ValueError(
                f"retrieval: unknown matcher fusion method {matcher_method!r}; expected one of {available()}"
            )
    _, sp = retrieval_splits(index, index_path, ("train", "val"))
    train, val = sp["train"], sp["val"]
    idim, tdim = int(train.image.shape[-1]), int(train.text.shape[-1])
    seed_everything(seed)
    dual_hp = {
        "embed_dim": int(opts["embed_dim"]),
        "hidden": int(opts["hidden"]) or None,
        "dropout": float(opts["dropout"]),
        "input_dropout": float(opts["input_dropout"]),
        "text_head": str(opts["text_head"]),
    }
    dual = R.DualEncoder(idim, tdim, **dual_hp)
    cfg = R.RetrievalTrainConfig(**common.train_settings(opts, epochs, seed))
    with common.training_checkpoint(out / "dual_checkpoint.pt", opts) as ckpt:
        res = R.train_dual_encoder(dual, train, val, cfg, show_progress=common.bars_on(progress), checkpoint=ckpt,
                                   resume=bool(opts["resume"]))  # fmt: skip
    bundle.save(out / "dual_encoder.safetensors", dual, "dual_encoder", {
        "task": "retrieval", "image_dim": idim, "text_dim": tdim, "hparams": dual_hp, "options": opts,
        "seed": seed, "train": res.as_dict(), "temperature": float(1 / dual.scale().detach()),
    })  # fmt: skip
    ridge, ridge_scores = R.fit_ridge(train, val, alphas=tuple(float(a) for a in opts["ridge_alphas"]))
    ridge_path = out / "ridge.safetensors"
    bundle.save(
        ridge_path,
        {"weight": ridge.weight, "bias": ridge.bias, "x_mean": ridge.x_mean},
        "ridge",
        {"task": "retrieval", "alpha": ridge.alpha, "val_rsum": {str(k): v for k, v in ridge_scores.items()}},
    )
    summary: dict[str, Any] = {
        **common.run_summary("dual", "val_rsum", res, temperature=float(1 / dual.scale().detach())),
        "ridge/alpha": ridge.alpha,
        "ridge/val_rsum": ridge_scores[ridge.alpha],
    }
    summary.update(finetune(index, index_path, out, seed, dual, dual_hp, opts, sp, progress))
    mpath = out / "matcher.safetensors"
    if matcher_method:
        seed_everything(seed)
        m_hp = {"hidden": int(opts["matcher_hidden"]), "dropout": float(opts["dropout"])}
        matcher = R.build_matcher(matcher_method, idim, tdim, **m_hp)
        mcfg = R.MatcherTrainConfig(
            epochs=int(opts["matcher_epochs"]),
            rerank_k=int(opts["rerank_k"]),
            hard_k=int(opts["hard_k"]),
            n_negatives=int(opts["n_negatives"]),
            seed=seed,
        )
        mres = R.train_matcher(matcher, dual, train, val, mcfg, show_progress=common.bars_on(progress))
        mixes = [float(m) for m in (opts["rerank_mix"] if isinstance(opts["rerank_mix"], (list, tuple))
                                    else [opts["rerank_mix"]])]  # fmt: skip
        mix_rsum = {m: R.rerank(dual, matcher, val, k=int(opts["rerank_k"]), mix=m)["after"]["rsum"] for m in mixes}
        mix = max(mixes, key=lambda m: (mix_rsum[m], -mixes.index(m)))
        bundle.save(mpath, matcher, "matcher", {
            "task": "retrieval", "method": matcher_method, "image_dim": idim, "text_dim": tdim, "hparams": m_hp,
            "rerank_k": int(opts["rerank_k"]), "mix": mix, "val_rsum_by_mix": {str(k): v for k, v in mix_rsum.items()},
            "seed": seed, "train": mres.as_dict(),
        })  # fmt: skip
        summary.update({
            f"matcher/{matcher_method}/best_val_rsum": mres.best_rsum,
            f"matcher/{matcher_method}/best_epoch": mres.best_epoch,
            f"matcher/{matcher_method}/train_time_s": round(mres.train_time_s, 2),
            f"matcher/{matcher_method}/mix": mix,
            f"matcher/{matcher_method}/val_rsum_at_mix": mix_rsum[mix],
        })  # fmt: skip
    else:
        for p in (mpath, mpath.with_suffix(".json")):
            if p.exists():
                p.unlink()
    return summary


def finetune(index, index_path, out: Path, seed, dual, dual_hp, opts, sp, progress) -> dict[str, Any]:
    """Transfer learning (see :mod:`fusionkit.tasks.transfer`): fine-tune the last blocks of the
    encoders with a copy of the frozen-feature dual encoder; save the heads, the encoders'
    trained blocks and the fine-tuned features of val / test (evaluation reads those)."""
    import copy

    files = common.finetuned_files(out, "dual_encoder")
    ib, tb = int(opts["finetune_image_blocks"]), int(opts["finetune_text_blocks"])
    if not ib and not tb:
        common.remove_files(files.values())
        return {}
    img_enc = task_encoder(index, "image", index_path)
    txt_enc = task_encoder(index, "text", index_path) if tb else None
    show = common.bars_on(progress)
    data, test_sp = retrieval_splits(index, index_path, ("test",))
    sp = {**sp, **test_sp}
    images = {k: T.decode_for_training(img_enc, split_images(index, v.image_ids), show) for k, v in sp.items()}
    texts = {}
    for k, v in sp.items():
        _, caps, _ = data.caps.pairs(k)
        if len(caps) != v.n_texts:
            raise common.TaskSetupError(f"{index_path}: {k}: {len(caps)} captions but {v.n_texts} caption features")
        texts[k] = list(caps) if tb else v.text
    cfg = common.finetune_config(opts, seed)
    ft = copy.deepcopy(dual)
    from dataclasses import asdict

    with common.training_checkpoint(files["checkpoint"], opts) as ckpt:
        res = T.finetune_dual_encoder(
            ft, img_enc, images["train"], texts["train"], sp["train"].text_to_image,
            images["val"], texts["val"], sp["val"].text_to_image, cfg,
            text_encoder=txt_enc, checkpoint=ckpt, resume=bool(opts["resume"]), show_progress=show,
        )  # fmt: skip
        bundle.save(files["model"], ft, "dual_encoder", {
            "task": "retrieval", "image_dim": int(sp["train"].image.shape[-1]),
            "text_dim": int(sp["train"].text.shape[-1]),
            "hparams": dual_hp, "finetune": asdict(cfg), "seed": seed, "train": res.as_dict(),
            "image_encoder": index["tasks"]["image_encoder"]["name"],
            "text_encoder": index["tasks"]["text_encoder"]["name"],
        })  # fmt: skip
        common.save_encoder_blocks(files["encoders"], img_enc, txt_enc)
        feats = {}
        for k in ("val", "test"):
            feats[f"{k}/image"] = T.encode_images(img_enc, images[k]).contiguous()
            feats[f"{k}/text"] = (T.encode_texts(txt_enc, texts[k]) if tb else sp[k].text).float().contiguous()
        bundle.save_tensors(files["features"], feats)
    return common.finetune_summary("finetuned", "val_rsum", res, cfg)


def evaluate(index, index_path, folder: Path, n_examples: int, progress: bool) -> common.TaskResult:
    import pandas as pd

    _, sp = retrieval_splits(index, index_path, ("test",))
    test = sp["test"]
    meta = bundle.read_meta(folder / "dual_encoder.safetensors")
    dual = bundle.load_weights(
        R.DualEncoder(meta["image_dim"], meta["text_dim"], **meta["hparams"]), folder / "dual_encoder.safetensors"
    )
    rpath = folder / "ridge.safetensors"
    rmeta = bundle.read_meta(rpath)
    t = bundle.load_tensors(rpath)
    ridge = R.RidgeMap(rmeta["alpha"])
    ridge.weight, ridge.bias, ridge.x_mean = t["weight"], t["bias"], t["x_mean"]
    rows = []
    dual_m = R.recall_at_k(R.encode_split(dual, test), test.text_to_image)
    rows.append({"model": "dual_encoder", **dual_m})
    rows.append({"model": "ridge", **R.recall_at_k(ridge.embeddings(test), test.text_to_image)})
    ft_files = common.finetuned_files(folder, "dual_encoder")
    if ft_files["model"].is_file():
        fm = bundle.read_meta(ft_files["model"])
        ft = bundle.load_weights(R.DualEncoder(fm["image_dim"], fm["text_dim"], **fm["hparams"]), ft_files["model"])
        f = bundle.load_tensors(ft_files["features"])
        if len(f["test/image"]) != test.n_images or len(f["test/text"]) != test.n_texts:
            raise common.TaskSetupError(f"{folder}: fine-tuned features do not match the test split; train again")
        with torch.inference_mode():
            ftm = R.recall_at_k((ft.encode_image(f["test/image"]), ft.encode_text(f["test/text"])), test.text_to_image)
        ft_label = common.finetune_label(fm["finetune"])
        rows.append({"model": f"dual_encoder fine-tuned ({ft_label})", **ftm, "encoders": ft_label})
        summary_ft = {f"retrieval/finetuned/{k}": float(v) for k, v in ftm.items()}
    else:
        summary_ft = {}
    raw_dim_ok = test.image.shape[-1] == test.text.shape[-1]
    if raw_dim_ok:
        rows.append({"model": "raw_cosine", **R.recall_at_k((test.image, test.text), test.text_to_image)})
    mpath = folder / "matcher.safetensors"
    summary_extra = {}
    if mpath.is_file():
        matcher, mm = R.load_matcher(mpath)
        mix = float(mm.get("mix", 0.0))
        rr = R.rerank(dual, matcher, test, k=int(mm.get("rerank_k", 10)), mix=mix)
        label = f"dual_encoder+rerank({mm['method']}, top {rr['k']}" + (f", mix {mix:g})" if mix else ")")
        rows.append({"model": label, **rr["after"]})
        summary_extra = {f"retrieval/rerank/{k}": float(v) for k, v in rr["after"].items()}
    metrics = pd.DataFrame(rows)
    metrics["encoders"] = metrics["encoders"].fillna("frozen") if "encoders" in metrics else "frozen"
    order = ["model"] + [c for c in metrics.columns if c != "model"]
    metrics = metrics[order]
    summary = {f"retrieval/dual/{k}": float(v) for k, v in dual_m.items()}
    summary.update({f"retrieval/ridge/{k}": float(v) for k, v in rows[1].items() if k != "model"})
    summary.update(summary_extra)
    summary.update(summary_ft)
    tables = {}
    if n_examples:
        tables["samples"] = retrieval_samples(index, dual, test, n_examples)
    return common.TaskResult("retrieval", metrics, tables, {"recall": metrics}, summary)


def retrieval_samples(index, dual, test, n: int):
    """For the first ``n`` test images: the image, its top-3 captions under the dual encoder and
    whether each is one of the image's own."""
    import pandas as pd

    data_caps = None
    ie, te = R.encode_split(dual, test)
    _, idx = R.topk_similarity(ie[:n], te, 3)
    feats = index["tasks"]

    data_caps = CaptionDataset.read_karpathy(Path(feats["captions_file"]), on_error=feats.get("on_error", "raise"),
                                             image_root=Path(feats["media_root"]))  # fmt: skip
    _, texts, _ = data_caps.pairs("test")
    texts = [texts[j] for j in range(len(texts))]
    rows = []
    media_root = Path(feats["media_root"])
    for r in range(min(n, test.n_images)):
        iid = test.image_ids[r]
        row = {"image": str(media_root / data_caps.files[iid]), "image_id": iid}
        for k, j in enumerate(idx[r].tolist()):
            row[f"top{k + 1}"] = texts[j]
            row[f"top{k + 1}_correct"] = bool(int(test.text_to_image[j]) == r)
        rows.append(row)
    return pd.DataFrame(rows)
