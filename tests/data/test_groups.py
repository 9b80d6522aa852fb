"""Groups kept inside one split: the check, the grouped random split, LOSO folds, and a manifest's
``group`` column."""

from __future__ import annotations

from collections import defaultdict

import pytest

from fusionkit.data import registry
from fusionkit.data.base import DatasetError, load_dataset
from fusionkit.data.groups import check_groups, loso_folds, split_groups
from tests.data.test_manifest import LABELS, _write, own  # noqa: F401 - the fixture


def test_loso_covers_every_group_once_with_disjoint_splits():
    groups = ["b", "a", "e", "c", "d", "a"]
    folds = loso_folds(groups)
    assert [f.test for f in folds] == ["a", "b", "c", "d", "e"]  # every group tested exactly once
    assert [f.val for f in folds] == ["b", "c", "d", "e", "a"]  # the next group validates, rotating
    for f in folds:
        assert {f.test, f.val}.isdisjoint(f.train) and f.test != f.val
        assert sorted((f.test, f.val, *f.train)) == ["a", "b", "c", "d", "e"]
        assert f.split_of(f.test) == "test" and f.split_of(f.val) == "val" and f.split_of(f.train[0]) == "train"
    assert folds[0].row() == {"fold": folds[0].name, "test": "a", "val": "b", "train": "c, d, e"}
    with pytest.raises(DatasetError, match=r"at least 3 groups .* found 2: \['x', 'y'\]"):
        loso_folds(["x", "y", "x"])


def test_split_groups_keeps_each_group_whole_and_is_seeded():
    group_of = {f"s{i}": f"g{i % 7}" for i in range(70)}
    a = split_groups(group_of, (0.6, 0.2, 0.2), seed=3)
    assert a == split_groups(group_of, (0.6, 0.2, 0.2), seed=3)
    by_group = defaultdict(set)
    for sid, sp in a.items():
        by_group[group_of[sid]].add(sp)
    assert all(len(v) == 1 for v in by_group.values())
    assert set(a.values()) == {"train", "val", "test"}
    check_groups(a, group_of)  # passes
    with pytest.raises(DatasetError, match=r"2 group\(s\) \['g0', 'g1'\] cannot fill the 3 splits"):
        split_groups({"a": "g0", "b": "g1"}, (0.7, 0.15, 0.15), seed=0)


def test_check_names_the_group_split_across_splits():
    with pytest.raises(DatasetError, match=r"m.csv: group 'ann' is in several splits: train \(e.g. 's1'\), val"):
        check_groups({"s1": "train", "s2": "val", "s3": "train"}, {"s1": "ann", "s2": "ann", "s3": "bob"}, "m.csv")


def test_manifest_group_column(own, tmp_path):  # noqa: F811 - the fixture
    # without a split column: whole groups go to one split each, and the group is kept on the sample
    lines = ["id,image,label,group"] + [f"s{i:02d},photos/p{i}.png,{LABELS[i % 3]},spk{i % 4}" for i in range(12)]
    _write(own, lines, "grouped.csv")
    ds = registry.prepare("manifest", tmp_path / "g", source_dir=own / "grouped.csv", progress=False)
    assert ds.targets == {"label": sorted(LABELS)}  # 'group' is not a target
    splits = defaultdict(set)
    for s in ds.samples:
        splits[s.group].add(s.split)
    assert set(splits) == {"spk0", "spk1", "spk2", "spk3"} and all(len(v) == 1 for v in splits.values())
    assert load_dataset(ds.root).groups() == {s.id: s.group for s in ds.samples}  # written and read back
    # with a split column that puts one group in two splits: the error names the group
    lines = ["id,image,label,split,group"] + [
        f"s{i:02d},photos/p{i}.png,{LABELS[i % 3]},{'train' if i < 8 else 'test'},spk{i % 3}" for i in range(12)
    ]
    _write(own, lines, "clash.csv")
    with pytest.raises(DatasetError, match=r"clash.csv \('group' column\): group 'spk0' is in several splits"):
        registry.prepare("manifest", tmp_path / "c", source_dir=own / "clash.csv", progress=False)
    # too few groups for the three splits
    lines = ["id,image,label,group"] + [f"s{i:02d},photos/p{i}.png,{LABELS[i % 3]},site{i % 2}" for i in range(12)]
    _write(own, lines, "two.csv")
    with pytest.raises(DatasetError, match=r"2 group\(s\) \['site0', 'site1'\] cannot fill the 3 splits"):
        registry.prepare("manifest", tmp_path / "t", source_dir=own / "two.csv", progress=False)
