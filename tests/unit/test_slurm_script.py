"""scripts/slurm/train_multinode.sbatch with stand-ins for srun, scontrol and torchrun: it
launches one torchrun per node with the node's rank, passes SIGUSR1/SIGTERM on, and
requeues a run that a stop signal ended (torchrun itself exits 1 whatever its ranks' codes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/slurm/train_multinode.sbatch"

SHIMS = {
    "scontrol": """#!/bin/bash
if [[ $1 == show ]]; then echo node-a; echo node-b; exit 0; fi
if [[ $1 == requeue ]]; then echo "$2" >> "$SHIM_LOG/requeued"; exit 0; fi
exit 1
""",
    # one task (node 0); passes the signals it gets on to the task, as srun does
    "srun": """#!/bin/bash
export SLURM_NODEID=0 SLURM_NNODES=2
"$@" &
child=$!
trap 'kill -s USR1 $child' USR1
trap 'kill -s TERM $child' TERM
while true; do wait $child; rc=$?; kill -0 $child 2>/dev/null || break; done
exit $rc
""",
    # torchrun: records its arguments; on a stop signal its ranks save and it exits 1
    "torchrun": """#!/bin/bash
printf '%s\n' "$@" > "$SHIM_LOG/torchrun_args"
trap 'echo USR1 > "$SHIM_LOG/torchrun_signal"; exit 1' USR1
trap 'echo TERM > "$SHIM_LOG/torchrun_signal"; exit 1' TERM
[[ -n ${FAKE_FINISH:-} ]] && exit 0
while true; do sleep 0.05; done
""",
}


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in SHIMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SHIM_LOG": str(log),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        **env,
    }
    cmd = ["bash", str(SCRIPT), "+experiment=gn2", "paths.output_dir=/shared/runs/a b"]
    proc = subprocess.Popen(
        cmd, env=full_env, text=True, stdout=subprocess.PIPE, start_new_session=True
    )
    return proc, log


def stop_all(proc: subprocess.Popen) -> None:
    """Kill what is left of the script's process group (after a failure)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_is_passed_on_and_the_job_requeued(tmp_path: Path, signum) -> None:
    proc, log = start(tmp_path)
    try:
        check_stop(proc, log, signum)
    finally:
        stop_all(proc)


def check_stop(proc: subprocess.Popen, log: Path, signum: signal.Signals) -> None:
    wait_for(log / "torchrun_args")
    time.sleep(0.2)  # written completely
    args = (log / "torchrun_args").read_text().splitlines()
    assert args[:5] == ["--nnodes=2", "--node_rank=0", "--nproc_per_node=4",
                        "--master_addr=node-a", f"--master_port={20000 + 4242}"]  # fmt: skip
    assert args[5:] == ["-m", "saltx.train", "trainer.accelerator=gpu", "+experiment=gn2",
                        "paths.output_dir=/shared/runs/a b"]  # fmt: skip
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert (log / "torchrun_signal").read_text().strip() == signum.name.removeprefix("SIG")
    assert (log / "requeued").read_text().split() == ["4242"]
    assert proc.returncode == 1 and "requeueing job 4242" in out


def test_a_finished_run_is_not_requeued(tmp_path: Path) -> None:
    proc, log = start(tmp_path, FAKE_FINISH="1")
    try:
        proc.communicate(timeout=60)
    finally:
        stop_all(proc)
    assert proc.returncode == 0
    assert not (log / "requeued").exists()
