"""Threads from the CPUs a process may use (affinity, cgroup quota) and the OpenMP defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


# -- threads during the run (trainer.adapt_threads) ------------------------------------------
def test_cpus_busy_counts_only_the_given_cpus_and_not_idle(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        "cpu  900 0 900 900 900 0 0 0 0 0\n"
        "cpu0 100 1 10 5000 700 2 3 4 0 0\n"
        "cpu1 200 0 20 6000 800 0 0 0 0 0\n"
        "cpu10 7 0 0 0 0 0 0 0 0 0\n"
        "intr 12345 0\n"
    )
    tick = threads._TICK
    assert threads.cpus_busy_s({0}, stat) == pytest.approx(120 / tick)
    assert threads.cpus_busy_s({0, 1}, stat) == pytest.approx(340 / tick)
    assert threads.cpus_busy_s({1, 10}, stat) == pytest.approx(227 / tick)


def test_process_tree_cpu_adds_descendants_and_their_waited_children(tmp_path):
    def proc(pid, comm, utime, stime, cutime, cstime, children=()):
        (tmp_path / str(pid) / "task" / str(pid)).mkdir(parents=True)
        fields = ["S"] + ["0"] * 10 + [str(v) for v in (utime, stime, cutime, cstime)] + ["0"] * 5
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields))
        (tmp_path / str(pid) / "task" / str(pid) / "children").write_text(
            " ".join(map(str, children))
        )

    proc(10, "python) x", 100, 20, 30, 4, children=[11, 12])  # ")" in the name
    proc(11, "worker", 7, 1, 0, 0, children=[13])
    proc(13, "grandchild", 5, 0, 0, 0)
    # 12 ended between the two reads: skipped
    assert threads.process_tree_cpu_s(10, tmp_path) == pytest.approx(167 / threads._TICK)
    assert threads.process_tree_cpu_s(11, tmp_path) == pytest.approx(13 / threads._TICK)


class Readings:
    """Fake /proc readings: each window adds ``dt`` seconds, the foreign load and ours."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0
        self.set_to = []

    def window(self, dt: float, foreign: float, own: float) -> None:
        self.t += dt
        self.busy += (foreign + own) * dt
        self.own += own * dt

    def governor(self, ceiling: int = 2, ncpus: int = 2, **kw) -> threads.ThreadGovernor:
        return threads.ThreadGovernor(
            ceiling,
            cpus=range(ncpus),
            busy=lambda: self.busy,
            own=lambda: self.own,
            clock=lambda: self.t,
            set_threads=self.set_to.append,
            **kw,
        )


def test_governor_gives_up_threads_to_another_job_and_takes_them_back(capsys):
    r = Readings()
    g = r.governor()
    r.window(1.0, foreign=1.0, own=1.0)
    assert g.poll() is None and r.set_to == []  # within the 2 s window: not read yet
    r.window(1.5, foreign=0.1, own=1.9)
    assert g.poll() is None and g.threads == 2  # idle but for a daemon
    r.window(3.0, foreign=1.0, own=1.0)  # a busy loop started
    assert g.poll() == 1 and r.set_to == [1] and g.foreign == pytest.approx(1.0)
    assert "1.0 of 2 CPUs busy with other processes: 1 intra-op thread(s), was 2" in (
        capsys.readouterr().err
    )
    r.window(3.0, foreign=1.2, own=0.8)  # a 2-thread job beside one thread of ours
    assert g.poll() is None and g.threads == 1
    r.window(3.0, foreign=0.0, own=1.0)  # the load left: one window is not enough ...
    assert g.poll() is None and g.threads == 1
    r.window(3.0, foreign=0.6, own=1.0)  # ... and a busy window resets the vote
    assert g.poll() is None
    r.window(3.0, foreign=0.0, own=1.0)
    assert g.poll() is None
    r.window(3.0, foreign=0.0, own=1.0)  # two quiet windows in a row
    assert g.poll() == 2 and r.set_to == [1, 2] and g.changes == 2
    r.window(3.0, foreign=2.0, own=0.0)
    assert g.poll() == 1
    g.close()
    assert r.set_to == [1, 2, 1, 2] and g.threads == 2  # the caller gets its threads back


def test_governor_shares_free_cpus_among_local_ranks_and_keeps_its_ceiling(capsys):
    r = Readings()
    g = r.governor(ceiling=4, ncpus=16, local_ranks=2)  # torchrun: 2 ranks, 4 threads each
    r.window(3.0, foreign=8.0, own=8.0)  # another job holds 8 CPUs: 4 each are left
    assert g.poll() is None and g.threads == 4
    r.window(3.0, foreign=11.0, own=5.0)  # 11 taken: 2.5 each -> 3
    assert g.poll() == 3
    assert "11.0 of 16 CPUs busy with other processes, the rest shared by 2 ranks: 3" in (
        capsys.readouterr().err
    )
    r.window(3.0, foreign=20.0, own=0.0)  # more than the CPUs: still one thread
    assert g.poll() == 1
    for _ in range(2):
        r.window(3.0, foreign=0.0, own=8.0)
        g.poll()
    assert g.threads == 4  # never above the ceiling


def test_thread_governor_only_where_threads_may_change():
    assert threads.thread_governor(True, False, "cpu", 2) is not None
    assert threads.thread_governor(False, False, "cpu", 2) is None  # adapt_threads=false
    assert threads.thread_governor(True, True, "cpu", 2) is None  # deterministic: same bits
    assert threads.thread_governor(True, False, "cuda", 2) is None
    assert threads.thread_governor(True, False, "cpu", 1) is None


def test_governor_sees_a_real_busy_loop():
    """Real /proc readings: a busy loop outside this process tree, on two CPUs the
    governor watches, takes one of them; the governor goes down to one thread."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    loop = (
        f"import os, time; os.sched_setaffinity(0, {set(cpus)}); t = time.time() + 60\n"
        "while time.time() < t: pass"
    )
    # the middle process exits at once: the loop is nobody's child here
    spawn = (
        "import subprocess as s, sys; "
        f"print(s.Popen([sys.executable, '-c', {loop!r}], stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"
    )
    pid = int(
        subprocess.run(
            [sys.executable, "-c", spawn], capture_output=True, text=True, check=True
        ).stdout
    )
    try:
        set_to = []
        g = threads.ThreadGovernor(2, cpus=cpus, interval_s=0.5, set_threads=set_to.append)
        deadline = time.monotonic() + 30
        while not set_to and time.monotonic() < deadline:
            time.sleep(0.6)
            g.poll()
        assert set_to == [1], f"foreign load {g.foreign:.2f} CPUs"
        assert g.foreign > 0.5
    finally:
        os.kill(pid, signal.SIGKILL)
