"""Report intermediate values to the running Optuna trial, and stop when it is pruned.

:class:`PruneTrial` is a training-loop callback (registered by
:func:`saltx.assemble.training_callbacks`) that calls :func:`report` after every
validation. When the job runs inside the saltx Optuna sweeper (``python -m saltx.train -m
hparams_search=...``), the sweeper has registered the job's trial with
:func:`active_trial`; the value is reported to it and :class:`optuna.TrialPruned` is raised
when the study's pruner says so. The loop saves ``last.pt``, lets that exception leave the
job and the sweeper records the trial as PRUNED. Outside a sweep (or for a
multi-objective study, where Optuna has no pruning) :func:`report` does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from saltx.engine.callbacks import Callback

if TYPE_CHECKING:
    import optuna

# registry of the trial whose job runs in this thread (set by the sweeper around each job)
_CURRENT_TRIAL: ContextVar[optuna.trial.Trial | None] = ContextVar(
    "saltx_optuna_trial", default=None
)


@contextmanager
def active_trial(trial: optuna.trial.Trial | None) -> Iterator[None]:
    """Make ``trial`` the current trial while the block runs (None clears it)."""
    token = _CURRENT_TRIAL.set(trial)
    try:
        yield
    finally:
        _CURRENT_TRIAL.reset(token)


def report(value: float, step: int) -> None:
    """Report an intermediate objective value; raise if the trial should be pruned.

    Parameters
    ----------
    value : float
        The optimised metric after a validation (e.g. ``val/loss``).
    step : int
        A step that grows with training (the optimiser step or the epoch); Optuna keeps
        one value per step, and the pruners compare trials at equal steps.

    Raises
    ------
    optuna.TrialPruned
        When the current trial's pruner decides to stop it.
    """
    trial = _CURRENT_TRIAL.get()
    if trial is None or len(trial.study.directions) > 1:
        return
    import optuna

    value = float(value)
    if math.isnan(value):  # a NaN step says nothing to compare; let the final value decide
        return
    trial.report(value, int(step))
    if trial.should_prune():
        raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} (value {value:.6g})")


class PruneTrial(Callback):
    """After each validation, report ``metric`` to the running Optuna trial (:func:`report`).

    Parameters
    ----------
    metric
        The optimised metric (``optimized_metric``, e.g. ``val/loss``); a validation that
        did not log it reports nothing.
    """

    def __init__(self, metric: str) -> None:
        self.metric = str(metric)

    def on_validation_end(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """Report; raises :class:`optuna.TrialPruned` when the trial should stop."""
        value = metrics.get(self.metric)
        if value is not None:
            report(value, step)
