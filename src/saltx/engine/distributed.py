"""Process groups, devices and the collectives the loop needs.

Two ways to run data-parallel:

* ``torchrun --nproc_per_node=N [--nnodes=M ...] -m saltx.train ...``: torchrun sets
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and every process
  joins with ``init_method="env://"``;
* ``trainer.devices=N`` from inside one process (one Hydra job): :func:`spawn` starts N
  processes with ``torch.multiprocessing`` on a free port of 127.0.0.1, each setting the
  same environment variables as torchrun would.

NCCL is used on GPUs, gloo on CPUs. Every collective has ``trainer.ddp_timeout_s``, so a
dead or stuck rank gives an error naming the timeout instead of a silent hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one rank is running."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment holds a torchrun/spawn rendezvous (``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_accelerator(accelerator: str) -> str:
    """``cpu`` or ``gpu`` from ``trainer.accelerator`` (``auto`` picks gpu when CUDA works)."""
    acc = str(accelerator).lower()
    if acc in {"gpu", "cuda"}:
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=gpu but CUDA is not available on this machine")
        return "gpu"
    if acc == "cpu":
        return "cpu"
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    raise ValueError(f"trainer.accelerator={accelerator!r}; use cpu, gpu or auto")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A single-process device (evaluation, muP's coordinate check): ``auto`` is the first
    GPU if there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as they are."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_distributed(accelerator: str, timeout_s: float = 600) -> DistInfo:
    """Join the process group when launched by torchrun or :func:`spawn`; pick the device.

    Parameters
    ----------
    accelerator
        ``trainer.accelerator`` (``cpu | gpu | auto``).
    timeout_s
        Timeout of every collective (``trainer.ddp_timeout_s``).
    """
    acc = resolve_accelerator(accelerator)
    rank, world, local = 0, 1, 0
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    if acc == "gpu":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if acc == "gpu" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=float(timeout_s)),
            device_id=device if backend == "nccl" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup() -> None:
    """Leave the process group (no-op when none is running)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op on one rank)."""
    if info.enabled:
        ids = [info.device.index] if info.device.type == "cuda" else None
        _complete(dist.barrier(async_op=True, device_ids=ids))


# The latest finished collectives, still referenced from Python: see _complete.
_FINISHED_WORK: deque[Any] = deque(maxlen=64)


def _complete(work: Any) -> None:
    """Wait for a collective and keep its work object referenced from Python for a while.

    gloo runs every collective on a worker thread, and that thread lets go of the work a
    moment after the caller's wait has returned (a barrier also holds the works before it
    until it is freed). Freeing a work frees its tensors, and freeing a tensor that Python
    has seen takes the GIL. If the worker lets go last while the interpreter is exiting,
    taking the GIL ends the thread and the process aborts ("terminate called without an
    active exception", SIGABRT) after a run that finished: 2 of 65 exits of a two-rank
    job on two loaded cores. The last 64 works stay referenced here, so they are freed by
    Python, with the GIL, and never by the worker.
    """
    work.wait()
    _FINISHED_WORK.append(work)


def _all_reduce(tensor: torch.Tensor, op: Any, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        _complete(dist.all_reduce(tensor, op=op, async_op=True))
    return tensor


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    return _all_reduce(tensor, dist.ReduceOp.SUM, info)


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks, in place."""
    return _all_reduce(tensor, dist.ReduceOp.MAX, info)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (any picklable object) on every rank."""
    if not info.enabled:
        return obj
    data = _to_bytes(obj, info.device) if info.is_main else None  # others only receive
    size = torch.tensor([0 if data is None else data.numel()], device=info.device)
    _complete(dist.broadcast(size, src=0, async_op=True))
    if data is None:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=info.device)
    _complete(dist.broadcast(data, src=0, async_op=True))
    return _from_bytes(data)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (any picklable object), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    data = _to_bytes(obj, info.device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=info.device)
    sizes = [torch.empty_like(size) for _ in range(info.world_size)]
    _complete(dist.all_gather(sizes, size, async_op=True))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    padded[: data.numel()] = data
    rows = [torch.empty_like(padded) for _ in range(info.world_size)]
    _complete(dist.all_gather(rows, padded, async_op=True))
    return [_from_bytes(row[: int(n.item())]) for row, n in zip(rows, sizes, strict=True)]


def _to_bytes(obj: Any, device: torch.device) -> torch.Tensor:
    raw = bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return torch.frombuffer(raw, dtype=torch.uint8).to(device)


def _from_bytes(data: torch.Tensor) -> Any:
    # the bytes come from this job's own ranks, as in torch's object collectives
    return pickle.loads(data.cpu().numpy().tobytes())


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned_entry(local_rank: int, world: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    fn(*args)


def spawn(fn: Callable[..., Any], nprocs: int, args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes that form one process group.

    ``fn`` must be importable (a module-level function). If any process fails, the others
    are terminated and the error is raised here. A stop signal (SIGTERM, SIGINT, SIGHUP,
    SIGUSR1) sent to this process is passed on to every rank, so each saves and stops as
    under SLURM (a rank that got it already from a signal to the whole process group
    records only the first).
    """
    from saltx.engine.signals import STOP_SIGNALS

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    previous: dict[int, Any] = {}
    try:
        ctx = mp.start_processes(
            _spawned_entry, args=(nprocs, fn, args), nprocs=nprocs, join=False, start_method="spawn"
        )

        def forward(signum: int, frame: Any) -> None:
            for proc in ctx.processes:
                if proc.is_alive() and proc.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signum)

        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) != signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, forward)
        while not ctx.join():
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_resume_world_size(ckpt: dict[str, Any], path: str, world_size: int) -> None:
    """Refuse to resume a checkpoint written by a different number of ranks.

    A checkpoint holds one RNG state per rank that wrote it (``ckpt["rng"]``). Its epoch
    position counts batches per rank, its learning-rate schedule spans the optimizer steps
    of that many ranks, and each rank's random stream is its own: none of these carries
    over to another world size exactly, so saltx stops instead of resuming approximately.
    A weights-only checkpoint (no optimizer, e.g. converted from Salt) starts a new run
    and is always accepted.

    Raises
    ------
    RuntimeError
        Naming both world sizes and the two ways to go on.
    """
    saved = len(ckpt.get("rng") or [])
    if "optimizer" not in ckpt or saved in (0, world_size):
        return
    raise RuntimeError(
        f"{path} was written by a run with world size {saved} ({saved} ranks), but this run "
        f"has world size {world_size}: its position in the epoch, learning-rate schedule and "
        f"per-rank random states do not carry over to {world_size} ranks. Resume it with "
        f"{saved} ranks (e.g. torchrun --nnodes and --nproc_per_node giving {saved} processes "
        "in all), or start a new run from its weights: save "
        "{'model': torch.load(path, weights_only=True)['model']} to a file and pass it as "
        "ckpt_path with a new paths.output_dir (docs/training.md, 'Multi-node')"
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a ``DistributedDataParallel`` wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
