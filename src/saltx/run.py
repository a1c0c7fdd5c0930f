"""Load a run directory: its config, dicts and metadata, the model and a checkpoint.

Used by evaluation (:mod:`saltx.evaluate`), export (:mod:`saltx.export`) and the Salt
checkpoint converter. A run directory is a local folder or a URL (see
:class:`saltx.io.rundir.RunDir`).
"""

from __future__ import annotations

import os
import posixpath
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from saltx.assemble import build_model
from saltx.config import ConfigError, TrainConfig, validate
from saltx.data.class_weights import load_class_dict
from saltx.data.norm import load_norm_dict
from saltx.engine.checkpoint import load_checkpoint
from saltx.eval.testset import jet_classification_task
from saltx.io.fs import exists, is_remote
from saltx.io.rundir import RunDir
from saltx.secrets import redact_text
from saltx.targets import TargetError

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
    try:
        return yaml.safe_load(rundir.read_text(rel))
    except yaml.YAMLError as err:
        raise RunDirError(f"{rundir.path(rel)} is not valid YAML: {err}") from err


def _run_or_config_dict(rundir: RunDir, rel: str, fallback: str | None, load: Any) -> Any:
    """``rel`` from the run directory, else the file the config points at, else None;
    read (and checked) with ``load`` (:func:`load_norm_dict` or :func:`load_class_dict`)."""
    if rundir.exists(rel):
        return load(rundir.path(rel))
    if fallback and exists(str(fallback)):
        return load(str(fallback))
    return None


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _outside_note(path: str, rundir: RunDir) -> None:
    """Say so when the weights come from outside the run directory."""
    inside = False
    if not is_remote(path) and not rundir.remote:
        inside = _inside(os.path.realpath(path), os.path.realpath(rundir.root))
    elif is_remote(path) and rundir.remote:
        inside = path.startswith(rundir.root + "/")
    if not inside:
        print(
            redact_text(
                f"note: checkpoint {path} is outside the run directory {rundir.root}; its "
                "weights are loaded into the model of this run's config.yaml"
            ),
            flush=True,
        )


def _relative_checkpoint(rundir: RunDir, name: str) -> str | None:
    """A relative ``ckpt``: inside the run directory, or refused.

    ``checkpoints/x.pt`` (relative to the run directory) and ``RUN/checkpoints/x.pt``
    (relative to the current directory, inside the run directory) are accepted; a path
    that leaves the run directory (``../other_run/...``) is refused.
    """
    clean = posixpath.normpath(name.replace("\\", "/"))
    candidates = []
    if not clean.startswith("../") and clean != ".." and not os.path.isabs(clean):
        candidates.append(clean)
    if not rundir.remote and os.path.exists(name):
        here = os.path.realpath(name)
        root = os.path.realpath(rundir.root)
        if _inside(here, root):
            candidates.append(os.path.relpath(here, root))
    for rel in candidates:
        for option in (rel, rel if rel.endswith(".pt") else rel + ".pt"):
            if rundir.exists(option) and not rundir.fs.isdir(rundir._fs_path(option)):
                return rundir.path(option)
    if candidates:
        return None
    raise RunDirError(
        f"ckpt={name!r} points outside the run directory {rundir.root}: a relative ckpt must "
        "stay inside it (so that a run is never evaluated with another run's weights by "
        "accident); give an absolute path or a URL to use weights from elsewhere"
    )


def resolve_checkpoint(rundir: RunDir, ckpt: str | None) -> str:
    """Path of the checkpoint named by ``ckpt`` (the rule of docs/evaluation.md).

    * ``None``: ``checkpoints/best.pt`` when it exists, else ``checkpoints/last.pt``;
    * a name without a path (``best``, ``last``, ``epoch=003``, ``x.pt``): in
      ``RUN/checkpoints/``;
    * a relative path: inside the run directory (relative to it, or to the current
      directory); one that leaves the run directory is refused;
    * an absolute path or a URL: taken as given; when it lies outside the run directory a
      note says so.

    Raises
    ------
    RunDirError
        When the checkpoint does not exist (the message lists the available ones), or a
        relative path leaves the run directory.
    """
    names = [str(ckpt)] if ckpt else ["best", "last"]
    for name in names:
        if is_remote(name) or os.path.isabs(name):
            if exists(name):
                _outside_note(name, rundir)
                return name
            raise RunDirError(f"checkpoint {name} not found")
        if "/" in name or "\\" in name or name in (".", ".."):
            found = _relative_checkpoint(rundir, name)
            if found:
                return found
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


def fit_weights(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    problem: str,
    names: tuple[str, str] = ("model", "checkpoint"),
) -> dict[str, torch.Tensor]:
    """``weights`` without the buffers ``model`` does not save, checked to fit ``model``.

    Buffers the model no longer saves (non-persistent, e.g. class weights) are dropped;
    then every key of the model must be there, with its shape, and no other key.

    Parameters
    ----------
    problem
        The start of the error message (which weights, which model).
    names
        How the message calls the model and the weights in a shape mismatch.

    Raises
    ------
    ValueError
        ``problem``, then the missing and unexpected keys and the shape mismatches.
    """
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    weights = {k: v for k, v in weights.items() if k not in transient}
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [
        f"{k}: {names[0]} {tuple(own[k].shape)} vs {names[1]} {tuple(weights[k].shape)}"
        for k in own
        if k in weights and own[k].shape != weights[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{problem}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    return weights


def _check_class_heads(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """A clear error for a checkpoint whose classification heads have another class count."""
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


def class_names_of_run(cfg: DictConfig, metadata: Mapping[str, Any]) -> list[str] | None:
    """Jet class names from ``metadata.yaml``, else the train or test file of ``cfg`` (the
    run's config on the train schema)."""
    for key in ("object_classes", "jet_classes", "class_names"):
        value = metadata.get(key)
        if isinstance(value, Mapping):
            return [str(value[k]) for k in sorted(value, key=int)]
        if isinstance(value, list):
            return [str(v) for v in value]
    for split in ("train_file", "test_file"):
        path = cfg.data[split]
        if path and exists(str(path)):
            from saltx.data.labels import read_class_names

            try:
                return read_class_names(str(path), str(cfg.data.global_object))
            except ValueError:
                continue
    return None


def _interpolations(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every string in ``node`` that OmegaConf would resolve."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _interpolations(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _interpolations(value, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield where, node


def read_run_config(
    run_dir: str, allowed_targets: Sequence[str] | None = None
) -> tuple[RunDir, DictConfig]:
    """A run directory and its ``config.yaml`` on top of the train schema's defaults.

    The file is untrusted input: it must be a mapping without interpolations (saltx saves
    configs fully resolved, so ``${oc.env:...}`` or ``${...}`` means it was edited; nothing
    is resolved), its ``allowed_targets`` are replaced by ``allowed_targets`` (the caller's
    own, e.g. evaluate's command line), and it is validated (:func:`saltx.config.validate`:
    ranges, allowed values, ``_target_`` allow-list; nothing is imported).

    Raises
    ------
    RunDirError
        Missing run directory, missing, empty or edited ``config.yaml``.
    ConfigError
        A value out of range or a ``_target_`` that is not allowed.
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
    where = rundir.path("config.yaml")
    raw = _read_yaml(rundir, "config.yaml")
    if not isinstance(raw, dict) or not raw:
        kind = "empty" if not raw else f"a {type(raw).__name__}, not a mapping"
        raise RunDirError(f"{where} is {kind}: not a saltx run config (or a damaged copy)")
    for key, value in _interpolations(raw):
        raise RunDirError(
            f"{where} has an interpolation at {key}: {value!r}; saltx saves configs fully "
            "resolved, so this file was edited. Saved configs are never resolved (an "
            "${oc.env:...} would copy an environment variable into the outputs): replace it "
            "with its value"
        )
    stored = [str(t) for t in raw.get("allowed_targets") or []]
    trusted = [str(t) for t in allowed_targets or []]
    ignored = sorted(set(stored) - set(trusted))
    if ignored:
        print(
            f"note: {where} trusts more _target_ prefixes {ignored}; a run's own list is "
            "not trusted: pass allowed_targets=[...] on the command line to allow them",
            flush=True,
        )
    raw["allowed_targets"] = trusted
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), raw)
        validate(cfg)
    except (ConfigError, TargetError) as err:
        raise type(err)(f"{where}: {err}") from None
    except Exception as err:  # a key or a type the schema does not know (omegaconf errors)
        raise RunDirError(f"{where} does not fit saltx's config schema: {err}") from err
    return rundir, cfg


def load_run(
    run_dir: str, ckpt: str | None = None, allowed_targets: Sequence[str] | None = None
) -> LoadedRun:
    """Rebuild a run's model from its ``config.yaml`` and load a checkpoint.

    Parameters
    ----------
    run_dir
        The run directory (local path or URL).
    ckpt
        ``best``, ``last``, ``epoch=NNN``, a path, or None (best, else last); see
        :func:`resolve_checkpoint` for where paths may point.
    allowed_targets
        ``_target_`` prefixes trusted beyond saltx's defaults (the run's own list is not
        trusted; see :func:`read_run_config`).

    Raises
    ------
    RunDirError
        Missing run directory, ``config.yaml`` or checkpoint.
    ValueError
        A checkpoint that does not fit the model (e.g. another class list).
    """
    rundir, cfg = read_run_config(run_dir, allowed_targets)
    metadata = _read_yaml(rundir, "metadata.yaml") if rundir.exists("metadata.yaml") else {}
    if not isinstance(metadata, dict):
        metadata = {}
    norm_dict = _run_or_config_dict(rundir, "norm_dict.yaml", cfg.data.norm_dict, load_norm_dict)
    if norm_dict is None:
        raise RunDirError(
            f"'{rundir.root}' has no norm_dict.yaml and data.norm_dict "
            f"({cfg.data.norm_dict}) does not exist"
        )
    class_dict = _run_or_config_dict(
        rundir, "class_dict.yaml", cfg.data.class_dict, load_class_dict
    )
    class_names = class_names_of_run(cfg, metadata or {})
    model = build_model(cfg, norm_dict, class_dict, class_names)
    ckpt_path = resolve_checkpoint(rundir, ckpt)
    state = load_checkpoint(ckpt_path)
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    _check_class_heads(model, weights, ckpt_path)
    problem = f"checkpoint {ckpt_path} does not fit the model built from the run's config.yaml"
    model.load_state_dict(fit_weights(model, weights, problem))
    model.eval()
    jet = jet_classification_task(model, str(cfg.data.global_object))
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
