"""CPU threads: how many this process may use, and the OpenMP settings saltx starts with.

* :func:`usable_cpus`: the CPUs this process may run on (its affinity mask) capped by the
  CPU time its cgroup may use (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` in v1), not the machine's core count: a container or a SLURM
  job limited to 4 CPUs of a 128-core node gets 4.
* :func:`intra_op_threads`: torch's intra-op threads for one rank, from the usable CPUs
  shared by the ranks of this node and, on a GPU, leaving one CPU to each loader worker.
* :func:`openmp_defaults`: the OpenMP wait policy. OpenMP reads it once, when torch
  loads its runtime, so ``saltx/__init__.py`` applies it before anything imports torch
  (``python -m saltx.train``, the other entry points and loader workers, which inherit
  the environment); a value the user exported wins. See docs/performance.md, "Threads".
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
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


def configure_threads(requested: int | None, *, workers: int = 0, gpu: bool = False) -> int:
    """Set torch's intra-op threads for this rank (:func:`intra_op_threads`); returns them.

    ``requested`` (``trainer.num_threads``) wins, then an exported ``OMP_NUM_THREADS``;
    otherwise the usable CPUs shared by this node's ranks (``LOCAL_WORLD_SIZE``).
    """
    import torch

    if not requested and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = intra_op_threads(requested, workers=workers, local_ranks=local, gpu=gpu)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
