"""Everything that must survive a restart, in one object with ``state_dict``/``load_state_dict``.

The checkpoint dict (see ``docs/architecture.md``)::

    {"model": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "rng": [per-rank RNG states], "state": {epoch, step, batch_in_epoch, best, ...},
     "config": resolved config as plain containers}

It holds only tensors, numbers, strings, lists, tuples and dicts, so
``torch.load(path, weights_only=True)`` loads it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from saltx.engine.distributed import unwrap
from saltx.engine.precision import Precision
from saltx.engine.schedule import OneCycleSchedule


@dataclass
class Progress:
    """Counters of the run.

    Attributes
    ----------
    epoch
        Current epoch (0-based).
    step
        Optimizer steps done so far.
    batch_in_epoch
        Batches of the current epoch already consumed (the sampler position for an exact
        mid-epoch resume).
    best
        Best value of ``trainer.monitor`` so far (``None`` before the first validation).
    best_step
        Optimizer step at which ``best`` was reached.
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    best_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of the counters."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters."""
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_step = int(state.get("best_step", -1))

    def is_better(self, value: float, mode: str) -> bool:
        """Whether ``value`` improves on ``best`` for ``mode`` (``min`` or ``max``)."""
        if value != value:  # NaN never improves
            return False
        if self.best is None:
            return True
        return value < self.best if mode == "min" else value > self.best


# -- RNG ---------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's torch (CPU, CUDA), numpy and python RNG states as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every RNG from :func:`capture_rng`'s output."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            n["bit_generator"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block without changing any RNG state seen by the code after it.

    Validation and the creation of data-loader iterators run inside this, so that the
    training random stream (dropout, shuffles) is the same whether or not a run was
    interrupted, validated, or resumed.
    """
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank, derived from the config ``seed`` (rank 0 keeps ``seed``)."""
    return int(seed) + 1_000_003 * int(rank)


# -- the training state -------------------------------------------------------------------------
class TrainState:
    """Model, optimizer, schedule, scaler, RNGs and counters: what a checkpoint holds.

    Parameters
    ----------
    model
        The model (possibly DDP-wrapped; the bare module's state is saved).
    optimizer, scheduler, precision
        Built by the loop.
    config
        The resolved config as plain containers (stored in every checkpoint).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: OneCycleSchedule,
        precision: Precision,
        config: dict[str, Any],
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.config = config
        self.progress = Progress()

    def state_dict(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint dict; ``rng`` holds one RNG state per rank (default: this one)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "rng": rng if rng is not None else [capture_rng()],
            "state": self.progress.state_dict(),
            "config": self.config,
        }

    def load_state_dict(
        self, ckpt: dict[str, Any], *, rank: int = 0, weights_only: bool = False
    ) -> None:
        """Restore from a checkpoint dict.

        Parameters
        ----------
        ckpt
            As written by :meth:`state_dict`.
        rank
            This process's rank: it takes its own RNG state when the checkpoint has one
            for it (same world size), else the RNGs keep their fresh per-rank seeds.
        weights_only
            Load only the model weights (start a new run from trained weights).
        """
        unwrap(self.model).load_state_dict(ckpt["model"])
        if weights_only:
            return
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.precision.load_state_dict(ckpt.get("scaler") or {})
        self.progress.load_state_dict(ckpt["state"])
        rng = ckpt.get("rng") or []
        if rank < len(rng):
            restore_rng(rng[rank])
