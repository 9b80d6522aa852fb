"""Early stopping on a named metric: modes, ties, tie-breaker, patience, state kept and restored."""

from __future__ import annotations

import math

import pytest

from fusionkit.training import EarlyStopping


def run(values, mode="max", patience=2, ties=None):
    """Feed ``values`` (and ``ties``) until told to stop: (epochs seen, stopper, states kept)."""
    es = EarlyStopping(patience, mode)
    for epoch, v in enumerate(values):
        tie = None if ties is None else ties[epoch]
        if es.step(v, lambda e=epoch: {"epoch": e}, epoch, tie):
            return epoch + 1, es
    return len(values), es


def test_max_and_min_pick_the_best_and_keep_its_state():
    seen, es = run([0.1, 0.5, 0.3, 0.4, 0.2], "max", patience=3)
    assert (seen, es.best_epoch, es.best, es.best_state) == (5, 1, 0.5, {"epoch": 1})
    seen, es = run([3.0, 2.0, 2.5, 1.0], "min", patience=3)
    assert (es.best_epoch, es.best, es.best_state) == (3, 1.0, {"epoch": 3})


def test_patience_counts_epochs_without_improvement():
    seen, es = run([0.5, 0.4, 0.4, 0.9], "max", patience=2)
    assert seen == 3 and es.best_epoch == 0 and es.bad == 2  # stopped before the 0.9


def test_a_tie_is_no_improvement_unless_the_tiebreaker_is_lower():
    _, es = run([0.5, 0.5, 0.5], patience=5)
    assert es.best_epoch == 0  # the earliest best wins
    _, es = run([0.5, 0.5, 0.5], patience=5, ties=[1.0, 0.8, 0.9])
    assert es.best_epoch == 1 and es.best_tie == 0.8  # same accuracy, lower validation loss
    _, es = run([0.5, 0.6, 0.6], patience=5, ties=[0.1, 2.0, 1.0])
    assert es.best_epoch == 2  # the tie-breaker compares with the best epoch's, not the lowest ever


def test_the_first_epoch_is_the_best_so_far_even_if_nan():
    _, es = run([math.nan, math.nan], patience=5)
    assert es.best_epoch == 0 and es.best_state == {"epoch": 0}


def test_state_dict_round_trip_and_bad_mode():
    _, es = run([0.1, 0.3, 0.2], patience=5, ties=[1.0, 1.0, 1.0])
    again = EarlyStopping(5, "max")
    again.load_state_dict(es.state_dict())
    assert again.state_dict() == es.state_dict()
    with pytest.raises(ValueError, match="mode='best'"):
        EarlyStopping(3, "best")
