"""fusionkit export --task / predict / gallery for the task models of the smoke run: each task's
bundle, moved away from the run, predicts raw files as the run's model does on the cached features
(the same captions, answers and top-1 gallery items); bad input is refused, naming what is wrong."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from fusionkit import bundle, cli
from fusionkit.bundle import BundleError
from fusionkit.predict import read_inputs
from fusionkit.tasks.bundles import build_model, load_task
from fusionkit.tasks.features import caption_data, caption_features, read_task_index, vqa_tables
from fusionkit.tasks.predict import TaskPredictor, load_predictor
from fusionkit.tasks.retrieval import load_matcher, rescore
from fusionkit.tasks.vqa.task import vqa_arrays, vqa_logits

N = 8  # raw inputs per task: enough to compare, few to encode
TASKS = ("captioning", "vqa", "retrieval")


def _run_model(run_dir: Path, task: str, bundle_dir: Path):
    """The model the bundle came from, loaded from the run folder."""
    doc = json.loads((bundle_dir / "model.json").read_text())
    model, spec, extra = load_task(bundle_dir)
    weights = run_dir / task / f"{spec.model}.safetensors"
    return bundle.load_weights(build_model(task, spec.meta, extra if task == "captioning" else None), weights), doc


@pytest.fixture(scope="module")
def tasks(smoke_run, tmp_path_factory):
    """04's task bundles (``<run>/bundle/<task>/``), copied away from the run."""
    run_dir, _ = smoke_run
    tmp = tmp_path_factory.mktemp("task_bundles")
    bundles = {}
    for task in TASKS:
        assert (run_dir / "bundle" / task / "model.json").is_file(), f"04 wrote no {task} bundle"
        bundles[task] = shutil.copytree(run_dir / "bundle" / task, tmp / task)
    index_path = run_dir / "features.json"
    return {"run": run_dir, "tmp": tmp, "index_path": index_path, "index": read_task_index(index_path),
            "bundles": bundles}  # fmt: skip


def check_export_writes_what_04_wrote_with_the_runs_numbers(t):
    out = t["tmp"] / "exported"
    assert cli.main(["export", str(t["run"]), "--task", "captioning", "--out", str(out)]) == 0
    mine, of04 = (json.loads((f / "model.json").read_text()) for f in (out, t["bundles"]["captioning"]))
    assert {k: v for k, v in mine.items() if k != "metrics"} == {k: v for k, v in of04.items() if k != "metrics"}
    assert (out / "model.safetensors").read_bytes() == (t["bundles"]["captioning"] / "model.safetensors").read_bytes()
    assert "captioning/best/CIDEr" in mine["metrics"]  # 05's numbers, there once 05 ran


def check_bundles_describe_task_encoders_and_data(t):
    for task, folder in t["bundles"].items():
        doc = json.loads((folder / "model.json").read_text())
        assert doc["task"] == task and doc["version"] == bundle.VERSION and doc["fusionkit_version"]
        assert doc["dataset"]["name"] == t["index"]["dataset"]
        want = {"captioning": {"image"}, "vqa": {"image", "question"}, "retrieval": {"image", "text"}}[task]
        assert set(doc["encoders"]) == want
        assert all(k.startswith(f"{task}/") for k in doc["metrics"])
    cap = json.loads((t["bundles"]["captioning"] / "model.json").read_text())
    assert cap["kind"] == "captioner" and cap["decoder"] in ("transformer", "lstm") and cap["tokenizer"]["vocab"]
    assert cap["encoders"]["image"]["output"] == "grid"
    vqa = json.loads((t["bundles"]["vqa"] / "model.json").read_text())
    assert vqa["vocab"]["answers"] and vqa["encoders"]["question"]["output"] == "pooled"


def check_captions_agree_with_the_run_model(t):
    index, run_dir, folder = t["index"], t["run"], t["bundles"]["captioning"]
    model, _ = _run_model(run_dir, "captioning", folder)
    p = load_predictor(folder, device="cpu")
    ds_root = Path(index["tasks"]["dataset_dir"])
    inputs = read_inputs(ds_root, p, split="test")
    inputs.rows = inputs.rows[:N]
    res = p.predict(inputs)
    assert not res.issues and len(res.records) == len(inputs.rows) > 0
    data = caption_data(index, t["index_path"])
    from fusionkit.tasks.captioning.search import generate

    row = {i: n for n, i in enumerate(data.ids["test"])}
    ids = [r["id"] for r in res.records]
    grid = data.grid["test"][[row[i] for i in ids]]
    meta = p.spec.meta
    gen = generate(model, grid, grid.mean(1) if meta["pooled_dim"] else None, method="greedy")
    assert [r["prediction"] for r in res.records] == p.extra.decode_batch(gen.tokens)
    assert all(r["prediction"].strip() for r in res.records)


def check_answers_agree_with_the_run_model(t):
    index, run_dir, folder = t["index"], t["run"], t["bundles"]["vqa"]
    model, doc = _run_model(run_dir, "vqa", folder)
    table = vqa_tables(index, t["index_path"])["test"]
    recs = table.records[:N]
    keys = sorted({r.image_key for r in recs})
    new = t["tmp"] / "vqa_new"  # the images copied beside a manifest of their own, away from the dataset
    new.mkdir()
    names = {k: f"{k}{Path(f).suffix}" for k, f in zip(keys, _image_files(index, keys), strict=True)}
    for k, f in zip(keys, _image_files(index, keys), strict=True):
        shutil.copyfile(f, new / names[k])
    manifest = new / "questions.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "question"])
        w.writeheader()
        w.writerows({"id": f"q{r.question_id}", "image": names[r.image_key], "question": r.question} for r in recs)
    out = t["tmp"] / "answers.jsonl"
    assert cli.main(["predict", str(folder), str(manifest), "--out", str(out), "--device", "cpu"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    from fusionkit.tasks.vqa import AnswerVocab

    vocab = AnswerVocab.from_state_dict(doc["vocab"])
    arrays = vqa_arrays(index, t["index_path"], table, vocab, doc["image"])
    want = vocab.decode_logits(vqa_logits(model, arrays))[:N]
    assert [g["prediction"] for g in got] == want
    assert [g["question"] for g in got] == [r.question for r in recs]
    assert all(0 < g["probability"] <= 1 and g["prediction"] in g["answers"] for g in got)


def _image_files(index, keys):
    from fusionkit.tasks.features import split_images

    return split_images(index, keys)


def check_retrieval_top1_agrees_with_the_run_model(t):
    index, run_dir, folder = t["index"], t["run"], t["bundles"]["retrieval"]
    model, _ = _run_model(run_dir, "retrieval", folder)
    ds_root = Path(index["tasks"]["dataset_dir"])
    gallery = t["tmp"] / "gallery"
    argv = ["gallery", str(folder), str(ds_root), "--split", "test", "--modality", "image", "--out", str(gallery),
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    g = json.loads((gallery / "gallery.json").read_text())
    caps, text_feats = caption_features(t["index_path"], "test")
    _, texts, _ = caps.pairs("test")
    queries = t["tmp"] / "queries.csv"
    with open(queries, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text"])
        w.writeheader()
        w.writerows({"id": f"c{n}", "text": s} for n, s in enumerate(texts[:N]))
    out = t["tmp"] / "matches.csv"
    argv = ["predict", str(folder), str(queries), "--gallery", str(gallery), "--top-k", "3", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert cli.main([*argv, "--no-rerank"]) == 0
    with open(out) as f:
        got = list(csv.DictReader(f))
    data = caption_data(index, t["index_path"], need_grid=False)
    row = {i: n for n, i in enumerate(data.ids["test"])}
    raw_img = data.pooled["test"][[row[i] for i in g["ids"]]]
    with torch.inference_mode():
        img = model.encode_image(raw_img)
        txt = model.encode_text(text_feats[:N])
    cos = txt @ img.T
    scores, best = cos.topk(3, dim=1)
    assert [r["match_1"] for r in got] == [g["ids"][int(i)] for i in best[:, 0]]
    assert torch.allclose(torch.tensor([float(r["score_1"]) for r in got]), scores[:, 0], atol=1e-4)
    assert {"match_3", "score_3"} <= set(got[0]) and "match_4" not in got[0]
    # by default the run's matcher re-ranks the top k, as 05 scores "dual_encoder+rerank"
    rr = json.loads((folder / "model.json").read_text())["rerank"]
    matcher, mm = load_matcher(run_dir / "retrieval" / "matcher.safetensors")
    assert rr == {"method": mm["method"], "k": mm["rerank_k"], "mix": mm["mix"]}
    k = min(rr["k"], len(g["ids"]))
    top_cos, cand = cos.topk(k, dim=1)
    new = rescore(matcher, raw_img[cand], text_feats[:N, None].float().expand(-1, k, -1), top_cos, rr["mix"])
    order = torch.sort(new, dim=1, descending=True, stable=True).indices
    want = cand.gather(1, order)
    jsonl = t["tmp"] / "matches.jsonl"
    assert cli.main([*argv[:5], "--top-k", "3", "--out", str(jsonl), "--device", "cpu"]) == 0
    hits = [json.loads(x)["matches"] for x in jsonl.read_text().splitlines()]
    assert [[h["id"] for h in m] for m in hits] == [[g["ids"][int(i)] for i in w[:3]] for w in want]
    got_new = torch.tensor([[h["rerank_score"] for h in m] for m in hits])
    assert torch.allclose(got_new, new.gather(1, order)[:, :3], atol=1e-4)
    assert torch.allclose(torch.tensor([m[0]["score"] for m in hits]), top_cos.gather(1, order)[:, 0], atol=1e-4)
    # the other way: an image queries a gallery of captions
    texts_gallery = t["tmp"] / "captions"
    assert cli.main(["gallery", str(folder), str(queries), "--out", str(texts_gallery), "--device", "cpu"]) == 0
    first = g["items"][0]
    out = t["tmp"] / "captions.jsonl"
    argv = ["predict", str(folder), "--image", first, "--gallery", str(texts_gallery), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu", "--no-rerank"]) == 0
    (hit,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert hit["matches"][0]["item"] == texts[int((img[0] @ txt.T).argmax())]
    return gallery


def check_bad_input_is_named(t, capsys, gallery):
    b = t["bundles"]
    ds_root = Path(t["index"]["tasks"]["dataset_dir"])
    image = next(p for p in sorted((ds_root / "images").iterdir()) if p.suffix == ".png")
    # VQA without a question: the row is skipped, naming what to add; nothing written
    out = t["tmp"] / "none.csv"
    assert cli.main(["predict", str(b["vqa"]), "--image", str(image), "--out", str(out)]) == 1
    assert "no question given; the model needs one (pass --question" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1  # the header, no prediction
    # options of another task
    assert cli.main(["predict", str(b["captioning"]), "--image", str(image), "--question", "what?"]) == 2
    assert "questions are for VQA" in capsys.readouterr().err
    assert cli.main(["predict", str(b["vqa"]), "--image", str(image), "--gallery", str(gallery)]) == 2
    assert "galleries are for retrieval" in capsys.readouterr().err
    assert cli.main(["predict", str(b["retrieval"]), "--text", "a red circle"]) == 2
    assert "fusionkit gallery" in capsys.readouterr().err
    # a gallery of another model
    other = t["tmp"] / "other"
    shutil.copytree(b["retrieval"], other)
    w = bundle.load_tensors(other / "model.safetensors")
    bundle.save_tensors(other / "model.safetensors", {k: v + 1 for k, v in w.items()})
    with pytest.raises(BundleError, match="built with another model"):
        TaskPredictor.load(other, device="cpu", gallery=gallery)
    # a gallery of an older fusionkit (version 1: embeddings only) is searched without re-ranking,
    # saying so; a version-2 gallery without its items' features is refused, naming the file
    old = t["tmp"] / "gallery_v1"
    shutil.copytree(gallery, old)
    g = json.loads((old / "gallery.json").read_text())
    (old / "gallery.json").write_text(json.dumps({**g, "version": 1}))
    emb = bundle.load_tensors(old / "gallery.safetensors")["embeddings"]
    bundle.save_tensors(old / "gallery.safetensors", {"embeddings": emb})
    p = TaskPredictor.load(b["retrieval"], device="cpu", gallery=old)
    assert p.matcher is None and "searched without re-ranking" in capsys.readouterr().err
    assert TaskPredictor.load(b["retrieval"], device="cpu", gallery=gallery).matcher is not None
    (old / "gallery.json").write_text(json.dumps(g))
    with pytest.raises(BundleError, match=r"gallery.safetensors: does not hold the \d+ item features"):
        TaskPredictor.load(b["retrieval"], device="cpu", gallery=old)
    # a corrupted bundle, a bundle of a newer fusionkit
    bad = t["tmp"] / "corrupt"
    shutil.copytree(b["captioning"], bad)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    assert cli.main(["predict", str(bad), "--image", str(image)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    doc = json.loads((b["vqa"] / "model.json").read_text())
    newer = t["tmp"] / "newer"
    shutil.copytree(b["vqa"], newer)
    (newer / "model.json").write_text(json.dumps({**doc, "version": bundle.VERSION + 1}))
    with pytest.raises(BundleError, match="newer fusionkit"):
        load_predictor(newer, device="cpu")
    # the run's own task model, not exported
    with pytest.raises(BundleError, match="not exported"):
        load_task(t["run"] / "vqa" / f"{doc['model']}.safetensors")


def check_served_as_predicted(t, gallery, monkeypatch):
    """``fusionkit serve`` of each task bundle, over real HTTP: the same caption, answer and gallery
    matches as ``fusionkit predict`` gives for the same input; a question missing is a 422 naming
    it. And ``wandb:E/P/NAME:ALIAS/TASK`` picks that task's bundle in 04's model artifact."""
    import httpx

    from fusionkit import serve as serving
    from fusionkit import tracking
    from fusionkit.predict import Inputs, Row
    from tests.serving import running

    b = t["bundles"]
    ds_root = Path(t["index"]["tasks"]["dataset_dir"])
    image = next(p for p in sorted((ds_root / "images").iterdir()) if p.suffix == ".png")
    upload = {"image": (image.name, image.read_bytes(), "image/png")}
    question = vqa_tables(t["index"], t["index_path"])["test"].records[0].question

    def direct(predictor, values):
        return predictor.predict(Inputs([Row("request", "request", values)], image.parent, "request")).records[0]

    cases = [
        ("captioning", None, {"files": upload}, {"image": image.name}),
        ("vqa", None, {"files": upload, "data": {"question": question}}, {"image": image.name, "question": question}),
        ("retrieval", gallery, {"json": {"text": question}}, {"text": question}),
    ]
    for task, g, request, values in cases:
        predictor = load_predictor(b[task], device="cpu", gallery=g)
        with running(serving.create_app(predictor)) as url:
            health = httpx.get(f"{url}/health").json()
            assert health == {"status": "ok", "task": task, "model": predictor.spec.model}
            assert httpx.get(f"{url}/info").json()["task"] == task
            r = httpx.post(f"{url}/predict", **request)
            assert r.status_code == 200, r.text
            got, want = r.json(), direct(predictor, values)
            assert got["id"] == "request" and got.keys() == want.keys()
            if task == "retrieval":
                assert [m["id"] for m in got["matches"]] == [m["id"] for m in want["matches"]]
                assert all(abs(a["score"] - w["score"]) < 1e-5 for a, w in zip(got["matches"], want["matches"]))
            else:
                assert got["prediction"] == want["prediction"] and got["prediction"].strip()
            if task == "vqa":
                assert abs(got["probability"] - want["probability"]) < 1e-6
                missing = httpx.post(f"{url}/predict", files=upload)
                assert missing.status_code == 422 and "no question given" in missing.json()["error"]
    # a task's bundle inside the W&B model artifact (downloaded: here, the folder 04 logged)
    asked = []

    def download(ref, type=None, root=None):
        asked.append((ref, type))
        return t["run"] / "bundle"

    monkeypatch.setattr(tracking, "download_artifact", download)
    vqa = load_predictor("wandb:me/fusionkit/model-x:latest/vqa", device="cpu")
    assert vqa.task == "vqa" and asked == [("me/fusionkit/model-x:latest", "model")]
    assert type(load_predictor("wandb:me/fusionkit/model-x:latest", device="cpu")).__name__ == "Predictor"
    with pytest.raises(BundleError, match="holds no bundle in 'tabular'"):
        load_predictor("wandb:me/fusionkit/model-x:latest/tabular", device="cpu")


def test_task_bundles_predict_raw_files_as_the_run_models_do(tasks, capsys, monkeypatch):
    """One test for the checks: they share the exported bundles and the gallery."""
    check_bundles_describe_task_encoders_and_data(tasks)
    check_export_writes_what_04_wrote_with_the_runs_numbers(tasks)
    check_captions_agree_with_the_run_model(tasks)
    check_answers_agree_with_the_run_model(tasks)
    gallery = check_retrieval_top1_agrees_with_the_run_model(tasks)
    check_bad_input_is_named(tasks, capsys, gallery)
    check_served_as_predicted(tasks, gallery, monkeypatch)
