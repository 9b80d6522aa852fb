"""Fusion methods behind one interface and one registry (see base.py).

Importing this package registers every method; ``available()`` lists their names."""

from fusionkit.fusion import (  # noqa: F401  (importing a module registers its methods)
    attention,
    bilinear,
    concat,
    cross_attention,
    film,
    gated,
    mixture,
    simbamm,
    tensor,
    weighted,
)
from fusionkit.fusion.base import (
    Fusion,
    FusionOutput,
    available,
    build_fusion,
    get,
    hyperparameters,
    named,
    register,
    search_space,
    values_checked,
)

__all__ = [
    "Fusion",
    "FusionOutput",
    "available",
    "build_fusion",
    "get",
    "hyperparameters",
    "named",
    "register",
    "search_space",
    "values_checked",
]
