"""Stop signals (recorded, never acted on in the handler), exit codes, plain progress lines
and the logging set-up of the entry points. The end-to-end signal tests (process groups,
loader workers, DDP) are in tests/reliability/test_rel_signals.py."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx
import saltx.config  # registers the schemas
from saltx.data.loader import STOP_SIGNALS
from saltx.engine import progress as progress_mod
from saltx.engine.loop import TrainingInterrupted
from saltx.engine.progress import ProgressBar
from saltx.engine.signals import StopSignals, exit_code

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
KATIB_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def test_exit_codes_are_the_shells_codes_for_each_signal() -> None:
    codes = {signal.Signals(s).name: exit_code(s) for s in STOP_SIGNALS}
    assert codes == {"SIGTERM": 143, "SIGINT": 130, "SIGHUP": 129, "SIGUSR1": 138}
    stop = TrainingInterrupted(7, "run/checkpoints/last.pt", signal.SIGUSR1)
    assert stop.exit_code == 138
    assert str(stop) == "stopped by SIGUSR1 at step 7; last checkpoint: run/checkpoints/last.pt"


def test_the_first_stop_signal_is_recorded_and_handlers_restored() -> None:
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # SIG_IGN under `nohup`
    try:
        before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        with StopSignals() as stop:
            assert stop.signum is None
            os.kill(os.getpid(), signal.SIGHUP)  # the default handler would end the process
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGHUP and stop.name == "SIGHUP"
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    finally:
        signal.signal(signal.SIGHUP, inherited)


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    """``nohup`` ignores SIGHUP: a hang-up must then not stop the run."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.signum is None
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_every_n_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = io.StringIO()  # not a TTY: plain lines instead of a bar
    bar = ProgressBar(100, start_step=20, every_s=60, stream=out)
    for step in range(21, 41):
        clock.now += 5.0  # 5 s per step
        bar.update(step, epoch=1, loss=0.61234567, jets_per_s="1234")
    lines = out.getvalue().splitlines()
    assert lines == [
        "step 32/100 (32.0%) | epoch 1 | loss 0.6123 | 1234 jets/s | elapsed 0:01:00 | eta 0:05:40",
    ], lines  # after 60 s (12 steps); 68 steps left at 5 s each
    assert not re.search(KATIB_REGEX, lines[0])


def test_no_lines_under_the_bar_or_when_switched_off() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, kwargs in ((Tty(), {"every_n_steps": 1}), (io.StringIO(), {})):
        bar = ProgressBar(10, stream=stream, **kwargs)
        for step in range(1, 11):
            bar.update(step, loss=1.0)
        bar.close()
        assert "step " not in stream.getvalue()


@pytest.mark.parametrize("entry", ["train", "evaluate", "export"])
def test_file_system_libraries_log_warnings_only(entry: str, tmp_path: Path) -> None:
    """fsspec logs one INFO line per block it fetches from S3 ("BlockCache fetching block
    0"): the entry points' logging keeps those libraries at WARNING, saltx at INFO."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(entry, overrides=[], return_hydra_config=True)
    logging_cfg = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    (tmp_path / "logging.yaml").write_text(yaml.safe_dump(logging_cfg))
    script = (
        "import logging, logging.config, sys, yaml\n"
        "logging.config.dictConfig(yaml.safe_load(open(sys.argv[1])))\n"
        "logging.getLogger('fsspec.caching').info('BlockCache fetching block 0')\n"
        "logging.getLogger('aiobotocore.credentials').info('Found credentials')\n"
        "logging.getLogger('s3fs').info('s3fs chatter')\n"
        "logging.getLogger('fsspec.caching').warning('a real fsspec warning')\n"
        "logging.getLogger('saltx.hpo.sweeper').info('saltx info')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "logging.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out == ["a real fsspec warning", "saltx info"]
