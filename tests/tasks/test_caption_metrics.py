"""caption_metrics equals pycocoevalcap's own scorers on the same inputs (Java: the PTB tokenizer
and METEOR run once per module)."""

from __future__ import annotations

import shutil

import pytest

from fusionkit.tasks.captioning import metrics as M

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer and METEOR need java"
)

REFS = {
    "img1": [
        "A red circle left of a blue square.",
        "a red disc and a blue box",
        "Two shapes: red circle, blue square.",
    ],
    "img2": ["A big yellow star.", "a large yellow star on a plain background", "one yellow star"],
    7: ["Three green triangles!", "three green triangles in a row", "some green triangles"],
    "img4": ["a purple rhombus above a cyan circle", "A purple diamond, a cyan disc.", "purple and cyan shapes"],
}
PREDS = {
    "img1": "a red circle and a blue square",
    "img2": "A yellow star.",
    7: "two green triangles",
    "img4": "",
}


@pytest.fixture(scope="module")
def ours():
    return M.caption_metrics(REFS, PREDS, per_image=True)


@pytest.fixture(scope="module")
def direct():
    """COCOEvalCap.evaluate's steps, called on pycocoevalcap directly."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    out = {}
    b, bs = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU-{n + 1}"] = (b[n], bs[n])
    out["METEOR"] = M.meteor_scorer().compute_score(gts, res)  # pycocoevalcap's Meteor (one JVM per module)
    out["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    return out, gts, res


def test_metrics_equal_pycocoevalcap(ours, direct):
    ref, _, _ = direct
    ids = list(REFS)
    for name, (score, scores) in ref.items():
        assert ours[name] == pytest.approx(float(score), abs=1e-12), name
        for k, s in zip(ids, list(scores)):
            assert ours["per_image"][k][name] == pytest.approx(float(s), abs=1e-12), (name, k)
    assert ours["n_images"] == 4
    assert 0 < ours["BLEU-4"] < ours["BLEU-1"] <= 1 and ours["CIDEr"] > 0 and 0 < ours["METEOR"] < 1
    assert ours["per_image"]["img4"]["CIDEr"] == 0.0  # the empty prediction scores 0


def test_ptb_tokenisation_is_used(direct):
    _, gts, res = direct
    # PTB: lower case, punctuation removed - what every scorer above saw
    assert gts["img1"][0] == "a red circle left of a blue square" and res["img2"] == ["a yellow star"]
    ours_gts, ours_res = M.tokenize_captions(REFS, PREDS)
    assert ours_gts == gts and ours_res == res


def test_spice_is_skipped_with_a_note_when_its_models_are_missing(ours):
    ok, why = M.spice_available()
    if ok:
        assert "SPICE" in ours
    else:
        assert "SPICE" not in ours and any("SPICE skipped" in n for n in ours["notes"]) and why in ours["notes"]


def test_input_errors_name_the_images():
    with pytest.raises(ValueError, match=r"no prediction for \['img2'"):
        M.caption_metrics(REFS, {k: v for k, v in PREDS.items() if k != "img2"}, tokenize="simple")
    with pytest.raises(ValueError, match=r"no references for \['extra'\]"):
        M.caption_metrics(REFS, {**PREDS, "extra": "x"}, tokenize="simple")
    with pytest.raises(ValueError, match="image 'img1': expected a non-empty list"):
        M.caption_metrics({**REFS, "img1": []}, PREDS, tokenize="simple")
    with pytest.raises(ValueError, match="unknown metric"):
        M.caption_metrics(REFS, PREDS, metrics=("BLEURT",), tokenize="simple")


def test_simple_tokenisation_needs_no_java():
    out = M.caption_metrics(REFS, PREDS, metrics=("BLEU", "CIDEr"), tokenize="simple")
    assert set(out) >= {"BLEU-1", "BLEU-4", "CIDEr"} and "METEOR" not in out
    perfect = M.caption_metrics(REFS, {k: v[0] for k, v in REFS.items()}, metrics=("BLEU",), tokenize="simple")
    assert perfect["BLEU-1"] == pytest.approx(1.0)
