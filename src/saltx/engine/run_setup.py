"""Run setup: which run directory, and its own files (``config.yaml``, ``metadata.yaml``,
dict copies). The storage itself is :class:`saltx.io.rundir.RunDir`."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from saltx.engine.distributed import DistInfo, broadcast_object
from saltx.io.rundir import RunDir
from saltx.secrets import REDACTED, is_secret_key, redact  # noqa: F401  (re-exported)


def plain_config(cfg: DictConfig, output_dir: str) -> dict[str, Any]:
    """The resolved config as plain containers, secrets redacted, ``paths.output_dir`` fixed."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    container.setdefault("paths", {})["output_dir"] = output_dir
    return redact(container)


def _user_set_output_dir() -> bool:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    return any(o.lstrip("+~").startswith("paths.output_dir=") for o in overrides)


def hydra_run_dir(cfg: DictConfig) -> str:
    """The run directory for this process as the user asked for it.

    ``paths.output_dir``, except in a Hydra MULTIRUN job where the user did not set it:
    then the job's own folder (``HydraConfig.get().runtime.output_dir``), so sweep jobs
    never share a run directory.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN and not _user_set_output_dir():
                return str(hc.runtime.output_dir)
    except (ImportError, ValueError):
        pass
    return str(cfg.paths.output_dir)


def resolve_run_dir(cfg: DictConfig, info: DistInfo) -> str:
    """Rank 0's run directory, shared with every rank (one run dir per run)."""
    root = hydra_run_dir(cfg) if info.is_main else None
    return str(broadcast_object(root, info))


def git_hash() -> str | None:
    """The commit of the saltx source tree, or None (an installed package, no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_metadata() -> dict[str, Any]:
    """Versions, host and time of this run."""
    try:
        from importlib.metadata import version

        saltx_version = version("saltx")
    except Exception:  # not installed as a distribution
        saltx_version = None
    return {
        "saltx_version": saltx_version,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda,
        "hostname": socket.gethostname(),
        "git_hash": git_hash(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "num_gpus": torch.cuda.device_count(),
    }


def _yaml_safe(value: Any) -> Any:
    """Plain YAML types only (numpy scalars and arrays become Python values)."""
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, str | int) else str(k)): _yaml_safe(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_yaml_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return _yaml_safe(value.tolist())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return str(value)  # plain str (torch.__version__ is a str subclass)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return str(value)


def dump_yaml(data: Any) -> str:
    """YAML text of plain data, keys in insertion order."""
    return yaml.safe_dump(_yaml_safe(data), sort_keys=False, default_flow_style=None)


def write_run_files(
    rundir: RunDir,
    config: dict[str, Any],
    metadata: Mapping[str, Any],
    files: Mapping[str, str],
) -> None:
    """Write ``config.yaml``, ``metadata.yaml`` and copies of the norm/class dicts (rank 0).

    The config's ``data.norm_dict``/``data.class_dict`` in ``config.yaml`` keep pointing at
    the originals; the copies sit next to it under their own names.
    """
    rundir.makedirs()
    rundir.makedirs("checkpoints")
    for name, src in files.items():
        if src and os.path.basename(str(src)):
            rundir.copy_in(src, name)
    rundir.write_text("config.yaml", dump_yaml(config))
    meta = dict(metadata)
    meta.update(environment_metadata())
    meta["out_dir"] = rundir.root
    rundir.write_text("metadata.yaml", dump_yaml(redact(_yaml_safe(meta))))
