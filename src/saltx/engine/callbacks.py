"""The training loop's callbacks: what plugs into the loop from outside it.

The loop calls the hooks of every callback in its list, in order; a hook a callback does
not override does nothing. The engine imports no callback: the caller passes the list to
:func:`saltx.engine.loop.fit`. saltx's own two are registered by the composition step
(:func:`saltx.assemble.training_callbacks`):

* :class:`saltx.hpo.katib_writer.PerformanceWriter` (``trainer.performance_writer``):
  validation metrics for Katib's metrics collectors;
* :class:`saltx.hpo.pruning.PruneTrial`: reports the optimised metric to a running Optuna
  trial and stops the run when the trial is pruned.

A hook that raises stops the run: the loop saves ``checkpoints/last.pt`` first and lets
the exception leave :func:`~saltx.engine.loop.fit` (Optuna's ``TrialPruned`` does this).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module stays cheap to import (saltx.hpo.pruning subclasses it)
    from saltx.engine.distributed import DistInfo
    from saltx.io.rundir import RunDir


@dataclass(frozen=True)
class FitStart:
    """What the loop tells the callbacks before the first step.

    Attributes
    ----------
    rundir
        The run directory.
    info
        This process's rank, world size and device (only rank 0 writes files).
    resumed_from
        The checkpoint the run resumed from, or None for a fresh start.
    """

    rundir: RunDir
    info: DistInfo
    resumed_from: str | None


class Callback:
    """Base class of the loop's callbacks; override the hooks you need."""

    def on_fit_start(self, start: FitStart) -> None:
        """Called on every rank once the run directory is written, before the first step."""

    def on_validation_end(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called on every rank after each validation (and after ``best.pt`` is saved).

        ``step`` is the optimizer step, ``epoch`` the epoch the validation belongs to and
        ``metrics`` everything logged so far (``val/loss``, ``train/loss``, ...).
        """
