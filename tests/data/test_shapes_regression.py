"""The shapes dataset's regression target ``score`` and tabular modality ``record``
(fusionkit.data.shapes, shapes_scene): the documented R^2 ceilings recomputed from what the
record and the scene attributes hold, the option that writes the record, and the record's
information surviving the tabular encoder."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from fusionkit.data import shapes
from fusionkit.data import shapes_scene as sc
from fusionkit.data.base import DatasetError, load_dataset, target_kind
from fusionkit.encoders import build_encoder


def _draws(n: int = 6000):
    """(has_red, tone, score, record) of ``n`` scenes drawn the way the generator draws them."""
    rows = []
    for i in range(n):
        has_red, tone = i % 2, (i // 2) % 3
        score, record = sc.score_and_record(has_red, tone, sc._rng(7, i, 7))
        rows.append((has_red, tone, score, record))
    return rows


def test_score_ceilings_are_what_the_modalities_show():
    """For every subset of the modalities, two predictors read the parts those modalities show
    back from the scene and the record, not from the generator's formula: least squares on them,
    and the documented oracle (``score_oracle_r2``); both explain the documented share of the
    score's variance."""
    rows = _draws()
    scenes = [{"has_red": h, "tone": sc.TONES[t], sc.SCORE: y, sc.TABULAR: r} for h, t, y, r in rows]
    y = np.array([r[2] for r in rows])
    parts = {
        "has_red": np.array([r[0] for r in rows], dtype=float),
        "tone": np.array([r[1] for r in rows], dtype=float),
        "dose": np.array([r[3]["dose"] for r in rows]),
        "site": np.array([sc.SITES.index(r[3]["site"]) for r in rows], dtype=float),
    }
    ceil = sc.score_ceilings(tabular=True)
    mods = ["audio", "image", sc.TABULAR, "text"]
    for k in range(1, 5):
        for sub in itertools.combinations(mods, k):
            shown = [p for p, (_, where) in sc.SCORE_PARTS.items() if p in parts and set(where) & set(sub)]
            x = np.column_stack([np.ones(len(y)), *(parts[p] for p in shown)])
            resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            assert 1 - resid.var() / y.var() == pytest.approx(ceil["+".join(sub)], abs=0.02), sub
            assert sc.score_oracle_r2(scenes, sub) == pytest.approx(ceil["+".join(sub)], abs=0.02), sub
    assert ceil["late"] == ceil["fused"] == ceil["audio+image+record+text"]
    without = sc.score_ceilings(tabular=False)
    assert sc.TABULAR not in "".join(without) and without["fused"] == pytest.approx(ceil["audio+image"])
    assert without["fused"] < ceil["fused"] - 0.3  # the record carries a large part


def test_the_age_column_is_a_distractor_and_sometimes_missing():
    rows = _draws(3000)
    ages = [r[3]["age"] for r in rows]
    missing = sum(a is None for a in ages) / len(ages)
    assert missing == pytest.approx(sc.AGE_MISSING, abs=0.02)
    known = [(a, r[2]) for a, r in zip(ages, rows, strict=True) if a is not None]
    assert abs(np.corrcoef(*zip(*known, strict=True))[0, 1]) < 0.06


@pytest.fixture(scope="module")
def tab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_tab") / "ds"
    shapes.generate(root, n=240, seed=3, image_size=32, tabular=True, progress=False)
    return root


def test_tabular_option_writes_the_record_and_leaves_the_rest_unchanged(tab_root, tmp_path):
    ds = load_dataset(tab_root)
    assert ds.modalities[sc.TABULAR] == "tabular"
    assert ds.tabular == {sc.TABULAR: sc.TABULAR_COLUMNS}
    assert target_kind(ds.targets[sc.SCORE]) == "regression"
    assert ds.info["r2_ceilings"][sc.SCORE] == sc.score_ceilings(tabular=True)
    assert any(s.modalities[sc.TABULAR]["age"] is None for s in ds.samples)
    plain = load_dataset(shapes.generate(tmp_path / "plain", n=240, seed=3, image_size=32, progress=False).root)
    assert sc.TABULAR not in plain.modalities and not plain.tabular
    assert plain.info["r2_ceilings"][sc.SCORE] == sc.score_ceilings(tabular=False)
    # the same scenes, the same score, the same files: the option adds the record only
    for a, b in zip(ds.samples, plain.samples, strict=True):
        assert a.targets == b.targets
        assert {k: v for k, v in a.modalities.items() if k != sc.TABULAR} == b.modalities
        assert (tab_root / a.modalities["image"]).read_bytes() == (plain.root / b.modalities["image"]).read_bytes()
    scenes = [json.loads(line) for line in (tab_root / "scenes.jsonl").read_text().splitlines()]
    assert [s[sc.SCORE] for s in scenes] == [s.targets[sc.SCORE] for s in ds.samples]


def test_the_record_reaches_its_ceiling_through_the_tabular_encoder(tab_root):
    """Ridge regression on the tabular encoder's features of the record, fitted on train, scores
    the record's documented R^2 on the other splits (within sampling error)."""
    ds = load_dataset(tab_root)
    enc = build_encoder("tabular")
    enc.fit_dataset(ds, sc.TABULAR)

    def xy(split):
        samples = ds.split(split)
        x = torch.stack([enc.load(s.modalities[sc.TABULAR]) for s in samples])
        return x, torch.tensor([s.targets[sc.SCORE] for s in samples])

    (xt, yt), (xv, yv) = xy("train"), xy("val")
    xv, yv = torch.cat([xv, xy("test")[0]]), torch.cat([yv, xy("test")[1]])
    w = torch.linalg.solve(xt.T @ xt + 1e-3 * torch.eye(xt.shape[1]), xt.T @ yt)
    r2 = 1 - float(((yv - xv @ w) ** 2).mean() / yv.var(unbiased=False))
    assert r2 == pytest.approx(sc.score_ceilings(tabular=True)[sc.TABULAR], abs=0.12)


def test_tabular_must_be_a_bool(tmp_path):
    with pytest.raises(DatasetError, match="tabular"):
        shapes.generate(tmp_path / "x", n=6, image_size=32, tabular="yes", progress=False)


def test_validate_checks_the_score_and_the_record(tab_root, tmp_path):
    shapes.validate(tab_root)  # the generated folder passes
    for mutate, match in (
        (lambda row: row.update(score=row["score"] + 0.5), "score"),
        (lambda row: row[sc.TABULAR].update(site="south" if row[sc.TABULAR]["site"] != "south" else "east"), "record"),
    ):
        copy = tmp_path / f"c{match}"
        shutil.copytree(tab_root, copy)
        lines = (copy / "manifest.jsonl").read_text().splitlines()
        first = json.loads(lines[0])
        mutate(first)
        (copy / "manifest.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
        with pytest.raises(DatasetError, match=match):
            shapes.validate(copy)
    scenes = (tab_root / "scenes.jsonl").read_text().splitlines()
    bad = json.loads(scenes[0])
    bad[sc.SCORE] += 2.0
    bad_root = tmp_path / "cnoise"
    shutil.copytree(tab_root, bad_root)
    (bad_root / "scenes.jsonl").write_text("\n".join([json.dumps(bad), *scenes[1:]]) + "\n")
    lines = (bad_root / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["score"] = bad[sc.SCORE]  # the manifest agrees with the scene, but the score is not its parts + noise
    (bad_root / "manifest.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match="away from has_red"):
        shapes.validate(bad_root)
