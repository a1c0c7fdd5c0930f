"""muP step 1: base shapes from a base and a delta model (Salt's ``setup_muP``).

``python -m saltx.mup.shapes +experiment=gn2_mup [key=value ...]`` (or ``make mup-shapes``)
composes the training config, derives from its ``mup:`` block the overrides that turn it
into the *base* and the *delta* model (the same config with the scaled dimensions set to
``parameter_base`` / ``parameter_delta``), composes both with Hydra's compose API, builds
the two models and writes

* ``<shape_path>/storeshapes``: ``mup.make_base_shapes(base, delta)`` (yaml; ``null`` marks
  a fixed dimension, a number the base size of a width dimension);
* ``<shape_path>/base.yaml`` and ``<shape_path>/delta.yaml``: the two resolved configs.

The same functions give the base shapes in memory (:func:`base_shapes_from_config`) for the
coordinate check and for runs whose shape file has not been written yet.

This module builds no model itself: every function that needs the base and delta models
takes a ``build`` function (``cfg -> nn.Module``, the model's parameter shapes; the
composition step :func:`saltx.assemble.shape_model` is the one saltx uses), so ``mup``
never imports ``saltx.models``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, MissingMandatoryValue, OmegaConf
from torch import nn

from saltx.config import schema_config

log = logging.getLogger(__name__)

#: builds a model of a config for its parameter shapes (:func:`saltx.assemble.shape_model`)
ShapeBuildFn = Callable[[DictConfig], nn.Module]

#: the dimensions a ``mup:`` block may scale (Salt supports the same two)
DIMENSIONS = ("embed_dim", "num_heads")
#: name of the base-shape file inside ``mup.shape_path`` (Salt's name)
SHAPE_FILE = "storeshapes"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class MupConfigError(ValueError):
    """The ``mup:`` block or the widths it asks for are not usable."""


# -- reading the mup block ----------------------------------------------------------------
def cfg_get(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` for mappings and configs, ``node.key`` otherwise; ``default`` if absent."""
    if node is None:
        return default
    if isinstance(node, Mapping | DictConfig):
        return node.get(key, default)
    return getattr(node, key, default)


def mup_block(cfg: Any) -> Any:
    """The ``mup:`` block of ``cfg`` on its schema (:class:`saltx.config.MupConfig`: the keys
    it leaves out read as the schema's defaults); raises with a hint when it is missing."""
    block = schema_config(cfg).mup
    if block is None:
        raise MupConfigError(
            "the config has no `mup:` block; add one (e.g. `- /mup: gn2` in the experiment's "
            "defaults, see conf/mup/gn2.yaml and docs/mup.md)"
        )
    return block


def mup_dimensions(cfg: Any) -> dict[str, dict[str, Any]]:
    """The scaled dimensions of ``cfg.mup``, validated.

    Returns
    -------
    dict
        ``{dim: {"apply_to": [...], "parameter_name": [...], "base": int, "delta": int}}``
        for every dimension of :data:`DIMENSIONS` that the block sets.

    Raises
    ------
    MupConfigError
        If no dimension is set, lists differ in length, a value is not a positive integer,
        or base == delta.
    """
    block = mup_block(cfg)
    out: dict[str, dict[str, Any]] = {}
    for dim in DIMENSIONS:
        entry = cfg_get(block, dim)
        if entry is None:
            continue
        where = f"mup.{dim}"
        raw = {w: cfg_get(entry, f"parameter_{w}", None) for w in ("base", "delta")}
        if raw["base"] is None and raw["delta"] is None:
            continue  # declared but not scaled
        apply_to = list(cfg_get(entry, "apply_to", None) or [])
        names = list(cfg_get(entry, "parameter_name", None) or [])
        if not apply_to or len(apply_to) != len(names):
            raise MupConfigError(
                f"{where}: apply_to {apply_to} and parameter_name {names} must be non-empty "
                "lists of the same length (one key per config node)"
            )
        values = {}
        for which in ("base", "delta"):
            try:
                value = cfg_get(entry, f"parameter_{which}")
            except MissingMandatoryValue:
                value = None
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise MupConfigError(
                    f"{where}.parameter_{which} must be a positive integer, got {value!r}"
                )
            values[which] = int(value)
        if values["base"] == values["delta"]:
            raise MupConfigError(
                f"{where}: parameter_base and parameter_delta are both {values['base']}; they "
                "must differ, since the delta model only marks which dimensions scale "
                "(leave a dimension out of the mup block to keep it fixed)"
            )
        out[dim] = {"apply_to": apply_to, "parameter_name": names, **values}
    if "embed_dim" not in out:
        raise MupConfigError(
            "mup.embed_dim is not set: muP needs the width dimension "
            "(apply_to, parameter_name, parameter_base, parameter_delta)"
        )
    return out


def shape_file(cfg: Any) -> Path:
    """``<mup.shape_path>/storeshapes``."""
    try:
        path = cfg_get(mup_block(cfg), "shape_path")
    except MissingMandatoryValue:
        path = None
    if not path:
        raise MupConfigError("mup.shape_path is not set (the folder of the base-shape file)")
    return Path(str(path)) / SHAPE_FILE


# -- turning dimension values into config keys -------------------------------------------
def _find_keys(node: Any, key: str, path: str) -> list[str]:
    """Dotted paths of ``key`` under ``node``: the node's own key, else a recursive search."""
    if not isinstance(node, Mapping):
        return []
    if key in node:
        return [f"{path}.{key}"]
    found: list[str] = []
    for k, child in node.items():
        found += _find_keys(child, key, f"{path}.{k}")
    return found


def _resolve_node(cfg: DictConfig, apply_to: str) -> tuple[str, Any]:
    """The config node named by ``apply_to`` (root-relative; bare names are under model)."""
    path = str(apply_to).strip(".")
    root = path.split(".")[0]
    if path and root not in cfg and "model" in cfg:
        path = f"model.{path}"
    node = OmegaConf.select(cfg, path) if path else cfg
    if not isinstance(node, DictConfig):
        raise MupConfigError(
            f"mup: apply_to {apply_to!r} does not name a config node (looked for `{path}`)"
        )
    return path, node


def dimension_assignments(cfg: DictConfig, values: Mapping[str, int]) -> dict[str, Any]:
    """Config keys to set so that the scaled dimensions take ``values``.

    Parameters
    ----------
    cfg
        The composed config with a ``mup:`` block.
    values
        ``{dim: value}`` for dimensions of the block (e.g. ``{"embed_dim": 64}``).

    Returns
    -------
    dict[str, Any]
        ``{dotted key: value}``; a key holding a list (``hidden_layers``) gets the value in
        every entry.

    Raises
    ------
    MupConfigError
        If a ``parameter_name`` is not found under its ``apply_to`` node.
    """
    dims = mup_dimensions(cfg)
    out: dict[str, Any] = {}
    for dim, value in values.items():
        if dim not in dims:
            raise MupConfigError(f"mup.{dim} is not set; the block scales {sorted(dims)}")
        entry = dims[dim]
        for apply_to, name in zip(entry["apply_to"], entry["parameter_name"], strict=True):
            path, node = _resolve_node(cfg, apply_to)
            keys = _find_keys(OmegaConf.to_container(node), str(name), path)
            if not keys:
                raise MupConfigError(
                    f"mup.{dim}: no key {name!r} under `{path}`; saltx derives init-net output "
                    "sizes and the encoder width from model.embed_dim, so use apply_to: "
                    "[model], parameter_name: [embed_dim] for the width"
                )
            for key in keys:
                current = OmegaConf.select(cfg, key)
                if isinstance(current, ListConfig | list):
                    out[key] = [int(value)] * len(current)
                else:
                    out[key] = int(value)
    return out


def as_overrides(assignments: Mapping[str, Any]) -> list[str]:
    """Hydra override strings (``key=value``) for :func:`dimension_assignments`."""
    out = []
    for key, value in assignments.items():
        text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else value
        out.append(f"{key}={text}")
    return out


def with_assignments(cfg: DictConfig, assignments: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``assignments`` set (for configs not made by compose)."""
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra app: keep interpolations
        plain = OmegaConf.to_container(cfg, resolve=False)
    out = OmegaConf.create(plain)
    OmegaConf.set_struct(out, False)
    for key, value in assignments.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def check_widths(cfg: Any, what: str) -> None:
    """Raise unless ``model.embed_dim`` is a positive multiple of ``model.num_heads``."""
    embed, heads = int(cfg.model.embed_dim), int(cfg.model.num_heads)
    if embed <= 0 or heads <= 0 or embed % heads:
        raise MupConfigError(
            f"{what}: model.embed_dim={embed} is not divisible by model.num_heads={heads}; "
            "choose widths that are multiples of the number of heads"
        )


def base_delta_assignments(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """``{"base": {key: value}, "delta": {key: value}}`` from ``cfg.mup``."""
    dims = mup_dimensions(cfg)
    return {
        which: dimension_assignments(cfg, {d: e[which] for d, e in dims.items()})
        for which in ("base", "delta")
    }


# -- the base shapes -----------------------------------------------------------------------
def base_shapes_from_config(cfg: DictConfig, build: ShapeBuildFn) -> dict[str, Any]:
    """Base shapes (``{param name: InfShape}``) from the base and delta models of ``cfg.mup``.

    Equivalent to reading the file :func:`write_shapes` writes for the same config.
    ``build`` builds each model (:data:`ShapeBuildFn`).
    """
    import mup

    configs = {}
    for which, assign in base_delta_assignments(cfg).items():
        configs[which] = with_assignments(cfg, assign)
        check_widths(configs[which], f"the {which} model")
    return mup.make_base_shapes(build(configs["base"]), build(configs["delta"]))


def base_shapes(cfg: DictConfig, build: ShapeBuildFn) -> str | dict[str, Any]:
    """The base shapes of ``cfg``: its shape file when written, else computed in memory.

    Returns
    -------
    str or dict
        The path of ``<mup.shape_path>/storeshapes``, or (with a warning that the file is
        missing) :func:`base_shapes_from_config` of ``cfg``.
    """
    path = shape_file(cfg)
    if path.is_file():
        return str(path)
    log.warning(
        "muP base-shape file %s not found: computing the base shapes from the mup block "
        "(run `make mup-shapes` / python -m saltx.mup.shapes to write it)",
        path,
    )
    return base_shapes_from_config(cfg, build)


def write_shapes(
    base_cfg: DictConfig, delta_cfg: DictConfig, out_dir: str | Path, build: ShapeBuildFn
) -> Path:
    """Build both models with ``build``, write ``storeshapes`` and the two configs into
    ``out_dir``.

    Returns
    -------
    Path
        The base-shape file.
    """
    import mup

    check_widths(base_cfg, "the base model")
    check_widths(delta_cfg, "the delta model")
    base, delta = build(base_cfg), build(delta_cfg)
    if {k: tuple(p.shape) for k, p in base.named_parameters()} == {
        k: tuple(p.shape) for k, p in delta.named_parameters()
    }:
        raise MupConfigError(
            "the base and delta models have identical parameter shapes: the mup dimensions "
            "change nothing in the model (check apply_to / parameter_name)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SHAPE_FILE
    mup.make_base_shapes(base, delta, savefile=str(path))
    for which, c in (("base", base_cfg), ("delta", delta_cfg)):
        OmegaConf.save(c, out / f"{which}.yaml", resolve=True)
    return path


# -- command line -------------------------------------------------------------------------
def _experiment_in_defaults() -> bool:
    """Whether ``conf/train.yaml``'s defaults list has an ``experiment`` slot."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / "train.yaml").read_text()).get("defaults") or []
    return any(isinstance(d, Mapping) and "experiment" in d for d in defaults)


def normalise_overrides(overrides: Sequence[str]) -> list[str]:
    """Accept both ``experiment=x`` and ``+experiment=x``, whichever train.yaml needs."""
    slot = _experiment_in_defaults()
    out = []
    for o in overrides:
        if slot and o.startswith("+experiment="):
            o = o[1:]
        elif not slot and o.startswith("experiment="):
            o = "+" + o
        out.append(o)
    return out


@contextmanager
def _config_dir():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        yield


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` (Hydra's compose API)."""
    from hydra import compose

    import saltx.config  # noqa: F401  (schemas and resolvers)

    with _config_dir():
        return compose("train", overrides=normalise_overrides(overrides))


def make_shapes(overrides: Sequence[str], build: ShapeBuildFn) -> Path:
    """Compose the config, its base and delta variants, and write the shape files.

    Parameters
    ----------
    overrides
        Hydra overrides of the training config (``experiment=gn2_mup``, ...).
    build
        Builds each model (:data:`ShapeBuildFn`).

    Returns
    -------
    Path
        ``<mup.shape_path>/storeshapes``.
    """
    overrides = normalise_overrides(overrides)
    cfg = compose_train(overrides)
    assign = base_delta_assignments(cfg)
    base_cfg = compose_train([*overrides, *as_overrides(assign["base"])])
    delta_cfg = compose_train([*overrides, *as_overrides(assign["delta"])])
    return write_shapes(base_cfg, delta_cfg, shape_file(cfg).parent, build)


def main(argv: Sequence[str] | None = None, *, build: ShapeBuildFn) -> int:
    """``python -m saltx.mup.shapes +experiment=gn2_mup [key=value ...]``.

    ``build`` builds the base and delta models (the command line passes
    :func:`saltx.assemble.shape_model`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m saltx.mup.shapes",
        description="Write muP base shapes (<mup.shape_path>/storeshapes) for a config.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=gn2_mup")
    args = parser.parse_args(argv)
    try:
        path = make_shapes(args.overrides, build)
    except MupConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (and base.yaml, delta.yaml next to it)")
    return 0


if __name__ == "__main__":
    # The command line is an entry point: the composition step supplies the model builder
    # (this guard is not part of the module saltx.mup.shapes that other code imports).
    from saltx.assemble import shape_model
    from saltx.mup.shapes import main as shapes_main

    raise SystemExit(shapes_main(build=shape_model))
