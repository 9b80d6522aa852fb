"""fusionkit.interactions: on synthetic features whose interaction type is known by construction
the component that defines it is the largest in every seed; the decomposition's arithmetic; the
usable-information estimate; the evidence; bad input refused with what is valid."""

import math

import pandas as pd
import pytest
import torch

from fusionkit import interactions as it
from fusionkit.train import TrainConfig
from tests.synthetic import INTERACTIONS, interaction_problem

#: small and quick: 300 samples per split, 20 epochs, width 32; the defining component still wins
#: by a wide margin (tests/synthetic.py's bits are about 92 % readable per modality): over data
#: seeds 0-4 x seeds 0-2 the smallest margin was 0.18 bits (XOR, data seed 3), 0.33 elsewhere
FAST = TrainConfig(epochs=20, lr=5e-3)
SEEDS = (0, 1, 2)
DEFINING = {"redundant": "redundancy", "unique": "unique_a", "synergy": "synergy"}


@pytest.fixture(scope="module")
def profiles():
    return {kind: it.profile(interaction_problem(kind, seed=i), seeds=SEEDS, cfg=FAST, hidden=32)
            for i, kind in enumerate(INTERACTIONS)}  # fmt: skip


@pytest.mark.parametrize("kind", INTERACTIONS)
def test_the_defining_component_is_the_largest_in_every_seed(profiles, kind):
    prof = profiles[kind]
    (pair,) = prof.pairs
    assert (pair.a, pair.b) == ("first", "second")  # "unique": the bit is in ``first`` = a
    assert [d.largest for d in pair.per_seed] == [DEFINING[kind]] * len(SEEDS)
    assert pair.largest == DEFINING[kind] and pair.largest_every_seed
    assert prof.table()["largest"].iloc[0] == pair.label(DEFINING[kind])
    for d in pair.per_seed:  # with a margin (see FAST)
        comps = d.components()
        best = comps.pop(DEFINING[kind])
        assert best - max(comps.values()) > 0.1, (kind, d)
        assert d.i_ab <= d.h_y + 1e-9 and min(d.i_a, d.i_b, d.i_late) >= 0


def test_xor_synergy_is_beyond_late_fusion_and_the_evidence_says_so(profiles):
    prof = profiles["synergy"]
    (pair,) = prof.pairs
    assert pair.mean("synergy_beyond_late") > 0.15 > 0.02 > pair.mean("synergy_late")
    ev = prof.evidence
    assert ev.late.test < 0.65 and ev.joint.test > 0.7  # late fusion cannot do an XOR; the joint model (lmf) can
    assert max(s.test for s in ev.unimodal.values()) < 0.6
    assert ev.gaps()["joint - late"] > 0.15


def test_the_decomposition_adds_up_and_the_table_has_mean_and_spread(profiles):
    for prof in profiles.values():
        for d in prof.pairs[0].per_seed:
            assert math.isclose(d.redundancy + d.unique_a + d.unique_b + d.synergy, d.i_ab, abs_tol=1e-9)
            assert math.isclose(d.synergy_late + d.synergy_beyond_late, d.synergy, abs_tol=1e-9)
            assert min(d.unique_a, d.unique_b) == 0 and d.synergy >= 0
        table = prof.table()
        assert {"redundancy", "redundancy_sd", "synergy", "synergy_sd", "largest_every_seed"} <= set(table.columns)
        assert len(prof.per_seed_table()) == len(SEEDS)
    text = profiles["unique"].render()
    assert "unique:first" in text and "evidence on first + second" in text and "3 seeds" in text


def test_decomposition_arithmetic():
    d = it.Decomposition(seed=0, h_y=2.0, i_a=1.2, i_b=0.5, i_late=1.5, i_ab=1.9)
    assert (d.redundancy, d.unique_b) == (0.5, 0.0)
    assert math.isclose(d.unique_a, 0.7) and math.isclose(d.synergy, 0.7)
    assert math.isclose(d.synergy_late, 0.3) and math.isclose(d.synergy_beyond_late, 0.4)
    assert d.largest == "unique_a"  # ties go to the first of COMPONENTS: 0.7 == 0.7
    nothing = it.Decomposition(seed=0, h_y=1.0, i_a=0.0, i_b=0.004, i_late=0.004, i_ab=0.005)
    assert nothing.largest == "none"  # nothing usable found: no component is called the largest


def test_usable_information_is_entropy_minus_held_out_cross_entropy():
    labels = torch.arange(4).repeat(25)
    assert math.isclose(it.label_entropy(labels, 4), 2.0)
    assert math.isclose(it.label_entropy(torch.zeros(10, dtype=torch.long), 3), 0.0, abs_tol=1e-12)
    perfect = torch.nn.functional.one_hot(labels, 4).float() * 20
    assert it.usable_information(perfect, labels, perfect, labels, 4) == pytest.approx(2.0, abs=1e-3)
    wrong = perfect.roll(1, dims=1)  # confidently wrong on the estimation split: clipped at 0
    assert it.usable_information(perfect, labels, wrong, labels, 4) == 0.0
    constant = torch.zeros(100, 4)
    assert it.usable_information(constant, labels, constant, labels, 4) == pytest.approx(0.0, abs=1e-9)
    # over-confident but mostly right: the temperature fitted on validation tempers it
    g = torch.Generator().manual_seed(0)
    noisy = perfect.clone()
    flip = torch.rand(100, generator=g) < 0.2
    noisy[flip] = noisy[flip].roll(1, dims=1)
    assert it.fit_temperature(noisy, labels) > 2
    assert 0.5 < it.usable_information(noisy, labels, noisy, labels, 4) < 2.0


def test_same_seeds_same_numbers_and_three_modalities_give_three_pairs():
    data = interaction_problem("redundant", n=90)
    extra = interaction_problem("unique", n=90, seed=5)
    for split in data:
        data[split].features["third"] = extra[split].features["second"]
    cfg = TrainConfig(epochs=2)
    one = it.profile(data, seeds=(0,), cfg=cfg, hidden=16)
    assert [p.name for p in one.pairs] == ["first+second", "first+third", "second+third"]
    assert one.evidence.modalities == ("first", "second", "third")
    ev = one.evidence_table()
    assert (ev["model"] == "unimodal").sum() == 3 and len(ev) == 3 + 2 + 3 * 2  # unimodal rows once
    two = it.profile(data, seeds=(0,), cfg=cfg, hidden=16, modalities=["second", "first"])
    assert [p.name for p in two.pairs] == ["first+second"]
    pd.testing.assert_frame_equal(two.table(), one.table().iloc[:1].reset_index(drop=True))


def test_the_comparison_best_method_joins_the_evidence(profiles):
    summary = pd.DataFrame({"method": ["tensor", "late", "unimodal:first"], "is_best": [True, False, False],
                            "val_accuracy_mean": [0.9, 0.6, 0.5], "test_accuracy_mean": [0.88, 0.55, 0.5],
                            "test_accuracy_ci95": [0.0248, 0.01, 0.01], "n_seeds": [5, 5, 5]})  # fmt: skip
    ev = it.with_comparison(profiles["synergy"].evidence, summary)
    assert ev.best_fusion_method == "tensor" and ev.best_fusion.test == 0.88
    assert ev.best_fusion.test_sd == pytest.approx(0.0248 * math.sqrt(5) / 2.776, rel=1e-3)
    assert ev.gaps()["best fusion - late"] == pytest.approx(0.88 - ev.late.test)
    assert "best fusion (comparison)" in ev.table()["model"].tolist()
    with pytest.raises(it.InteractionError, match="marks no method as best"):
        it.with_comparison(ev, summary.assign(is_best=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ["first", "nope"]}, r"unknown modalities \['nope'\]; valid: first, second"),
        ({"modalities": ["first"]}, r"needs at least two modalities; got \['first'\]"),
        ({"split": "train"}, "split 'train'; expected one of val, test"),
        ({"seeds": ()}, "seeds is empty"),
        ({"joint": "nope"}, "unknown fusion method 'nope'"),
    ],
)
def test_bad_input_is_refused_before_anything_trains(kwargs, message):
    with pytest.raises((it.InteractionError, KeyError), match=message):
        it.profile(interaction_problem("unique", n=30), **kwargs)


def test_one_modality_or_a_missing_split_is_refused():
    data = interaction_problem("unique", n=30)
    single = {s: d.select(["first"]) for s, d in data.items()}
    with pytest.raises(it.InteractionError, match=r"at least two modalities; got \['first'\] \(available: first\)"):
        it.profile(single)
    with pytest.raises(it.InteractionError, match=r"splits \['test'\] missing"):
        it.profile({"train": data["train"], "val": data["val"]})


def test_a_regression_target_is_refused_with_a_clear_error():
    from tests.synthetic import regression_problem

    with pytest.raises(it.InteractionError, match="interaction profile is for class targets only"):
        it.profile(regression_problem(n=30), seeds=[0], cfg=TrainConfig(epochs=1))
