"""The loop's two hpo callbacks: Katib's performance writer and Optuna's pruning report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from saltx.engine.callbacks import FitStart
from saltx.engine.distributed import DistInfo
from saltx.hpo.katib_writer import FILENAME, PerformanceWriter, katib_name
from saltx.hpo.pruning import PruneTrial, active_trial
from saltx.io.rundir import RunDir

KATIB_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def started(writer: PerformanceWriter, root: Path, rank: int = 0, resumed: str | None = None):
    writer.on_fit_start(FitStart(RunDir(root), DistInfo(rank=rank, world_size=2), resumed))
    return writer


def test_katib_names() -> None:
    assert katib_name("val/loss") == "val_loss"
    assert katib_name("val/jets_classification_loss") == "val_jets_classification_loss"
    assert katib_name("a b.c-d") == "a_b_c-d"


def test_performance_writer(tmp_path: Path, capsys) -> None:
    writer = started(PerformanceWriter(add_metrics=["train/lr", "absent"]), tmp_path)
    logged = {
        "train/loss": 1.25,
        "train/lr": 3e-4,
        "val/loss": 0.5,
        "val/jets_classification_loss": 0.375,
        "train/jets_per_s": 1000.0,
    }
    writer.on_validation_end(12, 3, logged)
    out = capsys.readouterr().out
    parsed = {m[0]: float(m[1]) for m in re.findall(KATIB_REGEX, out)}
    assert parsed == {
        "train_loss": 1.25,
        "val_loss": 0.5,
        "val_jets_classification_loss": 0.375,
        "train_lr": 0.0003,
    }
    record = json.loads((tmp_path / FILENAME).read_text().splitlines()[0])
    assert record["epoch"] == 3 and record["val_loss"] == "0.50000" and "timestamp" in record


def test_performance_writer_dir_path_truncation_and_resume(tmp_path: Path) -> None:
    other = tmp_path / "katib"
    other.mkdir()
    (other / FILENAME).write_text("old run\n")
    writer = started(PerformanceWriter(dir_path=str(other), std_out=False), tmp_path / "run")
    writer.on_validation_end(1, 0, {"val/loss": 1.0})
    lines = (other / FILENAME).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_loss"] == "1.00000"
    # a resumed run appends to the file of the run it continues
    again = PerformanceWriter(dir_path=str(other), std_out=False)
    started(again, tmp_path / "run", resumed="last.pt").on_validation_end(2, 1, {"val/loss": 0.5})
    assert len((other / FILENAME).read_text().splitlines()) == 2


def test_performance_writer_writes_only_on_rank_0(tmp_path: Path, capsys) -> None:
    writer = started(PerformanceWriter(), tmp_path, rank=1)
    writer.on_validation_end(1, 0, {"val/loss": 1.0})
    assert not (tmp_path / FILENAME).exists()
    assert capsys.readouterr().out == ""


def test_prune_trial_reports_the_optimised_metric_and_stops_a_pruned_trial() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    callback = PruneTrial("val/loss")
    with active_trial(trial):
        callback.on_validation_end(5, 0, {"train/loss": 9.0})  # not logged: nothing reported
        callback.on_validation_end(10, 0, {"val/loss": 0.5, "train/loss": 9.0})
        with pytest.raises(optuna.TrialPruned):
            callback.on_validation_end(20, 1, {"val/loss": 2.0})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {10: 0.5, 20: 2.0}
    callback.on_validation_end(30, 2, {"val/loss": 5.0})  # outside a sweep: does nothing
