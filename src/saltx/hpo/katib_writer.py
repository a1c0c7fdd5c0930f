"""Katib performance writer: validation metrics for Kubeflow Katib's metrics collectors.

A training-loop callback (:class:`saltx.engine.callbacks.Callback`), registered by
:func:`saltx.assemble.training_callbacks` when ``trainer.performance_writer.enabled``. At
each validation (rank 0 only) it

* prints ``epoch <n>:`` and one ``name=value`` line per metric to stdout, in the format of
  Katib's StdOut collector, whose default regex is
  ``([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?([Ee][+-]?\\d+)?)``;
* appends one JSON line ``{"epoch": n, "<name>": "<value>", ..., "timestamp": ISO-8601}``
  to ``<dir_path or run dir>/performance_metric.json`` (Katib's File collector, JSON
  format; values are strings as Katib expects).

Metric names are made Katib-safe: every character other than letters, digits, ``_`` and
``-`` becomes ``_`` (``val/loss`` → ``val_loss``). The metrics written are ``train_loss``,
``val_loss``, every ``val_<task>_loss``, and the names in ``add_metrics`` (either spelling)
when they were logged. Unlike Salt, the ``timestamp`` is not printed to stdout (Katib's
regex would read ``timestamp=2026`` as a metric).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping

from saltx.engine.callbacks import Callback, FitStart
from saltx.io.rundir import RunDir

FILENAME = "performance_metric.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def katib_name(name: str) -> str:
    """A metric or parameter name Katib's regex accepts: ``val/loss`` -> ``val_loss``.

    Only letters, digits, ``_`` and ``-`` remain; every other character becomes ``_``.
    """
    return _UNSAFE.sub("_", name)


class PerformanceWriter(Callback):
    """Writes validation metrics for Katib (rank 0; other ranks write nothing).

    Parameters
    ----------
    dir_path
        Optional folder or URL for ``performance_metric.json`` (default: the run directory).
    add_metrics
        Extra metric names to write when they were logged.
    std_out
        Print ``name=value`` lines to stdout.
    """

    def __init__(
        self,
        dir_path: str | None = None,
        add_metrics: Iterable[str] | None = None,
        std_out: bool = True,
    ) -> None:
        self.dir_path = dir_path
        self.add_metrics = [str(m) for m in add_metrics or []]
        self.std_out = std_out
        self.out: RunDir | None = None

    def on_fit_start(self, start: FitStart) -> None:
        """Rank 0: start ``performance_metric.json`` (empty, unless the run resumed)."""
        if not start.info.is_main:
            return
        self.out = RunDir(self.dir_path) if self.dir_path else start.rundir
        self.out.makedirs()
        if start.resumed_from is None or not self.out.exists(FILENAME):
            self.out.write_text(FILENAME, "")

    def select(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The Katib-named metrics to write, from everything logged so far."""
        safe = {katib_name(k): float(v) for k, v in metrics.items()}
        names = ["train_loss", "val_loss"]
        names += sorted(k for k in safe if k.startswith("val_") and k.endswith("_loss"))
        names += [katib_name(m) for m in self.add_metrics]
        out: dict[str, float] = {}
        for name in names:
            if name in safe and name not in out:
                out[name] = safe[name]
        return out

    def on_validation_end(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """Write one record (rank 0)."""
        if self.out is None:
            return
        values = self.select(metrics)
        if self.std_out:
            lines = [f"epoch {epoch}:"] + [f"{k}={v:.5f}" for k, v in values.items()]
            print("\n".join(lines), flush=True)
        record: dict[str, object] = {"epoch": int(epoch)}
        record.update({k: f"{v:.5f}" for k, v in values.items()})
        record["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat()
        self.out.append_text(FILENAME, json.dumps(record) + "\n")
