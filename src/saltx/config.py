"""Structured-config schemas for the Hydra config tree.

Registered in Hydra's ConfigStore so that a typo in a key fails at compose time with the
key's name (``Key 'bach_size' not in 'DataConfig'``) instead of deep inside a run.
Nodes that build objects (``_target_`` leaves such as attention kernels, encoders, tasks and
the optimizer) stay open: their keys are checked by the constructor they target.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


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
class TrainerConfig:
    """The training loop (``conf/trainer/*.yaml``); see docs/training.md."""

    max_epochs: int = 1
    max_steps: int = -1
    precision: str = "32"
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
    reuse_freed_memory: bool = True
    progress_bar: bool = True
    ddp_timeout_s: int = 600
    find_unused_parameters: bool = False
    peak_tflops: float | None = None
    performance_writer: dict[str, Any] = field(
        default_factory=lambda: {
            "enabled": True,
            "dir_path": None,
            "add_metrics": [],
            "std_out": True,
        }
    )


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
class PathsConfig:
    data_dir: str = "demo_data"
    log_dir: str = "logs"
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    name: str = "GN2"
    seed: int = 42
    ckpt_path: str | None = None
    optimized_metric: str = "val/loss"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lrs: LRSConfig = field(default_factory=LRSConfig)
    optimizer: Any = None
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    mup: MupConfig | None = None


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


def _local_dir(path: str) -> str:
    """Map a run directory to a local folder Hydra may create (s3:// runs get a local cache)."""
    if "://" in str(path):
        scheme, rest = str(path).split("://", 1)
        cache = os.environ.get("SALTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache"))
        return os.path.join(cache, "saltx", "runs", scheme, rest)
    return str(path)


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
        OmegaConf.register_new_resolver("saltx_local_dir", _local_dir)


register_configs()
