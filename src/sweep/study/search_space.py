"""``hydra.sweeper.params`` (and sweep overrides on the command line) -> Optuna distributions.

The syntax is hydra-optuna-sweeper's, read with Hydra's own override parser:

- ``choice(a, b, ...)`` or ``a,b,...``: categorical (also config groups: ``batch: choice(...)``)
- ``range(start, stop[, step])``: the values of Hydra's range (stop excluded), int or float steps;
  ``shuffle(range(...))``: categorical over them
- ``interval(low, high)``: uniform float; ``int(interval(...))``: uniform int;
  ``tag(log, interval(...))``: log-uniform
- anything else: a fixed override passed to every trial
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

SYNTAX = "choice(a,b,...), range(start,stop[,step]), interval(low,high), tag(log, interval(...))"
#: characters an override value may hold without quotes
PLAIN = re.compile(r"[\w.:/+\-@]+")


@dataclass
class SearchSpace:
    """Sampled parameters (name -> distribution) and fixed overrides (name -> value string)."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, str]


def parse(params: Mapping | None, arguments: list[str]) -> SearchSpace:
    """The search space of ``hydra.sweeper.params`` plus the command line's overrides.

    A command-line override of a key in ``params`` replaces it (a fixed value fixes it).
    """
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    overrides = []
    for line in [*lines, *arguments]:
        try:
            overrides.extend(OverridesParser.create().parse_overrides([line]))
        except Exception as error:
            raise ValueError(
                f"hydra.sweeper.params: cannot parse '{line}' ({error}); write {SYNTAX}"
            ) from error
    space = SearchSpace({}, {})
    for override in overrides:
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
        else:
            space.fixed[key] = override.get_value_element_as_str()
    return space


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    key, value = override.get_key_element(), override.value()
    text = override.input_line.partition("=")[2] if override.input_line else str(value)
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator())
        bad = [c for c in choices if not isinstance(c, str | int | float | bool | type(None))]
        if bad or not choices:
            raise ValueError(
                f"hydra.sweeper.params.{key}: choice values must be str, int, float, bool or "
                f"null, got {bad or 'none'}"
            )
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{key}: {text} is empty")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)
        high = value.start + value.step * (len(values) - 1)
        return FloatDistribution(value.start, high, step=value.step)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if value.start >= value.end or (log and value.start <= 0):
            raise ValueError(
                f"hydra.sweeper.params.{key}: {text} needs low < high"
                + (" and low > 0 (log)" if log else "")
            )
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"hydra.sweeper.params.{key}: {text} is not one of {SYNTAX}")


def grid(space: SearchSpace) -> dict[str, list]:
    """The grid sampler's search space: every value of each (discrete) parameter."""
    out = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = list(dist.choices)
        elif dist.step is not None and not getattr(dist, "log", False):
            n = int(math.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
            out[key] = [round(dist.low + i * dist.step, 12) for i in range(n)]
        else:
            raise ValueError(
                f"hydra.sweeper.params.{key}: the grid sampler needs discrete values; "
                "replace interval(...) with choice(...) or range(...)"
            )
    return out


def override(key: str, value) -> str:
    """``key=value`` as Hydra parses it back to ``value``."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, str) and not PLAIN.fullmatch(value):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        text = str(value)
    return f"{key}={text}"
