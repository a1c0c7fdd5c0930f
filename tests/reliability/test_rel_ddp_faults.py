"""DDP on CPU (gloo, two ranks started as torchrun would): a dead or stuck rank must turn
into a clear error on the surviving rank, never a hang."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relhelp import (
    child_env,
    corrupt_checkpoints,
    runner_cmd,
    train_overrides,
    write_tiny_data,
)

from saltx.engine.distributed import free_port

DDP_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("ddpdata"))


def _start_ranks(
    data_dir: Path, run: Path, faults: dict[int, str], mark: Path
) -> list[subprocess.Popen]:
    port = str(free_port())
    cmd = runner_cmd(
        "train",
        train_overrides(
            data_dir,
            run,
            f"trainer.ddp_timeout_s={DDP_TIMEOUT_S}",
            "trainer.checkpoint_every_n_steps=2",
        ),
    )
    procs = []
    for rank in (0, 1):
        env = child_env(
            faults.get(rank),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            SALTX_TEST_FAULT_MARK=str(mark),
        )
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=timeout)
            out.append((p.returncode, text))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


@pytest.mark.slow
def test_rank_killed_mid_training_fails_the_other_rank_clearly(
    data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    procs = _start_ranks(data_dir, run, {1: "step@5"}, tmp_path / "mark")
    (rc0, out0), (rc1, out1) = _finish(procs)
    assert rc1 == -signal.SIGKILL, out1[-2000:]
    assert rc0 not in (0, -signal.SIGKILL), out0[-3000:]
    # the survivor names the failed collective / lost peer rather than hanging
    low = out0.lower()
    assert any(
        s in low for s in ("connection closed", "connection reset", "timed out", "timeout")
    ), out0[-3000:]
    assert corrupt_checkpoints(run) == []


@pytest.mark.slow
def test_stuck_rank_times_out_with_ddp_timeout(data_dir: Path, tmp_path: Path) -> None:
    """Rank 1 stops inside step 5 (alive but silent): rank 0 errors after ddp_timeout_s."""
    run = tmp_path / "run"
    mark = tmp_path / "mark"
    procs = _start_ranks(data_dir, run, {1: "pause@5"}, mark)
    try:
        rc0 = procs[0].wait(timeout=300)
        out0 = procs[0].stdout.read()
    finally:
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=60)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert mark.exists(), "rank 1 never reached its pause point"
    assert rc0 not in (0, -signal.SIGKILL), out0[-3000:]
    assert "timeout" in out0.lower() or "timed out" in out0.lower(), out0[-3000:]
    assert corrupt_checkpoints(run) == []
