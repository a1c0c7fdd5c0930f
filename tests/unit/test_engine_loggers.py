"""Loggers: metrics.jsonl always, TensorBoard event files, W&B offline without an API key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saltx.config import LoggerConfig
from saltx.engine.loggers import build_loggers
from saltx.io.rundir import RunDir


def test_metrics_file_and_rank_zero_only(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    off = build_loggers(
        LoggerConfig(name="none"), rundir, local_dir=str(tmp_path), run_name="r", is_main=False
    )
    off.log_metrics({"train/loss": 1.0}, 1)
    assert not (tmp_path / "metrics.jsonl").exists()
    on = build_loggers(None, rundir, local_dir=str(tmp_path), run_name="r", is_main=True)
    on.log_metrics({"train/loss": 1.5, "val/loss": float("nan")}, 7)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["step"] == 7 and record["train/loss"] == 1.5 and record["val/loss"] == "nan"
    with pytest.raises(ValueError, match=r"logger\.name='comet'"):
        build_loggers(
            LoggerConfig(name="comet"), rundir, local_dir=str(tmp_path), run_name="r", is_main=True
        )


def test_tensorboard_writes_events(tmp_path: Path) -> None:
    group = build_loggers(
        LoggerConfig(name="tensorboard"),
        RunDir(tmp_path),
        local_dir=str(tmp_path),
        run_name="r",
        is_main=True,
    )
    group.log_hyperparams({"seed": 1})
    group.log_metrics({"train/loss": 2.0}, 1)
    group.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_wandb_is_offline_without_api_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    group = build_loggers(
        LoggerConfig(name="wandb", project="saltx-test"),
        RunDir(tmp_path),
        local_dir=str(tmp_path),
        run_name="r",
        is_main=True,
    )
    group.log_metrics({"train/loss": 2.0}, 1)
    group.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
