"""The real thing: ``python -m saltx.train +experiment=demo hparams_search=demo_optuna``.

Two trials of the demo model on a tiny synthetic dataset, through the engine's training
loop (which reports ``val/loss`` after each validation for pruning).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState


@pytest.mark.slow
def test_demo_optuna_sweep_trains_each_trial_in_its_own_run_dir(tmp_path, tiny_data):
    files = tiny_data(n_jets={"train": 200, "val": 100, "test": 100}, n_tracks=10, n_electrons=4)
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "saltx.train", "+experiment=demo", "hparams_search=demo_optuna",
        f"paths.data_dir={files['train'].parent}", f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep_dir}", "hydra.sweeper.n_trials=2", "data.batch_size=50",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    study = optuna.load_study(study_name="demo_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db")
    # MedianPruner(n_startup_trials=2) never prunes the first two trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert math.isfinite(t.value)
        assert t.intermediate_values, "the training loop reported nothing to the trial"
        run_dir = sweep_dir / str(t.number)
        assert (run_dir / "checkpoints" / "last.pt").exists()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["lrs"]["max"] == pytest.approx(t.params["lrs.max"])
        assert config["model"]["encoder"]["num_layers"] == t.params["model.encoder.num_layers"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    assert "val_loss=" in out.stdout  # Katib's StdOut collector reads these lines
