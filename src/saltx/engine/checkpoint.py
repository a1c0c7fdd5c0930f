"""Writing, finding and reading checkpoints.

Checkpoints live in ``<run dir>/checkpoints/``: ``last.pt`` (every
``trainer.checkpoint_every_n_steps`` steps, at each epoch end, on SIGTERM and at the end),
``best.pt`` (best ``trainer.monitor``) and, with ``trainer.save_every_epoch``,
``epoch=NNN.pt``. Rank 0 writes them atomically through :class:`~saltx.io.rundir.RunDir`.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from saltx.io.fs import exists, is_remote
from saltx.io.rundir import RunDir, load_checkpoint_dict, require_regular_file

CKPT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
METRICS_FILE = "metrics.jsonl"  # deleted with the checkpoints by overwrite=true


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
        When the file is not a saltx checkpoint dict, or not a regular file (a FIFO would
        block the load forever).
    """
    if not exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    require_regular_file(path)
    return load_checkpoint_dict(path, "model", "saltx checkpoint", map_location)


def find_resume_checkpoint(
    ckpt_path: str | None, resume: str, rundir: RunDir, overwrite: bool = False
) -> str | None:
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
    overwrite
        ``overwrite`` from the config. A run that starts afresh with ``resume=never``, or
        from another run's ``ckpt_path``, in a run directory that holds checkpoints is
        refused unless it is true; then the earlier checkpoints and ``metrics.jsonl`` are
        deleted first. (``resume=auto`` without ``last.pt`` warns and starts afresh.)

    Raises
    ------
    FileExistsError
        The run would overwrite the checkpoints of an earlier run in ``rundir`` and
        ``overwrite`` is false.
    """
    mode = str(resume).lower()
    if mode not in {"auto", "never"}:
        raise ValueError(f"trainer.resume={resume!r}; use auto or never")
    for tmp in rundir.remove_stale_temporaries(CKPT_DIR):
        print(f"removed {tmp}, left by an interrupted checkpoint write", flush=True)
    if ckpt_path:
        chosen: str | None = str(ckpt_path)
    elif mode == "auto" and rundir.exists(f"{CKPT_DIR}/{LAST}"):
        chosen = rundir.path(f"{CKPT_DIR}/{LAST}")
    else:
        chosen = None
    if chosen is None or not _in_checkpoint_dir(chosen, rundir):
        _clear_earlier_run(rundir, chosen, mode, overwrite)
    return chosen


def _in_checkpoint_dir(path: str, rundir: RunDir) -> bool:
    """Whether ``path`` is a checkpoint of ``rundir`` itself (continuing this run)."""
    folder = rundir.path(CKPT_DIR)
    if is_remote(folder) or is_remote(path):
        return str(path).startswith(folder.rstrip("/") + "/")
    real = os.path.realpath(str(path).removeprefix("file://"))
    return os.path.dirname(real) == os.path.realpath(folder.removeprefix("file://"))


def _clear_earlier_run(rundir: RunDir, chosen: str | None, mode: str, overwrite: bool) -> None:
    """Refuse (or with ``overwrite``, delete) an earlier run's checkpoints in ``rundir``."""
    earlier = rundir.glob(f"{CKPT_DIR}/*.pt")
    if not earlier:
        return
    names = ", ".join(p.rsplit("/", 1)[-1] for p in earlier)
    if chosen is None and mode == "auto" and not overwrite:
        # the same run restarted before its first last.pt (killed between best.pt and
        # last.pt at an epoch end): carry on, its files are replaced as it goes
        print(
            f"warning: {rundir.root} holds {names} but no {CKPT_DIR}/{LAST}: starting "
            "afresh, and those files will be replaced",
            flush=True,
        )
        return
    if chosen is not None:
        why = f"ckpt_path={chosen} starts from another run's checkpoint"
    else:
        why = f"trainer.resume={mode} starts afresh"
    if not overwrite:
        raise FileExistsError(
            f"the run directory {rundir.root} already holds checkpoints of an earlier run "
            f"({names}); {why} and would overwrite them and its config.yaml. Resume it "
            f"(trainer.resume=auto, with {CKPT_DIR}/{LAST}), choose another paths.output_dir, "
            "or pass overwrite=true to delete them and start again."
        )
    for rel in [*earlier, METRICS_FILE]:
        rundir.remove(rel)
    print(
        f"overwrite=true: deleted the earlier run's checkpoints ({names}) and {METRICS_FILE} "
        f"in {rundir.root}",
        flush=True,
    )
