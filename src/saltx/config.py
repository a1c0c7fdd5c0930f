"""Structured-config schemas for the Hydra config tree.

Registered in Hydra's ConfigStore so that a typo in a key fails at compose time with the
key's name (``Key 'bach_size' not in 'DataConfig'``) instead of deep inside a run.
Nodes that build objects (``_target_`` leaves such as attention kernels, encoders, tasks and
the optimizer) stay open: their keys are checked by the constructor they target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


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
    input_map: dict[str, str] | None = None
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
    progress_every_n_steps: int = 0
    progress_every_s: float = 60.0
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
    overwrite: bool = False
    optimized_metric: str = "val/loss"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lrs: LRSConfig = field(default_factory=LRSConfig)
    optimizer: Any = None
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    mup: MupConfig | None = None


def _local_dir(path: str) -> str:
    """Map a run directory to a local folder Hydra may create (s3:// runs get a local cache)."""
    if "://" in str(path):
        scheme, rest = str(path).split("://", 1)
        cache = os.environ.get("SALTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache"))
        return os.path.join(cache, "saltx", "runs", scheme, rest)
    return str(path)


def register_configs() -> None:
    """Register schemas and resolvers; safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("saltx_local_dir"):
        OmegaConf.register_new_resolver("saltx_local_dir", _local_dir)


register_configs()
