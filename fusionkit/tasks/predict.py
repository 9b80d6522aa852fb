"""``fusionkit predict`` and ``fusionkit gallery`` for task bundles (:mod:`fusionkit.tasks.bundles`):
captions, answers and retrieval on new raw files, on the classifier's machinery
(:class:`fusionkit.predict.Predictor`: reading manifests and folders, encoding with the bundle's
encoders, bad rows named and skipped, the output written atomically)::

    predictor = load_predictor("bundle/", gallery="gallery/")   # a classifier's or a task's
    result = predictor.predict(read_inputs("new/", predictor))   # fusionkit.predict.read_inputs
    write_predictions(result, "captions.csv")

What each task predicts (the record's ``prediction``; CSV columns in brackets):

captioning  an image (manifest column ``image``, a folder of images, ``--image``): its caption, greedy
            as the model was chosen on validation, or beam search (``beam=True``: the bundle's beam
            size and length penalty) [id, prediction].
vqa         an image and a question (columns ``image`` and ``question``, ``--image`` and
            ``--question``; a ``question`` given to :meth:`TaskPredictor.ask` applies to every row
            without one): the top answer of the answer vocabulary, its probability, and in JSONL the
            five most probable [id, question, prediction, probability]. A row without a question or
            an image is skipped, naming it.
retrieval   queries against a gallery (:func:`build_gallery`): a text query (column ``text``,
            ``--text``, ``.txt`` files) against a gallery of images, or an image against a gallery of
            texts; the top ``k`` gallery items by cosine similarity of the dual encoder's embeddings,
            exact (one matmul; faiss's exact inner-product index when it is installed and the gallery
            is large) [id, match_1, score_1, ... match_k, score_k]; JSONL: ``matches``, each item's
            id, path or text, and score. Where the bundle has the run's matcher (``rerank`` in its
            description), the top ``rerank.k`` candidates are re-ordered by matcher logit + ``mix`` x
            cosine, as 05 evaluates the re-ranked model (``rerank=False``, ``--no-rerank``: cosine
            only); ``score`` stays the cosine, JSONL adds the re-ranked items' ``rerank_score``.

A gallery (``fusionkit gallery BUNDLE FOLDER_OR_MANIFEST --out DIR``) is ``DIR/gallery.safetensors``
(``embeddings``: ``(N, E)``, L2-normalised; version 2 adds ``features``, the items' encoder
features, which the matcher re-scores) + ``DIR/gallery.json`` (``format`` ``fusionkit.gallery``,
``version``, the modality, the items' ids and paths / texts, the sha256 of the bundle's weights - a
gallery built with another model is refused - and the rows skipped). A version-1 gallery still
loads; it is searched without re-ranking (with a warning).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from fusionkit import __version__, bundle
from fusionkit.bundle import BundleError
from fusionkit.data.base import DatasetError, atomic_write_text, sha256_file
from fusionkit.data.readers import read_json
from fusionkit.predict import Inputs, Predictions, Predictor, Row, resolve_bundle
from fusionkit.tasks.bundles import TaskSpec, load_task, task_of

GALLERY_FORMAT = "fusionkit.gallery"
GALLERY_VERSION = 2
GALLERY_WEIGHTS = "gallery.safetensors"
GALLERY_META = "gallery.json"
#: galleries at least this large are searched with faiss when it is installed (exact either way)
FAISS_MIN = 200_000
TOP_ANSWERS = 5


def load_predictor(path: str | os.PathLike, device: str | None = None, gallery: str | os.PathLike | None = None,
                   beam: bool = False, rerank: bool = True) -> Predictor:  # fmt: skip
    """The predictor of the bundle at ``path``: a classifier's (:meth:`Predictor.load`) or a task's
    (:class:`TaskPredictor`; ``gallery`` and ``rerank`` for retrieval, ``beam`` for captioning)."""
    path = resolve_bundle(path)  # a wandb: model artifact is downloaded once, here
    weights = bundle.weights_file(path)
    task = task_of(bundle.read_meta(weights)) if weights.is_file() else None
    if task is None:
        if gallery is not None or beam:
            raise BundleError(f"--{'gallery' if gallery is not None else 'beam'}: {path} is not a task bundle "
                              "(galleries are for retrieval, beam search for captioning)")  # fmt: skip
        return Predictor.load(path, device=device)
    if task == "retrieval" and gallery is None:  # said before the encoders load
        raise BundleError(
            f"{weights.parent}: a retrieval bundle searches a gallery; build one with `fusionkit gallery "
            f"{weights.parent} FOLDER_OR_MANIFEST --out GALLERY_DIR` and pass --gallery GALLERY_DIR"
        )
    return TaskPredictor.load(weights, device=device, gallery=gallery, beam=beam, rerank=rerank)


class TaskPredictor(Predictor):
    """A task bundle's model and encoders, loaded once; the rows read, checked and encoded as a
    classifier's (:meth:`Predictor.encode`), then captioned, answered or searched (module docstring)."""

    def __init__(self, folder: Path, model, spec: TaskSpec, encoders: dict, device: torch.device, extra: Any = None,
                 gallery: Gallery | None = None, beam: bool = False, rerank: bool = True) -> None:  # fmt: skip
        super().__init__(folder, model, spec, encoders, device)
        self.spec: TaskSpec = spec
        self.task, self.extra, self.gallery, self.beam = spec.task, extra, gallery, beam
        #: retrieval: the matcher re-ranks the gallery's top candidates (the bundle has one, the
        #: gallery holds its items' features, and ``rerank``)
        self.matcher = extra if spec.task == "retrieval" and rerank else None
        if self.matcher is not None:
            self.matcher = self.matcher.to(device).eval()
            if gallery is not None and gallery.features is None:
                print("[fusionkit] warning: the gallery was built by an older fusionkit (no item features): "
                      "searched without re-ranking; build it again to re-rank", file=sys.stderr)  # fmt: skip
                self.matcher = None
        self.outputs = spec.outputs
        self.top_k = 5  # retrieval: gallery items per query
        if self.task == "retrieval" and gallery is not None:  # the queries are what the gallery is not
            self.kinds = {m: k for m, k in self.kinds.items() if m != gallery.modality}
        self.required = tuple(sorted(self.kinds)) if self.task != "retrieval" else ()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, gallery: str | os.PathLike | None = None,
             beam: bool = False, rerank: bool = True) -> TaskPredictor:  # fmt: skip
        weights, dev = cls._open(path, device)
        model, spec, extra = load_task(weights)
        if gallery is not None and spec.task != "retrieval":
            raise BundleError(f"--gallery: {weights.parent} is a {spec.task} bundle; galleries are for retrieval")
        if beam and spec.task != "captioning":
            raise BundleError(f"--beam: {weights.parent} is a {spec.task} bundle; beam search is for captioning")
        g = read_gallery(gallery, weights) if gallery is not None else None
        needed = [m for m in spec.in_dims if g is None or m != g.modality]  # a gallery's items are encoded already
        encoders = bundle.load_encoder_entries(weights.parent, spec.encoders, needed)
        return cls(weights.parent, model.to(dev).eval(), spec, encoders, dev, extra, g, beam, rerank)

    def missing_hint(self, modality: str) -> str:
        if modality == "question":
            return "pass --question or a 'question' column"
        return super().missing_hint(modality)

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {"task": s.task, "model": s.model, "modalities": self.kinds, "columns": self.columns(),
                "encoders": {m: {k: e.get(k) for k in ("encoder", "options", "weights", "output")}
                             for m, e in s.encoders.items()},
                "dataset": s.dataset, "metrics": s.metrics, "device": str(self.device)}  # fmt: skip

    def ask(self, inputs: Inputs, question: str | None) -> Inputs:
        """VQA: ``question`` for every row that has none (``--question`` with a folder or a manifest)."""
        if question is None:
            return inputs
        if self.task != "vqa":
            raise DatasetError(f"--question: {self.folder} is a {self.task} bundle; questions are for VQA")
        if not question.strip():
            raise DatasetError("--question: empty; expected a question")
        for row in inputs.rows:
            row.values.setdefault("question", question)
        return inputs

    def predict(self, inputs: Inputs, progress: bool = False, batch_size: int = 512) -> Predictions:
        if self.task == "retrieval" and self.gallery is None:
            raise BundleError(
                f"{self.folder}: a retrieval bundle searches a gallery; build one with `fusionkit gallery "
                f"{self.folder} FOLDER_OR_MANIFEST --out GALLERY_DIR` and pass --gallery GALLERY_DIR"
            )
        rows, feats, issues, unknown = self.encode(inputs, progress)
        if self.task == "retrieval":  # a row with neither an image nor a text was skipped by encode
            records, flat = self._search(rows, feats, batch_size)
        else:
            records, flat = (self._caption if self.task == "captioning" else self._answer)(rows, feats, batch_size)
        return Predictions(records, issues, [], sorted(self.kinds), False, unknown, flat)

    @torch.inference_mode()
    def _caption(self, rows: list[Row], feats: list[dict], batch_size: int):
        from fusionkit.tasks.captioning.search import generate

        if not rows:
            return [], []
        grid = torch.stack([f["image"] for f in feats]).float()
        pooled = grid.mean(1) if self.spec.meta.get("pooled_dim") else None  # export checked: grid-mean
        dec = self.spec.meta.get("decode") or {}
        kw = {"method": "beam", "beam_size": int(dec.get("beam_size", 3)),
              "length_penalty": float(dec.get("length_penalty", 1.0))} if self.beam else {"method": "greedy"}  # fmt: skip
        gen = generate(self.model, grid.to(self.device), None if pooled is None else pooled.to(self.device),
                       batch_size=batch_size, **kw)  # fmt: skip
        captions = self.extra.decode_batch(gen.tokens)
        records = [{"id": r.id, "prediction": c} for r, c in zip(rows, captions, strict=True)]
        return records, [dict(r) for r in records]

    @torch.inference_mode()
    def _answer(self, rows: list[Row], feats: list[dict], batch_size: int):
        records = []
        for s in range(0, len(rows), batch_size):
            chunk = feats[s : s + batch_size]
            images = torch.stack([f["image"] for f in chunk]).float().to(self.device)
            questions = torch.stack([f["question"] for f in chunk]).float().to(self.device)
            probs = torch.softmax(self.model(images, questions).float().cpu(), dim=1)
            top = probs.topk(min(TOP_ANSWERS, probs.shape[1]), dim=1)
            for j, row in enumerate(rows[s : s + batch_size]):
                answers = {self.extra.answers[int(i)]: float(p) for p, i in zip(top.values[j], top.indices[j])}
                best = next(iter(answers))
                records.append({"id": row.id, "question": row.values["question"], "prediction": best,
                                "probability": answers[best], "answers": answers})  # fmt: skip
        return records, [{k: r[k] for k in ("id", "question", "prediction", "probability")} for r in records]

    def _search(self, rows: list[Row], feats: list[dict], batch_size: int, k: int | None = None):
        g = self.gallery
        k = min(int(k or self.top_k), len(g.ids))
        (m,) = self.kinds
        rr = self.spec.meta.get("rerank") or {}
        n_re = min(int(rr.get("k", 0)), len(g.ids)) if self.matcher is not None else 0
        records, flat = [], []
        with torch.inference_mode():
            for s in range(0, len(rows), batch_size):
                chunk = torch.stack([f[m] for f in feats[s : s + batch_size]]).float().to(self.device)
                q = (self.model.encode_image if self.kinds[m] == "image" else self.model.encode_text)(chunk)
                scores, idx = g.search(q.float().cpu(), max(k, n_re))
                new = None
                if n_re:
                    scores, idx, new = self._rerank(chunk.cpu(), self.kinds[m], scores, idx, n_re, float(rr["mix"]))
                scores, idx = scores[:, :k], idx[:, :k]
                for j, row in enumerate(rows[s : s + batch_size]):
                    matches = [{"id": g.ids[int(i)], "item": g.items[int(i)], "score": float(v)}
                               for v, i in zip(scores[j], idx[j])]  # fmt: skip
                    if new is not None:
                        for hit, v in zip(matches, new[j]):
                            hit["rerank_score"] = float(v)
                    records.append({"id": row.id, "matches": matches})
                    f: dict[str, Any] = {"id": row.id}
                    for r, hit in enumerate(matches, 1):
                        f[f"match_{r}"], f[f"score_{r}"] = hit["id"], hit["score"]
                    flat.append(f)
        return records, flat

    def _rerank(self, query: torch.Tensor, kind: str, scores: torch.Tensor, idx: torch.Tensor, n: int, mix: float):
        """The top ``n`` of each query's candidates re-ordered by the matcher (stable: equal scores
        keep the cosine order), the rest after them: (cosines, indices, the re-ranked ``(Q, n)``
        scores), all in the new order."""
        from fusionkit.tasks.retrieval import rescore

        cand = self.gallery.features[idx[:, :n]]  # (Q, n, D) the candidates' encoder features
        mine = query[:, None].expand(-1, n, -1)
        image, text = (mine, cand) if kind == "image" else (cand, mine)
        new = rescore(self.matcher, image.to(self.device), text.to(self.device), scores[:, :n].to(self.device),
                      mix).cpu()  # fmt: skip
        order = torch.sort(new, dim=1, descending=True, stable=True).indices
        top_idx, top_cos = idx[:, :n].gather(1, order), scores[:, :n].gather(1, order)
        return torch.cat([top_cos, scores[:, n:]], 1), torch.cat([top_idx, idx[:, n:]], 1), new.gather(1, order)

    def embed(self, inputs: Inputs, modality: str, progress: bool = False, batch_size: int = 512):
        """Retrieval: the dual encoder's embeddings of ``inputs``' ``modality`` (what a gallery
        holds): (rows kept, ``(N, E)`` embeddings, ``(N, D)`` encoder features, rows skipped)."""
        kinds, self.kinds = self.kinds, {modality: self.spec.kinds[modality]}
        try:
            rows, feats, issues, _ = self.encode(inputs, progress)
        finally:
            self.kinds = kinds
        enc = self.model.encode_image if self.spec.kinds[modality] == "image" else self.model.encode_text
        out, raw = [], []
        with torch.inference_mode():
            for s in range(0, len(rows), batch_size):
                x = torch.stack([f[modality] for f in feats[s : s + batch_size]]).float()
                raw.append(x)
                out.append(enc(x.to(self.device)).float().cpu())
        emb = torch.cat(out) if out else torch.zeros(0, 0)
        return rows, emb, (torch.cat(raw) if raw else torch.zeros(0, 0)), issues


# ---------------------------------------------------------------------------- galleries
class Gallery:
    """A gallery's embeddings (``(N, E)``, L2-normalised), its items' ids and paths / texts, and modality."""

    def __init__(self, embeddings: torch.Tensor, ids: list[str], items: list[str], modality: str,
                 features: torch.Tensor | None = None) -> None:  # fmt: skip
        self.embeddings, self.ids, self.items, self.modality = embeddings, ids, items, modality
        self.features = features  # (N, D) the items' encoder features (version 2; what the matcher scores)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) ``(Q, k)`` of the ``k`` most similar items to each query, best first (exact)."""
        if len(self.ids) >= FAISS_MIN:
            try:
                import faiss  # optional: not a dependency
            except ImportError:
                faiss = None
            if faiss is not None:
                index = faiss.IndexFlatIP(self.embeddings.shape[1])
                index.add(self.embeddings.numpy())
                d, i = index.search(queries.contiguous().numpy(), k)
                return torch.from_numpy(d), torch.from_numpy(i)
        return (queries @ self.embeddings.T).topk(k, dim=1)


def build_gallery(predictor: TaskPredictor, inputs: Inputs, out: str | os.PathLike, modality: str | None = None,
                  progress: bool = False) -> tuple[Path, list]:  # fmt: skip
    """Encode the gallery items of ``inputs`` (images or texts: ``modality``, or the one present)
    and write them to the folder ``out`` (module docstring); returns (its ``gallery.json``, the rows
    skipped). DatasetError when there is nothing to put in it."""
    if predictor.task != "retrieval":
        raise BundleError(f"{predictor.folder}: a {predictor.task} bundle; galleries are built with retrieval bundles")
    given = sorted({m for r in inputs.rows for m, v in r.values.items() if v is not None and m in predictor.spec.kinds})
    if modality is None:
        if len(given) != 1:
            why = f"both {given} given; choose the gallery's with --modality" if given else "no image nor text given"
            raise DatasetError(f"{inputs.source}: {why}")
        modality = given[0]
    if modality not in predictor.spec.kinds:
        raise DatasetError(f"--modality {modality!r}; expected one of {sorted(predictor.spec.kinds)}")
    rows, emb, raw, issues = predictor.embed(inputs, modality, progress)
    if not rows:
        raise DatasetError(f"{inputs.source}: no readable {modality} to put in the gallery ({len(issues)} skipped)")
    root = inputs.root
    items = [str(r.values[modality]) if predictor.spec.kinds[modality] == "text" or root is None
             else str((root / str(r.values[modality])).resolve()) for r in rows]  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.save_tensors(out / GALLERY_WEIGHTS, {"embeddings": emb.contiguous(), "features": raw.contiguous()})
    doc = {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "fusionkit_version": __version__,
           "modality": modality, "kind": predictor.spec.kinds[modality], "n": len(rows), "dim": int(emb.shape[1]),
           "model_sha256": sha256_file(predictor.folder / "model.safetensors"), "bundle": str(predictor.folder),
           "source": inputs.source, "ids": [r.id for r in rows], "items": items,
           "skipped": [i.line() for i in issues]}  # fmt: skip
    atomic_write_text(out / GALLERY_META, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return out / GALLERY_META, issues


def read_gallery(folder: str | os.PathLike, weights: Path) -> Gallery:
    """The gallery in ``folder``, checked: its format and version, built with the bundle whose
    weights are ``weights``, its embeddings readable and as many as its items."""
    folder = Path(folder)
    mp = folder / GALLERY_META
    if not mp.is_file():
        raise BundleError(f"{mp}: not found; build the gallery with `fusionkit gallery BUNDLE FOLDER --out {folder}`")
    doc = read_json(mp, error=BundleError)
    if not isinstance(doc, dict) or doc.get("format") != GALLERY_FORMAT:
        raise BundleError(f"{mp}: not a fusionkit gallery (format {GALLERY_FORMAT!r})")
    if not isinstance(doc.get("version"), int) or doc["version"] > GALLERY_VERSION:
        raise BundleError(f"{mp}: gallery version {doc.get('version')} is newer than this fusionkit {__version__} reads "
                          f"({GALLERY_VERSION}); upgrade fusionkit")  # fmt: skip
    if doc.get("model_sha256") != sha256_file(weights):
        raise BundleError(f"{mp}: built with another model than {weights.parent}; build the gallery again with it")
    tensors = bundle.load_tensors(folder / GALLERY_WEIGHTS)
    emb, feats = tensors.get("embeddings"), tensors.get("features")
    try:
        ids, items, modality = list(doc["ids"]), list(doc["items"]), str(doc["modality"])
    except (KeyError, TypeError) as e:
        raise BundleError(f"{mp}: missing or malformed field {e}") from e
    if emb is None or emb.dim() != 2 or len(emb) != len(ids) or len(items) != len(ids):
        raise BundleError(f"{folder / GALLERY_WEIGHTS}: does not hold the {len(ids)} embeddings {mp.name} lists")
    if doc["version"] >= 2 and (feats is None or feats.dim() != 2 or len(feats) != len(ids)):
        raise BundleError(f"{folder / GALLERY_WEIGHTS}: does not hold the {len(ids)} item features {mp.name} lists")
    return Gallery(emb.float(), [str(i) for i in ids], [str(i) for i in items], modality,
                   None if feats is None else feats.float())  # fmt: skip


__all__ = ["Gallery", "TaskPredictor", "build_gallery", "load_predictor", "read_gallery"]
