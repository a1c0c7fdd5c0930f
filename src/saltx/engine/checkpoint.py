"""Writing, finding and reading checkpoints.

Checkpoints live in ``<run dir>/checkpoints/``: ``last.pt`` (every
``trainer.checkpoint_every_n_steps`` steps, at each epoch end, on SIGTERM and at the end),
``best.pt`` (best ``trainer.monitor``) and, with ``trainer.save_every_epoch``,
``epoch=NNN.pt``. Rank 0 writes them atomically through :class:`~saltx.io.rundir.RunDir`.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from saltx.io.fs import exists
from saltx.io.rundir import RunDir, load_torch

CKPT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


def epoch_name(epoch: int) -> str:
    """File name of the end-of-epoch checkpoint, e.g. ``epoch=007.pt``."""
    return f"epoch={epoch:03d}.pt"


def save_checkpoint(rundir: RunDir, name: str, ckpt: dict[str, Any]) -> str:
    """Atomically write ``ckpt`` to ``checkpoints/<name>``; returns its path.

    A write that fails half way leaves the previous file of that name untouched.

    Raises
    ------
    OSError
        When the file cannot be written (e.g. a full disk); the message names the file.
    """
    rel = f"{CKPT_DIR}/{name}"
    buf = io.BytesIO()
    torch.save(ckpt, buf)  # serialise first: a failing write is then a plain OSError
    try:
        return rundir.write_bytes(rel, buf.getbuffer())
    except OSError as err:
        raise OSError(
            err.errno,
            f"could not write checkpoint {rundir.path(rel)}: {err.strerror or err}; "
            f"the previous {name}, if any, is unchanged",
        ) from err


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a saltx checkpoint dict.
    """
    if not exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = load_torch(path, map_location=map_location)
    except Exception as err:
        raise ValueError(
            f"could not load checkpoint {path} with torch.load(weights_only=True): {err}"
        ) from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a saltx checkpoint: expected a dict with 'model', got {keys}"
        )
    return ckpt


def find_resume_checkpoint(ckpt_path: str | None, resume: str, rundir: RunDir) -> str | None:
    """The checkpoint to resume from, or ``None`` to start fresh.

    Temporary files of checkpoint writes that a killed run left in
    ``checkpoints/`` are deleted first (only rank 0 calls this, before any write).

    Parameters
    ----------
    ckpt_path
        ``ckpt_path`` from the config: always wins when given.
    resume
        ``trainer.resume``: ``auto`` takes ``checkpoints/last.pt`` of the run directory when
        it exists; ``never`` starts fresh.
    rundir
        The run directory.
    """
    for tmp in rundir.remove_stale_temporaries(CKPT_DIR):
        print(f"removed {tmp}, left by an interrupted checkpoint write", flush=True)
    if ckpt_path:
        return str(ckpt_path)
    mode = str(resume).lower()
    if mode not in {"auto", "never"}:
        raise ValueError(f"trainer.resume={resume!r}; use auto or never")
    if mode == "auto" and rundir.exists(f"{CKPT_DIR}/{LAST}"):
        return rundir.path(f"{CKPT_DIR}/{LAST}")
    return None
