"""The shapes dataset's targets by interaction type (fusionkit.data.shapes, shapes_scene): the
balanced design, what each modality's raw files show (corruption and fades included), what
validate catches, the documented ceilings recomputed from the design's cells, and trainings that
show the ceilings' direction."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from fusionkit.data import shapes, shapes_validate
from fusionkit.data import shapes_scene as sc
from fusionkit.data.base import SPLITS, DatasetError, load_dataset

N = 240  # one period of the corruption and the bits; the fades are exact only at 1200 (or 150)
SIZE = 48
ATTRS = ("has_red", "tone", "hiss", "signal", "marker", "corruption", "fade")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_targets") / "ds"
    shapes.generate(root, n=N, seed=1, image_size=SIZE, progress=False)
    return root


def _scenes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]


def _cells(d: dict[str, np.ndarray]) -> Counter:
    return Counter(zip(*(d[k].tolist() for k in ATTRS), strict=True))


def _scene_cells(scenes: list[dict]) -> Counter:
    return Counter(
        (
            s["has_red"],
            shapes.TONES.index(s["tone"]),
            shapes.HISS.index(s["hiss"]),
            shapes.SIGNALS.index(s["signal"]),
            shapes.MARKERS.index(s["marker"]),
            shapes.CORRUPTIONS.index(s["corrupted"]),
            shapes.FADES.index(s["faded"]),
        )
        for s in scenes
    )


# ------------------------------------------------------------------------------------- design
def test_design_is_exactly_balanced_and_independent_for_1200():
    d = sc.design(1200)
    assert ((3 * d["has_red"] + d["tone"]) == np.arange(1200) % 6).all()  # the labels of generator v2
    share = {0: 3 / 5, 1: 1 / 5, 2: 1 / 5}
    want = {
        cell: 1200 / 48 * share[cell[5]] * share[cell[6]]
        for cell in itertools.product((0, 1), (0, 1, 2), (0, 1), (0, 1), (0, 1), (0, 1, 2), (0, 1, 2))
    }
    assert _cells(d) == Counter({k: round(v) for k, v in want.items()})  # every combination, in proportion
    assert _cells(sc.design(2400)) == Counter({k: 2 * round(v) for k, v in want.items()})
    off = sc.design(1200, fades=False)
    assert not off["fade"].any() and all((off[k] == d[k]).all() for k in ATTRS if k != "fade")


@pytest.mark.parametrize("n", [36, 150, 240, 1000])
def test_design_stays_near_balance_for_other_sizes(n):
    d = sc.design(n)
    if n % 6 == 0:
        assert Counter(d["has_red"].tolist()) == {0: n // 2, 1: n // 2}
        assert Counter(d["tone"].tolist()) == {t: n // 3 for t in range(3)}
    for key, bound in (("hiss", 6), ("signal", 12), ("marker", 24)):
        assert abs(int(d[key].sum()) - n / 2) <= bound + 3, (key, int(d[key].sum()))
    for key, bound in (("corruption", 6), ("fade", 30)):  # one block of 6; one run of 5 blocks
        counts = Counter(d[key].tolist())
        assert abs(counts[1] - n / 5) <= bound and abs(counts[2] - n / 5) <= bound, (key, counts)
    if n % 150 == 0:  # one cycle of q % 25: corruption and fade exact
        assert Counter(zip(d["corruption"].tolist(), d["fade"].tolist(), strict=True)) == Counter(
            {(c, f): n * (3 if c == 0 else 1) * (3 if f == 0 else 1) // 25 for c in range(3) for f in range(3)}
        )


def test_splits_deal_the_design_evenly():
    n = 1200
    rng = np.random.default_rng(7)
    order = rng.permutation(n)
    d = {k: v[order] for k, v in sc.design(n).items()}
    labels = 3 * d["has_red"] + d["tone"]
    split = np.array(shapes._assign_splits(labels, rng, (0.7, 0.15, 0.15), order=d["block"]))
    synergy = d["has_red"] ^ d["hiss"]
    targets = {"synergy": synergy, "unique": d["hiss"], "unreliable": d["signal"], "mixed": 2 * synergy + d["signal"]}
    for sp, size in zip(SPLITS, (840, 180, 180), strict=True):
        m = split == sp
        assert m.sum() == size
        assert Counter(labels[m].tolist()) == {c: size // 6 for c in range(6)}
        for t, bound in (("synergy", 0), ("unique", 0), ("unreliable", 4)):  # a random split: ~7 (one sd) at 180
            assert abs(int(targets[t][m].sum()) - size / 2) <= bound, (sp, t)
        assert Counter(d["corruption"][m].tolist()) == {0: size * 3 // 5, 1: size // 5, 2: size // 5}
        assert max(abs(v - size / 4) for v in Counter(targets["mixed"][m].tolist()).values()) <= 2
        assert max(abs(v - size / 5) for k, v in Counter(d["fade"][m].tolist()).items() if k) <= 14


# ------------------------------------------------------------------------ what the files show
def test_scenes_follow_the_design_and_the_targets_the_attributes(root):
    ds, scenes = load_dataset(root), _scenes(root)
    assert _scene_cells(scenes) == _cells(sc.design(N))
    by_id = {s.id: s for s in ds.samples}
    for s in scenes:
        t = by_id[s["id"]].targets
        red, hiss, signal = s["has_red"], shapes.HISS.index(s["hiss"]), shapes.SIGNALS.index(s["signal"])
        assert t["redundant"] == t["has_red"] == red
        assert t["unique"] == hiss and t["unreliable"] == signal
        assert t["synergy"] == red ^ hiss and t["mixed"] == 2 * (red ^ hiss) + signal
    manifest = (root / "manifest.jsonl").read_text()
    assert "corrupt" not in manifest and "fade" not in manifest  # unflagged
    info = ds.info
    assert info["target_ceilings"] == shapes.TARGET_CEILINGS and info["interaction_targets"] == list(
        shapes.INTERACTION_TARGETS
    )
    assert info["informative_modalities"]["unreliable"] == ["audio", "image"]
    assert info["informative_modalities"]["unique"] == ["audio"]


def test_raw_files_show_the_cues_the_corruption_and_the_fades(root):
    """Every PNG and WAV, measured: a corrupted image shows the other marker (its tint), a
    corrupted sound the other code (its hum), so read alone (code XOR marker) each gives the
    wrong signal exactly on its corrupted fifth; faded files lack their cues."""
    contrast, ratio = defaultdict(list), defaultdict(list)
    wrong = Counter()
    for s in _scenes(root):
        marker, signal = shapes.MARKERS.index(s["marker"]), shapes.SIGNALS.index(s["signal"])
        code = signal ^ marker
        img = sc.measure_image_cues(np.asarray(Image.open(root / "images" / f"{s['id']}.png")))
        contrast[s["faded"] == "image"].append(img["stripe_contrast"])
        if s["faded"] != "image":
            shown_code, shown_marker = sc.STRIPES.index(img["stripes"]), sc.TINTS.index(img["tint"])
            assert shown_code == code, s["id"]  # no corruption touches the image's code
            assert shown_marker == marker ^ (s["corrupted"] == "image"), s["id"]
            wrong["image"] += (shown_code ^ shown_marker) != signal
        wave, _ = sf.read(root / "audio" / f"{s['id']}.wav")
        aud = sc.measure_audio_cues(wave)
        ratio[s["faded"] == "audio"].append(aud["hiss_ratio"])
        if s["faded"] != "audio":
            assert aud["hiss"] == s["hiss"], s["id"]
        heard_code = next(i for i, (lo, hi) in enumerate(sc.HUM_BANDS) if lo <= aud["hum_hz"] <= hi)
        heard_marker = next(i for i, (lo, hi) in enumerate(sc.WHISTLE_BANDS) if lo <= aud["whistle_hz"] <= hi)
        assert heard_marker == marker, s["id"]  # no corruption touches the audio's marker
        assert heard_code == code ^ (s["corrupted"] == "audio"), s["id"]
        wrong["audio"] += (heard_code ^ heard_marker) != signal
        assert {k: s["shown"][m]["signal"] for k, m in (("i", "image"), ("a", "audio"))} == {
            "i": shapes.SIGNALS[signal ^ (s["corrupted"] == "image")],
            "a": shapes.SIGNALS[signal ^ (s["corrupted"] == "audio")],
        }
    corrupted = Counter(s["corrupted"] for s in _scenes(root))
    assert corrupted == {"none": N * 3 // 5, "image": N // 5, "audio": N // 5}
    unfaded_corrupted_images = sum(s["corrupted"] == "image" and s["faded"] != "image" for s in _scenes(root))
    assert wrong == {"image": unfaded_corrupted_images, "audio": N // 5}
    # the thresholds validate uses sit well between the files with and without the cue
    assert max(contrast[True]) < sc.STRIPE_CONTRAST / 2 < 2 * sc.STRIPE_CONTRAST < min(contrast[False])
    assert max(ratio[True]) < sc.HISS_RATIO / 2 < 2 * sc.HISS_RATIO < min(ratio[False])


def test_the_corruption_touches_no_cue_of_label_has_red_or_tone(root):
    """A corrupted image differs from its clean rendering in the tint only (red stays red, no
    new red appears); a corrupted sound in its hum only (the tone's pitch is the scene's)."""
    for s in [x for x in _scenes(root) if x["corrupted"] != "none" and x["faded"] == "none"][:6]:
        i = s["imgid"]
        marker, signal = shapes.MARKERS.index(s["marker"]), shapes.SIGNALS.index(s["signal"])
        clean_px, _, _ = sc._render(sc._rng(1, i, 1), s["shapes"], SIZE, signal ^ marker, marker, sc._rng(1, i, 5))
        clean_wave, _ = sc._audio(sc._rng(1, i, 2), s["tone"], s["hiss"], signal ^ marker, marker, sc._rng(1, i, 6))
        px = np.asarray(Image.open(root / "images" / f"{s['id']}.png"), dtype=int)
        wave, _ = sf.read(root / "audio" / f"{s['id']}.wav")
        red = (px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)
        clean_red = (clean_px[..., 0] > 150) & (clean_px[..., 1] < 90) & (clean_px[..., 2] < 90)
        if s["corrupted"] == "image":
            assert (red == clean_red).all() and not np.array_equal(px, clean_px)
            changed = np.abs(px - clean_px.astype(int)).max(axis=-1) > 0
            assert (px[changed][:, 1] == clean_px[changed][:, 1]).mean() > 0.9  # green untouched: a tint
            assert np.abs(wave - np.round(clean_wave * 32767) / 32767).max() < 1e-3
        else:
            assert np.array_equal(px, clean_px)
            spectrum = np.abs(np.fft.rfft(wave))
            lo, hi = shapes.TONE_BANDS[s["tone"]]
            band = (np.fft.rfftfreq(len(wave), 1 / 16000) >= lo) & (np.fft.rfftfreq(len(wave), 1 / 16000) <= hi)
            assert spectrum[band].max() > 5 * spectrum[(np.fft.rfftfreq(len(wave), 1 / 16000) < 180)].max()


# ------------------------------------------------------------------------------------ validate
def _rewrite_manifest(root: Path, i: int, fn) -> None:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[i])
    fn(row)
    lines[i] = json.dumps(row)
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_validate_catches_a_wrong_new_target(copy):
    shapes.validate(copy)

    def flip(row):
        row["synergy"] = 1 - row["synergy"]

    _rewrite_manifest(copy, 7, flip)
    with pytest.raises(DatasetError, match=r"scenes\.jsonl:8 \(id 'shapes_00007'\).*synergy"):
        shapes.validate(copy)


def test_validate_catches_a_corruption_record_the_files_do_not_show(copy):
    scenes = _scenes(copy)
    k = next(i for i, s in enumerate(scenes) if s["corrupted"] == "none" and s["faded"] == "none")
    s = scenes[k]
    s["corrupted"] = "image"  # claimed, with a consistent record - but the PNG shows the true marker
    s["shown"] = sc.shown(shapes.MARKERS.index(s["marker"]), shapes.SIGNALS.index(s["signal"]), "image")
    s["image_cues"]["tint"] = sc.TINTS[s["shown"]["image"]["marker"]]
    (copy / "scenes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in scenes))
    with pytest.raises(DatasetError, match=r"scenes\.jsonl: .*balanced design"):
        shapes.validate(copy)


def test_validate_measures_the_cues_in_the_files(copy):
    scenes = _scenes(copy)
    a = next(s for s in scenes if s["faded"] == "none")
    b = next(s for s in scenes if s["faded"] == "none" and s["image_cues"]["stripes"] != a["image_cues"]["stripes"])
    shutil.copy(copy / "images" / f"{b['id']}.png", copy / "images" / f"{a['id']}.png")
    with pytest.raises(DatasetError, match=rf"{a['id']}\.png.*stripes"):
        shapes.validate(copy)


def test_validate_measures_the_sounds(copy):
    scenes = _scenes(copy)
    a = next(s for s in scenes if s["faded"] != "audio")
    b = next(s for s in scenes if s["shown"]["audio"]["marker"] != a["shown"]["audio"]["marker"])
    shutil.copy(copy / "audio" / f"{b['id']}.wav", copy / "audio" / f"{a['id']}.wav")
    with pytest.raises(DatasetError, match=rf"{a['id']}\.wav.*whistle"):
        shapes.validate(copy)


def test_validate_checks_the_attributes_against_the_design(tmp_path, monkeypatch):
    real = shapes.design

    def no_corruption(n, fades=True):
        d = real(n, fades)
        d["corruption"] = np.zeros_like(d["corruption"])
        return d

    monkeypatch.setattr(shapes, "design", no_corruption)
    monkeypatch.setattr(shapes_validate, "design", no_corruption)
    shapes.generate(tmp_path / "d", n=30, image_size=32, progress=False)
    shapes.validate(tmp_path / "d")  # consistent with the design it was made with
    monkeypatch.setattr(shapes_validate, "design", real)
    with pytest.raises(DatasetError, match=r"scenes\.jsonl: the scenes' .* balanced design for n = 30"):
        shapes.validate(tmp_path / "d")


def test_fades_off_is_a_parameter(tmp_path):
    ds = shapes.generate(tmp_path / "nf", n=30, image_size=32, progress=False, fades=False)
    assert ds.info["params"]["fades"] is False and ds.info["target_ceilings"] == sc.target_ceilings(0.0)
    assert {s["faded"] for s in _scenes(ds.root)} == {"none"}
    shapes.validate(ds.root)
    with pytest.raises(DatasetError, match="fades"):
        shapes.generate(tmp_path / "x", n=6, progress=False, fades="no")


# ------------------------------------------------------------------------------------- ceilings
def _observed(fades: bool = True):
    """(probability, targets, what each modality shows) for every sample of one design period:
    the design's cells, each modality's view as the ceilings' derivation has it."""
    d = sc.design(1200, fades)
    rows = []
    for i in range(1200):
        red, tone, hiss, signal, marker = (int(d[k][i]) for k in ATTRS[:5])
        corrupted, faded = sc.CORRUPTIONS[d["corruption"][i]], sc.FADES[d["fade"][i]]
        show = sc.shown(marker, signal, corrupted)
        image = (red,) + ((None, None) if faded == "image" else (show["image"]["code"], show["image"]["marker"]))
        audio = (tone, None if faded == "audio" else hiss, show["audio"]["code"], show["audio"]["marker"])
        rows.append((sc.targets_of(red, tone, hiss, signal), {"image": image, "text": (red,), "audio": audio}))
    return rows


def _bayes(rows, target: str, modalities: tuple[str, ...]) -> float:
    table: dict = defaultdict(Counter)
    for targets, view in rows:
        table[tuple(view[m] for m in modalities)][targets[target]] += 1
    return sum(max(c.values()) for c in table.values()) / len(rows)


def _late(rows, target: str) -> float:
    """Accuracy (ties split) of the population cross-entropy minimiser over sums of one logit
    vector per modality view."""
    mods = ("image", "text", "audio")
    index = {m: {} for m in mods}
    ids = {m: torch.tensor([index[m].setdefault(v[m], len(index[m])) for _, v in rows]) for m in mods}
    y = torch.tensor([t[target] for t, _ in rows])
    k = int(y.max()) + 1
    torch.manual_seed(0)
    w = {m: (0.01 * torch.randn(len(index[m]), k, dtype=torch.float64)).requires_grad_() for m in mods}
    opt = torch.optim.LBFGS(list(w.values()), max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(sum(w[m][ids[m]] for m in mods), y)
        loss.backward()
        return loss

    opt.step(closure)
    z = sum(w[m][ids[m]] for m in mods).detach()
    ties = z > z.max(dim=1, keepdim=True).values - 1e-3
    return float((ties[torch.arange(len(y)), y] / ties.sum(1)).mean())


@pytest.mark.parametrize("fades", [True, False])
def test_documented_ceilings_are_those_of_the_design(fades):
    rows = _observed(fades)
    documented = sc.target_ceilings(sc.FADED["image"] if fades else 0.0)
    subsets = {
        "image": ("image",),
        "text": ("text",),
        "audio": ("audio",),
        "image+text": ("image", "text"),
        "audio+image": ("audio", "image"),
        "audio+text": ("audio", "text"),
        "fused": ("audio", "image", "text"),
    }
    for target, want in documented.items():
        assert want["chance"] == pytest.approx(1 / len(shapes.TARGETS[target]))
        for key, mods in subsets.items():
            assert _bayes(rows, target, mods) == pytest.approx(want[key], abs=1e-12), (target, key)
    for target in ("label", "synergy", "unreliable", "mixed"):
        assert _late(rows, target) == pytest.approx(documented[target]["late"], abs=2e-3), target
    for target in ("synergy", "unreliable", "mixed"):  # the fused ceiling clears every single modality
        c = documented[target]
        assert c["fused"] - max(c["image"], c["text"], c["audio"]) >= 0.15 - 1e-12, target


# -------------------------------------------------------------------------- trained models agree
def _features(rng: np.random.Generator, rows, noise: float = 0.4) -> dict[str, torch.Tensor]:
    """Features a perfect encoder with a little noise would give: each shown value as 4 dims of
    +-1 (0 when faded), the tone one-hot, 8 dims of pure noise per modality."""

    def block(values, dims=4):
        v = np.array([0.0 if x is None else 2.0 * x - 1 for x in values])[:, None].repeat(dims, 1)
        return v + rng.normal(0, noise, v.shape)

    cols = {m: list(zip(*(view[m] for _, view in rows), strict=True)) for m in ("image", "text", "audio")}
    tone = np.eye(3)[np.array(cols["audio"][0])].repeat(2, 1) + rng.normal(0, noise, (len(rows), 6))
    out = {
        "image": np.hstack([block(c) for c in cols["image"]] + [rng.normal(0, 1, (len(rows), 8))]),
        "text": np.hstack([block(cols["text"][0]), rng.normal(0, 1, (len(rows), 8))]),
        "audio": np.hstack([tone] + [block(c) for c in cols["audio"][1:]] + [rng.normal(0, 1, (len(rows), 8))]),
    }
    return {m: torch.tensor(x, dtype=torch.float32) for m, x in out.items()}


def test_trained_models_land_where_the_ceilings_say():
    """On the design's 1200 samples with near-perfect features: late fusion stays near its
    ceiling (chance on synergy), a multiplicative fusion (lmf) clears it on synergy, unreliable
    and mixed, and the audio alone reaches unique's ceiling."""
    from fusionkit import compare
    from fusionkit.train import SplitData, TrainConfig

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = _observed()
    feats = _features(rng, rows)
    d = sc.design(1200)
    split = np.array(shapes._assign_splits(3 * d["has_red"] + d["tone"], rng, (0.7, 0.15, 0.15), d["block"]))
    cfg = TrainConfig(epochs=30, batch_size=64, lr=3e-3, patience=10, seed=0)
    got = {}
    for target, methods, unimodal in (("synergy", ["late", "lmf"], False), ("unreliable", ["late", "lmf"], False),
                                      ("mixed", ["late", "lmf"], False), ("unique", [], True)):  # fmt: skip
        y = torch.tensor([t[target] for t, _ in rows])
        data = {
            sp: SplitData({m: x[torch.from_numpy(split == sp)] for m, x in feats.items()}, y[split == sp],
                          [str(i) for i in np.flatnonzero(split == sp)])
            for sp in SPLITS
        }  # fmt: skip
        runs = compare.run(methods or ["late"], data, cfg, int(y.max()) + 1, seeds=[0], unimodal=unimodal,
                           hidden=32, show_progress=False).runs  # fmt: skip
        got[target] = dict(zip(runs.method, runs.test_accuracy, strict=True))
    c = shapes.TARGET_CEILINGS
    assert got["synergy"]["late"] < c["synergy"]["chance"] + 0.08 < got["synergy"]["lmf"] - 0.2
    assert got["unreliable"]["late"] < c["unreliable"]["late"] + 0.05 < got["unreliable"]["lmf"]
    assert got["mixed"]["late"] < c["mixed"]["late"] + 0.05 < got["mixed"]["lmf"] - 0.2
    assert got["unique"]["unimodal:audio"] > c["unique"]["audio"] - 0.06
    assert got["unique"]["unimodal:image"] < c["unique"]["image"] + 0.1
