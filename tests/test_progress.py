"""Progress: bars, plain occasional lines for logs, or nothing, as the environment says."""

import io

import pytest
from tqdm.auto import tqdm

from fusionkit import progress as P


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(P.time, "monotonic", c)
    return c


@pytest.mark.parametrize(
    "env, mode",
    [({}, "bars"), ({"FUSIONKIT_PROGRESS": "lines"}, "lines"), ({"FUSIONKIT_NO_PROGRESS": "1"}, "off"),
     ({"FUSIONKIT_PROGRESS": "bars", "FUSIONKIT_NO_PROGRESS": "1"}, "bars"), ({"FUSIONKIT_PROGRESS": "nonsense"}, "bars")],
)  # fmt: skip
def test_the_environment_picks_the_mode(monkeypatch, env, mode):
    for k in ("FUSIONKIT_PROGRESS", "FUSIONKIT_NO_PROGRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert P.progress_mode() == mode
    assert P.asked_mode() == (None if not env or env.get("FUSIONKIT_PROGRESS") == "nonsense" else mode)
    bar = P.progress(range(3), desc="x")
    assert isinstance(bar, P.Lines) == (mode == "lines")
    if mode != "lines":
        assert isinstance(bar, tqdm) and bar.disable == (mode == "off")
    assert list(bar) == [0, 1, 2]
    assert P.progress(range(3), enabled=False).disable  # a loop that asks for none gets none in any mode


def test_lines_are_occasional_plain_and_end_with_a_total(clock):
    out = io.StringIO()
    seen = []
    for i in P.Lines(range(8), desc="encode train", interval=30, file=out):
        seen.append(i)
        clock.t += 10  # 10 s per item: a line every 3 items
    assert seen == list(range(8))
    lines = out.getvalue().splitlines()
    assert lines == [
        "encode train: 3/8 (38%), 30 s so far, about 50 s left",
        "encode train: 6/8 (75%), 1m00s so far, about 20 s left",
        "encode train: 8/8 (100%), done in 1m20s",
    ]
    assert "\r" not in out.getvalue() and "%|" not in out.getvalue()


def test_a_short_loop_prints_nothing(clock):
    out = io.StringIO()
    with P.Lines(total=100, desc="fast", interval=30, file=out) as bar:
        for _ in range(100):
            clock.t += 0.1
            bar.update(1)
    assert out.getvalue() == ""


def test_a_manual_bar_without_a_total_counts_and_takes_a_total_later(clock):
    out = io.StringIO()
    bar = P.Lines(total=0, desc="trainings", interval=5, file=out)
    bar.total = (bar.total or 0) + 4  # what the Ray executor does as batches arrive
    bar.refresh()
    clock.t += 6
    bar.update(1)
    bar.set_postfix(best=0.9)
    clock.t += 6
    bar.update(2)
    bar.close()
    bar.close()  # twice is once
    assert out.getvalue().splitlines() == [
        "trainings: 1/4 (25%), 6 s so far, about 18 s left",
        "trainings: 3/4 (75%), 12 s so far, about 4 s left [best=0.9]",
        "trainings: 3/4 (75%), stopped after 12 s [best=0.9]",  # closed before its total
    ]


def test_duration():
    got = [P.duration(s) for s in (0, 4.4, 59.6, 61, 3599, 3720)]
    assert got == ["0 s", "4 s", "1m00s", "1m01s", "59m59s", "1h02m"]
