"""Write failures and killed evaluations.

* ``kill -9`` during evaluation leaves no partial predictions file under the final name;
* a full disk (a real, tiny tmpfs when this process may mount one, and an injected
  ``ENOSPC`` otherwise) while writing a checkpoint gives a clear ``OSError`` that names the
  checkpoint, leaves the previous checkpoint intact and no temporary file, and the run
  resumes once there is space again.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relhelp import (
    CONF_DIR,
    child_env,
    compose_train,
    corrupt_checkpoints,
    load_ckpt,
    run_child,
    runner_cmd,
    stale_temp_files,
    write_tiny_data,
)

from saltx.io import rundir as rundir_mod
from saltx.train import train

ONE_EPOCH = ("trainer.max_epochs=1",)  # 8 steps: last.pt at 3 and 6, best.pt at 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("iodata"))


@pytest.fixture(scope="module")
def trained_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iorun") / "run"
    train(compose_train(data_dir, out, *ONE_EPOCH))
    return out


# -- evaluation killed -----------------------------------------------------------------------
@pytest.mark.slow
def test_killed_evaluation_leaves_no_partial_predictions(trained_run: Path) -> None:
    from hydra import compose, initialize_config_dir

    from saltx.evaluate import evaluate

    final = trained_run / "predictions" / "best__test_test.h5"
    cmd = runner_cmd("evaluate", [f"run_dir={trained_run}", "write_tracks=true", "batch_size=16"])
    proc = run_child(cmd, child_env("predict@2"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not final.exists(), "a killed evaluation left a file under the final name"
    partial = stale_temp_files(trained_run / "predictions")
    assert partial and all(p.name.startswith(".best__test_test.h5.") for p in partial)

    # an external kill -9 once the predictions file is being written: nothing under the
    # final name unless the evaluation had finished (then the file is complete)
    proc = subprocess.Popen(
        runner_cmd("evaluate", [f"run_dir={trained_run}", "batch_size=16", "plots=false"]),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        before = set(stale_temp_files(trained_run / "predictions"))
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if set(stale_temp_files(trained_run / "predictions")) - before:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if final.exists():
        with h5py.File(final) as f:
            assert f["jets"].shape == (64,)

    # a rerun completes and replaces nothing but its own temporary file
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        ecfg = compose("evaluate", overrides=[f"run_dir={trained_run}", "plots=false"])
    evaluate(ecfg)
    with h5py.File(final) as f:
        assert f["jets"].shape == (64,)
        assert "GN2_pb" in f["jets"].dtype.names or "demo_pb" in f["jets"].dtype.names


# -- disk full while writing a checkpoint ----------------------------------------------------
def _check_disk_full_outcome(run: Path, err: BaseException) -> None:
    assert isinstance(err, OSError), f"{type(err).__name__}: {err}"
    assert err.errno == errno.ENOSPC
    message = str(err)
    assert "last.pt" in message and "No space left on device" in message, message
    # the previous checkpoints are intact and no temporary file is left behind
    assert corrupt_checkpoints(run) == []
    assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == 3
    assert load_ckpt(run / "checkpoints/best.pt")["state"]["step"] == 5
    assert stale_temp_files(run) == []


class _FullDisk:
    """A file wrapper that raises ENOSPC once ``budget`` bytes were written."""

    def __init__(self, f, budget: int) -> None:
        self._f, self._left = f, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            self._f.write(bytes(memoryview(data).cast("B")[: self._left]))
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_injected_enospc_on_checkpoint_write(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = compose_train(data_dir, run, *ONE_EPOCH)
    original = rundir_mod.RunDir.write_with

    def write_with(self, rel, writer):
        if rel.endswith("last.pt") and self.exists("checkpoints/best.pt"):
            return original(self, rel, lambda f: writer(_FullDisk(f, 4096)))
        return original(self, rel, writer)

    monkeypatch.setattr(rundir_mod.RunDir, "write_with", write_with)
    with pytest.raises(Exception) as info:
        train(cfg)
    _check_disk_full_outcome(run, info.value)

    monkeypatch.setattr(rundir_mod.RunDir, "write_with", original)
    train(cfg)  # space again: resumes from step 3 and finishes
    assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == 8


def _mount_tmpfs(where: Path, size_k: int) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(where)],
        capture_output=True,
    )
    return proc.returncode == 0


def test_real_full_tmpfs_on_checkpoint_write(
    data_dir: Path, trained_run: Path, tmp_path: Path
) -> None:
    ckpt_k = (trained_run / "checkpoints/last.pt").stat().st_size // 1024 + 1
    mnt = tmp_path / "tiny"
    # room for last.pt (step 3) + best.pt (step 5) + the small run files, not for a third copy
    if not _mount_tmpfs(mnt, 2 * ckpt_k + 64):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers it")
    try:
        run = mnt / "run"
        cfg = compose_train(data_dir, run, *ONE_EPOCH)
        with pytest.raises(Exception) as info:
            train(cfg)
        _check_disk_full_outcome(run, info.value)
        subprocess.run(
            ["mount", "-o", f"remount,size={8 * ckpt_k}k", str(mnt)],
            check=True,
            capture_output=True,
        )
        train(cfg)
        assert load_ckpt(run / "checkpoints/last.pt")["state"]["step"] == 8
        assert corrupt_checkpoints(run) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- a checkpoint damaged by something else (a non-atomic copy, a bad disk) -------------------
@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty"])
def test_damaged_last_checkpoint_is_a_clear_error(
    data_dir: Path, trained_run: Path, tmp_path: Path, damage: str
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    good = (trained_run / "checkpoints/last.pt").read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "zeroed": good[:1024] + bytes(len(good) - 1024),
        "empty": b"",
    }[damage]
    (run / "checkpoints/last.pt").write_bytes(bad)
    with pytest.raises(ValueError, match=r"could not load checkpoint .*last\.pt"):
        train(compose_train(data_dir, run, *ONE_EPOCH, "trainer.resume=auto"))
    assert (run / "checkpoints/last.pt").read_bytes() == bad  # left for the user to inspect
