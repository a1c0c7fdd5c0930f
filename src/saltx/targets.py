"""Checked ``_target_`` instantiation: the one place where a config names code to run.

A config is untrusted input (an experiment file from a colleague, a run directory's
``config.yaml``), and Hydra's ``instantiate`` calls whatever importable callable a
``_target_`` names. Every ``_target_`` saltx builds goes through :func:`instantiate`, which

1. checks every ``_target_`` of the node, nested ones included, against the allow-list
   **before anything is imported**: a dotted name under an allowed prefix (an entry ending
   in ``.``, e.g. ``saltx.``, ``torch.nn.``) or equal to an allowed name (an entry without
   the trailing dot, e.g. ``mup.MuAdamW``);
2. imports the target and checks that it is a class of the expected kind (``nn.Module``
   for model parts, an ``Optimizer`` for the optimizer factory, an Optuna sampler ...)
   **before calling it**; only exact allow-list names may be other callables (factory
   functions such as ``mup.MuAdamW``);
3. calls it and checks the built object's kind again.

The allow-list is :data:`DEFAULT_ALLOWED` plus the config key ``allowed_targets`` (a list of
prefixes or names; see docs/reliability.md). Evaluation and export ignore the list stored in a
run's ``config.yaml`` and take it from their own command line instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

DEFAULT_ALLOWED: tuple[str, ...] = (
    "saltx.",
    "torch.nn.",
    "torch.optim.",
    "optuna.samplers.",
    "optuna.pruners.",
    "optuna.storages.",
    "mup.MuAdamW",
    "mup.MuAdam",
    "mup.MuSGD",
)
"""Targets allowed without configuration: saltx's own classes, torch modules and
optimizers, Optuna samplers/pruners/storages (the sweeper), muP's optimizer factories."""


class TargetError(ValueError):
    """A ``_target_`` that is not allowed, does not exist or builds the wrong kind of object."""


def allow_list(extra: Iterable[str] | None = None) -> tuple[str, ...]:
    """:data:`DEFAULT_ALLOWED` plus ``extra`` (the config's ``allowed_targets``)."""
    out = list(DEFAULT_ALLOWED)
    for entry in extra or ():
        if not isinstance(entry, str) or not entry.strip(". "):
            raise TargetError(
                f"allowed_targets entries must be dotted module prefixes ('mypkg.') or names "
                f"('mypkg.MyClass'), got {entry!r}"
            )
        out.append(entry.strip())
    return tuple(out)


def is_allowed(target: str, allowed: Sequence[str]) -> bool:
    """Whether ``target`` is under an allowed prefix or equal to an allowed name."""
    return any(target.startswith(a) if a.endswith(".") else target == a for a in allowed)


def _targets(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(key path, _target_ value)`` of ``node`` and every node nested in it."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield where, node["_target_"]
        for key, value in node.items():
            if key != "_target_":
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def check_targets(node: Any, where: str, allowed: Sequence[str]) -> None:
    """Refuse a node (or nested node) whose ``_target_`` is not allowed; imports nothing.

    Raises
    ------
    TargetError
        Naming the key, the target and the allow-list.
    """
    for path, target in _targets(plain(node), where):
        if not isinstance(target, str) or not target.strip():
            raise TargetError(f"{path}._target_ must be a dotted class name, got {target!r}")
        if not is_allowed(target, allowed):
            prefixes = ", ".join(a for a in allowed if a.endswith("."))
            names = ", ".join(a for a in allowed if not a.endswith("."))
            raise TargetError(
                f"{path}._target_={target!r} is not allowed: a target must start with one of "
                f"{prefixes} or be one of {names}; to trust more code, add its module prefix "
                "to allowed_targets (docs/reliability.md)"
            )


@functools.lru_cache(maxsize=256)
def _locate(target: str) -> Any:
    from hydra.utils import get_object

    return get_object(target)


def resolve(
    target: str,
    where: str,
    kind: type | tuple[type, ...],
    allowed: Sequence[str] = DEFAULT_ALLOWED,
    *,
    partial: bool = False,
) -> Any:
    """Import an allowed ``_target_`` and check its kind; call nothing.

    Parameters
    ----------
    target
        The dotted name.
    where
        The config key, for messages (``model.encoder``).
    kind
        The class(es) the target must subclass; a non-class callable is accepted only
        when ``target`` is an exact entry of ``allowed`` (a trusted factory function).
    allowed
        The allow-list (:func:`allow_list`).
    partial
        Only for messages: the node is a factory (``_partial_: true``).

    Raises
    ------
    TargetError
        Not allowed, not importable, or not of the expected kind.
    """
    check_targets({"_target_": target}, where, allowed)
    try:
        obj = _locate(target)
    except Exception as err:  # ImportError, AttributeError: a target that does not exist
        raise TargetError(f"{where}._target_={target!r} cannot be imported: {err}") from err
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(k.__name__ for k in kinds)
    if isinstance(obj, type):
        if not issubclass(obj, kinds):
            raise TargetError(
                f"{where}._target_={target!r} is a {obj.__name__}, not a {names}"
                + (" (this node is a factory: `_partial_: true`)" if partial else "")
            )
        return obj
    if callable(obj) and target in allowed:  # an explicitly trusted factory function
        return obj
    raise TargetError(f"{where}._target_={target!r} is not a class ({names} expected)")


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (dicts/lists), or the value itself."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate(
    node: Any,
    where: str,
    kind: type | tuple[type, ...],
    allowed: Sequence[str] = DEFAULT_ALLOWED,
    nested_kind: type | tuple[type, ...] = object,
    **kwargs: Any,
) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after the checks of the module docstring.

    Parameters
    ----------
    node
        A mapping (or DictConfig) with ``_target_``; nested ``_target_`` nodes are checked
        against ``allowed`` and must be classes of ``nested_kind``.
    where
        Its config key, for messages.
    kind
        What the target must be (a class it subclasses); a ``_partial_`` node returns a
        factory, whose target is checked the same way.
    allowed
        The allow-list (:func:`allow_list`).
    nested_kind
        What nested targets must be (default: any class).
    kwargs
        Passed to Hydra's ``instantiate`` (derived sizes, ``_convert_`` ...).

    Raises
    ------
    TargetError
        A target that is not allowed or not of the expected kind, or a built object of
        another kind.
    """
    from hydra.utils import instantiate as hydra_instantiate

    spec = plain(node)
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise TargetError(f"{where} must be a mapping with a `_target_`, got {spec!r}")
    check_targets(spec, where, allowed)
    partial = bool(spec.get("_partial_", False))
    for path, target in _targets(spec, where):
        resolve(target, path, kind if path == where else nested_kind, allowed, partial=partial)
    built = hydra_instantiate(spec, **kwargs)
    if not partial:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(built, kinds):
            raise TargetError(
                f"{where}._target_={spec['_target_']!r} built a {type(built).__name__}, "
                f"not a {' or '.join(k.__name__ for k in kinds)}"
            )
    return built


def sweeper_kind(where: str) -> type:
    """What the Optuna sweeper's ``hydra.sweeper.<sampler|pruner|storage>`` must build."""
    import optuna

    kinds = {
        "hydra.sweeper.sampler": optuna.samplers.BaseSampler,
        "hydra.sweeper.pruner": optuna.pruners.BasePruner,
        "hydra.sweeper.storage": optuna.storages.BaseStorage,
    }
    return kinds.get(where, object)
