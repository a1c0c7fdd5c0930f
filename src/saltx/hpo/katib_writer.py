"""Katib performance writer: validation metrics for Kubeflow Katib's metrics collectors.

At each validation (rank 0 only) it

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

from saltx.io.rundir import RunDir

FILENAME = "performance_metric.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def katib_name(name: str) -> str:
    """``val/loss`` → ``val_loss``: only letters, digits, ``_`` and ``-`` remain."""
    return _UNSAFE.sub("_", name)


class PerformanceWriter:
    """Writes validation metrics for Katib.

    Parameters
    ----------
    rundir
        Where ``performance_metric.json`` goes (``dir_path`` overrides it).
    dir_path
        Optional other folder or URL for ``performance_metric.json``.
    add_metrics
        Extra metric names to write when they were logged.
    std_out
        Print ``name=value`` lines to stdout.
    truncate
        Start ``performance_metric.json`` empty (a resumed run appends instead).
    """

    def __init__(
        self,
        rundir: RunDir,
        dir_path: str | None = None,
        add_metrics: Iterable[str] | None = None,
        std_out: bool = True,
        truncate: bool = True,
    ) -> None:
        self.out = RunDir(dir_path) if dir_path else rundir
        self.add_metrics = [str(m) for m in add_metrics or []]
        self.std_out = std_out
        self.out.makedirs()
        if truncate or not self.out.exists(FILENAME):
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

    def on_validation_end(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Write one record; returns what was written."""
        values = self.select(metrics)
        if self.std_out:
            lines = [f"epoch {epoch}:"] + [f"{k}={v:.5f}" for k, v in values.items()]
            print("\n".join(lines), flush=True)
        record: dict[str, object] = {"epoch": int(epoch)}
        record.update({k: f"{v:.5f}" for k, v in values.items()})
        record["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat()
        self.out.append_text(FILENAME, json.dumps(record) + "\n")
        return values
