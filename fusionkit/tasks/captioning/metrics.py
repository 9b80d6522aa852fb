"""Caption metrics with pycocoevalcap (the scorers the COCO caption evaluation server runs).

:func:`caption_metrics` is COCOEvalCap's ``evaluate`` without the COCO API objects: the references
and the predictions are PTB-tokenised (Stanford PTBTokenizer, lower-cased, punctuation dropped),
then scored *corpus-level* by BLEU-1..4 (``option='closest'``), METEOR 1.5, ROUGE-L and CIDEr-D
(IDF over the evaluated references), and SPICE when the Stanford CoreNLP models it needs are
installed (otherwise it is skipped and the result says so in ``notes``).

Java: the PTB tokenizer and METEOR run ``java`` subprocesses. METEOR's JVM takes seconds to start
(it loads a paraphrase table), so one METEOR process is started on first use and reused by every
later call in the process (:func:`meteor_scorer`; :func:`close_meteor` stops it). The PTB tokenizer
runs once per call, on the references and the predictions together.

``tokenize="simple"`` swaps the PTB tokenizer for a Java-free approximation (lower-case, words of
letters/digits/apostrophes): the training loop uses it (with CIDEr only) for validation each epoch.
Report numbers with the default, ``"ptb"``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALL_METRICS",
    "caption_metrics",
    "close_meteor",
    "consensus_scores",
    "meteor_scorer",
    "simple_tokenize",
    "spice_available",
]

ALL_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")

_METEOR = None
_METEOR_LOCK = threading.Lock()


def meteor_scorer():
    """The process-wide pycocoevalcap ``Meteor`` (its Java process started on first use, restarted
    if it died)."""
    global _METEOR
    with _METEOR_LOCK:
        if _METEOR is None or _METEOR.meteor_p.poll() is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            _METEOR = Meteor()
        return _METEOR


def close_meteor() -> None:
    """Stop the shared METEOR Java process (a later call starts a new one)."""
    global _METEOR
    with _METEOR_LOCK:
        if _METEOR is not None:
            m, _METEOR = _METEOR, None
            m.__del__()


def _spice_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__))) / "spice"


def spice_available() -> tuple[bool, str]:
    """(True, "") when SPICE can run offline; else (False, why). SPICE needs Stanford CoreNLP 3.6.0
    and its models in ``pycocoevalcap/spice/lib`` (pycocoevalcap downloads them on first use, which
    an offline machine cannot do) and Java."""
    import shutil

    lib = _spice_dir() / "lib"
    need = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        return False, (
            f"SPICE skipped: {', '.join(missing)} not found in {lib} (run "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models; "
            "get_stanford_models()'` once with network access)"
        )
    if shutil.which("java") is None:
        return False, "SPICE skipped: no `java` on PATH"
    return True, ""


_SIMPLE = re.compile(r"[a-z0-9']+")


def simple_tokenize(text: str) -> str:
    """Java-free stand-in for the PTB tokenizer: lower-case words of letters, digits, apostrophes."""
    return " ".join(_SIMPLE.findall(text.lower()))


def _check_inputs(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]) -> list:
    if not references:
        raise ValueError("caption_metrics: no references")
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise ValueError(
            f"caption_metrics: predictions and references must cover the same images; "
            f"no prediction for {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"no references for {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    ids = list(references)
    for k in ids:
        refs = references[k]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"caption_metrics: image {k!r}: expected a non-empty list of reference strings")
        if not isinstance(predictions[k], str):
            raise ValueError(f"caption_metrics: image {k!r}: prediction must be a string, got {predictions[k]!r}")
    return ids


def tokenize_captions(
    references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str], tokenize: str = "ptb"
) -> tuple[dict, dict]:
    """(gts, res) in the scorers' format ``{id: [tokenised str, ...]}``, ``{id: [tokenised str]}``."""
    ids = list(references)
    if tokenize == "simple":
        gts = {k: [simple_tokenize(r) for r in references[k]] for k in ids}
        res = {k: [simple_tokenize(predictions[k])] for k in ids}
        return gts, res
    if tokenize != "ptb":
        raise ValueError(f"tokenize={tokenize!r}; expected 'ptb' or 'simple'")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one JVM for both sides: the tokenizer works line by line (-preserveLines), so this equals two calls
    both: dict[Any, list[dict[str, str]]] = {}
    for n, k in enumerate(ids):
        both[("g", n)] = [{"caption": r} for r in references[k]]
        both[("r", n)] = [{"caption": predictions[k]}]
    out = PTBTokenizer().tokenize(both)
    gts = {k: out[("g", n)] for n, k in enumerate(ids)}
    res = {k: out[("r", n)] for n, k in enumerate(ids)}
    return gts, res


def caption_metrics(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    *,
    metrics: Iterable[str] = ALL_METRICS,
    tokenize: str = "ptb",
    per_image: bool = False,
) -> dict[str, Any]:
    """Corpus-level caption metrics of ``predictions`` (one caption per image id) against
    ``references`` (a list of captions per image id), computed by pycocoevalcap.

    ``metrics``: any of ``"BLEU"`` (gives BLEU-1..4), ``"METEOR"``, ``"ROUGE-L"``, ``"CIDEr"``,
    ``"SPICE"`` (run only when :func:`spice_available`; otherwise skipped with a note).
    Returns ``{"BLEU-1": ..., "BLEU-4": ..., "METEOR": ..., "ROUGE-L": ..., "CIDEr": ...,
    "n_images": N, "notes": [...]}`` (scores as fractions, CIDEr on its usual 0-10 scale) and, with
    ``per_image=True``, ``"per_image": {id: {metric: score}}``. Raises ``ValueError`` naming the
    ids when predictions and references do not cover the same images."""
    ids = _check_inputs(references, predictions)
    wanted = list(metrics)
    unknown = set(wanted) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"caption_metrics: unknown metric(s) {sorted(unknown)}; valid: {ALL_METRICS}")
    gts, res = tokenize_captions(references, predictions, tokenize)
    out: dict[str, Any] = {}
    per: dict[Hashable, dict[str, float]] = {k: {} for k in ids}
    notes: list[str] = []

    def put(name: str, score: float, scores: Sequence[float]) -> None:
        out[name] = float(score)
        for k, s in zip(ids, scores):
            per[k][name] = float(s)

    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for name, s, ss in zip(BLEU_KEYS, score, scores):
            put(name, s, ss)
    if "METEOR" in wanted:
        score, scores = meteor_scorer().compute_score(gts, res)
        put("METEOR", score, scores)
    if "ROUGE-L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        score, scores = Rouge().compute_score(gts, res)
        put("ROUGE-L", score, scores)
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        score, scores = Cider().compute_score(gts, res)
        put("CIDEr", score, scores)
    if "SPICE" in wanted:
        ok, why = spice_available()
        if ok:
            from pycocoevalcap.spice.spice import Spice

            score, scores = Spice().compute_score(gts, res)
            put("SPICE", score, [s["All"]["f"] for s in scores])
        else:
            notes.append(why)
    out["n_images"] = len(ids)
    out["notes"] = notes
    if per_image:
        out["per_image"] = per
    return out


def consensus_scores(
    references: Mapping[Hashable, Sequence[str]], tokenize: str = "simple"
) -> dict[Hashable, list[float]]:
    """For every caption of every image, its CIDEr-D against the image's *other* captions (IDF over
    all the leave-one-out reference sets): how typical the caption is of its image. Images with a
    single caption get 0. Used by the nearest-neighbour baseline to pick the consensus caption."""
    from pycocoevalcap.cider.cider import Cider

    gts, res, keys = {}, {}, []
    for k, caps in references.items():
        if len(caps) < 2:
            continue
        for j, c in enumerate(caps):
            key = (len(keys), j)
            keys.append((k, j))
            others = [r for i, r in enumerate(caps) if i != j]
            if tokenize == "simple":
                gts[key], res[key] = [simple_tokenize(r) for r in others], [simple_tokenize(c)]
            else:
                gts[key], res[key] = others, [c]
    out: dict[Hashable, list[float]] = {k: [0.0] * len(caps) for k, caps in references.items()}
    if not gts:
        return out
    if tokenize == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": r} for r in v] for k, v in gts.items()})
        res = tok.tokenize({k: [{"caption": r} for r in v] for k, v in res.items()})
    _, scores = Cider().compute_score(gts, res)
    for (k, j), s in zip(keys, np.asarray(scores).tolist()):
        out[k][j] = float(s)
    return out
