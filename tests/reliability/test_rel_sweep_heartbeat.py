"""A hard-killed Optuna sweep worker must not leave its trial RUNNING forever.

The sweeper records a heartbeat for its running trials (``hydra.sweeper.heartbeat_interval``);
the next worker that opens the study fails a RUNNING trial whose heartbeat is older than
``grace_period`` (and ``failed_trial_callback`` may retry it). A real Hydra sweep of a tiny
app with the SQLite storage, as in tests/pipeline/test_sweep.py; the first worker is
SIGKILLed while its trial runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

APP = """
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    if cfg.hang_mark and HydraConfig.get().job.num == 0:
        Path(cfg.hang_mark).write_text("running")
        time.sleep(600)  # until SIGKILL
    return (cfg.x - 1.0) ** 2


if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - override hydra/sweeper: saltx_optuna
  - _self_
x: 0.0
hang_mark: ""
hydra:
  mode: MULTIRUN
  sweeper:
    study_name: beat
    n_trials: 3
    sampler: {_target_: optuna.samplers.RandomSampler, seed: 1}
    params:
      x: interval(-2, 2)
    plots: false
    heartbeat_interval: 1
    grace_period: 3
"""
GRACE_S = 3


def _study(sweep_dir: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{sweep_dir / 'optuna.db'}", heartbeat_interval=1, grace_period=GRACE_S
    )
    return optuna.load_study(study_name="beat", storage=storage)


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_retried(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    sweep_dir, mark = tmp_path / "sweep", tmp_path / "running"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    base = [sys.executable, "app.py", f"hydra.sweep.dir={sweep_dir}"]
    worker = subprocess.Popen(
        [*base, f"hang_mark={mark}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not mark.exists():
            assert worker.poll() is None, worker.stdout.read()
            assert time.monotonic() < deadline, "the first trial never started"
            time.sleep(0.05)
        # alive, the worker keeps beating: its trial is not stale after several grace periods
        time.sleep(2 * GRACE_S)
        study = _study(sweep_dir)
        optuna.storages.fail_stale_trials(study)
        assert [t.state for t in study.trials] == [TrialState.RUNNING]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    time.sleep(GRACE_S + 1)
    assert [t.state for t in _study(sweep_dir).trials] == [TrialState.RUNNING]  # left behind

    retry = "+hydra.sweeper.failed_trial_callback={_target_: optuna.storages.RetryFailedTrialCallback, max_retry: 1}"  # noqa: E501
    out = subprocess.run(
        [*base, retry], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = _study(sweep_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "trial 0 was RUNNING without a heartbeat" in out.stdout + out.stderr
    # the callback re-enqueued the killed trial: trial 1 ran the same parameters again
    assert RetryFailedTrialCallback.retried_trial_number(trials[1]) == 0
    assert trials[1].params == trials[0].params


@pytest.mark.parametrize(("key", "value"), [("heartbeat_interval", 0), ("grace_period", -5)])
def test_heartbeat_settings_are_checked(key: str, value: int) -> None:
    from saltx.hpo.sweeper import OptunaSweeperImpl, sweeper_settings

    with pytest.raises(
        ValueError, match=f"hydra.sweeper.{key} must be >= 1 s or null, got {value}"
    ):
        OptunaSweeperImpl(**sweeper_settings({key: value}))
