"""Train a tagger: ``python -m saltx.train +experiment=gn2 [key=value ...]`` (or ``saltx-train``).

``train(cfg) -> dict[str, float]`` is a plain function (tests and sweepers call it);
:func:`main` is the thin ``@hydra.main`` wrapper that returns ``cfg.optimized_metric``.
See docs/training.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import saltx.config  # registers the schemas and resolvers; check_keys
from saltx.assemble import build, training_callbacks
from saltx.data.config_s3 import prepare_data_paths
from saltx.engine.callbacks import Callback
from saltx.engine.distributed import launched_by_torchrun, spawn
from saltx.engine.loop import BuildFn, TrainingInterrupted, fit
from saltx.engine.run_setup import hydra_run_dir
from saltx.engine.signals import STOP_SIGNALS, exit_code
from saltx.secrets import redacted_console, remember_config


# -- entry points -------------------------------------------------------------------------
def _spawned_rank(
    container: dict[str, Any],
    build_fn: BuildFn,
    callbacks: list[Callback] | None,
    result_path: str,
) -> None:
    """One process of a ``trainer.devices=N`` job (started by :func:`spawn`).

    Rank 0 writes its metrics (or, when a stop signal ended the run, the step saved) to
    ``result_path`` for the parent.
    """
    cfg = OmegaConf.create(container)
    rank = int(os.environ.get("RANK", "0"))
    try:
        if callbacks is None:
            callbacks = training_callbacks(cfg)
        result: dict[str, Any] = {"metrics": fit(cfg, build_fn, callbacks)}
        code = 0
    except TrainingInterrupted as stop:
        result = {"stopped": {"step": stop.step, "checkpoint": stop.checkpoint}}
        code = stop.exit_code
    if rank == 0:
        with open(result_path, "w") as f:
            json.dump(result, f)
    if code:
        sys.exit(code)


def _signal_of_exit(code: int) -> int | None:
    """The stop signal behind a rank's exit code (``128 + n``, or killed by ``n``)."""
    for signum in STOP_SIGNALS:
        if code in (exit_code(signum), -int(signum)):
            return int(signum)
    return None


def _train_spawned(
    cfg: DictConfig, build_fn: BuildFn, callbacks: list[Callback] | None, nprocs: int
) -> dict[str, float]:
    """Spawn ``nprocs`` ranks on this machine; returns rank 0's metrics."""
    import torch.multiprocessing as mp

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = hydra_run_dir(cfg)  # one run dir, fixed before the ranks start
    container = OmegaConf.to_container(cfg, resolve=True)
    with tempfile.TemporaryDirectory(prefix="saltx-spawn-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        try:
            spawn(_spawned_rank, nprocs, (container, build_fn, callbacks, result_path))
        except mp.ProcessExitedException as err:
            signum = _signal_of_exit(err.exit_code)
            if signum is None:
                raise
            stopped: dict[str, Any] = {}
            if os.path.exists(result_path):
                with open(result_path) as f:
                    stopped = json.load(f).get("stopped") or {}
            raise TrainingInterrupted(
                stopped.get("step"), stopped.get("checkpoint"), signum
            ) from err
        with open(result_path) as f:
            return json.load(f)["metrics"]


def train(
    cfg: DictConfig,
    build_fn: BuildFn | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> dict[str, float]:
    """Train from a composed config; returns the last logged metrics.

    Parameters
    ----------
    cfg
        The composed ``train`` config.
    build_fn
        ``build(cfg, info) -> Components``; default :func:`saltx.assemble.build` (saltx
        data and models).
    callbacks
        The loop's callbacks (:mod:`saltx.engine.callbacks`); default
        :func:`saltx.assemble.training_callbacks` (Katib writer, Optuna pruning).

    Returns
    -------
    dict[str, float]
        ``val/loss``, ``val/<task>_loss``, ``train/loss``, ``train/lr`` ... at the end.

    Raises
    ------
    TrainingInterrupted
        A stop signal (SIGTERM, SIGINT, SIGHUP, SIGUSR1) arrived; ``last.pt`` was saved.
    NonFiniteLossError
        A loss became NaN/inf (names the step, the tasks and the last good checkpoint).
    """
    build_fn = build_fn or build
    conf = saltx.config.validate(cfg)  # ranges, values, metrics, targets: before any data
    # Salt's download-first `data.config_S3` block: fetch the files, point the config at them
    cfg = prepare_data_paths(cfg)
    devices = conf.trainer.devices
    callbacks = None if callbacks is None else list(callbacks)
    if devices > 1 and not launched_by_torchrun():
        return _train_spawned(cfg, build_fn, callbacks, devices)
    return fit(cfg, build_fn, training_callbacks(cfg) if callbacks is None else callbacks)


def run(cfg: DictConfig, build_fn: BuildFn | None = None) -> float:
    """:func:`train`, returning ``metrics[cfg.optimized_metric]``.

    A stop signal ends the process with ``128 + signum`` once ``last.pt`` is saved
    (SIGHUP 129, SIGINT 130, SIGUSR1 138, SIGTERM 143; docs/reliability.md).
    """
    try:
        metrics = train(cfg, build_fn)
    except TrainingInterrupted as stop:
        print(f"saltx.train: {stop}; exiting with code {stop.exit_code}", flush=True)
        sys.exit(stop.exit_code)
    key = str(cfg.optimized_metric)
    if key not in metrics:
        raise KeyError(f"optimized_metric={key!r} was never logged; logged: {sorted(metrics)}")
    return float(metrics[key])


@redacted_console  # secrets never reach the console, Hydra's error report included
@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """``python -m saltx.train``: train and return the optimised metric (for sweepers)."""
    saltx.config.check_keys(cfg)  # keys no schema declares (e.g. Salt's names typed with '+')
    remember_config(cfg)
    return run(cfg)


if __name__ == "__main__":
    main()
