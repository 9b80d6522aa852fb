import pytest

import fusionkit.fusion as fusion
from fusionkit.fusion.space import Choice, Float, Int, dimension_from
from fusionkit.grid.space import SHARED, check_overrides, contains, default_config, method_space, searched
from fusionkit.train import TrainConfig


@pytest.mark.parametrize("name", fusion.available())
def test_every_methods_space_names_its_hyperparameters_and_holds_its_defaults(name):
    hp = fusion.hyperparameters(name)
    for key, dim in fusion.search_space(name).items():
        assert key in hp
        assert isinstance(dim, Float | Int | Choice)
    config = default_config(name, TrainConfig(), hidden=128, dropout=0.1)
    assert contains(method_space(name), config), f"{name}'s defaults {config} lie outside its search space"


def test_the_shared_dimensions_are_the_same_for_every_method_and_the_unimodal_baselines():
    for m in [*fusion.available(), "unimodal:image"]:
        space = method_space(m)
        assert {k: space[k] for k in SHARED} == SHARED
    assert set(method_space("unimodal:image")) == set(SHARED)  # no fusion of its own
    assert "fusion.rank" in method_space("lmf") and "fusion.hidden" in method_space("lmf")


def test_overrides_replace_or_fix_dimensions():
    space = method_space("lmf", {"lr": {"low": 1e-4, "high": 1e-3, "log": True}, "hidden": 64, "fusion.rank": [2, 3]})
    assert space["lr"] == Float(1e-4, 1e-3, log=True)
    assert space["hidden"] == 64 and "hidden" not in searched(space)
    assert space["fusion.rank"] == Choice((2, 3))
    assert dimension_from({"low": 2, "high": 9}, "k") == Int(2, 9)


def test_unknown_keys_and_empty_spaces_are_errors_that_list_the_valid_keys():
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['fusion.rnak'\].*fusion.rank"):
        check_overrides(["lmf", "concat"], {"fusion.rnak": [2, 4]})
    with pytest.raises(ValueError, match="nothing left to search for 'concat'.*dropout"):
        check_overrides(["concat"], {"lr": 0.01, "weight_decay": 0.0, "hidden": 64, "dropout": 0.1})
    with pytest.raises(ValueError, match=r"search_space\['lr'\].*expected"):
        check_overrides(["concat"], {"lr": {"min": 1, "max": 2}})
    with pytest.raises(ValueError, match="need 0 < low < high"):
        Float(1.0, 0.5)
