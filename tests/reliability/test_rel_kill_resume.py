"""Kill -9 and SIGTERM during training; resume with ``trainer.resume=auto``.

The kill test chains five SIGKILLs at different points of one run (inside a step, inside
validation, half way through writing ``best.pt`` and ``last.pt``, and an external
``kill -9`` from this process), resuming after each. After every death every checkpoint
present must load with ``torch.load(weights_only=True)``, and the finished run must equal
an uninterrupted run bit for bit (CPU, ``trainer.deterministic=true``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relhelp import (
    TOTAL_STEPS,
    assert_same_state,
    child_env,
    compose_train,
    corrupt_checkpoints,
    load_ckpt,
    run_child,
    runner_cmd,
    stale_temp_files,
    train_overrides,
    write_tiny_data,
)

from saltx.train import train

# (fault, step of checkpoints/last.pt right after the death); see relhelp.TINY:
# last.pt every 3 steps and at epoch ends (8, 16, 24), validation every 5 steps.
KILL_CHAIN = [
    ("write:best.pt@5", 3),  # first validation: best.pt half written
    ("step@7", 6),  # inside an optimizer step (gradients computed, weights not updated)
    ("write:last.pt@9", 8),  # last.pt half written; the epoch-end last.pt (8) survives
    ("val@10", 9),  # in the middle of validation
    ("pause@14", 12),  # external `kill -9` from the test while the child waits
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("reldata"))


@pytest.fixture(scope="module")
def baseline(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Checkpoints of an uninterrupted run (in this process)."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    train(compose_train(data_dir, out))
    return {n: load_ckpt(out / "checkpoints" / n) for n in ("last.pt", "best.pt")}


def _external_kill(cmd: list[str], env: dict, mark: Path, timeout: float = 600) -> int:
    """Start ``cmd``, wait for its pause mark, SIGKILL it from here; returns its exit code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not mark.exists():
            if proc.poll() is not None:
                raise AssertionError(f"child ended before its pause: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("child never reached its pause point")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kill9_at_five_points_then_resume_equals_uninterrupted(
    data_dir: Path, baseline: dict, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cmd = runner_cmd("train", train_overrides(data_dir, run, "trainer.resume=auto"))
    for fault, last_step in KILL_CHAIN:
        if fault.startswith("pause"):
            mark = tmp_path / f"mark-{last_step}"
            env = child_env(fault, SALTX_TEST_FAULT_MARK=str(mark))
            rc = _external_kill(cmd, env, mark)
        else:
            proc = run_child(cmd, child_env(fault))
            rc = proc.returncode
            assert rc == -signal.SIGKILL, f"{fault}: exit {rc}\n{proc.stderr[-3000:]}"
        assert rc == -signal.SIGKILL, fault
        assert corrupt_checkpoints(run) == [], f"corrupt checkpoint after {fault}"
        assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == last_step, fault
        # a half-written checkpoint only ever exists under a temporary name
        for tmp in stale_temp_files(run):
            assert tmp.name.startswith((".last.pt.", ".best.pt.")), tmp

    proc = run_child(cmd, child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert corrupt_checkpoints(run) == []
    assert stale_temp_files(run) == []  # the resumed run removed what the kills left
    final = {n: load_ckpt(run / "checkpoints" / n) for n in ("last.pt", "best.pt")}
    assert final["last.pt"]["state"]["step"] == TOTAL_STEPS
    assert_same_state(final["last.pt"], baseline["last.pt"])
    assert_same_state(final["best.pt"], baseline["best.pt"])
    meta = (run / "metadata.yaml").read_text()
    assert "resumed_from:" in meta and "last.pt" in meta


@pytest.mark.slow
def test_sigterm_saves_last_and_exits_with_documented_code(data_dir: Path, tmp_path: Path) -> None:
    """The real CLI: SIGTERM mid-training -> last.pt of the current step, exit code 143."""
    run = tmp_path / "run"
    overrides = train_overrides(data_dir, run, "trainer.max_epochs=1000")  # never ends alone
    cmd = [sys.executable, "-m", "saltx.train", *overrides]
    proc = subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "training never logged"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, out[-3000:]  # 128 + SIGTERM
    assert "SIGTERM" in out and "exiting with code 143" in out
    assert corrupt_checkpoints(run) == []
    assert stale_temp_files(run) == []
    ckpt = load_ckpt(run / "checkpoints/last.pt")
    logged = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r["step"] for r in logged if "step" in r]
    assert ckpt["state"]["step"] >= 2
    if steps:
        assert ckpt["state"]["step"] >= max(steps)  # nothing trained after the last save
