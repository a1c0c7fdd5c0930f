"""Signals as clusters send them: SIGTERM, SIGUSR1, SIGINT and SIGHUP to the whole process
group of a run with two loader workers (SLURM's ``scancel`` and pre-emption signal every
process of the job), to DDP ranks, and non-regular files where a checkpoint should be.

Each signal arrives while the run waits at a known optimizer step (``pause@N`` of
:mod:`fault_runner`), so the step that ``last.pt`` must hold is known exactly: the run
finishes that step, saves, and exits with ``128 + signum``. The run is resumed after each
signal; the finished run must equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
    runner_cmd,
    stale_temp_files,
    train_overrides,
    write_tiny_data,
)

from saltx.data.loader import build_dataloader, build_datasets
from saltx.engine.checkpoint import load_checkpoint
from saltx.engine.distributed import free_port
from saltx.engine.signals import STOP_SIGNALS, exit_code
from saltx.models.build import required_labels
from saltx.train import train

# (signal, optimizer step at which it arrives); see relhelp.TINY (24 steps in all)
CHAIN = [
    (signal.SIGTERM, 4),
    (signal.SIGUSR1, 9),
    (signal.SIGINT, 13),
    (signal.SIGHUP, 18),
]
WORKERS = "data.num_workers=2"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("sigdata"))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended before {path.name}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"child never wrote {path}")
        time.sleep(0.05)


def _group_gone(pgid: int, timeout: float = 120) -> bool:
    """Whether every process of the group ``pgid`` has ended (the loader workers too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _signal_group_at(
    cmd: list[str], tmp_path: Path, signum: int, step: int, tag: str
) -> tuple[int, str]:
    """Run ``cmd`` in its own process group, send ``signum`` to the group while it waits
    at ``step``, let it go on; returns the exit code and the output."""
    mark, release = tmp_path / f"mark-{tag}", tmp_path / f"release-{tag}"
    env = child_env(
        f"pause@{step}", SALTX_TEST_FAULT_MARK=str(mark), SALTX_TEST_FAULT_RELEASE=str(release)
    )
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a batch job step has
    )
    try:
        _wait_for(mark, proc)
        os.killpg(proc.pid, signum)
        release.write_text("go")
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _group_gone(proc.pid), f"{tag}: processes of the run outlived it (loader workers?)"
    return proc.returncode, out


@pytest.mark.slow
def test_each_signal_to_the_process_group_saves_and_resumes_exactly(
    data_dir: Path, tmp_path: Path
) -> None:
    baseline = tmp_path / "baseline"
    train(compose_train(data_dir, baseline))
    run = tmp_path / "run"
    cmd = runner_cmd("train", train_overrides(data_dir, run, WORKERS))
    previous = None
    for signum, step in CHAIN:
        name = signal.Signals(signum).name
        rc, out = _signal_group_at(cmd, tmp_path, signum, step, name)
        assert rc == exit_code(signum) == 128 + signum, f"{name}: exit {rc}\n{out[-3000:]}"
        assert f"stopped by {name} at step {step}" in out, out[-3000:]
        assert f"exiting with code {128 + signum}" in out
        assert "DataLoader worker" not in out, out[-3000:]
        if previous is not None:  # it resumed where the previous signal left it
            assert f"checkpoints/last.pt at step {previous}" in out, out[-3000:]
        assert corrupt_checkpoints(run) == []
        assert stale_temp_files(run) == []
        assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == step, name
        previous = step

    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints/last.pt'} at step {previous}" in proc.stdout
    for name in ("last.pt", "best.pt"):
        final = load_ckpt(run / "checkpoints" / name)
        assert_same_state(final, load_ckpt(baseline / "checkpoints" / name))
    assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == TOTAL_STEPS


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_step_they_save(data_dir: Path, tmp_path: Path) -> None:
    """torchrun-style ranks; only rank 1 gets SIGTERM (at step 3). They agree at the next
    log step (every 2 steps), rank 0 saves step 4, and both exit with 143."""
    run = tmp_path / "run"
    mark, release = tmp_path / "mark", tmp_path / "release"
    cmd = runner_cmd(
        "train",
        train_overrides(
            data_dir,
            run,
            "trainer.ddp_timeout_s=120",
            "trainer.log_every_n_steps=2",
            "trainer.checkpoint_every_n_steps=100",
            "trainer.val_check_interval=100",
        ),
    )
    # only rank 1 pauses: the fault runner reads SALTX_TEST_FAULT_RANK
    procs = _start_ddp_ranks(
        cmd,
        SALTX_TEST_FAULT="pause@3",
        SALTX_TEST_FAULT_RANK="1",
        SALTX_TEST_FAULT_MARK=str(mark),
        SALTX_TEST_FAULT_RELEASE=str(release),
    )
    outs = []
    try:
        _wait_for(mark, procs[1])
        procs[1].send_signal(signal.SIGTERM)
        release.write_text("go")
        for p in procs:
            out, _ = p.communicate(timeout=600)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 143, f"rank {rank}: exit {p.returncode}\n{out[-3000:]}"
        assert "stopped by SIGTERM at step 4" in out, f"rank {rank}:\n{out[-3000:]}"
    assert corrupt_checkpoints(run) == []
    assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == 4


def _start_ddp_ranks(cmd: list[str], **env: str) -> list[subprocess.Popen]:
    """Two ranks of ``cmd`` started as torchrun would (RANK, WORLD_SIZE, MASTER_*)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        child = child_env(
            None,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        procs.append(
            subprocess.Popen(
                cmd, env=child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


@pytest.mark.slow
def test_ddp_refusal_to_overwrite_reaches_every_rank(data_dir: Path, tmp_path: Path) -> None:
    """Rank 0 refuses ``resume=never`` over an earlier run; rank 1 stops at once with that
    reason instead of waiting in a collective until ``trainer.ddp_timeout_s``."""
    run = tmp_path / "run"
    train(compose_train(data_dir, run, "trainer.max_steps=2"))
    before = (run / "checkpoints/last.pt").read_bytes()
    cmd = [
        sys.executable,
        "-m",
        "saltx.train",
        *train_overrides(data_dir, run, "trainer.resume=never", "trainer.ddp_timeout_s=600"),
    ]
    procs = _start_ddp_ranks(cmd)
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1 and procs[1].returncode == 1, outs
    assert "FileExistsError: the run directory" in outs[0], outs[0][-3000:]
    assert "rank 0 could not choose the checkpoint to start from: FileExistsError" in outs[1]
    assert (run / "checkpoints/last.pt").read_bytes() == before


@pytest.mark.slow
def test_spawned_ranks_stop_on_a_signal_to_the_group(data_dir: Path, tmp_path: Path) -> None:
    """``trainer.devices=2``: the parent and both ranks get SIGUSR1; all exit with 138."""
    run = tmp_path / "run"
    overrides = train_overrides(
        data_dir, run, "trainer.devices=2", "trainer.max_epochs=1000", "trainer.log_every_n_steps=1"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "saltx.train", *overrides],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "training never logged"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGUSR1)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 138, out[-3000:]
    step = load_ckpt(run / "checkpoints/last.pt")["state"]["step"]
    assert f"stopped by SIGUSR1 at step {step}" in out, out[-3000:]
    assert _group_gone(proc.pid)


def test_loader_workers_leave_the_stop_signals_to_the_main_process(
    data_dir: Path, tmp_path: Path
) -> None:
    """Workers of the real loader outlive SIGTERM/SIGINT/SIGHUP/SIGUSR1 from another
    process (a batch system), and end on SIGTERM from the main process (how
    multiprocessing stops daemon workers at exit)."""
    cfg = compose_train(data_dir, tmp_path / "run", WORKERS)
    datasets = build_datasets(cfg.data, required_labels(cfg, "fit"), "fit")
    loader = build_dataloader(
        datasets["train"], batch_size=32, shuffle=False, drop_last=True, num_workers=2
    )
    it = iter(loader)
    next(it)
    workers = [w.pid for w in loader._iterator._workers]  # torch's persistent workers
    for signum in STOP_SIGNALS:
        for pid in workers:  # sent by `kill`, not by this (the parent) process
            subprocess.run(["kill", f"-{signal.Signals(signum).name[3:]}", str(pid)], check=True)
    time.sleep(1.0)
    for pid in workers:
        os.kill(pid, 0)  # still alive (ProcessLookupError otherwise)
    assert sum(1 for _ in it) == len(loader) - 1  # and the epoch reads to its end
    os.kill(workers[0], signal.SIGTERM)  # from the parent: the worker ends
    deadline = time.monotonic() + 60
    while Path(f"/proc/{workers[0]}").exists() and _state(workers[0]) != "Z":
        assert time.monotonic() < deadline, "a worker ignored SIGTERM from its parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


# -- non-regular files where a checkpoint should be -------------------------------------------
def _unblock_fifo_later(fifo: Path, after: float = 30.0, side: int = os.O_WRONLY) -> None:
    """Open ``fifo`` from the other ``side`` after ``after`` s, so a reader (writer) stuck
    on it goes on (the test then fails on its assertion instead of hanging when the guard
    is broken)."""

    def unblock() -> None:
        time.sleep(after)
        try:
            fd = os.open(fifo, side | os.O_NONBLOCK)
        except OSError:  # nobody waits on it: the guard worked
            return
        time.sleep(1.0)
        os.close(fd)

    threading.Thread(target=unblock, daemon=True).start()


def test_a_fifo_at_last_pt_is_refused(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    fifo = run / "checkpoints/last.pt"
    os.mkfifo(fifo)
    _unblock_fifo_later(fifo)
    with pytest.raises(ValueError, match=r"last\.pt is a FIFO \(named pipe\), not a regular file"):
        train(compose_train(data_dir, run))


@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero", "symlink to a fifo"])
def test_non_regular_checkpoints_are_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "ckpt.pt"
    if kind == "fifo":
        os.mkfifo(target)
        _unblock_fifo_later(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "/dev/zero":
        target = Path("/dev/zero")
    else:
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        _unblock_fifo_later(fifo)
        target.symlink_to(fifo)
    expected = {"fifo": "FIFO", "directory": "directory", "/dev/zero": "character device"}
    with pytest.raises(ValueError, match=expected.get(kind, "FIFO") + ".*not a regular file"):
        load_checkpoint(str(target))


def test_a_fifo_at_metrics_jsonl_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """Appending to a FIFO blocks until someone reads it: refused like a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    fifo = run / "metrics.jsonl"
    os.mkfifo(fifo)
    _unblock_fifo_later(fifo, side=os.O_RDONLY)
    with pytest.raises(ValueError, match=r"metrics\.jsonl is a FIFO \(named pipe\)"):
        train(compose_train(data_dir, run, "trainer.max_steps=1"))
