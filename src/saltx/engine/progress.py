"""Console output: a rich progress bar (jets/s, ETA) and a model summary table."""

from __future__ import annotations

import sys
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def count_parameters(module: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_summary(model: torch.nn.Module) -> Table:
    """A table of parameter counts per top-level module, with the total."""
    table = Table(title="Model summary", show_lines=False)
    table.add_column("module")
    table.add_column("type")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    for name, child in model.named_children():
        table.add_row(
            name,
            type(child).__name__,
            f"{count_parameters(child, trainable_only=False):,}",
            f"{count_parameters(child):,}",
        )
    table.add_row(
        "total",
        type(model).__name__,
        f"{count_parameters(model, trainable_only=False):,}",
        f"{count_parameters(model):,}",
        style="bold",
    )
    return table


def print_model_summary(model: torch.nn.Module) -> None:
    """Print :func:`model_summary` to stdout."""
    Console(file=sys.stdout, soft_wrap=True).print(model_summary(model))


class ProgressBar:
    """A rich progress bar over optimizer steps showing loss, jets/s and the ETA.

    Disabled (every call a no-op) when ``enabled`` is false or stdout is not a TTY.
    """

    def __init__(self, total_steps: int, enabled: bool = True, start_step: int = 0) -> None:
        self.enabled = bool(enabled) and sys.stdout.isatty()
        self._progress: Progress | None = None
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[jets_per_s]} jets/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(file=sys.stdout),
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, epoch=0, loss="-", jets_per_s="-"
        )
        self._progress.start()

    def update(self, step: int, **fields: Any) -> None:
        """Move to ``step``; ``fields`` may set ``epoch``, ``loss`` and ``jets_per_s``."""
        if self._progress is None:
            return
        shown = {}
        for k, v in fields.items():
            shown[k] = f"{v:.4g}" if isinstance(v, float) else v
        self._progress.update(self._task, completed=step, **shown)

    def close(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
