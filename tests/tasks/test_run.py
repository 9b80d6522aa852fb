"""The task experiments end to end on a tiny shapes dataset: task features through the feature
cache (a re-run does no forward pass), what is skipped and why, training + checkpoints +
evaluation for captioning, VQA and retrieval, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fusionkit import workbook as wb
from fusionkit.data import shapes
from fusionkit.data.base import load_dataset
from fusionkit.data.problems import TaskInputError
from fusionkit.encoders import build_encoder
from fusionkit.index import FeatureIndex
from fusionkit.report import figures
from fusionkit.runtime import available_cpus
from fusionkit.tasks import features as F
from fusionkit.tasks import run
from fusionkit.tasks.common import TaskSetupError
from fusionkit.tasks.retrieval import task as retrieval_task

# tiny and fast: a random-init EfficientNet-Lite0 at 64 px (2 x 2 regions) and the real MiniLM
TINY_CAPTION = {"d_model": 32, "layers": 1, "heads": 2, "att_dim": 32, "val_max_images": 8, "batch_size": 32}
TINY_VQA = {"hidden": 32, "heads": 2, "images_per_batch": 8}
TINY_RETRIEVAL = {"embed_dim": 32, "hidden": 64, "matcher_epochs": 1, "matcher_hidden": 32}


@pytest.fixture(scope="module")
def encoders():
    return {
        "image": build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0),
        "text": build_encoder("text", "minilm"),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, encoders):
    """(dataset, index path, cache dir, workspace): 60 scenes, the index written by FeatureIndex.build
    (text only: the image modality is extracted by the task code at 64 px) and the task features."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("experiments")
    ds = shapes.generate(tmp / "shapes", n=60, image_size=64, progress=False)
    index = tmp / "features.json"
    cache = tmp / "cache"
    FeatureIndex.build(ds, {"text": "minilm"}, cache, ["pooled"], path=index, progress=False)
    F.extract_task_features(
        ds, index, F.TASKS, cache, image_encoder=encoders["image"], text_encoder=encoders["text"], progress=False
    )
    return ds, index, cache, tmp


def _no_forward(enc):
    def boom(*a, **k):
        raise AssertionError(f"{enc.name}: forward called on a warm cache")

    return boom


# ----------------------------------------------------------------------------------- features
def test_index_records_the_task_features_and_a_rerun_is_a_cache_hit(setup, encoders, monkeypatch):
    ds, index_path, cache, _ = setup
    index = json.loads(index_path.read_text())
    entry = index["tasks"]
    assert index["modalities"]["text"]["encoder"] == "minilm"  # FeatureIndex.build's part is kept
    assert {t: s["status"] for t, s in entry["status"].items()} == {t: "ok" for t in F.TASKS}
    imgs = entry["features"]["images"]
    # the shapes dataset is one sample per image: it is used as is (its own cache entries)
    assert Path(imgs["dataset_dir"]) == Path(ds.root).resolve() and imgs["modality"] == "image"
    assert imgs["dims"]["grid"] == [4, 1280] and imgs["grid_hw"] == [2, 2] and imgs["pooled_from"] == "grid-mean"
    caps = entry["features"]["captions"]
    assert caps["n_captions"] == 300 and caps["n_distinct"] <= 300
    assert entry["features"]["questions"]["n_distinct"] < entry["features"]["questions"]["n_questions"]
    for feats in entry["features"].values():
        for files in feats["files"].values():
            assert all(Path(p).is_file() for p in files.values())
    # second run: same index content, no forward pass anywhere
    for enc in encoders.values():
        monkeypatch.setattr(enc, "forward", _no_forward(enc))
    again = F.extract_task_features(
        ds, index_path, "all", cache, image_encoder=encoders["image"], text_encoder=encoders["text"], progress=False
    )
    assert again["features"] == entry["features"]


def test_caption_feature_rows_follow_the_pairs(setup, encoders):
    _, index_path, _, _ = setup
    caps, rows = F.caption_features(index_path, "test")
    _, texts, _ = caps.pairs("test")
    assert rows.shape == (len(texts), 384)
    direct = encoders["text"].encode(texts[:3])["pooled"]
    assert torch.allclose(rows[:3], direct, atol=1e-5)


def test_unsupported_tasks_are_skipped_with_the_reason(setup, encoders, tmp_path):
    ds, _, cache, _ = setup
    root = tmp_path / "no_vqa"
    shutil.copytree(ds.root, root, ignore=shutil.ignore_patterns("vqa", "captions.json"))
    ds2 = load_dataset(root)
    index = tmp_path / "features.json"
    FeatureIndex.build(ds2, {}, cache, ["pooled"], path=index, progress=False)
    entry = F.extract_task_features(ds2, index, F.TASKS, cache, image_encoder=encoders["image"], progress=False)
    for t in F.TASKS:
        assert entry["status"][t]["status"] == "skipped"
    assert "captions.json" in entry["status"]["captioning"]["reason"]
    assert "vqa" in entry["status"]["vqa"]["reason"]
    with pytest.raises(TaskInputError, match="task 'vqa' has no features.*vqa"):
        run.train_task("vqa", index, tmp_path / "out")


# ----------------------------------------------------------------------------------- tasks
def test_captioning_train_and_evaluate(setup):
    _, index_path, _, tmp = setup
    out = tmp / "run"
    s = run.train_task("captioning", index_path, out, epochs=2, progress=False, **TINY_CAPTION)
    for kind in ("transformer", "lstm"):
        assert (out / "captioning" / f"{kind}.safetensors").is_file()
        meta = json.loads((out / "captioning" / f"{kind}.json").read_text())
        assert meta["train"]["epochs_run"] <= 2 and 0 <= s[f"{kind}/best_epoch"] < 2
    res = run.evaluate_task("captioning", index_path, out, n_examples=2)
    assert list(res.metrics["model"]) == [
        "transformer/greedy",
        "transformer/beam",
        "lstm/greedy",
        "lstm/beam",
        "nearest_neighbour",
    ]
    for col in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert res.metrics[col].between(0, 10).all()
    # the best model: the decoder with the best validation CIDEr, greedy (what validation decoded)
    greedy = res.metrics[res.metrics.model.str.endswith("/greedy")]
    assert res.metrics[res.metrics.best].model.tolist() == [
        greedy.sort_values("val_score", ascending=False, kind="stable").model.iloc[0]
    ]
    assert greedy.set_index("model").val_score["lstm/greedy"] == pytest.approx(s["lstm/best_val_cider"])
    # the nearest neighbour's captions are real captions: they share words with the references
    nn_row = res.metrics.set_index("model").loc["nearest_neighbour"]
    assert nn_row["BLEU-1"] > 0.2 and nn_row["CIDEr"] > 0
    table = res.tables["samples"]
    # corpus CIDEr-D is the mean of the per-image scores: the table and the metrics agree
    best = res.metrics.set_index("model").loc[table["model"][0]]
    assert table["CIDEr"].mean() == pytest.approx(best["CIDEr"], rel=1e-6)
    assert {"image", "caption", "references", "CIDEr", "nearest_neighbour"} <= set(table.columns)
    assert all(Path(p).is_file() for p in table["image"])
    figs = figures.task_figures(res)
    assert "attention" in figs and len(figs["attention"].axes) >= 2
    assert all(isinstance(v, float) for v in res.summary.values())
    assert "captioning/nn_baseline/CIDEr" in res.summary


def test_vqa_train_and_evaluate_several_methods(setup):
    _, index_path, _, tmp = setup
    out = tmp / "run"
    s = run.train_task("vqa", index_path, out, epochs=3, method=["film", "concat"], progress=False, **TINY_VQA)
    assert s["n_answers"] > 2 and 0 <= s["film/best_val_accuracy"] <= 1
    res = run.evaluate_task("vqa", index_path, out, n_examples=3)
    assert list(res.metrics["model"]) == ["film", "concat"] and res.metrics["best"].sum() == 1
    # the best model is the one with the best validation accuracy (recorded when it trained)
    assert (
        res.metrics[res.metrics.best].model.iloc[0]
        == res.metrics.sort_values("val_accuracy", ascending=False, kind="stable").model.iloc[0]
    )
    assert res.metrics.set_index("model").val_accuracy["film"] == pytest.approx(s["film/best_val_accuracy"])
    assert res.metrics["accuracy"].between(0, 1).all()
    # recomputed from every test question's own score: the reported accuracy is their mean
    every = run.evaluate_task("vqa", index_path, out, n_examples=10**6).tables["samples"]
    best = res.metrics[res.metrics.best].iloc[0]
    assert len(every) == best["n"] and every["accuracy"].mean() == pytest.approx(best["accuracy"])
    assert res.summary["vqa/best/accuracy"] == pytest.approx(best["accuracy"])
    qt = res.tables["per_question_type"]
    assert set(qt["question_type"]) == {"how many", "is there a", "what color is the", "what is", "what shape is the"}
    assert len(res.tables["samples"]) == 3 and Path(res.tables["samples"]["image"][0]).is_file()
    # the checkpoint alone rebuilds the model: same predictions after a reload
    again = run.evaluate_task("vqa", index_path, out, n_examples=0)
    pd.testing.assert_frame_equal(again.metrics, res.metrics)


def test_retrieval_train_and_evaluate(setup):
    _, index_path, _, tmp = setup
    out = tmp / "run"
    s = run.train_task("retrieval", index_path, out, epochs=3, progress=False, **TINY_RETRIEVAL)
    assert {"dual/best_val_rsum", "ridge/alpha", "matcher/film/best_val_rsum"} <= set(s)
    # the re-ranking mix is the grid value with the best validation RSUM, and evaluation uses it
    meta = json.loads((out / "retrieval" / "matcher.json").read_text())
    by_mix = {float(k): v for k, v in meta["val_rsum_by_mix"].items()}
    assert set(by_mix) == set(retrieval_task.DEFAULTS["rerank_mix"])
    assert meta["mix"] in by_mix and by_mix[meta["mix"]] == max(by_mix.values())
    assert s["matcher/film/val_rsum_at_mix"] == max(by_mix.values())
    res = run.evaluate_task("retrieval", index_path, out, n_examples=2)
    models = list(res.metrics["model"])
    assert models[:2] == ["dual_encoder", "ridge"] and models[-1].startswith("dual_encoder+rerank(film")
    for col in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_medr", "rsum"):
        assert col in res.metrics
    assert res.summary["retrieval/dual/rsum"] == pytest.approx(float(res.metrics["rsum"][0]))
    # RSUM is the six recalls in percent: a table of zeros (or of swapped columns) fails here
    recalls = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    for _, r in res.metrics.iterrows():
        assert r["rsum"] == pytest.approx(100 * sum(r[c] for c in recalls))
    assert len(res.tables["samples"]) == 2


def _exports_its_trained_blocks(out: Path, task: str, name: str, index_path: Path, dest: Path) -> dict:
    """Export fine-tuned copy ``name`` and load it back: its encoders hold the saved trained blocks."""
    from fusionkit.tasks.bundles import best_finetuned, export_task
    from fusionkit.tasks.predict import TaskPredictor

    assert best_finetuned(task, out / task) == name
    b = export_task(out, dest, task, features_index=index_path, model=name).parent
    doc = json.loads((b / "model.json").read_text())
    p = TaskPredictor.load(b, device="cpu")
    saved = load_file(str(out / task / f"{name}_encoders.safetensors"))
    kinds = {"image": "image.", "text": "text."}
    checked = 0
    for m, e in doc["encoders"].items():
        keys = [k for k in saved if k.startswith(kinds[e["kind"]])]
        assert bool(e.get("finetuned")) == bool(keys), m
        state = p.encoders[m].state_dict() if m in p.encoders else {}
        assert all(torch.equal(state[k.split(".", 1)[1]], saved[k]) for k in keys), m
        checked += len(keys)
    assert checked and doc["model"] == name
    return doc


def test_retrieval_fine_tuning_the_encoders_is_a_parameter(setup, tmp_path):
    _, index_path, _, tmp = setup
    out = tmp / "run_ft"
    s = run.train_task("retrieval", index_path, out, epochs=2, progress=False, matcher="none",
                     finetune_image_blocks=1, finetune_text_blocks=1, finetune_epochs=1, **TINY_RETRIEVAL)  # fmt: skip
    assert s["finetuned/image_blocks"] == 1 and s["finetuned/text_blocks"] == 1 and s["finetuned/epochs_run"] == 1
    folder = out / "retrieval"
    meta = json.loads((folder / "dual_encoder_finetuned.json").read_text())
    assert meta["finetune"]["augment"] is True and meta["image_encoder"] == "efficientnet_lite0"
    assert not (folder / "dual_encoder_finetune_checkpoint.pt").exists()  # finished: removed
    from safetensors.torch import load_file

    keys = load_file(str(folder / "dual_encoder_finetuned_encoders.safetensors"))
    assert any(k.startswith("image.net._conv_head") for k in keys) and any(k.startswith("text.") for k in keys)
    res = run.evaluate_task("retrieval", index_path, out, n_examples=0)
    models = list(res.metrics["model"])
    assert models[:2] == ["dual_encoder", "ridge"]
    assert "dual_encoder fine-tuned (image last 1, text last 1, augmented)" in models
    assert set(res.metrics["encoders"]) == {"frozen", "image last 1, text last 1, augmented"}
    assert "retrieval/finetuned/rsum" in res.summary
    doc = _exports_its_trained_blocks(out, "retrieval", "dual_encoder_finetuned", index_path, tmp_path / "bundle")
    assert doc["finetune"]["image_blocks"] == doc["finetune"]["text_blocks"] == 1
    # frozen again: the fine-tuned files go, so evaluation cannot report a stale model
    run.train_task("retrieval", index_path, out, epochs=1, progress=False, matcher="none", **TINY_RETRIEVAL)
    assert not (folder / "dual_encoder_finetuned.safetensors").exists()
    assert not any(
        "fine-tuned" in m for m in run.evaluate_task("retrieval", index_path, out, n_examples=0).metrics["model"]
    )


def _changed_keys(folder: Path, stem: str) -> set[str]:
    """Parameter keys of the saved encoder blocks (``image.*`` / ``text.*``) of a fine-tuned model
    (the file also holds every BatchNorm buffer)."""
    from safetensors.torch import load_file

    buffers = ("running_mean", "running_var", "num_batches_tracked")
    keys = load_file(str(folder / f"{stem}_finetuned_encoders.safetensors"))
    return {k for k in keys if not k.endswith(buffers)}


def test_captioning_fine_tuning_the_image_encoder_is_a_parameter(setup, tmp_path):
    from safetensors.torch import load_file

    _, index_path, _, tmp = setup
    out = tmp / "cap_ft"
    opts = {**TINY_CAPTION, "decoders": ["lstm"]}
    s = run.train_task("captioning", index_path, out, epochs=1, progress=False, finetune_image_blocks=1,
                     finetune_epochs=2, **opts)  # fmt: skip
    assert s["lstm_finetuned/image_blocks"] == 1 and s["lstm_finetuned/epochs_run"] == 2
    folder = out / "captioning"
    meta = json.loads((folder / "lstm_finetuned.json").read_text())
    hist = meta["train"]["history"]
    assert meta["finetune"]["augment"] is True and meta["train"]["monitor"] == "val_cider"
    assert meta["train"]["best_value"] == max(h["val_cider"] for h in hist) == s["lstm_finetuned/best_val_cider"]
    assert not (folder / "lstm_finetune_checkpoint.pt").exists()  # finished: removed
    last = F.task_encoder(F.read_task_index(index_path), "image", index_path).block_names()[-1]
    keys = _changed_keys(folder, "lstm")
    assert keys and all(any(k.startswith(f"image.{p}.") for p in last) for k in keys), sorted(keys)[:5]
    # the decoder moved away from the frozen-feature one it started from
    frozen, tuned = load_file(str(folder / "lstm.safetensors")), load_file(str(folder / "lstm_finetuned.safetensors"))
    assert frozen.keys() == tuned.keys() and any(not torch.equal(frozen[k], tuned[k]) for k in frozen)
    # and so did the test features: the encoder's last block trained
    feats = load_file(str(folder / "lstm_finetuned_features.safetensors"))
    cached = F.image_features(F.read_task_index(index_path), meta["test_ids"])[0]
    assert feats["test/grid"].shape == cached.shape
    assert (feats["test/grid"] - cached).norm() > 1e-2 * cached.norm()
    res = run.evaluate_task("captioning", index_path, out, n_examples=1)
    assert list(res.metrics["model"]) == ["lstm/greedy", "lstm/beam", "lstm_finetuned/greedy",
                                          "lstm_finetuned/beam", "nearest_neighbour"]  # fmt: skip
    enc = dict(zip(res.metrics["model"], res.metrics["encoders"]))
    assert enc["lstm/beam"] == "frozen" and enc["lstm_finetuned/beam"] == "image last 1, augmented"
    assert "captioning/lstm_finetuned/beam/CIDEr" in res.summary
    doc = _exports_its_trained_blocks(out, "captioning", "lstm_finetuned", index_path, tmp_path / "bundle")
    assert doc["decoder"] == "lstm" and doc["finetune"]["image_blocks"] == 1
    # frozen again: the fine-tuned files go, so evaluation cannot report a stale model
    run.train_task("captioning", index_path, out, epochs=1, progress=False, **opts)
    assert not list(folder.glob("lstm_finetuned*"))
    assert "lstm_finetuned/beam" not in list(
        run.evaluate_task("captioning", index_path, out, n_examples=0).metrics.model
    )


def test_vqa_fine_tuning_the_image_and_question_encoders_is_a_parameter(setup):
    _, index_path, _, tmp = setup
    out = tmp / "vqa_ft"
    s = run.train_task("vqa", index_path, out, epochs=2, progress=False, finetune_image_blocks=1,
                     finetune_text_blocks=1, finetune_epochs=1, **TINY_VQA)  # fmt: skip
    assert s["film_finetuned/image_blocks"] == 1 and s["film_finetuned/text_blocks"] == 1
    assert 0 <= s["film_finetuned/best_val_accuracy"] <= 1 and s["film_finetuned/epochs_run"] == 1
    folder = out / "vqa"
    keys = _changed_keys(folder, "film")
    assert any(k.startswith("image.net._conv_head") for k in keys) and any(k.startswith("text.") for k in keys)
    assert not (folder / "film_finetune_checkpoint.pt").exists()
    res = run.evaluate_task("vqa", index_path, out, n_examples=0)
    assert list(res.metrics["model"]) == ["film", "film_finetuned"] and res.metrics["best"].sum() == 1
    assert list(res.metrics["encoders"]) == ["frozen", "image last 1, text last 1, augmented"]
    assert res.metrics["accuracy"].between(0, 1).all() and "vqa/film_finetuned/accuracy" in res.summary
    # the saved copy alone reproduces the fine-tuned accuracy
    again = run.evaluate_task("vqa", index_path, out, n_examples=0)
    pd.testing.assert_frame_equal(again.metrics, res.metrics)


def test_a_fine_tuned_vqa_model_exports_with_its_encoders_trained_blocks(setup, tmp_path):
    """``--model film_finetuned``: the bundle carries the trained image and question blocks (laid
    over a random-init image encoder whose full weights travel, and over the machine's MiniLM), and
    predicts raw files as 05 scores the fine-tuned model on its fine-tuned test features."""
    import csv
    import dataclasses

    from fusionkit import bundle
    from fusionkit.bundle import BundleError
    from fusionkit.predict import read_inputs
    from fusionkit.tasks.bundles import best_finetuned, export_task
    from fusionkit.tasks.predict import TaskPredictor
    from fusionkit.tasks.vqa import AnswerVocab
    from fusionkit.tasks.vqa.model import build_vqa_net
    from fusionkit.tasks.vqa.task import vqa_arrays, vqa_logits

    _, index_path, _, tmp = setup
    out = tmp / "vqa_ft_export"
    run.train_task("vqa", index_path, out, epochs=1, progress=False, finetune_image_blocks=1, finetune_text_blocks=1,
                   finetune_epochs=1, **TINY_VQA)  # fmt: skip
    folder = out / "vqa"
    assert best_finetuned("vqa", folder) == "film_finetuned"
    b = export_task(out, tmp_path / "bundle", "vqa", features_index=index_path, model="film_finetuned").parent
    doc = json.loads((b / "model.json").read_text())
    assert doc["model"] == "film_finetuned" and "test_keys" not in doc
    tuned = {m: e["finetuned"] for m, e in doc["encoders"].items() if e.get("finetuned")}
    assert set(tuned) == {"image", "question"} and tuned["image"]["image_blocks"] == 1
    assert doc["encoders"]["image"]["weights"] == "bundle" and doc["encoders"]["question"]["weights"] == "machine"
    p = TaskPredictor.load(b, device="cpu")
    saved = load_file(str(folder / "film_finetuned_encoders.safetensors"))
    for m, prefix in (("image", "image."), ("question", "text.")):
        state = p.encoders[m].state_dict()
        keys = [k for k in saved if k.startswith(prefix)]
        assert keys and all(torch.equal(state[k[len(prefix) :]], saved[k]) for k in keys), m
    # raw files in, against the fine-tuned model on the fine-tuned test features (what 05 scores)
    index = F.read_task_index(index_path)
    table = F.vqa_tables(index, index_path)["test"]
    vocab = AnswerVocab.from_state_dict(doc["vocab"])
    a = vqa_arrays(index, index_path, table, vocab, doc["image"])
    f = bundle.load_tensors(folder / "film_finetuned_features.safetensors")
    a = dataclasses.replace(a, images=f["test/image"], questions=f["test/questions"])
    model = bundle.load_weights(build_vqa_net(bundle.read_meta(folder / "film_finetuned.safetensors")),
                                folder / "film_finetuned.safetensors")  # fmt: skip
    want = vocab.decode_logits(vqa_logits(model, a))
    new = tmp_path / "new"
    new.mkdir()
    for k, src in zip(a.image_keys, F.split_images(index, a.image_keys), strict=True):
        shutil.copyfile(src, new / f"{k}{Path(src).suffix}")
    suffix = {k: Path(src).suffix for k, src in zip(a.image_keys, F.split_images(index, a.image_keys), strict=True)}
    with open(new / "questions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "question"])
        w.writeheader()
        w.writerows({"id": f"q{i}", "image": f"{r.image_key}{suffix[r.image_key]}", "question": r.question}
                    for i, r in enumerate(table.records))  # fmt: skip
    inputs = read_inputs(new / "questions.csv", p)
    rows, feats, issues, _ = p.encode(inputs)
    assert not issues and len(rows) == len(table.records)
    img_row = {k: i for i, k in enumerate(a.image_keys)}
    got_img = torch.stack([x["image"] for x in feats])
    want_img = a.images[[img_row[r.image_key] for r in table.records]]
    assert torch.allclose(got_img, want_img, atol=1e-4, rtol=1e-4)  # the trained blocks, not the pretrained ones
    assert torch.allclose(torch.stack([x["question"] for x in feats]), a.questions, atol=1e-5)
    assert [r["prediction"] for r in p.predict(inputs).records] == want
    # a bundle whose trained blocks were tampered with, or are gone, is refused naming the file
    blocks = bundle.load_tensors(b / bundle.FINETUNED_WEIGHTS)
    first = next(k for k in blocks if k.startswith("image.") and blocks[k].is_floating_point())
    blocks[first] = blocks[first] + 1
    bundle.save_tensors(b / bundle.FINETUNED_WEIGHTS, blocks)
    with pytest.raises(BundleError, match="fine-tuned blocks .* corrupted"):
        TaskPredictor.load(b, device="cpu")
    (b / bundle.FINETUNED_WEIGHTS).unlink()
    with pytest.raises(BundleError, match="trained blocks .* are missing"):
        TaskPredictor.load(b, device="cpu")
    with pytest.raises(BundleError, match="no vqa model 'transformer_finetuned'"):
        export_task(out, tmp_path / "b2", "vqa", features_index=index_path, model="transformer_finetuned")


def test_fine_tuned_features_of_other_test_images_are_refused(setup, tmp_path):
    _, index_path, _, tmp = setup
    src = tmp / "cap_ft2"
    run.train_task("captioning", index_path, src, epochs=1, progress=False, finetune_image_blocks=1, finetune_epochs=1,
                 augment=False, **{**TINY_CAPTION, "decoders": ["transformer"]})  # fmt: skip
    meta_path = src / "captioning" / "transformer_finetuned.json"
    meta = json.loads(meta_path.read_text())
    meta["test_ids"] = meta["test_ids"][::-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TaskSetupError, match="fine-tuned features of other test images"):
        run.evaluate_task("captioning", index_path, src, n_examples=0)


def test_fine_tuning_refuses_an_encoder_that_differs_from_the_cached_features(setup):
    _, index_path, _, _ = setup
    index = json.loads(index_path.read_text())
    assert index["tasks"]["image_encoder"]["build"]["kwargs"] == {"weights": None, "image_size": 64, "seed": 0}
    index["tasks"]["image_encoder"]["build"]["kwargs"]["seed"] = 1  # another random init
    with pytest.raises(TaskSetupError, match="differs from the one that made the cached features"):
        F.task_encoder(index, "image", index_path)


FT = {"finetune_image_blocks": 1, "finetune_epochs": 3}  # after 1 frozen epoch: the interrupt hits the fine-tuning


@pytest.mark.parametrize(
    ("task", "opts", "model_file"),
    [
        ("vqa", TINY_VQA, "film.safetensors"),
        ("captioning", {**TINY_CAPTION, "decoders": ["transformer"]}, "transformer.safetensors"),
        ("retrieval", {**TINY_RETRIEVAL, "matcher": "none"}, "dual_encoder.safetensors"),
        ("vqa", {**TINY_VQA, **FT}, "film_finetuned.safetensors"),
        ("captioning", {**TINY_CAPTION, **FT, "decoders": ["lstm"]}, "lstm_finetuned.safetensors"),
    ],
)
def test_resume_after_an_interrupt_saves_what_an_uninterrupted_run_saves(setup, monkeypatch, task, opts, model_file):
    from safetensors.torch import load_file

    from fusionkit.training import TrainCheckpoint

    _, index_path, _, tmp = setup
    full, part = tmp / f"{task}_full_{model_file}", tmp / f"{task}_part_{model_file}"
    epochs = 1 if "finetuned" in model_file else 3
    run.train_task(task, index_path, full, epochs=epochs, progress=False, **opts)
    save = TrainCheckpoint.save

    def save_then_die(self, epoch, *a, **k):
        save(self, epoch, *a, **k)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run.train_task(task, index_path, part, epochs=epochs, progress=False, **opts)
    ckpts = list((part / task).glob("*_checkpoint.pt"))
    assert len(ckpts) == 1 and torch.load(ckpts[0], weights_only=True)["epoch"] == 1
    monkeypatch.setattr(TrainCheckpoint, "save", save)
    run.train_task(task, index_path, part, epochs=epochs, progress=False, resume=True, **opts)
    assert not list((part / task).glob("*_checkpoint.pt"))  # finished: removed
    files = [model_file]
    if "finetuned" in model_file:  # the encoder's trained block too: its test features
        files.append(model_file.replace(".safetensors", "_features.safetensors"))
    for f in files:
        a, b = load_file(str(full / task / f)), load_file(str(part / task / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f

    def hist(d):
        return json.loads((d / task / model_file.replace(".safetensors", ".json")).read_text())["train"]["history"]

    assert hist(part) == hist(full) and len(hist(full)) == 3


class _Tracker:
    def __init__(self):
        self.summaries = []

    def summary(self, d):
        self.summaries.append(d)


def test_workbook_train_tasks_passes_each_task_its_own_options(setup, tmp_path):
    """04_train's ``task_options``: epochs, method and options per task; a task not in ``tasks`` is refused."""
    _, index_path, _, _ = setup
    tracker = _Tracker()
    opts = {"vqa": {"epochs": 2, "method": "concat", **TINY_VQA}}
    out = wb.train_tasks(["vqa"], index_path, tmp_path, tracker, options=opts)
    assert out["vqa"]["concat/epochs_run"] <= 2 and "film/epochs_run" not in out["vqa"]
    assert tracker.summaries and "vqa/concat/best_val_accuracy" in tracker.summaries[0]
    with pytest.raises(ValueError, match=r"task_options names task\(s\) \['captioning'\]"):
        wb.train_tasks(["vqa"], index_path, tmp_path, tracker, options={"captioning": {"epochs": 1}})
    with pytest.raises(TypeError, match=r"task_options\['vqa'\] must be a dict"):
        wb.train_tasks(["vqa"], index_path, tmp_path, tracker, options={"vqa": 3})


def test_workbook_train_tasks_resume_reaches_every_task_unless_a_task_says_otherwise(monkeypatch):
    seen = {}
    monkeypatch.setattr(run, "train_task", lambda task, *a, **kw: seen.setdefault(task, kw) and {})
    wb.train_tasks(["vqa", "retrieval"], "idx.json", "run", _Tracker(), options={"vqa": {"resume": False}}, resume=True,
                   workers=1)  # fmt: skip
    assert seen["vqa"]["resume"] is False and seen["retrieval"]["resume"] is True


def test_tasks_trained_side_by_side_save_what_one_after_another_saves(setup, tmp_path):
    """``workers`` 2: each task in its own process on its share of the cores gives the models the
    serial path gives on the same thread count; a task that fails there is named once the other
    has finished, and the other's models are saved."""
    _, index_path, _, _ = setup
    opts = {"vqa": {"epochs": 2, "method": "concat", **TINY_VQA}, "retrieval": {"epochs": 2, **TINY_RETRIEVAL}}
    threads = max(1, available_cpus() // 2)
    torch.set_num_threads(threads)  # what each of the 2 worker processes runs on
    serial = run.train_tasks(["vqa", "retrieval"], index_path, tmp_path / "serial", options=opts, workers=1)
    finished = []
    side = run.train_tasks(["vqa", "retrieval"], index_path, tmp_path / "side", options=opts, workers=2,
                           on_done=lambda task, summary: finished.append(task))  # fmt: skip
    assert sorted(finished) == ["retrieval", "vqa"] and list(side) == ["vqa", "retrieval"]
    for task, stem in (("vqa", "concat"), ("retrieval", "dual_encoder")):
        a = load_file(tmp_path / "serial" / task / f"{stem}.safetensors")
        b = load_file(tmp_path / "side" / task / f"{stem}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), task
        assert side[task]["train_time_s"] > 0 and {k for k in serial[task] if k != "train_time_s"} <= set(side[task])
    bad = {**opts, "retrieval": {"epochs": 2, "no_such_option": 1}}
    with pytest.raises(TypeError, match="retrieval training failed.*no_such_option"):
        run.train_tasks(["vqa", "retrieval"], index_path, tmp_path / "bad", options=bad, workers=2)
    assert (tmp_path / "bad" / "vqa" / "concat.safetensors").is_file()
    with pytest.raises(ValueError, match="workers=-1"):
        run.train_tasks(["vqa"], index_path, tmp_path, workers=-1)


# ----------------------------------------------------------------------------------- bad input
def test_bad_arguments_are_named(setup, tmp_path):
    ds, index_path, cache, _ = setup
    with pytest.raises(ValueError, match="unknown task 'caption'"):
        run.train_task("caption", index_path, tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        F.extract_task_features(ds, index_path, ["vqa", "ocr"], cache)
    with pytest.raises(TypeError, match="unknown option.*'lr_max'"):
        run.train_task("vqa", index_path, tmp_path, lr_max=1.0)
    with pytest.raises(ValueError, match="epochs=0"):
        run.train_task("vqa", index_path, tmp_path, epochs=0)
    with pytest.raises(ValueError, match="unknown.*'nope'"):
        run.train_task("vqa", index_path, tmp_path, method="nope")
    with pytest.raises(TaskInputError, match="no trained retrieval models"):
        run.evaluate_task("retrieval", index_path, tmp_path / "empty")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in json.loads(index_path.read_text()).items() if k != "tasks"}))
    with pytest.raises(TaskInputError, match="no task features recorded.*extract_task_features"):
        run.train_task("vqa", bare, tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(bare.read_text()), "manifest_hash": "0123456789abcdef"}))
    with pytest.raises(TaskInputError, match="not for 'shapes'.*run FeatureIndex.build"):
        F.extract_task_features(ds, other, F.TASKS, cache)


def test_bad_captions_raise_or_are_skipped_with_a_report(setup, encoders, tmp_path):
    ds, _, cache, _ = setup
    root = tmp_path / "bad"
    shutil.copytree(ds.root, root)
    doc = json.loads((root / "captions.json").read_text())
    doc["images"][0]["sentences"][1]["raw"] = "   "
    bad_id = Path(doc["images"][0]["filename"]).stem
    (root / "captions.json").write_text(json.dumps(doc))
    ds2 = load_dataset(root)
    index = tmp_path / "features.json"
    FeatureIndex.build(ds2, {}, cache, ["pooled"], path=index, progress=False)
    kw = {"image_encoder": encoders["image"], "text_encoder": encoders["text"], "progress": False}
    with pytest.raises(TaskInputError, match=rf"captions.json: images\[0\] \({bad_id}\) caption 1: empty caption"):
        F.extract_task_features(ds2, index, ["retrieval"], cache, **kw)
    entry = F.extract_task_features(ds2, index, ["retrieval"], cache, on_error="skip", **kw)
    assert entry["status"]["retrieval"]["status"] == "ok"
    report = Path(entry["reports"]["captions"]).read_text()
    assert bad_id in report and "empty caption" in report and "skipped" in report
    assert entry["features"]["captions"]["n_captions"] == 299


def test_task_models_are_chosen_by_their_validation_score():
    from fusionkit.tasks import common

    assert common.validation_score({"train": {"best_value": 0.4, "monitor": "val_cider"}}) == 0.4
    assert common.validation_score({"train": {"best_value": 2.5, "monitor": "loss"}}) == -2.5  # lower loss wins
    assert common.validation_score({"train": {"best_val_acc": 0.7}}) == 0.7  # bundles of an earlier fusionkit
    with pytest.raises(TaskSetupError, match="records no validation value"):
        common.validation_score({"kind": "vqa", "train": {}})
    assert common.pick_best({"film": 0.5, "concat": 0.7, "mlb": 0.7}) == "concat"
