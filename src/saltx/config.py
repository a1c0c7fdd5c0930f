"""Structured-config schemas for the Hydra config tree.

Registered in Hydra's ConfigStore so that a typo in a key fails at compose time with the
key's name (``Key 'bach_size' not in 'DataConfig'``) instead of deep inside a run.
Nodes that build objects (``_target_`` leaves such as attention kernels, encoders, tasks and
the optimizer) stay open: their keys are checked by the constructor they target.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from saltx.io.fs import local_dir


@dataclass
class DataConfig:
    train_file: str = MISSING
    val_file: str = MISSING
    test_file: str | None = None
    norm_dict: str = MISSING
    class_dict: str | None = None
    batch_size: int = 1000
    num_workers: int = 0
    num_train: int = -1
    num_val: int = -1
    num_test: int = -1
    global_object: str = "jets"
    variables: dict[str, list[str]] = field(default_factory=dict)
    # {input: h5 dataset}; inputs not listed read the dataset of their own name
    input_map: dict[str, str] | None = field(default_factory=dict)
    num_inputs: dict[str, int] = field(default_factory=dict)
    non_finite_to_num: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    shuffle_buffer: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 2
    read_threads: int = 1
    # Salt's `config_S3` block (download-first or direct S3 reads); secrets are redacted on save
    config_S3: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_data(self)


@dataclass
class ModelConfig:
    embed_dim: int = 256
    num_heads: int = 8
    out_dim: int = 128
    dropout: float = 0.0
    activation: str = "ReLU"
    init_nets: dict[str, Any] = field(default_factory=dict)
    edges: Any = None
    attention: Any = None
    encoder: Any = None
    pooling: Any = None
    tasks: dict[str, Any] = field(default_factory=dict)
    muP: bool = False
    norm_affine: bool = True


@dataclass
class PerformanceWriterConfig:
    """Katib's metrics (``trainer.performance_writer``): stdout lines and
    ``performance_metric.json`` (:class:`saltx.hpo.katib_writer.PerformanceWriter`)."""

    enabled: bool = True
    dir_path: str | None = None  # default: the run directory
    add_metrics: list[str] = field(default_factory=list)
    std_out: bool = True


@dataclass
class TrainerConfig:
    """The training loop (``conf/trainer/*.yaml``); see docs/training.md."""

    max_epochs: int = 100
    max_steps: int = -1
    precision: str = "32"
    float32_matmul_precision: str | None = None
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    resume: str = "auto"
    val_check_interval: int | None = None
    limit_val_batches: int = -1
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 500
    save_every_epoch: bool = False
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    deterministic: bool = False
    num_threads: int | None = None
    adapt_threads: bool = True
    reuse_freed_memory: bool = True
    progress_bar: bool = True
    progress_every_n_steps: int = 0
    progress_every_s: float = 60.0
    ddp_timeout_s: int = 600
    find_unused_parameters: bool = False
    peak_tflops: float | None = None
    performance_writer: PerformanceWriterConfig = field(default_factory=PerformanceWriterConfig)

    def __post_init__(self) -> None:
        _check_trainer(self)


@dataclass
class LRSConfig:
    """Salt's ``lrs_config``: OneCycle learning-rate schedule and weight decay.

    ``total_steps`` (optimizer steps of the whole cycle) is derived from the trainer when
    null; set it to keep one schedule across runs that stop early and resume.
    """

    initial: float = 1e-7
    max: float = 5e-4
    end: float = 1e-7
    pct_start: float = 0.1
    weight_decay: float = 1e-5
    total_steps: int | None = None
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        _check_lrs(self)


@dataclass
class MupDimConfig:
    """One muP width dimension (Salt's ``muP_config.<dim>``); see docs/mup.md.

    ``apply_to[i]`` is a config node (``model``, ``model.init_nets``; a bare ``init_nets``
    means ``model.init_nets``) and ``parameter_name[i]`` the key set under it (found
    recursively). The base and delta models get ``parameter_base`` / ``parameter_delta``;
    both null = the dimension does not scale.
    """

    apply_to: list[str] = field(default_factory=lambda: ["model"])
    parameter_name: list[str] = field(default_factory=lambda: ["embed_dim"])
    parameter_base: int | None = None
    parameter_delta: int | None = None


@dataclass
class MupCoordCheckConfig:
    """Settings of ``python -m saltx.mup.coord_check`` (widths, steps, lr, batch, output)."""

    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    steps: int = 5
    lr: float = 0.01
    batch_size: int = 64
    seeds: int = 2
    out_dir: str = "mup_coord_check"
    device: str = "auto"


@dataclass
class MupConfig:
    """The ``mup:`` block (Salt's ``muP_config``): base-shape file and scaled dimensions."""

    shape_path: str = MISSING
    embed_dim: MupDimConfig | None = field(default_factory=MupDimConfig)
    num_heads: MupDimConfig | None = field(
        default_factory=lambda: MupDimConfig(apply_to=["model"], parameter_name=["num_heads"])
    )
    coord_check: MupCoordCheckConfig = field(default_factory=MupCoordCheckConfig)


@dataclass
class LoggerConfig:
    """The experiment logger (``conf/logger/*.yaml``); ``metrics.jsonl`` is always written.

    ``name``: ``none``, ``tensorboard`` or ``wandb``; the other keys are W&B's.
    """

    name: str = "none"
    project: str = "saltx"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # null: online with WANDB_API_KEY, else offline
    name_override: str | None = None  # run name (default: the config's `name`)


@dataclass
class PathsConfig:
    data_dir: str = "demo_data"
    log_dir: str = "logs"
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    name: str = "GN2"
    seed: int = 42
    ckpt_path: str | None = None
    overwrite: bool = False
    optimized_metric: str = "val/loss"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lrs: LRSConfig = field(default_factory=LRSConfig)
    optimizer: Any = None
    logger: LoggerConfig | None = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    mup: MupConfig | None = None
    # more `_target_` module prefixes ('mypkg.') or names to trust (saltx.targets)
    allowed_targets: list[str] = field(default_factory=list)


# -- validation ---------------------------------------------------------------------------
# Each schema checks its own enumerated and ranged keys in __post_init__, which runs when
# OmegaConf.to_object builds the typed config; validate() adds the checks that need the
# whole config (monitored metrics, targets). Messages name the key and the allowed values.
class ConfigError(ValueError):
    """A config value that is out of range or not one of the allowed values."""


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; use {allowed}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _int_at_least(obj: Any, prefix: str, name: str, low: int, unset: tuple = ()) -> None:
    value = getattr(obj, name)
    if value in unset and not isinstance(value, bool):
        return
    shown = f"an integer >= {low}" + "".join(f" or {'null' if u is None else u}" for u in unset)
    _need(isinstance(value, int) and value >= low, f"{prefix}.{name}", value, shown)


def _check_data(d: DataConfig) -> None:
    _int_at_least(d, "data", "batch_size", 1)
    _int_at_least(d, "data", "num_workers", 0)
    for key in ("num_train", "num_val", "num_test"):
        _int_at_least(d, "data", key, 1, unset=(-1,))
    _int_at_least(d, "data", "shuffle_buffer", 0)
    _int_at_least(d, "data", "prefetch_factor", 1)
    _int_at_least(d, "data", "read_threads", 1)
    for name, num in (d.num_inputs or {}).items():
        _need(isinstance(num, int) and num >= 1, f"data.num_inputs.{name}", num, "an integer >= 1")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = ("highest", "high", "medium")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
RESUME_MODES = ("auto", "never")
MONITOR_MODES = ("min", "max")


def _check_trainer(t: TrainerConfig) -> None:
    from saltx.engine.precision import normalise_precision

    p = "trainer"
    _int_at_least(t, p, "max_epochs", 1, unset=(-1,))
    _int_at_least(t, p, "max_steps", 1, unset=(-1,))
    if t.max_epochs == -1 and t.max_steps == -1:
        raise ConfigError(
            "trainer.max_epochs=-1 and trainer.max_steps=-1: the run would never end; set "
            "trainer.max_epochs >= 1 or trainer.max_steps >= 1"
        )
    try:
        normalise_precision(t.precision)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _need(
        t.float32_matmul_precision is None or t.float32_matmul_precision in MATMUL_PRECISIONS,
        "trainer.float32_matmul_precision",
        t.float32_matmul_precision,
        f"null or one of {list(MATMUL_PRECISIONS)}",
    )
    _need(
        t.compile_mode is None or t.compile_mode in COMPILE_MODES,
        "trainer.compile_mode",
        t.compile_mode,
        f"null or one of {list(COMPILE_MODES)}",
    )
    if t.compile:
        import torch

        backends = torch.compiler.list_backends(exclude_tags=())
        _need(
            t.compile_backend in backends,
            "trainer.compile_backend",
            t.compile_backend,
            f"one of {backends}",
        )
    _need(
        str(t.accelerator).lower() in ACCELERATORS,
        "trainer.accelerator",
        t.accelerator,
        "cpu, gpu or auto",
    )
    _int_at_least(t, p, "devices", 1)
    _int_at_least(t, p, "num_nodes", 1)
    _need(str(t.resume).lower() in RESUME_MODES, "trainer.resume", t.resume, "auto or never")
    _need(t.monitor_mode in MONITOR_MODES, "trainer.monitor_mode", t.monitor_mode, "min or max")
    _need(bool(str(t.monitor or "").strip()), "trainer.monitor", t.monitor, "a metric name")
    _int_at_least(t, p, "val_check_interval", 1, unset=(None,))
    _int_at_least(t, p, "limit_val_batches", 1, unset=(-1,))
    _int_at_least(t, p, "accumulate_grad_batches", 1)
    _int_at_least(t, p, "log_every_n_steps", 1)
    _int_at_least(t, p, "checkpoint_every_n_steps", 0)
    _int_at_least(t, p, "num_threads", 1, unset=(None,))
    _int_at_least(t, p, "ddp_timeout_s", 1)
    for key in ("gradient_clip_val", "peak_tflops"):
        value = getattr(t, key)
        _need(
            value is None or (_finite(value) and value >= 0),
            f"trainer.{key}",
            value,
            "null or a finite number >= 0",
        )


def _check_lrs(lrs: LRSConfig) -> None:
    _need(_finite(lrs.max) and lrs.max > 0, "lrs.max", lrs.max, "a finite learning rate > 0")
    for key in ("initial", "end", "weight_decay"):
        value = getattr(lrs, key)
        _need(_finite(value) and value >= 0, f"lrs.{key}", value, "a finite number >= 0")
    _need(
        _finite(lrs.pct_start) and 0 < lrs.pct_start < 1,
        "lrs.pct_start",
        lrs.pct_start,
        "a number in (0, 1)",
    )
    _int_at_least(lrs, "lrs", "total_steps", 1, unset=(None,))
    for key in ("base_momentum", "max_momentum"):
        value = getattr(lrs, key)
        _need(_finite(value) and 0 <= value <= 1, f"lrs.{key}", value, "a number in [0, 1]")


def logged_metrics(cfg: Any) -> set[str]:
    """Every metric name the training loop logs for the tasks of ``cfg.model.tasks``."""
    from saltx.engine.loggers import metric_names

    return set(metric_names([str(name) for name in (cfg.model.get("tasks") or {})]))


def _check_tasks(cfg: Any) -> None:
    """Class weights (finite, >= 0), class lists (>= 2 distinct names), loss weights."""
    from saltx.data.class_weights import check_class_weights
    from saltx.errors import DataError

    for name, node in (cfg.model.get("tasks") or {}).items():
        node = node or {}
        weights = node.get("class_weights")
        if weights is not None:
            plain = OmegaConf.to_container(weights) if OmegaConf.is_config(weights) else weights
            try:
                check_class_weights(plain, f"model.tasks.{name}.class_weights")
            except DataError as err:
                raise ConfigError(str(err)) from None
        names = node.get("class_names")
        if names is not None:
            names = [str(n) for n in names]
            _need(
                len(names) >= 2 and len(set(names)) == len(names),
                f"model.tasks.{name}.class_names",
                names,
                "at least two distinct class names (a classifier of one class learns nothing)",
            )
        weight = node.get("weight")
        if weight is not None:
            _need(
                _finite(weight) and weight >= 0,
                f"model.tasks.{name}.weight",
                weight,
                "a finite number >= 0",
            )


def schema_config(cfg: Any) -> DictConfig:
    """``cfg`` on the train schema: a config node whose values are typed and where every key
    ``cfg`` leaves out reads as its schema default (the one place defaults live).

    Unlike :func:`typed_config` no ``__post_init__`` check runs and keys without a default
    (``data.train_file``, ...) may stay unset until read, so readers that need only some
    sections (the model builder builds from ``data.variables`` and ``model`` alone) take any
    config: a composed one, a run's ``config.yaml``, a plain dict or a :class:`TrainConfig`.
    Keys beyond the schema stay at the root (a custom build function's own); the schema's
    sections refuse unknown keys.

    Raises
    ------
    omegaconf.errors.ValidationError, omegaconf.errors.ConfigKeyError
        A value of the wrong type, or a key that a section does not declare.
    """
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is TrainConfig:
        return cfg  # composed by Hydra on train_schema: already this view
    base = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(base, False)
    return OmegaConf.merge(base, cfg)


def typed_config(cfg: Any) -> TrainConfig:
    """The train config as the schema's dataclasses (``OmegaConf.to_object``).

    Every value is typed and every key the config leaves out takes its schema default (the
    one place defaults live); each section's ``__post_init__`` checks its ranges and
    allowed values. Keys beyond the schema (a custom build function's own) stay as
    attributes. The training loop reads its settings from this object.

    Raises
    ------
    ConfigError
        A key without a value and without a default, or a value out of range.
    """
    from omegaconf.errors import MissingMandatoryValue

    cfg = schema_config(cfg)  # e.g. a spawned rank's plain copy
    try:
        typed = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is not set (it has no default)") from None
    assert isinstance(typed, TrainConfig)
    return typed


def validate(cfg: Any) -> TrainConfig:
    """Check a composed train config before anything is read or built; return it typed.

    Runs every schema's ``__post_init__`` (ranges and allowed values of ``data``,
    ``trainer``, ``lrs``) through ``OmegaConf.to_object``, then the checks that need the
    whole config: ``trainer.monitor`` and ``optimized_metric`` must be metrics the loop
    logs for the configured tasks, task weights must be positive, and every ``_target_``
    must be allowed (:mod:`saltx.targets`; nothing is imported).

    Parameters
    ----------
    cfg
        The composed ``train`` config (``DictConfig``).

    Returns
    -------
    TrainConfig
        The typed config (model, optimizer and logger nodes stay plain containers).

    Raises
    ------
    ConfigError
        Naming the key, its value and what is allowed.
    """
    from saltx.targets import allow_list, check_targets

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    typed = typed_config(cfg)
    logged = logged_metrics(cfg)
    for key, value in (
        ("trainer.monitor", typed.trainer.monitor),
        ("optimized_metric", typed.optimized_metric),
    ):
        if value not in logged:
            raise ConfigError(
                f"{key}={value!r} is never logged, so it can never be tracked; the loop logs "
                f"{sorted(logged)} for the tasks of model.tasks"
            )
    _check_tasks(cfg)
    allowed = allow_list(typed.allowed_targets)
    for key in ("model", "optimizer"):
        check_targets(
            OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else None,
            key,
            allowed,
        )
    return typed


def _check_keys(cfg: Any, checks: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
    for key, (ok, allowed) in checks.items():
        value = OmegaConf.select(cfg, key, default=None)
        _need(ok(value), key, value, allowed)


def _optional_int(low: int, unset: tuple = (None,)) -> Callable[[Any], bool]:
    return lambda v: v in unset or (isinstance(v, int) and not isinstance(v, bool) and v >= low)


def _fraction(v: Any) -> bool:
    return _finite(v) and 0 <= v <= 1


def validate_evaluate(ecfg: Any) -> None:
    """Check the keys of ``conf/evaluate.yaml`` (the run's config is checked on loading).

    Raises
    ------
    ConfigError
        Naming the key, its value and what is allowed.
    """
    device = re.compile(r"^(cpu|cuda|auto|cuda:\d+)$")
    _check_keys(
        ecfg,
        {
            "device": (lambda v: bool(device.match(str(v))), "cpu, cuda, cuda:N or auto"),
            "batch_size": (_optional_int(1), "null or an integer >= 1"),
            "data.batch_size": (_optional_int(1), "null or an integer >= 1"),
            "data.num_workers": (_optional_int(0), "null or an integer >= 0"),
            "data.num_test": (_optional_int(1, (None, -1)), "null, -1 (all) or an integer >= 1"),
            "f_c": (_fraction, "a number in [0, 1]"),
            "f_b": (_fraction, "a number in [0, 1]"),
            "f_tau": (_fraction, "a number in [0, 1]"),
        },
    )
    for key in ("f_c", "f_b"):
        total = float(ecfg.get(key)) + float(ecfg.get("f_tau"))
        _need(total <= 1, f"{key}+f_tau", total, "fractions that sum to at most 1")
    points = list(ecfg.get("working_points") or [])
    _need(
        bool(points) and all(_finite(w) and 0 < w < 1 for w in points),
        "working_points",
        points,
        "a non-empty list of efficiencies in (0, 1)",
    )


def validate_export(ecfg: Any) -> None:
    """Check the keys of ``conf/export.yaml`` (the run's config is checked on loading).

    Raises
    ------
    ConfigError
        Naming the key, its value and what is allowed.
    """
    _check_keys(
        ecfg,
        {
            "validate.max_constituents": (_optional_int(1, ()), "an integer >= 1"),
            "validate.trials": (_optional_int(1, ()), "an integer >= 1"),
            "include_aux": (lambda v: isinstance(v, bool), "true or false"),
            "overwrite": (lambda v: isinstance(v, bool), "true or false"),
        },
    )


class ConfigKeyError(KeyError):
    """Keys that no schema declares (typos, or Salt's names typed with ``+``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_keys(cfg: Any, reference: Any = None, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` that no schema declares.

    A node built from a dataclass schema declares its fields; a plain node is checked
    against ``reference`` (the same node of a config file) when given; any other node
    (``dict[str, ...]`` fields, ``_target_`` nodes whose constructor checks its keys) is open.

    Parameters
    ----------
    cfg
        A composed config (keys added with ``+`` are what this finds).
    reference
        A plain config with the declared keys, for configs without a schema.
    """
    if not isinstance(cfg, DictConfig):
        return []
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        declared = {f.name for f in dataclasses.fields(schema)}
    elif isinstance(reference, DictConfig):
        declared = set(reference.keys())
    else:
        return []
    out = []
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in declared:
            out.append(path)
            continue
        child = cfg._get_node(key)
        sub = reference._get_node(key) if isinstance(reference, DictConfig) else None
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out += unknown_keys(child, sub if isinstance(sub, DictConfig) else None, f"{path}.")
    return out


def check_keys(cfg: Any, reference: Any = None) -> None:
    """Refuse keys that no schema declares, naming each (and the saltx key for Salt's names).

    Raises
    ------
    ConfigKeyError
        Listing every unknown key.
    """
    keys = unknown_keys(cfg, reference)
    if not keys:
        return
    from saltx.salt.keys import saltx_key_for

    lines = []
    for key in keys:
        hint = saltx_key_for(key)
        lines.append(f"  {key}: " + (f"Salt's name; in saltx: {hint}" if hint else "not a key"))
    raise ConfigKeyError(
        "unknown config keys (added with '+'? saltx would ignore them):\n"
        + "\n".join(lines)
        + "\nSee docs/salt.md for Salt's keys and docs/training.md for saltx's."
    )


OPEN_NODES = ("data.input_map", "data.num_inputs", "data.config_S3", "data.parameters")
"""Dict nodes whose keys the user chooses: ``data.num_inputs.tracks=10`` works without ``+``."""


def train_schema() -> DictConfig:
    """The train schema as a config node, with :data:`OPEN_NODES` open to new keys."""
    node = OmegaConf.structured(TrainConfig)
    for key in OPEN_NODES:
        OmegaConf.set_struct(OmegaConf.select(node, key), False)
    return node


def register_configs() -> None:
    """Register schemas and resolvers; safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=train_schema())
    if not OmegaConf.has_resolver("saltx_local_dir"):
        OmegaConf.register_new_resolver("saltx_local_dir", local_dir)


register_configs()
