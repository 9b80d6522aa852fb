"""Search-space dimensions a fusion method declares next to its hyper-parameters.

A method's class sets ``search_space = {hyper-parameter: dimension}``; the shared dimensions
(learning rate, weight decay, width, dropout) live in :mod:`fusionkit.grid.space`, which also
turns a user's overrides into the space one method is searched over. The dimensions are plain
data (no Optuna here): ``Float(low, high, log)``, ``Int(low, high, log)``, ``Choice(values)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Float({self.low}, {self.high}, log={self.log}): need 0 < low < high (low > 0 when log)")

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= float(value) <= self.high


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Int({self.low}, {self.high}, log={self.log}): need low < high (low > 0 when log)")

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __post_init__(self) -> None:
        if len(self.values) < 1:
            raise ValueError("Choice needs at least one value")

    def contains(self, value: Any) -> bool:
        return value in self.values


Dimension = Float | Int | Choice


def dimension_from(spec: Any, key: str) -> Dimension | Any:
    """A dimension from its plain-data form (what a notebook parameter or a profile holds):
    ``{"low": a, "high": b, "log": bool}`` (ints -> :class:`Int`, else :class:`Float`),
    ``{"choices": [...]}`` or a list (:class:`Choice`); any other value is returned as is and
    means "fixed at this value"."""
    if isinstance(spec, Float | Int | Choice):
        return spec
    if isinstance(spec, list | tuple):
        return Choice(tuple(spec))
    if isinstance(spec, dict):
        if "choices" in spec and set(spec) == {"choices"}:
            return Choice(tuple(spec["choices"]))
        if {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                return Int(low, high, log)
            return Float(float(low), float(high), log)
        raise ValueError(
            f"search_space[{key!r}] = {spec!r}: expected {{'low': .., 'high': .., 'log': bool}}, "
            "{'choices': [...]}, a list of values, or one fixed value"
        )
    return spec
