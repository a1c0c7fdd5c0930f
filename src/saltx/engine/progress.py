"""Console output: progress (a rich bar on a terminal, plain lines in a log file) and a
model summary table."""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, TextIO

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
    """Training progress over optimizer steps: loss, jets/s and the ETA.

    On a terminal: a rich progress bar. Without one (a batch job's log file): a plain
    line every ``every_n_steps`` steps and/or every ``every_s`` seconds (0 switches a
    criterion off), e.g.::

        step 1200/24000 (5.0%) | epoch 3 | loss 0.6123 | 15234 jets/s | elapsed 0:12:01 |
        eta 3:48:10  (one line)

    The line holds no ``name=value`` pair, which Katib's StdOut collector would read as a
    metric. ``enabled=False`` shows nothing (ranks other than 0).
    """

    def __init__(
        self,
        total_steps: int,
        enabled: bool = True,
        start_step: int = 0,
        *,
        bar: bool = True,
        every_n_steps: int = 0,
        every_s: float = 0.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        tty = self.stream.isatty()
        self.enabled = bool(enabled) and bar and tty  # the rich bar
        self.total = int(total_steps)
        self.every_n_steps = max(0, int(every_n_steps or 0))
        self.every_s = max(0.0, float(every_s or 0.0))
        self.lines = (
            bool(enabled) and not self.enabled and (self.every_n_steps > 0 or self.every_s > 0)
        )
        self.fields: dict[str, Any] = {"epoch": 0, "loss": "-", "jets_per_s": "-"}
        self.start_step = self.last_step = int(start_step)
        self.t0 = self.last_time = time.monotonic()
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
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, epoch=0, loss="-", jets_per_s="-"
        )
        self._progress.start()

    def update(self, step: int, **fields: Any) -> None:
        """Move to ``step``; ``fields`` may set ``epoch``, ``loss`` and ``jets_per_s``."""
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
        if self._progress is not None:
            self._progress.update(self._task, completed=step, **shown)
        elif self.lines:
            self.fields.update(shown)
            now = time.monotonic()
            due_steps = self.every_n_steps and step - self.last_step >= self.every_n_steps
            due_time = self.every_s and now - self.last_time >= self.every_s
            if step > self.last_step and (due_steps or due_time):
                self.print_line(step, now)

    def print_line(self, step: int, now: float | None = None) -> None:
        """Print the plain progress line for ``step`` (see the class docstring)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        done = step - self.start_step
        parts = [f"step {step}/{self.total}"]
        if self.total > 0:
            parts[0] += f" ({100.0 * step / self.total:.1f}%)"
        parts.append(f"epoch {self.fields['epoch']}")
        parts.append(f"loss {self.fields['loss']}")
        parts.append(f"{self.fields['jets_per_s']} jets/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if done > 0 and self.total > step:
            parts.append(f"eta {_duration(elapsed / done * (self.total - step))}")
        print(" | ".join(parts), file=self.stream, flush=True)
        self.last_step, self.last_time = step, now

    def close(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _duration(seconds: float) -> str:
    """``0:12:01`` (``1 day, 3:04:05`` past a day)."""
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))
