"""CPU threads: how many this process may use, and the OpenMP settings saltx starts with.

* :func:`usable_cpus`: the CPUs this process may run on (its affinity mask) capped by the
  CPU time its cgroup may use (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` in v1), not the machine's core count: a container or a SLURM
  job limited to 4 CPUs of a 128-core node gets 4.
* :func:`intra_op_threads`: torch's intra-op threads for one rank, from the usable CPUs
  shared by the ranks of this node and, on a GPU, leaving one CPU to each loader worker.
* :class:`ThreadGovernor`: during training, lowers the intra-op threads while other
  processes take the CPUs this one may use, and raises them back when they leave
  (``trainer.adapt_threads``).
* :func:`openmp_defaults`: the OpenMP wait policy. OpenMP reads it once, when torch
  loads its runtime, so ``saltx/__init__.py`` applies it before anything imports torch
  (``python -m saltx.train``, the other entry points and loader workers, which inherit
  the environment); a value the user exported wins. See docs/performance.md, "Threads".
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Collection, MutableMapping
from pathlib import Path

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""saltx's OpenMP settings (measured, docs/performance.md "Threads"): idle OpenMP threads
sleep instead of spinning, so they give their core to whoever needs it; next to another
multi-threaded job, spinning threads steal the cores the job's threads wait for."""


def openmp_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_DEFAULTS` in ``environ`` (default ``os.environ``) where unset.

    Returns the settings that were applied (the user's own values are left alone).
    Effective only before torch is first imported in the process.
    """
    env = os.environ if environ is None else environ
    applied = {}
    for key, value in OPENMP_DEFAULTS.items():
        if key not in env and not (key == "OMP_WAIT_POLICY" and "GOMP_SPINCOUNT" in env):
            env[key] = value
            applied[key] = value
    return applied


def _cgroup_quota(folder: Path) -> float | None:
    """CPUs allowed by the cgroup ``folder`` itself (v2 ``cpu.max`` or v1 CFS), or None."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cgroup_cpu_limit(
    root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """The CPU time this process's cgroups allow, in CPUs (``None`` when unlimited).

    Looks at the process's cgroup and every parent up to the root, in the v2 hierarchy
    (``0::/path``) and in v1's ``cpu`` controller, and returns the smallest quota.
    """
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = Path(path.lstrip("/"))
        if controllers == "":  # v2: mounted at root (pure v2) or root/unified (hybrid)
            bases = [root, root / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        for base in bases:
            folders += [base / p for p in (rel, *rel.parents)]
    limits = [q for q in (_cgroup_quota(f) for f in dict.fromkeys(folders)) if q is not None]
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota (>= 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 0.5)))
    return max(1, cpus)


def intra_op_threads(
    requested: int | None,
    *,
    workers: int = 0,
    local_ranks: int = 1,
    gpu: bool = False,
    cpus: int | None = None,
) -> int:
    """Torch intra-op threads for one rank.

    Parameters
    ----------
    requested
        ``trainer.num_threads``: used as given when set (> 0).
    workers
        Loader worker processes of this rank.
    local_ranks
        Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``); they share the CPUs.
    gpu
        Training on a GPU: the model's CPU work is small and each loader worker keeps a
        CPU busy, so workers get theirs first. On a CPU, a worker sleeps between its
        batches (a few ms of a multi-second GN2 step) and takes no CPU from the model.
    cpus
        Usable CPUs (default :func:`usable_cpus`).

    Returns
    -------
    int
        At least 1.
    """
    if requested:
        return max(1, int(requested))
    share = max(1, (cpus or usable_cpus()) // max(1, local_ranks))
    if gpu:
        share -= workers
    return max(1, share)


def local_ranks() -> int:
    """Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``, also set for ``trainer.devices``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def configure_threads(requested: int | None, *, workers: int = 0, gpu: bool = False) -> int:
    """Set torch's intra-op threads for this rank (:func:`intra_op_threads`); returns them.

    ``requested`` (``trainer.num_threads``) wins, then an exported ``OMP_NUM_THREADS``;
    otherwise the usable CPUs shared by this node's ranks (``LOCAL_WORLD_SIZE``).
    """
    import torch

    if not requested and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"])
    threads = intra_op_threads(requested, workers=workers, local_ranks=local_ranks(), gpu=gpu)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


# -- threads during the run ---------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpus_busy_s(cpus: Collection[int], stat: str | os.PathLike = "/proc/stat") -> float:
    """Seconds the CPUs ``cpus`` have spent busy since boot, from ``/proc/stat``.

    Busy is user, nice, system, irq, softirq and steal (a virtual machine's CPU that the
    host gave to someone else is as lost as one another process took); idle and iowait
    are not.
    """
    ticks = 0
    for line in Path(stat).read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, rest.split()[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / _TICK


def process_tree_cpu_s(pid: int, proc: str | os.PathLike = "/proc") -> float:
    """CPU seconds of process ``pid`` and its descendants (loader workers, DDP ranks).

    Each process counts its own user and system time and that of its children that have
    exited and been waited for, so the sum does not drop when a worker ends. A process
    that ends while it is read is skipped.
    """
    ticks, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        folder = Path(proc, str(current))
        try:
            text = (folder / "stat").read_text()
            # fields after "(comm)": 3 state ... 14 utime, 15 stime, 16 cutime, 17 cstime
            fields = text[text.rindex(")") + 2 :].split()
            ticks += sum(int(f) for f in fields[11:15])
            for task in (folder / "task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return ticks / _TICK


class ThreadGovernor:
    """Fit torch's intra-op threads to the CPUs other processes leave this run.

    Next to another job, an operator split over more threads than there are free CPUs
    waits, at every barrier, for a thread that is not running: GN2 on two threads next to
    one 2-thread torch job ran at a quarter of its fair share, on one thread at its full
    share (docs/performance.md, "Threads"). :meth:`poll`, called after each optimizer
    step, reads at most every ``interval_s`` how much CPU time the process tree did not
    use on the CPUs it may run on (the foreign load, in CPUs) and sets

        threads = clamp(round((cpus - foreign) / local_ranks), 1, ceiling)

    Fewer threads apply at once; more only when two windows in a row ask for them, so a
    short lull in the other job does not bring back the slow setting.

    Parameters
    ----------
    ceiling
        The threads the run started with (:func:`configure_threads`); never exceeded.
    cpus
        The CPUs (numbers) this process may run on; default its affinity mask.
    local_ranks
        Ranks on this node: their CPU time is the run's own, measured from their common
        parent (torchrun's agent), and the free CPUs are shared among them.
    interval_s
        The shortest window between two readings.
    busy, own, clock, set_threads
        Where readings come from and where threads go (tests replace them):
        :func:`cpus_busy_s`, :func:`process_tree_cpu_s`, ``time.monotonic`` and
        ``torch.set_num_threads``.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        cpus: Collection[int] | None = None,
        local_ranks: int = 1,
        interval_s: float = 2.0,
        busy: Callable[[], float] | None = None,
        own: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        import torch

        cpus = set(os.sched_getaffinity(0) if cpus is None else cpus)
        root = os.getppid() if local_ranks > 1 else os.getpid()
        self.ceiling = self.threads = max(1, int(ceiling))
        self.ncpus, self.local_ranks, self.interval_s = len(cpus), max(1, local_ranks), interval_s
        self.busy = busy or (lambda: cpus_busy_s(cpus))
        self.own = own or (lambda: process_tree_cpu_s(root))
        self.clock = clock
        self.set_threads = set_threads or torch.set_num_threads
        self.foreign = 0.0
        self.changes = 0
        self._raise_votes = 0
        self._t, self._busy, self._own = clock(), self.busy(), self.own()

    def poll(self) -> int | None:
        """Take a reading when a window has passed; returns the new thread count if it changed."""
        now = self.clock()
        if now - self._t < self.interval_s:
            return None
        busy, own = self.busy(), self.own()
        self.foreign = max(0.0, (busy - self._busy) - (own - self._own)) / (now - self._t)
        self._t, self._busy, self._own = now, busy, own
        free = (self.ncpus - self.foreign) / self.local_ranks
        want = min(self.ceiling, max(1, math.floor(free + 0.5)))
        if want > self.threads:
            self._raise_votes += 1
            if self._raise_votes < 2:
                return None
        self._raise_votes = 0
        if want == self.threads:
            return None
        shared = f", the rest shared by {self.local_ranks} ranks" if self.local_ranks > 1 else ""
        print(
            f"saltx: {self.foreign:.1f} of {self.ncpus} CPUs busy with other processes{shared}: "
            f"{want} intra-op thread(s), was {self.threads} (trainer.adapt_threads)",
            file=sys.stderr,
            flush=True,
        )
        self.threads = want
        self.changes += 1
        self.set_threads(want)
        return want

    def close(self) -> None:
        """Give the process back the threads it started with."""
        if self.threads != self.ceiling:
            self.set_threads(self.ceiling)
            self.threads = self.ceiling


def thread_governor(
    adapt: bool, deterministic: bool, device_type: str, threads: int
) -> ThreadGovernor | None:
    """The run's :class:`ThreadGovernor`, or None where threads stay fixed.

    Fixed: ``trainer.adapt_threads=false``; ``trainer.deterministic=true`` (a different
    thread count can change the order of a reduction, and so the last bits); a GPU (the
    model's work is not on the CPU threads); one thread already; not Linux.
    """
    if not adapt or deterministic or device_type != "cpu" or threads <= 1:
        return None
    if not (hasattr(os, "sched_getaffinity") and Path("/proc/stat").exists()):
        return None
    return ThreadGovernor(threads, local_ranks=local_ranks())
