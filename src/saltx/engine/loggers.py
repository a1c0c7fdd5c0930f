"""Experiment loggers: ``metrics.jsonl`` always, plus ``logger=none|wandb|tensorboard``.

Only rank 0 logs. Metric names: ``train/loss``, ``train/<task>_loss``, ``train/lr``,
``train/jets_per_s``, ``train/mfu`` (GPUs), ``val/loss``, ``val/<task>_loss``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from saltx.io.rundir import RunDir

if TYPE_CHECKING:
    from saltx.config import LoggerConfig

TRAIN_METRICS = ("loss", "lr", "jets_per_s", "mfu")
"""Metrics logged under ``train/`` besides the per-task losses (``mfu`` on GPUs only)."""
VAL_METRICS = ("loss",)
"""Metrics logged under ``val/`` besides the per-task losses."""


def metric_names(task_names: list[str]) -> list[str]:
    """Every metric name the training loop logs for tasks ``task_names``.

    ``train/loss``, ``train/<task>_loss``, ``train/lr``, ``train/jets_per_s``,
    ``train/mfu``, ``val/loss``, ``val/<task>_loss`` and ``epoch`` (what
    ``trainer.monitor`` and ``optimized_metric`` may name).
    """
    out = [f"train/{m}" for m in TRAIN_METRICS] + [f"val/{m}" for m in VAL_METRICS]
    out += [f"{split}/{task}_loss" for split in ("train", "val") for task in task_names]
    return [*out, "epoch"]


class Logger(Protocol):
    """What the loop calls on a logger."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_hyperparams(self, params: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsFileLogger:
    """Appends one JSON object per log event to ``metrics.jsonl`` in the run directory."""

    def __init__(self, rundir: RunDir, filename: str = "metrics.jsonl") -> None:
        self.rundir = rundir
        self.filename = filename

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in metrics.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        self.rundir.append_text(self.filename, json.dumps(record) + "\n")

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases; offline (files in the run directory) when no ``WANDB_API_KEY``."""

    def __init__(self, cfg: LoggerConfig, local_dir: str, run_name: str) -> None:
        import wandb

        mode = cfg.mode
        if mode is None:
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        os.makedirs(local_dir, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            name=cfg.name_override or run_name,
            dir=local_dir,
            mode=mode,
            reinit=True,
            # no system metadata: it records sys.argv, where overrides may carry secrets
            settings=wandb.Settings(x_disable_meta=True),
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=int(step))

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class TensorBoardLogger:
    """TensorBoard event files in ``<run dir>/tensorboard``."""

    def __init__(self, local_dir: str, remote_dir: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from saltx.io.sync import DirSync

        log_dir = os.path.join(local_dir, "tensorboard")
        self.writer = SummaryWriter(log_dir=log_dir)
        # s3:// run dirs: local event files are uploaded at each validation and at the end
        self.sync = DirSync(log_dir, remote_dir) if remote_dir else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), int(step))
        self.writer.flush()
        if self.sync is not None and any(str(k).startswith("val/") for k in metrics):
            self.sync.sync()

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(dict(params), indent=1) + "\n```")

    def close(self) -> None:
        self.writer.close()
        if self.sync is not None:
            self.sync.sync()


class LoggerGroup:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def build_loggers(
    logger_cfg: LoggerConfig | None,
    rundir: RunDir,
    *,
    local_dir: str,
    run_name: str,
    is_main: bool,
) -> LoggerGroup:
    """Loggers of this rank: none off rank 0; else ``metrics.jsonl`` plus the chosen one.

    Parameters
    ----------
    logger_cfg
        The ``logger`` config node (``name: none | wandb | tensorboard``).
    rundir
        The run directory (``metrics.jsonl`` goes there).
    local_dir
        A local folder for loggers that need one (the run directory, or its local cache
        for ``s3://`` run directories).
    run_name
        Run name shown by the logger.
    is_main
        Whether this is rank 0.
    """
    if not is_main:
        return LoggerGroup([])
    loggers: list[Logger] = [MetricsFileLogger(rundir)]
    name = str(logger_cfg.name).lower() if logger_cfg is not None else "none"
    if name == "wandb":
        loggers.append(WandbLogger(logger_cfg, local_dir, run_name))
    elif name == "tensorboard":
        remote_dir = rundir.path("tensorboard") if rundir.remote else None
        loggers.append(TensorBoardLogger(local_dir, remote_dir=remote_dir))
    elif name not in {"none", "null", ""}:
        raise ValueError(f"logger.name={name!r}; use none, wandb or tensorboard")
    return LoggerGroup(loggers)
