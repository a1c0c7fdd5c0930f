"""Threads from the CPUs a process may use (affinity, cgroup quota) and the OpenMP defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from saltx.engine import threads
from saltx.engine.threads import cgroup_cpu_limit, intra_op_threads, openmp_defaults


def tree(tmp_path, files: dict[str, str], cgroup: str):
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text(cgroup)
    return root, proc


def test_cgroup_v2_quota_of_the_process_or_a_parent(tmp_path):
    root, proc = tree(
        tmp_path,
        {"job/cpu.max": "max 100000\n", "job/step/cpu.max": "250000 100000\n"},
        "0::/job/step/task\n",
    )
    assert cgroup_cpu_limit(root, proc) == 2.5
    root, proc = tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_and_hybrid(tmp_path):
    root, proc = tree(
        tmp_path,
        {
            "cpu,cpuacct/slurm/job/cpu.cfs_quota_us": "400000\n",
            "cpu,cpuacct/slurm/job/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "unified/cpu.stat": "",
        },
        "4:memory:/x\n2:cpu,cpuacct:/slurm/job\n0::/\n",
    )
    assert cgroup_cpu_limit(root, proc) == 4.0
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_usable_cpus_caps_affinity_by_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 3.6)
    assert threads.usable_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.3)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cpus() == 16


def test_intra_op_threads():
    assert intra_op_threads(None, cpus=16) == 16
    assert intra_op_threads(None, cpus=16, local_ranks=4) == 4
    assert intra_op_threads(None, cpus=16, local_ranks=4, workers=2, gpu=True) == 2
    assert intra_op_threads(None, cpus=16, workers=6, gpu=False) == 16  # CPU: workers sleep
    assert intra_op_threads(None, cpus=2, workers=4, gpu=True) == 1
    assert intra_op_threads(3, cpus=16, local_ranks=8) == 3  # trainer.num_threads wins


def test_configure_threads_reads_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.configure_threads(None) == 1 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
        assert threads.configure_threads(None) == 1  # 64 ranks share this machine
        assert threads.configure_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_openmp_defaults_leave_the_users_values():
    env = {}
    assert openmp_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"]
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert openmp_defaults(env) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {"GOMP_SPINCOUNT": "10000"}  # a spin count of the user's: no policy on top
    assert openmp_defaults(env) == {} and "OMP_WAIT_POLICY" not in env


@pytest.mark.parametrize("module", ["saltx", "saltx.train"])
def test_policy_is_set_before_torch_loads(module):
    """Importing saltx (as ``python -m saltx.train`` does first) sets the policy and does
    not load torch, so OpenMP starts with it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import sys, os, saltx\n"
        "assert 'torch' not in sys.modules, 'saltx imported torch'\n"
        f"import {module}\n"
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "PASSIVE"
