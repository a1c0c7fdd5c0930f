"""saltx.hpo.pruning: report to the current trial, raise TrialPruned when it should stop."""

from __future__ import annotations

import optuna
import pytest

from saltx.hpo import pruning


def _study(pruner: optuna.pruners.BasePruner, directions=("minimize",)) -> optuna.Study:
    return optuna.create_study(pruner=pruner, directions=list(directions))


def test_no_trial_no_effect():
    pruning.report(1.0, 0)  # nothing to report to: returns quietly


def test_reports_to_the_active_trial_and_clears_after():
    study = _study(optuna.pruners.NopPruner())
    trial = study.ask()
    with pruning.active_trial(trial):
        pruning.report(0.5, 10)
        pruning.report(0.25, 20)
    pruning.report(0.125, 30)  # the block ended: no trial to report to
    assert study.trials[0].intermediate_values == {10: 0.5, 20: 0.25}


def test_raises_trial_pruned_when_the_pruner_says_so():
    study = _study(optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    with pruning.active_trial(trial):
        pruning.report(0.5, 1)  # below the threshold: continues
        with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):
            pruning.report(2.0, 2)


def test_multi_objective_and_nan_are_not_reported():
    study = _study(optuna.pruners.ThresholdPruner(upper=0.0), ("minimize", "minimize"))
    trial = study.ask()
    with pruning.active_trial(trial):
        pruning.report(5.0, 1)  # Optuna cannot prune multi-objective trials
    single = _study(optuna.pruners.ThresholdPruner(upper=0.0))
    t = single.ask()
    with pruning.active_trial(t):
        pruning.report(float("nan"), 1)
    assert single.trials[0].intermediate_values == {}
