"""The space each method is searched over: the shared dimensions (:data:`SHARED`: learning rate,
weight decay, width, dropout - the same for every method and the unimodal baselines) plus the
method's own, declared next to its hyper-parameters (``Fusion.search_space``), as
``fusion.<name>``; a user's ``search_space`` overrides replace or fix dimensions."""

from __future__ import annotations

from typing import Any

from fusionkit import fusion
from fusionkit.fusion.space import Choice, Dimension, Float, Int, dimension_from
from fusionkit.grid.jobs import FUSION_PREFIX, UNIMODAL_PREFIX
from fusionkit.train import TrainConfig

SHARED: dict[str, Dimension] = {
    "lr": Float(3e-4, 1e-2, log=True),
    "weight_decay": Float(1e-4, 1e-1, log=True),
    "hidden": Choice((64, 128, 256)),
    "dropout": Float(0.0, 0.5),
}


def fusion_name(method: str) -> str:
    """The registered fusion method a comparison entry trains (unimodal baselines: ``concat``)."""
    return "concat" if method.startswith(UNIMODAL_PREFIX) else method


def own_space(method: str) -> dict[str, Dimension]:
    """The method's own dimensions, keyed ``fusion.<name>`` (none for the unimodal baselines)."""
    if method.startswith(UNIMODAL_PREFIX):
        return {}
    return {f"{FUSION_PREFIX}{k}": v for k, v in fusion.search_space(method).items()}


def method_space(method: str, overrides: dict[str, Any] | None = None) -> dict[str, Dimension | Any]:
    """Shared + own dimensions of ``method`` with ``overrides`` applied: a key maps to a
    dimension (searched) or to a plain value (fixed). Override keys this method does not have
    are ignored here (:func:`check_overrides` rejects keys no method has)."""
    space: dict[str, Any] = {**SHARED, **own_space(method)}
    for key, spec in (overrides or {}).items():
        if key in space:
            space[key] = dimension_from(spec, key)
    return space


def searched(space: dict[str, Any]) -> dict[str, Dimension]:
    return {k: v for k, v in space.items() if isinstance(v, Float | Int | Choice)}


def check_overrides(methods: list[str], overrides: dict[str, Any] | None) -> None:
    """Unknown keys and spaces left with nothing to search are errors that list the valid keys."""
    valid = sorted({k for m in methods for k in (*SHARED, *own_space(m))})
    unknown = sorted(set(overrides or {}) - set(valid))
    if unknown:
        raise KeyError(f"search_space: unknown key(s) {unknown}; valid for these methods: {', '.join(valid)}")
    for key, spec in (overrides or {}).items():
        dimension_from(spec, key)  # malformed specs fail here, naming the key
    for m in methods:
        if not searched(method_space(m, overrides)):
            raise ValueError(
                f"search_space: nothing left to search for {m!r} (every dimension is fixed); "
                f"make one of {', '.join(sorted(method_space(m)))} a range or a list of values"
            )


def default_config(method: str, cfg: TrainConfig, hidden: int, dropout: float) -> dict[str, Any]:
    """The configuration a method trains with when it is not searched: the notebook's shared
    settings and the method's own registered defaults (for the keys of its search space)."""
    config: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "hidden": hidden, "dropout": dropout}
    if not method.startswith(UNIMODAL_PREFIX):
        defaults = fusion.hyperparameters(method)
        for key in own_space(method):
            value = defaults[key[len(FUSION_PREFIX) :]]
            if value is not None:
                config[key] = value
    return config


def contains(space: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether ``config`` is a point of ``space`` (every searched key inside its dimension, every
    fixed key at its value)."""
    for key, dim in space.items():
        if key not in config:
            return False
        if isinstance(dim, Float | Int | Choice):
            if not dim.contains(config[key]):
                return False
        elif config[key] != dim:
            return False
    return True
