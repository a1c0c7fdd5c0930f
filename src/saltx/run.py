"""Load a run directory: its config, dicts and metadata, the model and a checkpoint.

Used by evaluation (:mod:`saltx.evaluate`), export (:mod:`saltx.export`) and the Salt
checkpoint converter. A run directory is a local folder or a URL (see
:class:`saltx.io.rundir.RunDir`).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from saltx.config import TrainConfig
from saltx.io.fs import exists, read_text
from saltx.io.rundir import RunDir, load_torch
from saltx.models.build import build_model

CKPT_DIR = "checkpoints"


class RunDirError(FileNotFoundError):
    """A run directory, or a file in it, is missing or unusable."""


@dataclass
class LoadedRun:
    """A run directory's model, rebuilt from its config and loaded from a checkpoint.

    Attributes
    ----------
    rundir
        The run directory.
    cfg
        Its ``config.yaml``.
    metadata
        Its ``metadata.yaml`` (empty when absent).
    model
        The model in eval mode, on the CPU.
    ckpt_path
        The checkpoint loaded.
    class_names
        Class names of the jet classification task (if any).
    """

    rundir: RunDir
    cfg: DictConfig
    metadata: dict[str, Any]
    model: nn.Module
    ckpt_path: str
    class_names: list[str] | None = None
    norm_dict: dict[str, Any] = field(default_factory=dict)

    @property
    def ckpt_stem(self) -> str:
        """``best`` for ``.../best.pt``."""
        return Path(self.ckpt_path.rstrip("/")).stem


def _read_yaml(rundir: RunDir, rel: str) -> Any:
    return yaml.safe_load(rundir.read_text(rel))


def _run_or_config_yaml(rundir: RunDir, rel: str, fallback: str | None) -> Any:
    """``rel`` from the run directory, else the file the config points at, else None."""
    if rundir.exists(rel):
        return _read_yaml(rundir, rel)
    if fallback and exists(str(fallback)):
        return yaml.safe_load(read_text(str(fallback)))
    return None


def resolve_checkpoint(rundir: RunDir, ckpt: str | None) -> str:
    """Path of the checkpoint: ``best``/``last``/``epoch=NNN`` in the run, or a path.

    ``None`` takes ``best.pt`` when it exists, else ``last.pt``.

    Raises
    ------
    RunDirError
        When the checkpoint does not exist (the message lists the available ones).
    """
    names = [ckpt] if ckpt else ["best", "last"]
    for name in names:
        name = str(name)
        if name.endswith(".pt") and ("/" in name or exists(name)):
            if exists(name):
                return name
            continue
        rel = f"{CKPT_DIR}/{name if name.endswith('.pt') else name + '.pt'}"
        if rundir.exists(rel):
            return rundir.path(rel)
    available = []
    if rundir.exists(CKPT_DIR):
        available = sorted(Path(p).name for p in rundir.fs.ls(rundir._fs_path(CKPT_DIR)))
    raise RunDirError(
        f"checkpoint {ckpt or 'best/last'} not found in {rundir.path(CKPT_DIR)}; "
        f"available: {available or 'none'} (use ckpt=best, last, epoch=NNN or a path)"
    )


def jet_classification_task(model: nn.Module, global_object: str) -> nn.Module | None:
    for task in model.tasks.values():
        if task.input_name == global_object and getattr(task, "kind", "") == "classification":
            return task
    return None


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Clear errors for a checkpoint that does not fit the model built from the config."""
    for name, task in model.tasks.items():
        names = getattr(task, "class_names", None)
        if not names:
            continue
        linears = [(k, m) for k, m in task.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        key = f"tasks.{name}.{linears[-1][0]}.weight"
        if key in state and state[key].shape[0] != len(names):
            raise ValueError(
                f"task '{name}' has {len(names)} classes {list(names)} but the head in "
                f"checkpoint {where} has {state[key].shape[0]} outputs: the class list does "
                "not match the trained head (check model.tasks.<task>.class_names and the "
                "file's flavour_label attribute)"
            )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(state[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {where} does not fit the model built from the run's config.yaml: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )


def class_names_of_run(cfg: DictConfig, metadata: Mapping[str, Any]) -> list[str] | None:
    """Jet class names from the config, else ``metadata.yaml``, else the train file."""
    for key in ("object_classes", "jet_classes", "class_names"):
        value = metadata.get(key)
        if isinstance(value, Mapping):
            return [str(value[k]) for k in sorted(value, key=int)]
        if isinstance(value, list):
            return [str(v) for v in value]
    for split in ("train_file", "test_file"):
        path = cfg.data.get(split)
        if path and exists(str(path)):
            from saltx.data.labels import read_class_names

            try:
                return read_class_names(str(path), str(cfg.data.get("global_object", "jets")))
            except ValueError:
                continue
    return None


def read_run_config(run_dir: str) -> tuple[RunDir, DictConfig]:
    """A run directory and its ``config.yaml`` on top of the train schema's defaults.

    Raises
    ------
    RunDirError
        Missing run directory or ``config.yaml``.
    """
    if not run_dir or str(run_dir) == "???":
        raise RunDirError("no run directory given: pass run_dir=path/to/run")
    rundir = RunDir(run_dir)
    if not exists(rundir.root):
        raise RunDirError(f"run directory not found: '{rundir.root}'")
    if not rundir.exists("config.yaml"):
        raise RunDirError(
            f"'{rundir.root}' has no config.yaml: not a saltx run directory (or training "
            "has not written it yet)"
        )
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), _read_yaml(rundir, "config.yaml"))
    return rundir, cfg


def load_run(run_dir: str, ckpt: str | None = None) -> LoadedRun:
    """Rebuild a run's model from its ``config.yaml`` and load a checkpoint.

    Parameters
    ----------
    run_dir
        The run directory (local path or URL).
    ckpt
        ``best``, ``last``, ``epoch=NNN``, a path, or None (best, else last).

    Raises
    ------
    RunDirError
        Missing run directory, ``config.yaml`` or checkpoint.
    ValueError
        A checkpoint that does not fit the model (e.g. another class list).
    """
    rundir, cfg = read_run_config(run_dir)
    metadata = _read_yaml(rundir, "metadata.yaml") if rundir.exists("metadata.yaml") else {}
    norm_dict = _run_or_config_yaml(rundir, "norm_dict.yaml", cfg.data.get("norm_dict"))
    if norm_dict is None:
        raise RunDirError(
            f"'{rundir.root}' has no norm_dict.yaml and data.norm_dict "
            f"({cfg.data.get('norm_dict')}) does not exist"
        )
    class_dict = _run_or_config_yaml(rundir, "class_dict.yaml", cfg.data.get("class_dict"))
    class_names = class_names_of_run(cfg, metadata or {})
    model = build_model(cfg, norm_dict, class_dict, class_names)
    ckpt_path = resolve_checkpoint(rundir, ckpt)
    state = load_torch(ckpt_path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{ckpt_path} is not a saltx checkpoint (a dict with a 'model' key)")
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    # buffers the model no longer saves (non-persistent, e.g. class weights) are ignored
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    weights = {k: v for k, v in weights.items() if k not in transient}
    _check_state_dict(model, weights, ckpt_path)
    model.load_state_dict(weights)
    model.eval()
    jet = jet_classification_task(model, str(cfg.data.get("global_object", "jets")))
    return LoadedRun(
        rundir=rundir,
        cfg=cfg,
        metadata=dict(metadata or {}),
        model=model,
        ckpt_path=ckpt_path,
        class_names=list(jet.class_names) if jet is not None else None,
        norm_dict=norm_dict,
    )


def exit_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit(128 + signal)`` in the main thread.

    Python's default is to die at once; raising instead runs the ``finally`` blocks that
    remove temporary files (a killed evaluation or export leaves nothing behind).
    """

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
