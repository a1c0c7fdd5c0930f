"""Real Hydra sweeps with the saltx Optuna sweeper, on a tiny task app written per test.

The app's objective is a known function of its parameters, ``(x-1)^2 + (y-2)^2 + [c=b]/2``;
it reports intermediate values (``saltx.hpo.pruning.report``) like the training loop does,
and can fail on purpose. Each sweep runs as ``python app.py -m ...`` in a subprocess, so
the plugin is found through the ``hydra_plugins`` namespace package of the editable install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from pg_fixture import postgres_url  # noqa: F401  (pytest fixture)

APP = """
import math

import hydra
from hydra.core.hydra_config import HydraConfig

from saltx.hpo import pruning


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    num = HydraConfig.get().job.num
    value = (cfg.x - 1.0) ** 2 + (cfg.y - 2.0) ** 2 + (0.5 if cfg.c == "b" else 0.0)
    for step in range(3):
        pruning.report(value + 1.0 / (step + 1), step)
    if cfg.mode == "fail_odd" and num % 2 == 1:
        raise RuntimeError(f"job {num} fails on purpose")
    if cfg.mode == "nan_odd" and num % 2 == 1:
        return math.nan
    return value


if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - override hydra/sweeper: saltx_optuna
  - _self_
x: 0.0
y: 0
c: a
mode: ok
hydra:
  mode: MULTIRUN
  sweeper:
    study_name: tiny
    n_trials: 4
    sampler: {_target_: optuna.samplers.TPESampler, seed: 5, n_startup_trials: 2}
    params:
      x: interval(-2, 2)
      y: range(0, 5)
      c: choice(a, b)
    plots: false
"""

Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def sweep(tmp_path: Path) -> Runner:
    """``sweep(sweep_dir, *overrides, check=True)`` runs the app's multirun in a subprocess."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}

    def run(sweep_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "app.py", f"hydra.sweep.dir={sweep_dir}", *overrides]
        out = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        if check and out.returncode != 0:
            raise AssertionError(f"sweep failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    return run


def _study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def _objective(p: dict) -> float:
    return (p["x"] - 1.0) ** 2 + (p["y"] - 2.0) ** 2 + (0.5 if p["c"] == "b" else 0.0)


def test_sqlite_sweep_and_its_resume(sweep, tmp_path):
    out_dir = tmp_path / "sweep"
    sweep(out_dir, "hydra.sweeper.n_trials=2")
    assert [t.state for t in _study(out_dir).trials] == [TrialState.COMPLETE] * 2
    # rerun with a larger budget: the study (not this run) is filled up to n_trials
    log = sweep(out_dir, "hydra.sweeper.n_trials=4").stdout
    study = _study(out_dir)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for t in study.trials:
        assert t.value == pytest.approx(_objective(t.params))
        assert (out_dir / str(t.number)).is_dir()  # one job dir per trial number
    results = yaml.safe_load((out_dir / "optimization_results.yaml").read_text())
    assert results["best_params"] == study.best_params
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["n_trials_in_study"] == 4
    assert results["worker"]["trials"] == [2, 3]
    assert "best value" in log and "COMPLETE" in log  # the printed table


def test_a_pruner_that_always_prunes_gives_pruned_trials(sweep, tmp_path):
    out_dir = tmp_path / "sweep"
    pruner = "+hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, upper: -1.0}"
    sweep(out_dir, pruner)
    study = _study(out_dir)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 4
    assert all(list(t.intermediate_values) == [0] for t in study.trials)


def test_failures_are_recorded_and_the_sweep_goes_on(sweep, tmp_path):
    out_dir = tmp_path / "sweep"
    sweep(out_dir, "mode=fail_odd", "hydra.sweeper.max_failure_rate=0.5")
    states = [t.state for t in _study(out_dir).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL] * 2
    # (a strict max_failure_rate stopping the sweep: tests/unit/test_hpo_sweeper.py)


@pytest.mark.slow
def test_two_workers_fill_one_postgres_study(sweep, tmp_path, postgres_url):  # noqa: F811
    storage = f"hydra.sweeper.storage='{postgres_url}'"
    common = [storage, "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(2):  # both workers start at once against the same (fresh) database
        cmd = [sys.executable, "app.py", f"hydra.sweep.dir={tmp_path / f'w{i}'}", *common,
               f"hydra.sweeper.sampler.seed={i}"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicate trial numbers
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    per_worker = [
        yaml.safe_load((tmp_path / f"w{i}" / "optimization_results.yaml").read_text())["worker"][
            "trials"
        ]
        for i in range(2)
    ]
    assert not set(per_worker[0]) & set(per_worker[1])
    assert sorted(per_worker[0] + per_worker[1]) == sorted(numbers)  # the sum of both
    # n_trials counts against the study; a race at the end may add one trial per worker
    assert 6 <= len(numbers) <= 7
    assert "***" not in postgres_url  # (no password here; results redact passwords)
