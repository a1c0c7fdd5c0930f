"""Batch samplers: which contiguous slices of the file each step reads, on each rank.

A sampler yields one index per step. The dataset reads the slice ``[start, stop)`` of
every h5 dataset in one contiguous hyperslab read. Shuffling permutes the *order* of the
batches every epoch (deterministic from ``seed`` and ``epoch``); the jets inside a batch
stay a contiguous block of the file, as in Salt (the files are shuffled by UPP). For files
that were not shuffled, ``shuffle_buffer`` groups several batches, reads them together and
mixes their jets before splitting them again (see :class:`BufferIndex`).

DDP: batches are dealt out by global rank (``rank::world_size``), so ranks never share a
batch. With ``drop_last`` (training) every rank gets the same number of steps (the few
surplus batches of an epoch are skipped, different ones each epoch when shuffling). Without
it (validation/test) every batch, the short remainder included, goes to exactly one rank,
so every jet is counted exactly once overall; ranks may then differ by one step, which is
fine for evaluation loops that only all-reduce at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from saltx.errors import DataError


class BatchIndex(NamedTuple):
    """One batch: the jets ``[start, stop)``, read during ``epoch``."""

    start: int
    stop: int
    epoch: int = 0

    @property
    def slice(self) -> slice:
        """The jets as a Python slice."""
        return slice(self.start, self.stop)


class BufferIndex(NamedTuple):
    """Several batches read together, their jets mixed, then split again.

    The dataset returns a list of batches (sizes as in ``slices``), dropping the first
    ``skip`` of them (resuming inside a group). The mixing permutation is drawn from
    ``(seed, epoch, slices[0][0])``.
    """

    slices: tuple[tuple[int, int], ...]
    epoch: int
    seed: int
    skip: int = 0


class SliceSampler:
    """Yield :class:`BatchIndex` (or :class:`BufferIndex`) items for one rank.

    Parameters
    ----------
    num_jets
        Jets in the dataset.
    batch_size
        Jets per batch.
    shuffle
        Permute the batch order every epoch (same permutation on every rank).
    drop_last
        Drop the short remainder batch, and give every rank the same number of steps.
    seed
        Base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
    rank, world_size
        Global rank and number of ranks (DDP).
    shuffle_buffer
        Jets mixed together in memory (0 = off); rounded down to whole batches.
    """

    def __init__(
        self,
        num_jets: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 0,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if num_jets < 1:
            raise DataError(f"cannot sample batches from {num_jets} jets")
        self.num_jets = int(num_jets)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.group = max(1, int(shuffle_buffer) // self.batch_size)
        self.epoch = 0
        self.start_batch = 0
        self._stop = False
        if self.drop_last and len(self) == 0:
            raise DataError(
                f"{self.num_jets} jets give no full batch of {self.batch_size} per rank "
                f"(world_size={world_size}); lower batch_size or use more jets"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (the shuffling order) and the batch to start from when resuming.

        ``start_batch`` counts this rank's batches already done in this epoch; iteration
        continues with exactly the batch that would have come next.
        """
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch={start_batch} outside [0, {len(self)}] for this epoch")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    @property
    def num_batches_total(self) -> int:
        """Batches in the whole dataset (all ranks)."""
        full, rest = divmod(self.num_jets, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (independent of ``start_batch``)."""
        total = self.num_batches_total
        if self.drop_last:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))

    def batch_ids(self) -> np.ndarray:
        """This rank's batch numbers for the current epoch, in order (before resuming)."""
        total = self.num_batches_total
        order = np.arange(total)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(total)
        mine = order[self.rank :: self.world_size]
        return mine[: len(self)]

    def _slice(self, batch_id: int) -> tuple[int, int]:
        start = int(batch_id) * self.batch_size
        return start, min(start + self.batch_size, self.num_jets)

    def stop_early(self) -> None:
        """End the running iteration at its next step (the loader drains its workers)."""
        self._stop = True

    def __iter__(self) -> Iterator[BatchIndex | BufferIndex]:
        self._stop = False
        ids = self.batch_ids()
        if self.group == 1:
            for b in ids[self.start_batch :]:
                if self._stop:
                    return
                yield BatchIndex(*self._slice(b), self.epoch)
            return
        first_group, skip = divmod(self.start_batch, self.group)
        for g in range(first_group * self.group, len(ids), self.group):
            if self._stop:
                return
            slices = tuple(self._slice(b) for b in ids[g : g + self.group])
            yield BufferIndex(slices, self.epoch, self.seed, skip)
            skip = 0
