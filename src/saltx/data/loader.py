"""DataLoaders over :class:`JetDataset` and datasets built from ``cfg.data``."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from saltx.data.batch import Batch
from saltx.data.dataset import DEFAULT_READ_THREADS, JetDataset
from saltx.data.sampler import BatchIndex, SliceSampler
from saltx.errors import DataError
from saltx.targets import plain

#: Signals that stop a training run: the main process saves and exits on them
#: (``saltx.engine.signals``), loader workers leave them to it (:func:`_init_worker`).
STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
)


def _init_worker(worker_id: int) -> None:
    """Start of a loader worker: leave the stop signals to the main process; seed.

    A batch system signals every process of the job (SLURM's ``scancel`` the whole
    process group); the worker must outlive that and let the main process save and shut
    it down. SIGINT, SIGHUP and SIGUSR1 are ignored. SIGTERM stays blocked and a thread
    takes it (:func:`_watch_sigterm`): from the main process it ends the worker (that is
    how multiprocessing and torch stop workers), from anyone else it is dropped. The
    signals were blocked while the worker was forked (:func:`_stop_signals_blocked`), so
    one that arrived since is handled the same way. Seeds come from torch's per-worker
    seed (base seed + id).
    """
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_watch_sigterm, args=(os.getppid(),), name="saltx-sigterm", daemon=True
    ).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS) - {signal.SIGTERM})
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _watch_sigterm(parent: int) -> None:
    """Wait for SIGTERM (blocked in every thread); exit when the parent sent it."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)


@contextlib.contextmanager
def _stop_signals_blocked(active: bool) -> Iterator[None]:
    """Block the stop signals in this thread while loader workers are forked.

    A worker inherits the mask, so a signal sent to the process group while it starts
    waits until :func:`_init_worker` ignores it. Here it is delivered on leaving the block.
    """
    if not active:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _identity(item: Any) -> Any:
    return item


Spec = tuple  # ("slot", offset, shape, dtype str) or ("array", np.ndarray)


class SlotBatch(NamedTuple):
    """A batch a worker wrote into shared slot ``slot`` (offsets, shapes, dtypes of its arrays)."""

    slot: int
    inputs: dict[str, Spec]
    masks: dict[str, Spec]
    labels: dict[str, dict[str, Spec]]


class SharedSlots:
    """Reusable shared-memory buffers that carry batches from workers to the main process.

    Torch's default path puts every tensor of every batch into a fresh shared-memory
    segment (create, copy, page faults, unmap: several ms per batch on a VM). Here each
    worker writes its arrays straight into one of ``num_slots`` buffers mapped once and
    sends only offsets. The main process hands out tensors that *view* the slot (or
    pinned copies with ``pin_memory``); the slot is reused only after all of them are
    garbage-collected, so a batch is never overwritten while in use. With
    ``workers * prefetch + 4`` slots, a consumer that keeps up to two batches alive
    never waits; a worker that finds no free slot within ``timeout`` s (batches kept
    alive longer) sends that batch the default way instead.
    """

    def __init__(self, num_slots: int, nbytes: int, timeout: float = 0.1) -> None:
        self.nbytes = -(-nbytes // 64) * 64
        self.memory = torch.empty(num_slots * self.nbytes, dtype=torch.uint8).share_memory_()
        self.free = torch.multiprocessing.get_context().Queue()
        for i in range(num_slots):
            self.free.put(i)
        self.timeout = timeout

    def buffer(self, slot: int) -> np.ndarray:
        """The bytes of ``slot`` as a numpy array (a view of the shared memory)."""
        return self.memory.numpy()[slot * self.nbytes : (slot + 1) * self.nbytes]

    def acquire(self) -> int | None:
        """A free slot, or None after ``timeout`` seconds."""
        try:
            return self.free.get(timeout=self.timeout)
        except queue.Empty:
            return None

    def release(self, slot: int) -> None:
        """Give ``slot`` back."""
        self.free.put(slot)


class _BumpAlloc:
    """Carve arrays from a byte buffer, 64-byte aligned; ``np.empty`` once it is full."""

    def __init__(self, memory: np.ndarray) -> None:
        self.memory = memory
        self.pos = 0

    def __call__(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if self.pos + n > len(self.memory):
            return np.empty(shape, dtype)
        out = self.memory[self.pos : self.pos + n].view(dtype).reshape(shape)
        self.pos += -(-n // 64) * 64
        return out

    def spec(self, arr: np.ndarray) -> Spec:
        base = self.memory.ctypes.data
        offset = arr.ctypes.data - base
        if arr.flags.c_contiguous and offset >= 0 and offset + arr.nbytes <= len(self.memory):
            return ("slot", offset, arr.shape, arr.dtype.str)
        return ("array", arr)


class SlotReader(Dataset):
    """Wrap a :class:`JetDataset` so that workers write batches into :class:`SharedSlots`."""

    def __init__(self, dataset: JetDataset, slots: SharedSlots) -> None:
        self.dataset = dataset
        self.slots = slots

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Batch | list[Batch] | SlotBatch:
        if not isinstance(index, BatchIndex) or get_worker_info() is None:
            return self.dataset[index]
        slot = self.slots.acquire()
        if slot is None:
            return self.dataset[index]
        try:
            alloc = _BumpAlloc(self.slots.buffer(slot))
            inputs, masks, labels = self.dataset.read_arrays(
                index.start, index.stop, index.epoch, alloc=alloc
            )
            return SlotBatch(
                slot,
                {k: alloc.spec(v) for k, v in inputs.items()},
                {k: alloc.spec(v) for k, v in masks.items()},
                {n: {f: alloc.spec(v) for f, v in fs.items()} for n, fs in labels.items()},
            )
        except BaseException:
            self.slots.release(slot)
            raise


class _SlotHold:
    """Owner of one slot's bytes in the main process: the slot is freed when the last
    tensor made from it is garbage-collected (so a batch can never be overwritten)."""

    def __init__(self, memory: np.ndarray, release: Callable[[], None]) -> None:
        self.__array_interface__ = memory.__array_interface__
        self._memory = memory  # keeps the shared mapping alive
        weakref.finalize(self, release).atexit = False


def _tensor(spec: Spec, memory: np.ndarray, pin: bool) -> torch.Tensor:
    """The tensor of one array of a :class:`SlotBatch`: a view, or a pinned copy."""
    if spec[0] == "array":
        return torch.from_numpy(spec[1])
    _, offset, shape, dtype = spec
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    src = torch.from_numpy(memory[offset : offset + n].view(dtype).reshape(shape))
    if not pin:
        return src
    return torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src)


class BatchLoader(DataLoader):
    """A DataLoader whose items are :class:`Batch` objects, one per sampler step.

    ``len(loader)`` is this rank's number of batches per epoch. Call
    :meth:`set_epoch` before each epoch (and with ``start_batch`` when resuming).
    """

    sampler: SliceSampler
    slots: SharedSlots | None = None
    _active: Iterator[Batch] | None = None

    @property
    def jet_dataset(self) -> JetDataset:
        """The :class:`JetDataset` read (``dataset`` may be its shared-memory wrapper)."""
        return self.dataset.dataset if isinstance(self.dataset, SlotReader) else self.dataset

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's batch order; skip the first ``start_batch`` batches."""
        self.sampler.set_epoch(epoch, start_batch)

    def _unpack(self, item: Any) -> Iterator[Batch]:
        if isinstance(item, list):  # shuffle-buffer groups
            yield from item
        elif isinstance(item, SlotBatch):
            slots, slot = self.slots, item.slot
            memory = np.asarray(_SlotHold(slots.buffer(slot), lambda: slots.release(slot)))
            pin = self.pin_memory and torch.cuda.is_available()
            batch = Batch(
                {k: _tensor(v, memory, pin) for k, v in item.inputs.items()},
                {k: _tensor(v, memory, pin) for k, v in item.masks.items()},
                {
                    n: {f: _tensor(v, memory, pin) for f, v in fs.items()}
                    for n, fs in item.labels.items()
                },
            )
            del memory  # pinned copies free the slot now, views when they are dropped
            yield batch
        else:
            yield item

    def _discard(self, item: Any) -> None:
        if isinstance(item, SlotBatch):
            self.slots.release(item.slot)

    def __iter__(self) -> Iterator[Batch]:
        if self._active is not None:  # an abandoned iteration: drain it, free its slots
            self._active.close()
        self._active = self._generate()
        return self._active

    def _generate(self) -> Iterator[Batch]:
        with _stop_signals_blocked(self.num_workers > 0):
            it = super().__iter__()  # forks the workers (the first time)
        finished = False
        try:
            for item in it:
                yield from self._unpack(item)
            finished = True
        finally:
            if not finished and self.slots is not None:
                # stop dispatching, then collect the batches still in flight
                self.sampler.stop_early()
                with contextlib.suppress(Exception):
                    for item in it:
                        self._discard(item)


def build_dataloader(
    dataset: JetDataset,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = 2,
    shared_slots: bool = True,
) -> BatchLoader:
    """Build the loader of one split.

    Parameters
    ----------
    dataset
        The dataset; the sampler hands it whole-batch slices (``batch_size=None``).
    batch_size, shuffle, drop_last
        Jets per batch; permute batch order per epoch; drop the short remainder and keep
        the same step count on every rank (training).
    num_workers
        Worker processes (0 = read in the main process); workers persist across epochs.
    seed
        Base seed: batch order, shuffle-buffer mixing and worker seeds derive from it.
    rank, world_size
        DDP global rank and size; ranks get disjoint batches.
    shuffle_buffer
        Jets mixed in memory across batches (0 = off).
    pin_memory
        Pin batches for faster host-to-GPU copies.
    prefetch_factor
        Batches prefetched per worker (ignored without workers).
    shared_slots
        Move batches from workers through reusable shared memory (:class:`SharedSlots`);
        False uses torch's default transport.
    """
    sampler = SliceSampler(
        len(dataset),
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=shuffle_buffer,
    )
    generator = torch.Generator()
    generator.manual_seed(int(seed) * 1000 + rank)
    workers = int(num_workers)
    slots = None
    if workers > 0 and shared_slots:
        try:
            slots = SharedSlots(
                workers * (prefetch_factor or 2) + 4, dataset.batch_nbytes(batch_size)
            )
        except RuntimeError:  # no shared memory: torch's default transport still works
            slots = None
    loader = BatchLoader(
        dataset if slots is None else SlotReader(dataset, slots),
        batch_size=None,
        sampler=sampler,
        collate_fn=_identity,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=_init_worker,
        generator=generator,
    )
    loader.slots = slots
    return loader


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def build_datasets(
    data_cfg: Any,
    labels: Mapping[str, Sequence[str]] | None,
    stage: str,
    seed: int = 0,
) -> dict[str, JetDataset]:
    """Build the datasets of a stage from ``cfg.data``.

    Parameters
    ----------
    data_cfg
        The ``data`` node (keys: train_file, val_file, test_file, num_train, num_val,
        num_test, variables, input_map, num_inputs, non_finite_to_num, global_object,
        parameters, read_threads).
    labels
        ``{input_name: [field, ...]}`` from ``saltx.models.required_labels(cfg, stage)``.
    stage
        ``"fit"`` -> ``{"train": ..., "val": ...}`` (both drawn with stage "fit");
        ``"test"`` -> ``{"test": ...}``.
    seed
        Base seed of the PARAMETERS draws.
    """
    common = {
        "variables": plain(_get(data_cfg, "variables")),
        "labels": plain(labels),
        "input_map": plain(_get(data_cfg, "input_map")),
        "num_inputs": plain(_get(data_cfg, "num_inputs", {})),
        "non_finite_to_num": bool(_get(data_cfg, "non_finite_to_num", False)),
        "global_object": _get(data_cfg, "global_object", "jets"),
        "parameters": plain(_get(data_cfg, "parameters", {})),
        "seed": seed,
        "read_threads": int(_get(data_cfg, "read_threads", DEFAULT_READ_THREADS)),
    }
    if stage == "fit":
        splits = {"train": ("train_file", "num_train"), "val": ("val_file", "num_val")}
    elif stage == "test":
        splits = {"test": ("test_file", "num_test")}
    else:
        raise DataError(f"stage must be 'fit' or 'test', got '{stage}'")
    out = {}
    for split, (file_key, num_key) in splits.items():
        path = _get(data_cfg, file_key)
        if not path:
            raise DataError(f"data.{file_key} is not set (needed for stage '{stage}')")
        out[split] = JetDataset(path, stage=stage, num=int(_get(data_cfg, num_key, -1)), **common)
    return out
