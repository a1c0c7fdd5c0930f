"""Search spaces written in Hydra's override grammar, translated to Optuna distributions.

A sweep's ``hydra.sweeper.params`` (and any sweep override on the command line) maps a
config key to an expression:

================================  ==============================================
``choice(a, b, c)``               categorical over the listed values
``range(a, b[, step])``           integers (or floats) ``a, a+step, ... < b``, like Python's
``interval(a, b)``                uniform float in ``[a, b]``
``tag(log, interval(a, b))``      log-uniform float
``tag(int, interval(a, b))``      uniform integer in ``[a, b]`` (``log`` may be added)
``tag(log, range(a, b))``         log-uniform integer (step must be 1)
anything else (``0.1``, ``x``)    a fixed value, passed unchanged to every trial
================================  ==============================================

Keys may carry Hydra's ``+``/``++`` prefixes; the Optuna parameter is named after the key
without them, and the prefix is kept in the override each trial receives.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_PRIMITIVE = (type(None), bool, int, float, str)
_UNQUOTED = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./:-]*$")


@dataclass
class Param:
    """One searched parameter.

    Attributes
    ----------
    name : str
        Optuna parameter name (the config key without ``+``/``++``).
    key : str
        The key as written in the override, prefix included (``+model.x``).
    distribution : BaseDistribution
        What Optuna samples from.
    grid : list or None
        The discrete values (``choice``/``range``), used by the grid sampler; None for
        continuous intervals.
    log : bool
        True for log-scaled parameters.
    raw_choices : dict
        For categorical values that are not plain scalars (lists, dicts): the override
        text of each choice, which is also the categorical value Optuna stores.
    """

    name: str
    key: str
    distribution: BaseDistribution
    grid: list[Any] | None = None
    log: bool = False
    raw_choices: dict[str, str] = field(default_factory=dict)


@dataclass
class SearchSpace:
    """A parsed search space: searched parameters and fixed overrides.

    Attributes
    ----------
    params : dict[str, Param]
        Searched parameters by name, in the order they were given.
    fixed : list[str]
        Overrides passed unchanged to every trial (``key=value``).
    """

    params: dict[str, Param] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions by parameter name (for ``study.ask``)."""
        return {name: p.distribution for name, p in self.params.items()}

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every parameter's discrete values.

        Raises
        ------
        ValueError
            If a parameter is a continuous ``interval`` (a grid needs discrete values).
        """
        out: dict[str, list[Any]] = {}
        for name, p in self.params.items():
            if p.grid is None:
                raise ValueError(
                    f"grid sampling needs discrete values, but parameter '{name}' is a "
                    f"continuous interval; use choice(...) or range(...) for it"
                )
            out[name] = list(p.grid)
        return out

    def merged(self, other: SearchSpace) -> SearchSpace:
        """Return this space with ``other``'s entries replacing those of the same key."""
        other_keys = set(other.params) | {_fixed_name(f) for f in other.fixed}
        params = {k: v for k, v in self.params.items() if k not in other_keys}
        params.update(other.params)
        fixed = [f for f in self.fixed if _fixed_name(f) not in other_keys] + list(other.fixed)
        return SearchSpace(params=params, fixed=fixed)

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """Hydra overrides for one trial: the fixed ones, then ``key=value`` per parameter.

        Parameters
        ----------
        values : Mapping[str, Any]
            Sampled values by parameter name (``trial.params``). Names that are not part of
            this space (suggested by a custom search-space function) become ``name=value``.
        """
        out = list(self.fixed)
        for name, value in values.items():
            p = self.params.get(name)
            key = p.key if p is not None else name
            if p is not None and isinstance(value, str) and value in p.raw_choices:
                text = p.raw_choices[value]
            else:
                text = format_value(value)
            out.append(f"{key}={text}")
        return out


def _fixed_name(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def format_value(value: Any) -> str:
    """Write a sampled value in Hydra's override grammar.

    Strings are quoted only where Hydra would otherwise read them as another type
    (``'1'``, ``'true'``) or where they hold characters the grammar reserves.

    Examples
    --------
    >>> format_value(1e-4), format_value(True), format_value(None), format_value("adam")
    ('0.0001', 'true', 'null', 'adam')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
        return repr(value)
    if isinstance(value, str):
        if _UNQUOTED.match(value) and _parses_as_same_string(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a value of type {type(value).__name__} as a Hydra override")


def _parses_as_same_string(text: str) -> bool:
    try:
        parsed = OverridesParser.create().parse_override(f"k={text}").value()
    except Exception:
        return False
    return isinstance(parsed, str) and parsed == text


def parse_search_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str] = ()
) -> SearchSpace:
    """Parse a sweeper's ``params`` mapping and command-line overrides into a search space.

    Parameters
    ----------
    params : Mapping[str, Any] or None
        ``hydra.sweeper.params``: config key -> override expression (string) or a fixed
        value.
    arguments : Sequence[str]
        The command-line task overrides. Sweep expressions among them join (and replace)
        the configured parameters; plain overrides are passed to every trial.

    Returns
    -------
    SearchSpace

    Raises
    ------
    ValueError
        For an expression that cannot be searched (an empty choice, ``range`` with no
        values, ``log`` on a non-positive bound), naming the key.
    """
    parser = OverridesParser.create()
    configured = [f"{key}={_as_text(value)}" for key, value in (params or {}).items()]
    space = _from_overrides(parser.parse_overrides(configured), source="hydra.sweeper.params")
    cli = _from_overrides(parser.parse_overrides(list(arguments)), source="the command line")
    return space.merged(cli)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return format_value(value)


def _from_overrides(overrides: Sequence[Override], source: str) -> SearchSpace:
    space = SearchSpace()
    for ov in overrides:
        if not ov.is_sweep_override():
            space.fixed.append(ov.input_line or f"{ov.get_key_element()}={ov.get_value_string()}")
            continue
        param = _param(ov, source)
        space.params[param.name] = param
    return space


def _param(ov: Override, source: str) -> Param:
    name = ov.key_or_group if ov.package is None else f"{ov.key_or_group}@{ov.package}"
    key = ov.get_key_element()
    sweep = ov.value()
    where = f"'{key}' (from {source})"
    tags = set(getattr(sweep, "tags", set()) or set())
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        return _choice_param(name, key, list(sweep.list), where)
    if isinstance(sweep, RangeSweep):
        return _range_param(name, key, sweep, log, where)
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if low > high:
            raise ValueError(f"interval for {where} has low {low} > high {high}")
        if log and low <= 0:
            raise ValueError(f"log-scaled interval for {where} needs low > 0, got {low}")
        if "int" in tags:
            dist: BaseDistribution = IntDistribution(math.ceil(low), int(high), log=log)
        else:
            dist = FloatDistribution(low, high, log=log)
        return Param(name=name, key=key, distribution=dist, log=log)
    raise ValueError(
        f"unsupported sweep for {where}: {ov.get_value_string()!r}; "
        f"use choice(...), range(...), interval(...) or tag(log, ...)"
    )


def _choice_param(name: str, key: str, values: list[Any], where: str) -> Param:
    if not values:
        raise ValueError(f"choice() for {where} has no values")
    raw: dict[str, str] = {}
    choices: list[Any] = []
    for v in values:
        if isinstance(v, _PRIMITIVE):
            choices.append(v)
        else:  # lists/dicts: Optuna stores their override text
            text = format_value(v)
            raw[text] = text
            choices.append(text)
    return Param(
        name=name,
        key=key,
        distribution=CategoricalDistribution(choices),
        grid=list(choices),
        raw_choices=raw,
    )


def _range_param(name: str, key: str, sweep: RangeSweep, log: bool, where: str) -> Param:
    start, stop, step = sweep.start, sweep.stop, sweep.step if sweep.step is not None else 1
    if step <= 0:
        raise ValueError(f"range for {where} needs a positive step, got {step}")
    if all(isinstance(v, int) for v in (start, stop, step)):
        values: list[Any] = list(range(int(start), int(stop), int(step)))
        if not values:
            raise ValueError(f"range({start}, {stop}, {step}) for {where} has no values")
        if log and step != 1:
            raise ValueError(f"tag(log, range(...)) for {where} needs step 1, got {step}")
        if log and values[0] <= 0:
            raise ValueError(f"log-scaled range for {where} needs start > 0, got {start}")
        dist: BaseDistribution = IntDistribution(
            values[0], values[-1], step=1 if log else int(step), log=log
        )
        return Param(name=name, key=key, distribution=dist, grid=values, log=log)
    count = math.ceil((float(stop) - float(start)) / float(step) - 1e-12)
    if count <= 0:
        raise ValueError(f"range({start}, {stop}, {step}) for {where} has no values")
    if log:
        raise ValueError(f"tag(log, range(...)) for {where} needs integer bounds")
    values = [float(start) + i * float(step) for i in range(count)]
    dist = FloatDistribution(values[0], values[-1], step=float(step))
    return Param(name=name, key=key, distribution=dist, grid=values)


def load_custom_search_space(path: str) -> Callable[..., Any]:
    """Import ``module.function`` named by ``custom_search_space``.

    The function is called as ``fn(cfg, trial)`` for every trial after the declared
    parameters were sampled; it may call ``trial.suggest_*`` for conditional parameters
    (each suggested name becomes an override ``name=value``) and may return a mapping of
    extra ``key: value`` overrides.

    Raises
    ------
    ValueError
        If the path has no module part, the module cannot be imported or has no such
        attribute.
    """
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"custom_search_space must be 'module.function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"custom_search_space {path!r}: cannot import {module_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(
            f"custom_search_space {path!r}: module {module_name!r} has no function {attr!r}"
        )
    return fn
