"""RunDir: atomic local writes, remote (fsspec memory://) writes, appends, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from saltx.engine.checkpoint import (
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from saltx.io.rundir import RunDir


def _ckpt(value: float) -> dict:
    return {"model": {"w": torch.full((1000,), value)}, "state": {"step": int(value)}}


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    rundir = RunDir(tmp_path / "run")
    save_checkpoint(rundir, "last.pt", _ckpt(1.0))

    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)  # some bytes reach the temp file
        raise OSError("disk vanished half way through the write")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="half way"):
        save_checkpoint(rundir, "last.pt", _ckpt(2.0))
    monkeypatch.setattr(torch, "save", real_save)

    ckpt = load_checkpoint(str(tmp_path / "run/checkpoints/last.pt"))
    assert ckpt["state"]["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(1000))
    assert os.listdir(tmp_path / "run/checkpoints") == ["last.pt"]  # no temp file left


def test_sigkilled_writer_keeps_previous_checkpoint(tmp_path: Path) -> None:
    """A process killed (SIGKILL) in the middle of a big write never replaces last.pt."""
    import subprocess
    import sys

    rundir = RunDir(tmp_path / "run")
    save_checkpoint(rundir, "last.pt", _ckpt(1.0))
    code = (
        "import os, signal, torch\n"
        "from saltx.io.rundir import RunDir\n"
        "def writer(f):\n"
        "    f.write(b'x' * 1_000_000)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"RunDir({str(tmp_path / 'run')!r}).write_with('checkpoints/last.pt', writer)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert load_checkpoint(str(tmp_path / "run/checkpoints/last.pt"))["state"]["step"] == 1
    folder = tmp_path / "run/checkpoints"
    (stale,) = folder.glob(".last.pt.*.tmp")  # the dead writer's bytes
    # the next run (rank 0, before it resumes) removes it and keeps the checkpoint
    assert find_resume_checkpoint(None, "auto", rundir) == str(folder / "last.pt")
    assert not stale.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_remote_run_dir_round_trip() -> None:
    rundir = RunDir("memory://saltx-test/run1")
    assert rundir.remote
    path = save_checkpoint(rundir, "last.pt", _ckpt(3.0))
    assert path == "memory://saltx-test/run1/checkpoints/last.pt"
    assert load_checkpoint(path)["state"]["step"] == 3
    rundir.append_text("metrics.jsonl", "a\n")
    rundir.append_text("metrics.jsonl", "b\n")
    assert rundir.read_text("metrics.jsonl") == "a\nb\n"
    assert find_resume_checkpoint(None, "auto", rundir) == path
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        find_resume_checkpoint(None, "never", rundir)
    assert rundir.glob("checkpoints/*.pt") == ["checkpoints/last.pt"]
    assert find_resume_checkpoint(None, "never", rundir, overwrite=True) is None
    assert rundir.glob("checkpoints/*.pt") == []  # deleted on the object store too
    assert not rundir.exists("metrics.jsonl")


def test_resume_choice(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    assert find_resume_checkpoint(None, "auto", rundir) is None
    save_checkpoint(rundir, "last.pt", _ckpt(1.0))
    assert find_resume_checkpoint(None, "auto", rundir) == str(tmp_path / "run/checkpoints/last.pt")
    with pytest.raises(FileExistsError, match=r"ckpt_path=other\.pt starts from another run"):
        find_resume_checkpoint("other.pt", "never", rundir)
    assert find_resume_checkpoint("other.pt", "never", rundir, overwrite=True) == "other.pt"
    with pytest.raises(ValueError, match=r"trainer\.resume"):
        find_resume_checkpoint(None, "sometimes", rundir)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a saltx checkpoint"):
        load_checkpoint(str(tmp_path / "list.pt"))
