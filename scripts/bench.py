"""saltx performance benchmark (``make bench``) and comparison with salt-ml (``make bench-peer``).

    python scripts/bench.py [--data DIR] [--quick] [--threads 2] [--out bench/]
    python scripts/bench.py --peer [--data DIR] [--pairs 3] [--steps 7]

Every measurement runs in its own subprocess (the per-part scripts in ``scripts/``),
with ``OMP_NUM_THREADS=--threads``; its peak RSS (largest process of its tree) and CPU
time come from ``os.wait4``. Measured:

* data loading (``bench_dataloader.py``), jets/s;
* training (``bench_train.py``) of ``gn2`` and ``demo`` with all their tasks, eager and
  compiled, fp32 and bf16, jets/s and peak RSS;
* evaluation (``bench_eval.py``: forward pass plus the predictions h5), jets/s;
* ONNX Runtime (``bench_onnx.py``), one jet per call, 2 threads and 1 thread;
* FLOPs per jet (``flops.py``: padded and useful, i.e. valid tokens only) and the
  achieved GFLOP/s of training against a ``torch.mm`` 2048x2048 fp32 peak measured in
  the same run at the same thread count.

``--peer`` runs saltx and salt-ml (the kit in ``$SALT_KIT``, default
``../shared/peers/salt``; venv ``$PEERS/salt-venv``) alternately, A B A B, ``--pairs``
times for data loading, GN2 eager fp32 training and evaluation, on the same files, batch
1000, fp32, 2 threads, 1 loader process, and prints saltx/salt-ml ratios (min / median /
max) next to the targets. Then, once each: saltx compiled training, ONNX Runtime on both
sides, and the FLOP count.

Results: ``--out``/results.json (one section per mode: ``bench``, ``quick``, ``peer``;
other sections are kept) and results.md. Each figure is compared with the same section
of the previous results (``git show HEAD:bench/results.json``, else the file on disk) and
flagged when it is more than 10% worse. ``--quick`` is a short functional run (tiny data,
few steps, the small model; ~2-3 minutes) that writes to ``~/.cache/saltx/bench/quick``
unless ``--out`` is given. Logs and run directories go to ``--work`` (default
``~/.cache/saltx/bench/runs/<time>``).

Other jobs on the machine distort timings: the CPU used by processes outside this
benchmark is logged every second (``cpu_guard.py monitor`` from the kit, when present)
and each measurement records the average foreign load over its run and the load average;
figures taken with more than 0.25 foreign cores are marked contended.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saltx" / "bench"
KIT = Path(os.environ.get("SALT_KIT", ROOT.parent / "shared" / "peers" / "salt"))
PEERS = Path(os.environ.get("PEERS", ROOT.parent / "peers"))
WORSE = 0.10  # a figure this much worse than the previous results is flagged
CONTENDED = 0.25  # foreign cores above which a measurement is marked contended

# target: (figure name in "ratios", comparison, threshold, text)
TARGETS = [
    ("dataloader", ">=", 3.0, "data loading >= 3x salt-ml"),
    ("train_gn2_eager", ">=", 1.5, "GN2 training, eager fp32 >= 1.5x (issue 4: >= 1.3x)"),
    ("train_gn2_compiled", ">=", 2.0, "GN2 training, compiled >= 2x salt-ml eager"),
    ("eval", ">=", 2.0, "evaluation >= 2x salt-ml"),
    ("train_peak_rss", "<=", 1.0, "training peak memory <= salt-ml"),
    ("eval_peak_rss", "<=", 1.0, "evaluation peak memory <= salt-ml"),
]


# ------------------------------------------------------------------------------- running
@dataclass
class Measured:
    """One subprocess: exit status, wall time, peak RSS, CPU time, its JSON, its load."""

    name: str
    rc: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    t0: float
    t1: float
    log: str
    data: dict[str, Any] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    foreign_cores: float | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def summary(self) -> dict[str, Any]:
        return {
            "rc": self.rc,
            "wall_s": round(self.wall_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "cpu_s": round(self.cpu_s, 2),
            "load_average_1min": [round(x, 2) for x in self.load],
            "foreign_cores": None if self.foreign_cores is None else round(self.foreign_cores, 3),
            "contended": contended(self.foreign_cores, self.load),
            "log": self.log,
        }


def contended(foreign: float | None, load: Sequence[float]) -> bool | None:
    """True when other processes used more than CONTENDED cores (monitor log), else None
    when only the load average is known."""
    if foreign is None:
        return None
    return foreign > CONTENDED


class Monitor:
    """Logs the CPU cores used by processes outside this benchmark (kit's cpu_guard.py)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen | None = None
        guard = KIT / "cpu_guard.py"
        if guard.exists():
            self.proc = subprocess.Popen(
                [sys.executable, str(guard), "monitor", str(os.getpid()), str(log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def foreign(self, t0: float, t1: float) -> float | None:
        """Average foreign cores over ``[t0, t1]`` (unix times); None without a log."""
        if self.proc is None or not self.log.exists():
            return None
        total, covered = 0.0, 0.0
        for line in self.log.read_text().splitlines():
            f = line.split()
            if len(f) < 2:
                continue
            t, cores = float(f[0]), float(f[1])
            overlap = min(t, t1) - max(t - 1.0, t0)
            if overlap > 0:
                total += cores * overlap
                covered += overlap
        return total / covered if covered > 0.5 * (t1 - t0) and covered > 0 else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


class Runner:
    """Runs commands with a fixed environment, logs them, and measures them."""

    def __init__(self, work: Path, threads: int, monitor: Monitor, verbose: bool = True) -> None:
        self.work = work
        self.threads = threads
        self.monitor = monitor
        self.verbose = verbose
        self.records: dict[str, dict[str, Any]] = {}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        t = str(self.threads)
        env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, HYDRA_FULL_ERROR="1")
        env.setdefault("WANDB_MODE", "offline")
        env.update(extra or {})
        return env

    def run(
        self,
        name: str,
        cmd: Sequence[str],
        json_path: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Measured:
        """Run ``cmd``; its output goes to ``<work>/<name>.log``; parse ``json_path``."""
        log = self.work / f"{name}.log"
        if json_path is not None and json_path.exists():
            json_path.unlink()
        if self.verbose:
            print(f"-- {name}", flush=True)
        load0 = os.getloadavg()[0]
        t0, w0 = time.time(), time.perf_counter()
        with log.open("w") as fo:
            fo.write("$ " + " ".join(map(str, cmd)) + "\n")
            fo.flush()
            proc = subprocess.Popen(
                list(map(str, cmd)),
                stdout=fo,
                stderr=subprocess.STDOUT,
                env=self.env() if env is None else env,
                cwd=cwd,
            )
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - w0
        t1 = time.time()
        data: dict[str, Any] = {}
        if json_path is not None and json_path.exists():
            data = json.loads(json_path.read_text())
        m = Measured(
            name=name,
            rc=proc.returncode,
            wall_s=wall,
            peak_rss_mb=ru.ru_maxrss / 1024,
            cpu_s=ru.ru_utime + ru.ru_stime,
            t0=t0,
            t1=t1,
            log=str(log),
            data=data,
            load=(load0, os.getloadavg()[0]),
            foreign_cores=self.monitor.foreign(t0, t1),
        )
        self.records[name] = m.summary()
        if not m.ok:
            tail = log.read_text().splitlines()[-15:]
            print(f"   FAILED (rc {m.rc}), last lines of {log}:", *tail, sep="\n   ", flush=True)
        elif self.verbose:
            fc = "" if m.foreign_cores is None else f", foreign load {m.foreign_cores:.2f} cores"
            print(
                f"   {wall:.1f} s, peak RSS {m.peak_rss_mb:,.0f} MB, load {load0:.1f}{fc}",
                flush=True,
            )
        return m


# ------------------------------------------------------------------------------- figures
def stats(values: Sequence[float | None]) -> dict[str, Any] | None:
    """``{"median", "min", "max", "n", "values"}`` of the non-None values (None if none)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v), "values": v}


class Figures:
    """Named figures: ``{name: {"value", "unit", "better", "label", ...}}``."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        label: str,
        better: str = "higher",
        **extra: Any,
    ) -> None:
        if value is None:
            return
        self.items[name] = {"value": float(value), "unit": unit, "label": label, "better": better}
        self.items[name].update({k: v for k, v in extra.items() if v is not None})

    def add_stats(
        self,
        name: str,
        values: Sequence[float | None],
        unit: str,
        label: str,
        better: str = "higher",
        **extra: Any,
    ) -> None:
        s = stats(values)
        if s is not None:
            self.add(name, s["median"], unit, label, better, min=s["min"], max=s["max"], n=s["n"])
            self.items[name].update({k: v for k, v in extra.items() if v is not None})


def compare(new: dict[str, Any], old: dict[str, Any] | None, limit: float = WORSE) -> list[dict]:
    """Figures of ``new`` more than ``limit`` worse than the same figure of ``old``.

    Both are ``{name: {"value", "better", ...}}``; ``better`` is ``higher`` or ``lower``.
    """
    out = []
    for name, f in new.items():
        o = (old or {}).get(name)
        if not o or not o.get("value") or f.get("better") not in ("higher", "lower"):
            continue
        change = f["value"] / o["value"] - 1.0
        worse = -change if f["better"] == "higher" else change
        if worse > limit:
            out.append(
                {"figure": name, "old": o["value"], "new": f["value"], "change": round(change, 4)}
            )
    return out


def previous_results(out_dir: Path) -> dict[str, Any]:
    """The committed ``results.json`` (``git show HEAD:...``), else the file on disk."""
    path = out_dir / "results.json"
    try:
        rel = path.resolve().relative_to(ROOT)
        p = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"HEAD:{rel}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode == 0 and p.stdout.strip():
            return json.loads(p.stdout)
    except (ValueError, json.JSONDecodeError, OSError):
        pass
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def target_status(ratios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured median ratio and whether it is met."""
    out = []
    for key, op, thr, text in TARGETS:
        r = ratios.get(key)
        if r is None:
            out.append({"target": text, "key": key, "ratio": None, "met": None})
            continue
        v = r["median"]
        met = v >= thr if op == ">=" else v <= thr
        out.append({"target": text, "key": key, "ratio": v, "threshold": thr, "op": op, "met": met})
    return out


# ------------------------------------------------------------------------------- markdown
def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def figure_rows(figs: dict[str, dict[str, Any]], flagged: set[str]) -> list[str]:
    rows = ["| figure | value | unit | range (n) | note |", "|---|---:|---|---|---|"]
    for name, f in figs.items():
        nd = 0 if f["value"] >= 100 else (2 if f["value"] < 10 else 1)
        rng = ""
        if "min" in f and f.get("n", 1) > 1:
            rng = f"{fmt(f['min'], nd)} – {fmt(f['max'], nd)} ({f['n']})"
        note = []
        if f.get("contended"):
            note.append("contended")
        if name in flagged:
            note.append("**>10% worse than before**")
        rows.append(
            f"| {f['label']} | {fmt(f['value'], nd)} | {f['unit']} | {rng} | {', '.join(note)} |"
        )
    return rows


def section_markdown(mode: str, sec: dict[str, Any]) -> list[str]:
    meta = sec.get("meta", {})
    lines = [f"## {mode} ({meta.get('date', '?')})", ""]
    lines.append(
        f"{meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} CPUs, {meta.get('threads')} "
        f"threads; torch {meta.get('torch')}; data {meta.get('data')}; batch "
        f"{meta.get('batch_size')}, loader workers {meta.get('workers')}."
    )
    lines.append("")
    if "pairs" in sec:
        fc = sec.get("foreign_cores")
        load = f"mean {fc['mean']:.2f}, max {fc['max']:.2f} cores" if fc else "not logged"
        lines += [
            f"{sec['pairs']} A B pairs; {sec.get('steps_per_run')} training steps per run "
            f"({sec.get('warmup')} warm-up); {sec.get('eval_jets')} evaluation jets. "
            f"Other processes' load during the runs: {load}.",
            "",
        ]
    flagged = {r["figure"] for r in sec.get("regressions", [])}
    if "ratios" in sec:
        lines += [
            "| saltx / salt-ml | median | min | max | pairs | target | met |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        tmap = {t["key"]: t for t in sec.get("targets", [])}
        for key, r in sec["ratios"].items():
            t = tmap.get(key, {})
            thr = f"{t['op']} {t['threshold']}" if t.get("threshold") is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[t.get("met")]
            lines.append(
                f"| {r['label']} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} | "
                f"{r['n']} | {thr} | {met} |"
            )
        lines += ["", "### saltx", ""]
    lines += figure_rows(sec.get("figures", {}), flagged)
    if sec.get("salt_figures"):
        lines += ["", "### salt-ml (same files and settings)", ""]
        lines += figure_rows(sec["salt_figures"], set())
    if sec.get("regressions"):
        lines += ["", "Figures more than 10% worse than the previous results:", ""]
        for r in sec["regressions"]:
            lines.append(
                f"* `{r['figure']}`: {r['old']:.4g} -> {r['new']:.4g} ({r['change']:+.1%})"
            )
    if sec.get("failed"):
        lines += ["", f"Failed steps: {', '.join(sec['failed'])}"]
    if sec.get("skipped"):
        lines += ["", f"Skipped: {', '.join(sec['skipped'])}"]
    lines.append("")
    return lines


def write_results(out_dir: Path, mode: str, section: dict[str, Any]) -> dict[str, Any]:
    """Merge ``section`` into ``results.json`` (other modes kept); rewrite ``results.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            current = {}
    current[mode] = section
    path.write_text(json.dumps(current, indent=1) + "\n")
    md = [
        "# saltx benchmark results",
        "",
        "Written by `scripts/bench.py` (`make bench`, `make bench-peer`); see "
        "docs/performance.md for what each figure means.",
        "",
    ]
    for m in ("peer", "bench", "quick"):
        if m in current:
            md += section_markdown(m, current[m])
    (out_dir / "results.md").write_text("\n".join(md))
    return current


# ------------------------------------------------------------------------------- data
def ensure_data(data: Path | None, n_jets: int, quick: bool, runner: Runner) -> Path:
    """The benchmark data directory: ``data``, or a cached synthetic set (made if missing)."""
    if data is not None:
        missing = [
            f
            for f in ("train.h5", "val.h5", "test.h5", "norm_dict.yaml")
            if not (data / f).exists()
        ]
        if missing:
            raise SystemExit(f"--data {data} lacks {missing} (a saltx synthetic dataset has them)")
        return data
    n = 8000 if quick else n_jets
    cache = CACHE / f"synthetic_{n}"
    if not (cache / "class_dict.yaml").exists():
        print(f"writing {n} synthetic jets to {cache}", flush=True)
        m = runner.run(
            "synthetic",
            [sys.executable, "-m", "saltx.data.synthetic", "--out", cache, "--n-jets", n],
        )
        if not m.ok:
            raise SystemExit(f"could not write synthetic data to {cache} (see {m.log})")
    return cache


# ------------------------------------------------------------------------------- saltx parts
@dataclass
class Plan:
    """What one mode measures."""

    experiments: list[str]
    variants: list[tuple[bool, str]]  # (compile, precision)
    batch_size: int
    train_steps: int
    train_warmup: int
    eval_jets: int
    dl_batches: int = 40
    dl_reps: int = 3
    onnx_jets: int = 1000
    onnx_reps: int = 3
    main_experiment: str = "gn2"
    # bf16 has no fast kernels on CPUs without AVX512-BF16/AMX (about 10x slower than fp32
    # here), so its runs use a smaller batch and fewer steps (0 = same as fp32)
    bf16_batch_size: int = 0
    bf16_steps: int = 0


def plan_for(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            experiments=["demo"],
            variants=[(False, "32"), (True, "32")] if not args.no_compile else [(False, "32")],
            batch_size=250,
            train_steps=2,
            train_warmup=1,
            dl_batches=10,
            dl_reps=1,
            eval_jets=1000,
            onnx_jets=100,
            onnx_reps=1,
            main_experiment="demo",
        )
    variants = [(c, p) for c in (False, True) for p in ("32", "bf16")]
    if args.no_compile:
        variants = [v for v in variants if not v[0]]
    return Plan(
        experiments=["gn2", "demo"],
        variants=variants,
        batch_size=args.batch_size,
        train_steps=args.steps - args.warmup,
        train_warmup=args.warmup,
        eval_jets=args.eval_jets,
        bf16_batch_size=args.bf16_batch_size,
        bf16_steps=2,
    )


def saltx_dataloader(r: Runner, data: Path, bs: int, workers: int, batches: int, reps: int, tag=""):
    j = r.work / f"sx_dataloader_w{workers}{tag}.json"
    cmd = [sys.executable, SCRIPTS / "bench_dataloader.py", "--file", data / "train.h5"]
    cmd += ["--batch-size", bs, "--workers", workers, "--num-batches", batches, "--reps", reps]
    return r.run(f"sx_dataloader_w{workers}{tag}", [*cmd, "--json", j], j)


def saltx_train(
    r: Runner,
    data: Path,
    exp: str,
    compile_: bool,
    precision: str,
    plan: Plan,
    workers: int,
    tag: str = "",
) -> Measured:
    name = f"sx_train_{exp}_{'compiled' if compile_ else 'eager'}_{precision}{tag}"
    j = r.work / f"{name}.json"
    bs, steps, warmup = plan.batch_size, plan.train_steps, plan.train_warmup
    if precision == "bf16" and plan.bf16_batch_size:
        bs, steps, warmup = plan.bf16_batch_size, plan.bf16_steps, 1
    cmd = [sys.executable, SCRIPTS / "bench_train.py", "--experiment", exp]
    cmd += ["--file", data / "train.h5", "--batch-size", bs]
    cmd += ["--steps", steps, "--warmup", warmup, "--precision", precision]
    cmd += ["--num-workers", workers, "--accelerator", "cpu", "--json", j]
    if compile_:
        cmd.append("--compile")
    return r.run(name, cmd, j)


def make_run_dir(r: Runner, data: Path, exp: str, batch_size: int) -> Path | None:
    """A saltx run directory with a checkpoint (2 training steps) for eval and ONNX."""
    run_dir = r.work / f"run_{exp}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "saltx.train", f"+experiment={exp}", f"paths.data_dir={data}"]
    cmd += [f"paths.output_dir={run_dir}", f"data.batch_size={batch_size}", "trainer.max_steps=2"]
    cmd += ["data.num_val=200"]
    cmd += ["trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.progress_bar=false"]
    m = r.run(f"sx_make_run_{exp}", cmd)
    return run_dir if m.ok else None


def saltx_eval(r: Runner, run_dir: Path, data: Path, n: int, bs: int, tag: str = "") -> Measured:
    name = f"sx_eval{tag}"
    j = r.work / f"{name}.json"
    cmd = [sys.executable, SCRIPTS / "bench_eval.py", "--run-dir", run_dir]
    cmd += ["--test-file", data / "test.h5", "--num-test", n, "--batch-size", bs, "--json", j]
    return r.run(name, cmd, j)


def saltx_onnx(r: Runner, run_dir: Path, data: Path, njets: int, reps: int) -> Measured:
    j = r.work / "sx_onnx.json"
    cmd = [sys.executable, SCRIPTS / "bench_onnx.py", "--run-dir", run_dir, "--export"]
    cmd += ["--test-file", data / "test.h5", "--njets", njets, "--reps", reps]
    cmd += ["--threads", "2", "1", "--json", j]
    return r.run("sx_onnx", cmd, j)


def saltx_flops(r: Runner, data: Path, exp: str, bs: int, size: int = 2048) -> Measured:
    j = r.work / f"sx_flops_{exp}.json"
    cmd = [sys.executable, SCRIPTS / "flops.py", "--experiment", exp]
    cmd += ["--file", data / "train.h5", "--batch-size", bs, "--threads", r.threads]
    cmd += ["--size", size, "--json", j]
    return r.run(f"sx_flops_{exp}", cmd, j)


def flops_figures(figs: Figures, fl: Measured, train: dict[str, Measured], exp: str) -> None:
    """FLOPs per jet, the matmul peak, and the achieved GFLOP/s of each training variant."""
    if not fl.ok or "model" not in fl.data:
        return
    m, peak = fl.data["model"], fl.data["peak"]["gflops_best"]
    size, threads = fl.data["peak"]["size"], fl.data["peak"]["threads"]
    figs.add(
        "peak.mm_fp32_gflops",
        peak,
        "GFLOP/s",
        f"torch.mm {size}x{size} fp32 peak, {threads} threads",
        contended=contended(fl.foreign_cores, fl.load),
    )
    for k in ("train", "forward"):
        for kind in ("useful", "padded"):
            figs.add(
                f"flops.{exp}.{k}_{kind}_mflop_per_jet",
                m[f"{k}_{kind}_flops_per_jet"] / 1e6,
                "MFLOP/jet",
                f"{exp} {'training step' if k == 'train' else 'forward'} FLOPs, {kind}",
                better="none",
            )
    for variant, t in train.items():
        rate = t.data.get("jets_per_s") if t.ok else None
        if not rate:
            continue
        for kind in ("useful", "padded"):
            g = m[f"train_{kind}_flops_per_jet"] * rate / 1e9
            figs.add(
                f"achieved.{exp}.{variant}.{kind}_gflops",
                g,
                "GFLOP/s",
                f"{exp} {variant} training, {kind} GFLOP/s ({100 * g / peak:.0f}% of mm peak)",
                fraction_of_peak=g / peak,
            )


def add_measured(
    figs: Figures, name: str, value: float | None, unit: str, label: str, m: Measured
) -> None:
    """Add one figure of measurement ``m`` (lower is better for MB and s), flagged when
    its run was contended."""
    better = "lower" if unit in ("MB", "s") else "higher"
    figs.add(name, value, unit, label, better, contended=contended(m.foreign_cores, m.load))


def run_saltx_bench(args: argparse.Namespace, r: Runner, data: Path) -> dict[str, Any]:
    """``make bench`` / ``--quick``: every saltx figure once."""
    plan = plan_for(args)
    figs, failed = Figures(), []

    def run(m: Measured) -> Measured:
        if not m.ok:
            failed.append(m.name)
        return m

    for w in sorted({0, args.workers}):
        m = run(saltx_dataloader(r, data, plan.batch_size, w, plan.dl_batches, plan.dl_reps))
        label = f"data loading, {w} workers"
        add_measured(
            figs, f"dataloader.w{w}.jets_per_s", m.data.get("jets_per_s"), "jets/s", label, m
        )
    train: dict[str, dict[str, Measured]] = {}
    for exp in plan.experiments:
        for compile_, prec in plan.variants:
            m = run(saltx_train(r, data, exp, compile_, prec, plan, args.workers))
            variant = f"{'compiled' if compile_ else 'eager'}_{'fp32' if prec == '32' else prec}"
            train.setdefault(exp, {})[variant] = m
            label = f"{exp} training, {variant.replace('_', ' ')}"
            if prec == "bf16" and plan.bf16_batch_size:
                label += f" (batch {plan.bf16_batch_size})"
            key = f"train.{exp}.{variant}"
            add_measured(figs, f"{key}.jets_per_s", m.data.get("jets_per_s"), "jets/s", label, m)
            rss = m.peak_rss_mb if m.ok else None
            add_measured(figs, f"{key}.peak_rss_mb", rss, "MB", f"{label}, peak RSS", m)
    exp = plan.main_experiment
    run_dir = make_run_dir(r, data, exp, 100)
    if run_dir is None:
        failed.append(f"sx_make_run_{exp}")
    else:
        m = run(saltx_eval(r, run_dir, data, plan.eval_jets, plan.batch_size))
        label = f"{exp} evaluation (predictions h5)"
        add_measured(figs, f"eval.{exp}.jets_per_s", m.data.get("jets_per_s"), "jets/s", label, m)
        rss = m.peak_rss_mb if m.ok else None
        add_measured(figs, f"eval.{exp}.peak_rss_mb", rss, "MB", f"{label}, peak RSS", m)
        m = run(saltx_onnx(r, run_dir, data, plan.onnx_jets, plan.onnx_reps))
        for t, v in (m.data.get("jets_per_s") or {}).items():
            label = f"{exp} ONNX Runtime, 1 jet/call, {t} thread(s)"
            add_measured(figs, f"onnx.{exp}.t{t}.jets_per_s", v, "jets/s", label, m)
        label = f"{exp} ONNX export (incl. its check)"
        add_measured(figs, f"onnx.{exp}.export_s", m.data.get("export_s"), "s", label, m)
    for e in plan.experiments:
        fl = run(saltx_flops(r, data, e, plan.batch_size, 1024 if args.quick else 2048))
        flops_figures(figs, fl, train.get(e, {}), e)
    return {"figures": figs.items, "failed": failed, "plan": plan.__dict__}


# ------------------------------------------------------------------------------- peer
def salt_env(r: Runner, data: Path, warmup: int | None = None) -> dict[str, str]:
    env = r.env()
    for k in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(k, None)
    venv = ROOT / ".venv" / "bin"
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p != str(venv)
    )
    env.update(PEERS=str(PEERS), SALT_DATA=str(data), SALT_THREADS=str(r.threads))
    env.pop("SALT_TRAIN", None)
    if warmup is not None:
        env["SALT_BENCH_WARMUP"] = str(warmup)
    return env


def salt_bash(r: Runner, data: Path, script: str) -> list[str]:
    """``bash -c`` with the kit's env.sh sourced and the data paths set."""
    pre = f'source "{KIT}/env.sh" && salt_data_paths "$SALT_DATA" >/dev/null && '
    return ["bash", "-c", pre + script]


def steady(d: dict[str, Any] | None) -> float | None:
    """A StepTimer block's steady jets/s (all steps when there is no steady figure)."""
    if not d:
        return None
    return d.get("jets_per_s_steady") or d.get("jets_per_s_all")


def salt_train(
    r: Runner, data: Path, out: Path, steps: int, warmup: int, workers: int, bs: int
) -> Measured:
    env = salt_env(r, data, warmup=warmup)
    env["SALT_VAL_BATCHES"] = "2"
    cmd = ["bash", KIT / "run_train.sh", "full", out, steps]
    cmd += [f"--data.batch_size={bs}", f"--data.num_workers={workers}"]
    m = r.run(f"salt_fit_{out.name}", cmd, out / "train_steps.json", env=env)
    m.data = {"jets_per_s": steady(m.data.get("train")), "raw": m.data}
    return m


def salt_test(r: Runner, data: Path, out: Path, n: int) -> Measured:
    env = salt_env(r, data, warmup=1)
    m = r.run(
        f"salt_test_{out.name}", ["bash", KIT / "run_test.sh", out, n], out / "test_steps.json", env
    )
    m.data = {"jets_per_s": steady(m.data.get("test")), "raw": m.data}
    return m


def salt_config(out: Path) -> Path | None:
    return next(iter(sorted(out.glob("logs/*/config.yaml"))), None)


def salt_dataloader(
    r: Runner, data: Path, cfg: Path, workers: list[int], bs: int, tag: str
) -> Measured:
    j = r.work / f"salt_dataloader{tag}.json"
    w = " ".join(map(str, workers))
    script = (
        f'cd "{r.work}" && python "{KIT}/bench_dataloader.py" --config "{cfg}" --workers {w} '
        f'--batches 40 --reps 3 --batch-size {bs} --out "{j}"'
    )
    m = r.run(f"salt_dataloader{tag}", salt_bash(r, data, script), j, env=salt_env(r, data))
    summ = m.data.get("summary_jets_per_s_after_first") or {}
    m.data = {"jets_per_s": {k: v["median"] for k, v in summ.items()}, "raw": m.data}
    return m


def salt_onnx(r: Runner, data: Path, train_dir: Path, njets: int, reps: int) -> Measured:
    j = r.work / "salt_onnx.json"
    script = (
        f'cd "{r.work}" && python "{KIT}/bench_onnx.py" --train-dir "{train_dir}" '
        f'--test-file "$SALT_TEST" --njets {njets} --reps {reps} --threads 2 1 --out "{j}"'
    )
    m = r.run("salt_onnx", salt_bash(r, data, script), j, env=salt_env(r, data))
    ort = {str(x["intra_op_threads"]): x["median"] for x in m.data.get("ort", [])}
    m.data = {"jets_per_s": ort, "export_s": m.data.get("export_wall_s"), "raw": m.data}
    return m


def ratio_entry(label: str, a: Sequence[float | None], b: Sequence[float | None]) -> dict | None:
    """Pairwise ``a_i / b_i`` (pairs with a missing side are skipped)."""
    vals = [x / y for x, y in zip(a, b) if x is not None and y]
    s = stats(vals)
    if s is None:
        return None
    s["label"] = label
    return s


def run_peer(args: argparse.Namespace, r: Runner, data: Path) -> dict[str, Any]:
    """saltx vs salt-ml, A B A B, on the same files and settings."""
    if not (KIT / "run_train.sh").exists():
        raise SystemExit(f"salt-ml kit not found at {KIT} (set SALT_KIT)")
    if not (PEERS / "salt-venv" / "bin" / "activate").exists():
        raise SystemExit(f"no salt-ml venv at {PEERS}/salt-venv (run {KIT}/setup.sh; set PEERS)")
    bs, workers, steps, pairs = args.batch_size, args.workers, args.steps, args.pairs
    plan = Plan(
        experiments=["gn2"],
        variants=[(False, "32")],
        batch_size=bs,
        train_steps=steps - args.warmup,
        train_warmup=args.warmup,
        eval_jets=args.eval_jets,
        bf16_batch_size=args.bf16_batch_size,
        bf16_steps=2,
    )
    failed: list[str] = []
    skipped: list[str] = []
    t_start = time.perf_counter()
    if args.wait_idle > 0 and (KIT / "cpu_guard.py").exists():
        subprocess.run(
            [
                sys.executable,
                KIT / "cpu_guard.py",
                "wait",
                "--max-busy",
                "0.25",
                "--timeout",
                str(args.wait_idle),
            ],
            check=False,
        )
    sx: dict[str, list] = {k: [] for k in ("dl", "dl0", "train", "train_rss", "eval", "eval_rss")}
    sa: dict[str, list] = {k: [] for k in ("dl", "dl0", "train", "train_rss", "eval", "eval_rss")}
    fcs: dict[str, list] = {}  # "sx:train" -> foreign cores of each run

    def put(side: dict[str, list], key: str, value: float | None, m: Measured | None) -> None:
        side[key].append(value)
        tag = ("sx:" if side is sx else "sa:") + key
        fcs.setdefault(tag, []).append(None if m is None else m.foreign_cores)

    def note(tag: str) -> dict[str, Any]:
        fc = [x for x in fcs.get(tag, []) if x is not None]
        if not fc:
            return {}
        return {"contended": max(fc) > CONTENDED, "foreign_cores_max": round(max(fc), 3)}

    contention: list[float | None] = []

    def ok(m: Measured) -> Measured:
        if not m.ok:
            failed.append(m.name)
        contention.append(m.foreign_cores)
        return m

    run_dir = make_run_dir(r, data, "gn2", 100)
    if run_dir is None:
        failed.append("sx_make_run_gn2")
    salt_cfg: Path | None = None
    for i in range(1, pairs + 1):
        print(f"== pair {i}/{pairs}", flush=True)
        m = ok(saltx_train(r, data, "gn2", False, "32", plan, workers, tag=f"_{i}"))
        put(sx, "train", m.data.get("jets_per_s"), m)
        put(sx, "train_rss", m.peak_rss_mb if m.ok else None, m)
        out = r.work / f"full_{i}"
        m = ok(salt_train(r, data, out, steps, args.warmup, workers, bs))
        put(sa, "train", m.data.get("jets_per_s"), m)
        put(sa, "train_rss", m.peak_rss_mb if m.ok else None, m)
        salt_ok = m.ok
        salt_cfg = salt_cfg or salt_config(out)
        if run_dir is not None:
            m = ok(saltx_eval(r, run_dir, data, args.eval_jets, bs, tag=f"_{i}"))
            put(sx, "eval", m.data.get("jets_per_s"), m)
            put(sx, "eval_rss", m.peak_rss_mb if m.ok else None, m)
        if salt_ok:
            m = ok(salt_test(r, data, out, args.eval_jets))
            put(sa, "eval", m.data.get("jets_per_s"), m)
            put(sa, "eval_rss", m.peak_rss_mb if m.ok else None, m)
        else:
            put(sa, "eval", None, None)
            put(sa, "eval_rss", None, None)
        for w, key in ((workers, "dl"), (0, "dl0")):
            m = ok(saltx_dataloader(r, data, bs, w, 40, 3, tag=f"_{i}"))
            put(sx, key, m.data.get("jets_per_s"), m)
        if salt_cfg is not None:
            m = ok(salt_dataloader(r, data, salt_cfg, sorted({0, workers}), bs, f"_{i}"))
            put(sa, "dl", m.data["jets_per_s"].get(str(workers)), m)
            put(sa, "dl0", m.data["jets_per_s"].get("0"), m)
        else:
            put(sa, "dl", None, None)
            put(sa, "dl0", None, None)
    print("== once: saltx compiled training, FLOPs, ONNX", flush=True)
    compiled = None
    if not args.no_compile:
        compiled = ok(saltx_train(r, data, "gn2", True, "32", plan, workers))
    bf16 = ok(saltx_train(r, data, "gn2", True, "bf16", plan, workers)) if args.bf16 else None
    fl = ok(saltx_flops(r, data, "gn2", bs))
    sx_onnx = salt_onnx_m = None
    minutes = (time.perf_counter() - t_start) / 60
    if not args.no_onnx and minutes > args.budget_min - 4:
        print(f"skipping ONNX: {minutes:.1f} min used of the {args.budget_min} min budget")
        skipped.append("onnx (time budget)")
    elif not args.no_onnx:
        if run_dir is not None:
            sx_onnx = ok(saltx_onnx(r, run_dir, data, 1000, 3))
        if (r.work / "full_1" / "logs").exists():
            salt_onnx_m = ok(salt_onnx(r, data, r.work / "full_1", 1000, 3))

    figs, sfigs = Figures(), Figures()
    rows = [  # (key in sx/sa, figure, unit, label, better)
        ("dl", f"dataloader.w{workers}.jets_per_s", "jets/s", f"data loading, {workers} worker(s)"),
        ("dl0", "dataloader.w0.jets_per_s", "jets/s", "data loading, 0 workers"),
        ("train", "train.gn2.eager_fp32.jets_per_s", "jets/s", "GN2 training, eager fp32"),
        ("train_rss", "train.gn2.eager_fp32.peak_rss_mb", "MB", "GN2 training, peak RSS"),
        ("eval", "eval.gn2.jets_per_s", "jets/s", "GN2 evaluation (predictions h5)"),
        ("eval_rss", "eval.gn2.peak_rss_mb", "MB", "GN2 evaluation, peak RSS"),
    ]
    for key, name, unit, label in rows:
        better = "lower" if unit == "MB" else "higher"
        figs.add_stats(name, sx[key], unit, label, better, **note(f"sx:{key}"))
        sfigs.add_stats(name, sa[key], unit, label, better, **note(f"sa:{key}"))

    for variant, m in (("compiled_fp32", compiled), ("compiled_bf16", bf16)):
        if m is not None and m.ok:
            label, key = f"GN2 training, {variant.replace('_', ' ')}", f"train.gn2.{variant}"
            add_measured(figs, f"{key}.jets_per_s", m.data.get("jets_per_s"), "jets/s", label, m)
            add_measured(figs, f"{key}.peak_rss_mb", m.peak_rss_mb, "MB", f"{label}, peak RSS", m)
    for f, m in ((figs, sx_onnx), (sfigs, salt_onnx_m)):
        if m is None or not m.ok:
            continue
        for t, v in (m.data.get("jets_per_s") or {}).items():
            label = f"GN2 ONNX Runtime, 1 jet/call, {t} thread(s)"
            add_measured(f, f"onnx.gn2.t{t}.jets_per_s", v, "jets/s", label, m)
        label = "GN2 ONNX export (incl. its check)"
        add_measured(f, "onnx.gn2.export_s", m.data.get("export_s"), "s", label, m)
    eager = stats(sx["train"])
    eager_one = Measured("eager", 0, 0.0, 0.0, 0.0, 0.0, 0.0, "")
    eager_one.data = {"jets_per_s": eager["median"] if eager else None}
    train_for_flops = {"eager_fp32": eager_one, "compiled_fp32": compiled, "compiled_bf16": bf16}
    train_for_flops = {k: v for k, v in train_for_flops.items() if v is not None}
    flops_figures(figs, fl, train_for_flops, "gn2")

    ratios: dict[str, Any] = {}
    salt_train_med = (stats(sa["train"]) or {}).get("median")
    entries = [
        ("dataloader", f"data loading, {workers} worker", sx["dl"], sa["dl"]),
        ("dataloader_w0", "data loading, 0 workers", sx["dl0"], sa["dl0"]),
        ("train_gn2_eager", "GN2 training, eager fp32", sx["train"], sa["train"]),
        ("eval", "GN2 evaluation", sx["eval"], sa["eval"]),
        ("train_peak_rss", "training peak RSS", sx["train_rss"], sa["train_rss"]),
        ("eval_peak_rss", "evaluation peak RSS", sx["eval_rss"], sa["eval_rss"]),
    ]
    for key, label, a, b in entries:
        e = ratio_entry(label, a, b)
        if e is not None:
            ratios[key] = e
    for key, m, label in (
        ("train_gn2_compiled", compiled, "GN2 training, saltx compiled fp32 / salt eager"),
        ("train_gn2_compiled_bf16", bf16, "GN2 training, saltx compiled bf16 / salt eager"),
    ):
        if m is not None and m.ok and salt_train_med:
            e = ratio_entry(label, [m.data.get("jets_per_s")] * len(sa["train"]), sa["train"])
            if e is not None:
                ratios[key] = e
    if sx_onnx is not None and salt_onnx_m is not None and sx_onnx.ok and salt_onnx_m.ok:
        for t in ("2", "1"):
            a = sx_onnx.data.get("jets_per_s", {}).get(t)
            b = salt_onnx_m.data["jets_per_s"].get(t)
            e = ratio_entry(f"ONNX Runtime, {t} thread(s)", [a], [b])
            if e is not None:
                ratios[f"onnx_t{t}"] = e
    fc = [c for c in contention if c is not None]
    return {
        "figures": figs.items,
        "salt_figures": sfigs.items,
        "ratios": ratios,
        "targets": target_status(ratios),
        "failed": failed,
        "skipped": skipped,
        "pairs": pairs,
        "steps_per_run": steps,
        "warmup": args.warmup,
        "eval_jets": args.eval_jets,
        "foreign_cores": {"mean": round(statistics.mean(fc), 3), "max": round(max(fc), 3)}
        if fc
        else None,
        "raw": {"saltx": sx, "salt": sa},
    }


def print_peer(sec: dict[str, Any]) -> None:
    print("\nsaltx / salt-ml (pairs run A B A B on the same files):")
    tmap = {t["key"]: t for t in sec["targets"]}
    for key, r in sec["ratios"].items():
        t = tmap.get(key)
        tgt = ""
        if t and t.get("threshold") is not None:
            tgt = f"   target {t['op']} {t['threshold']}: {'met' if t['met'] else 'NOT met'}"
        print(
            f"  {r['label']:<50} median {r['median']:6.2f}  [min {r['min']:.2f}, "
            f"max {r['max']:.2f}, n {r['n']}]{tgt}"
        )
    if sec.get("foreign_cores"):
        f = sec["foreign_cores"]
        print(
            f"  other processes' load during the runs: mean {f['mean']:.2f}, "
            f"max {f['max']:.2f} cores"
        )


# ------------------------------------------------------------------------------- main
def meta(args: argparse.Namespace, data: Path, work: Path, mode: str) -> dict[str, Any]:
    import importlib.metadata as md

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    versions = {}
    for pkg in ("torch", "onnxruntime", "h5py", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "host": platform.node(),
        "cpu_model": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "batch_size": 250 if args.quick else args.batch_size,
        "workers": args.workers,
        "python": platform.python_version(),
        **versions,
        "data": str(data),
        "work_dir": str(work),
        "load_average_start": list(os.getloadavg()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="data dir (train/val/test.h5, norm/class dicts)")
    p.add_argument("--n-jets", type=int, default=200_000, help="synthetic jets without --data")
    p.add_argument("--quick", action="store_true", help="short functional run (~2-3 min)")
    p.add_argument("--peer", action="store_true", help="compare with salt-ml (A B A B)")
    p.add_argument("--pairs", type=int, default=3, help="A B pairs with --peer")
    p.add_argument("--steps", type=int, default=7, help="train steps per run (incl. warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    p.add_argument("--eval-jets", type=int, default=5000, help="jets per evaluation run")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="loader worker processes")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--no-compile", action="store_true", help="skip compiled training")
    p.add_argument("--bf16", action="store_true", help="with --peer: also compiled bf16")
    p.add_argument("--bf16-batch-size", type=int, default=250, help="bf16 runs on CPU (0: as fp32)")
    p.add_argument("--no-onnx", action="store_true", help="with --peer: skip ONNX")
    p.add_argument(
        "--budget-min", type=float, default=20, help="--peer: skip ONNX past this minus 4 min"
    )
    p.add_argument("--wait-idle", type=float, default=0, help="--peer: wait up to S s for idle")
    p.add_argument("--out", type=Path, help="results dir (default bench/, quick: cache)")
    p.add_argument("--work", type=Path, help="logs and run dirs (default: cache/runs/<time>)")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error("--steps must be larger than --warmup")
    if args.peer and args.quick:
        p.error("--peer and --quick do not go together (use --pairs 1 --steps 3 to try --peer)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "peer" if args.peer else ("quick" if args.quick else "bench")
    out = args.out or (CACHE / "quick" if args.quick else ROOT / "bench")
    work = args.work or CACHE / "runs" / f"{mode}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    monitor = Monitor(work / "foreign_cpu.log")
    runner = Runner(work, args.threads, monitor)
    t0 = time.perf_counter()
    try:
        data = args.data
        if data is None and args.peer and (PEERS / "sx_data" / "train.h5").exists():
            data = PEERS / "sx_data"
        data = ensure_data(data, args.n_jets, args.quick, runner)
        info = meta(args, data, work, mode)
        print(f"saltx bench ({mode}): data {data}, work dir {work}", flush=True)
        sec = run_peer(args, runner, data) if args.peer else run_saltx_bench(args, runner, data)
    finally:
        monitor.stop()
    sec["meta"] = {**info, "wall_s": round(time.perf_counter() - t0, 1)}
    sec["meta"]["load_average_end"] = list(os.getloadavg())
    sec["runs"] = runner.records
    prev = previous_results(out).get(mode, {})
    sec["regressions"] = compare(sec["figures"], prev.get("figures"))
    if args.peer:
        sec["regressions"] += [
            {**x, "figure": "salt:" + x["figure"]}
            for x in compare(sec.get("salt_figures", {}), prev.get("salt_figures"))
        ]
    write_results(out, mode, sec)
    print()
    print("\n".join(figure_rows(sec["figures"], {x["figure"] for x in sec["regressions"]})))
    if args.peer:
        print_peer(sec)
    for x in sec["regressions"]:
        print(f"WORSE by >10%: {x['figure']}: {x['old']:.4g} -> {x['new']:.4g}")
    if sec["failed"]:
        print(f"FAILED: {', '.join(sec['failed'])} (logs in {work})")
    print(f"-> {out / 'results.json'}, {out / 'results.md'} ({sec['meta']['wall_s']:.0f} s)")
    return 1 if sec["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
