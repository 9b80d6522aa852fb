"""Groups kept inside one split: the speaker of a recording, the patient of a scan, the site of a
sample. Three jobs, one rule (a group never appears in two splits):

* :func:`check_groups`: a dataset's given splits keep every group inside one split (else a
  :class:`~fusionkit.data.base.DatasetError` naming the group, its splits and a sample of each);
* :func:`split_groups`: a seeded assignment of whole groups to train / val / test by fractions
  (each requested split gets at least one group; too few groups is an error naming them);
* :func:`loso_folds`: the leave-one-group-out protocol - fold k holds out group k for test and
  the next group (rotating) for validation, the rest train; every group is the test group of
  exactly one fold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fusionkit.data.base import SPLITS, DatasetError

__all__ = ["Fold", "check_groups", "loso_folds", "split_groups"]


def check_groups(split_of: Mapping[str, str], group_of: Mapping[str, str], where: str = "dataset") -> None:
    """DatasetError when a group has samples in two splits (``split_of``, ``group_of``: sample id ->
    split / group; samples without a group are ignored)."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)  # group -> split -> first sample id
    for sid, g in group_of.items():
        seen[g].setdefault(split_of[sid], sid)
    bad = {g: s for g, s in seen.items() if len(s) > 1}
    if bad:
        g = sorted(bad)[0]
        parts = ", ".join(
            f"{sp} (e.g. {sid!r})" for sp, sid in sorted(bad[g].items(), key=lambda kv: SPLITS.index(kv[0]))
        )
        raise DatasetError(
            f"{where}: group {g!r} is in several splits: {parts}; expected every group inside one split "
            f"({len(bad)} group(s) split: {sorted(bad)[:5]}). Fix the split column or drop it to split by group"
        )


def split_groups(
    group_of: Mapping[str, str], fractions: Sequence[float], seed: int, where: str = "dataset"
) -> dict[str, str]:
    """Sample id -> split, whole groups at a time: the groups in a seeded order, each given to the
    split furthest below its share of samples (``fractions``: train, val, test). Every split with a
    fraction > 0 gets at least one group; DatasetError when there are fewer groups than that."""
    groups: dict[str, list[str]] = defaultdict(list)
    for sid, g in group_of.items():
        groups[g].append(sid)
    wanted = [sp for sp, f in zip(SPLITS, fractions) if f > 0]
    names = sorted(groups)
    if len(names) < len(wanted):
        raise DatasetError(
            f"{where}: {len(names)} group(s) {names} cannot fill the {len(wanted)} splits {wanted} "
            f"(split_fractions {tuple(fractions)}) with whole groups; expected at least {len(wanted)} groups"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(506,)))
    order = [names[i] for i in rng.permutation(len(names))]
    total = sum(len(v) for v in groups.values())
    share = {sp: f for sp, f in zip(SPLITS, fractions) if f > 0}
    have = {sp: 0 for sp in wanted}
    assign: dict[str, str] = {}
    for k, g in enumerate(order):
        if k < len(wanted):  # one group for every requested split first, the smallest shares first
            sp = sorted(wanted, key=lambda s: (share[s], SPLITS.index(s)))[k]
        else:
            sp = max(wanted, key=lambda s: (share[s] * total - have[s], -SPLITS.index(s)))
        have[sp] += len(groups[g])
        for sid in groups[g]:
            assign[sid] = sp
    return assign


@dataclass(frozen=True)
class Fold:
    """One fold of :func:`loso_folds`: its name (``test=<group>``) and the groups of each split."""

    name: str
    test: str
    val: str
    train: tuple[str, ...]

    def split_of(self, group: str) -> str:
        return "test" if group == self.test else "val" if group == self.val else "train"

    def row(self) -> dict[str, str]:
        """The fold as one table row: its name and the groups of each split."""
        return {"fold": self.name, "test": self.test, "val": self.val, "train": ", ".join(self.train)}


def loso_folds(groups: Iterable[str], where: str = "dataset") -> list[Fold]:
    """Leave one group out, with a rotated validation group: over the sorted groups g_0..g_{n-1},
    fold k tests on g_k, validates on g_{k+1 mod n} and trains on the rest. Needs 3 groups or more
    (DatasetError naming them otherwise)."""
    names = sorted(set(groups))
    if len(names) < 3:
        raise DatasetError(
            f"{where}: the leave-one-group-out protocol needs at least 3 groups (one test, one validation, one or "
            f"more train); found {len(names)}: {names}"
        )
    n = len(names)
    return [
        Fold(
            f"test={names[k]}",
            names[k],
            names[(k + 1) % n],
            tuple(names[j] for j in range(n) if j not in (k, (k + 1) % n)),
        )
        for k in range(n)
    ]
