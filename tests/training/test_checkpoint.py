"""The checkpoint is read without unpickling: a file holding any other object is refused, naming
the file; a file of another model or missing parts is refused too."""

from __future__ import annotations

import pytest
import torch

from fusionkit.training import TrainCheckpoint
from tests.training import problem


class Payload:
    """Unpickling this would create ``marker`` (what an attacker's file could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_is_refused_not_run(tmp_path):
    marker, ck = tmp_path / "pwned", tmp_path / "evil.pt"
    problem.run(ck, epochs=1)
    state = torch.load(ck, weights_only=True)
    state["history"] = [Payload(marker)]
    torch.save(state, ck)
    with pytest.raises(ValueError, match=r"evil\.pt: not a training checkpoint .*weights_only=True"):
        TrainCheckpoint(ck).load()
    with pytest.raises(ValueError, match=r"evil\.pt: not a training checkpoint"):
        problem.run(ck, resume=True)  # the loop's resume goes the same way
    assert not marker.exists()


def test_other_files_are_refused_naming_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a training checkpoint"):
        TrainCheckpoint(junk).load()
    partial = tmp_path / "partial.pt"
    torch.save({"epoch": 0, "model": {}}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt: not a training checkpoint \(missing \['stopped', "):
        TrainCheckpoint(partial).load()
    other = tmp_path / "other.pt"
    problem.run(other, epochs=1)
    state = torch.load(other, weights_only=True)
    state["model"] = {"0.weight": torch.zeros(3, 3)}
    torch.save(state, other)
    with pytest.raises(ValueError, match=r"other\.pt: not a checkpoint of this model and optimizer"):
        problem.run(other, resume=True)


def test_off_without_a_path(tmp_path):
    ck = TrainCheckpoint(None)
    assert ck.restore(None, None, None, None, None, 5) == (0, [])
    ck.remove()  # nothing to do, no error
