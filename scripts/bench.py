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
sides (with the ceiling of its ratio: ``bench_onnx.py --floor``), and the FLOP count.

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
    ("dataloader", ">=", 3.0, "data loading >= 3x salt-ml (saltx: the packed file)"),
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


def ratio_rows(sec: dict[str, Any]) -> list[str]:
    """The saltx/salt-ml ratio table with the targets (markdown)."""
    lines = [
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
    return lines


def run_line(sec: dict[str, Any]) -> str:
    """Date, commit, machine and settings of a section's run."""
    meta = sec.get("meta", {})
    return (
        f"{meta.get('date', '?')}, commit `{meta.get('commit')}`; {meta.get('cpu_model', '?')}, "
        f"{meta.get('cpus', '?')} CPUs, {meta.get('threads')} threads; torch "
        f"{meta.get('torch')}; data {meta.get('data')}; batch {meta.get('batch_size')}, loader "
        f"workers {meta.get('workers')}; {meta.get('wall_s')} s."
    )


def profile_rows(profile: dict[str, Any], top: int = 12) -> list[str]:
    """A training step's operators by share of self CPU time (markdown)."""
    lines = [
        f"Profile of {profile['steps']} step(s), {profile['wall_s_per_step']:.2f} s per step "
        "(torch.profiler, self CPU time of each operator):",
        "",
        "| operator | share of step time | ms per step | calls per step |",
        "|---|---:|---:|---:|",
    ]
    for r in profile["ops"][:top]:
        lines.append(
            f"| `{r['op']}` | {100 * r['share']:.1f}% | {r['self_ms_per_step']:,.1f} | "
            f"{r['calls_per_step']:,.0f} |"
        )
    return lines


def loader_profile_rows(profile: dict[str, Any], top: int = 8) -> list[str]:
    """Where a batch's loading time goes (cProfile self time, markdown)."""
    lines = [
        f"{profile['ms_per_batch']:.1f} ms per batch of 1000 (cProfile, {profile['batches']} "
        "batches, one process):",
        "",
        "| function | ms per batch | share |",
        "|---|---:|---:|",
    ]
    for r in profile["functions"][:top]:
        lines.append(f"| `{r['function']}` | {r['ms_per_batch']:.2f} | {100 * r['share']:.0f}% |")
    return lines


def section_markdown(mode: str, sec: dict[str, Any]) -> list[str]:
    lines = [f"## {mode}", "", run_line(sec), ""]
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
    if "contention" in sec:
        lines += [
            f"GN2 training, {sec.get('steps_per_run')} steps per run ({sec.get('warmup')} "
            "warm-up), next to K background processes: busy loops, or 2-thread torch jobs "
            "doing small matrix products. Fair share = idle jets/s / (1 + K). saltx's "
            f"extra environment: {sec.get('saltx_env') or 'none (its defaults)'}.",
            "",
            *contention_rows(sec),
            "",
        ]
    if "ratios" in sec:
        lines += [*ratio_rows(sec), "", "### saltx", ""]
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


DOCS = ROOT / "docs" / "performance.md"


def doc_block(mode: str, sec: dict[str, Any]) -> list[str]:
    """What docs/performance.md shows of a mode's results (between its markers)."""
    lines = [f"Generated by `scripts/bench.py` from `bench/results.json` ({mode}):", ""]
    lines += [run_line(sec), ""]
    if sec.get("failed"):
        lines += [f"**Failed steps**: {', '.join(sec['failed'])}.", ""]
    if mode.startswith("contention"):
        env = sec.get("saltx_env") or {}
        lines += [
            f"saltx's extra environment: {env or 'none (its defaults)'}; "
            f"{sec.get('steps_per_run')} steps per run ({sec.get('warmup')} warm-up).",
            "",
            *contention_rows(sec),
            "",
        ]
        if sec.get("slowdown"):
            lines += [*slowdown_rows(sec["slowdown"]), ""]
        return lines
    if "ratios" in sec:
        fc = sec.get("foreign_cores")
        load = f"mean {fc['mean']:.2f}, max {fc['max']:.2f} cores" if fc else "not logged"
        lines += [
            f"{sec['pairs']} A B pairs; other processes' load during the runs: {load}.",
            "",
            *ratio_rows(sec),
            "",
        ]
    figs = sec.get("figures", {})
    keys = [k for k in figs if k.startswith(("pack.", "achieved.", "peak.", "flops."))]
    if mode != "peer":
        keys = list(figs)
    lines += figure_rows({k: figs[k] for k in keys}, set())
    lines.append("")
    for name, prof in (sec.get("loader_profiles") or {}).items():
        lines += [
            f"Data loading, {name}: " + loader_profile_rows(prof)[0],
            *loader_profile_rows(prof)[1:],
            "",
        ]
    if sec.get("profile"):
        lines += ["GN2 eager fp32 training. " + profile_rows(sec["profile"])[0]]
        lines += [*profile_rows(sec["profile"])[1:], ""]
    return lines


def update_docs(current: dict[str, Any], path: Path = DOCS) -> bool:
    """Rewrite the blocks ``<!-- bench:MODE -->`` ... ``<!-- /bench:MODE -->`` of
    docs/performance.md from the results; True if the file changed."""
    if not path.exists():
        return False
    text = path.read_text()
    new = text
    for mode, sec in current.items():
        start, end = f"<!-- bench:{mode} -->", f"<!-- /bench:{mode} -->"
        if start not in new or end not in new:
            continue
        head, rest = new.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + start + "\n" + "\n".join(doc_block(mode, sec)) + "\n" + end + tail
    if new != text:
        path.write_text(new)
    return new != text


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
    for m in ("peer", "bench", "contention", "contention-env", "quick"):
        if m in current:
            md += section_markdown(m, current[m])
    (out_dir / "results.md").write_text("\n".join(md))
    if out_dir.resolve() == (ROOT / "bench").resolve():
        update_docs(current)
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
    peak_size: int = 2048  # torch.mm size of the peak each fp32 training run measures
    profile_steps: int = 0  # steps of the main experiment's eager fp32 run to profile


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
            peak_size=1024,
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
        profile_steps=2,
    )


def saltx_dataloader(
    r: Runner,
    data: Path,
    bs: int,
    workers: int,
    batches: int,
    reps: int,
    tag: str = "",
    file: Path | None = None,
    profile: int = 0,
) -> Measured:
    """``bench_dataloader.py`` on ``file`` (default ``data/train.h5``); ``profile``: then
    that many batches under cProfile."""
    name = f"sx_dataloader{'_packed' if file else ''}_w{workers}{tag}"
    j = r.work / f"{name}.json"
    cmd = [sys.executable, SCRIPTS / "bench_dataloader.py", "--file", file or data / "train.h5"]
    cmd += ["--batch-size", bs, "--workers", workers, "--num-batches", batches, "--reps", reps]
    if profile:
        cmd += ["--profile", profile]
    return r.run(name, [*cmd, "--json", j], j)


def salt_loader_profile(r: Runner, data: Path, cfg: Path, batches: int = 100) -> Measured:
    """``profile_salt_loader.py`` in the salt-ml venv: where its batches' time goes."""
    j = r.work / "salt_loader_profile.json"
    script = (
        f'cd "{r.work}" && python "{SCRIPTS}/profile_salt_loader.py" --config "{cfg}" '
        f'--batches {batches} --json "{j}"'
    )
    return r.run("salt_loader_profile", salt_bash(r, data, script), j, env=salt_env(r, data))


def pack_train_file(r: Runner, data: Path) -> tuple[Path | None, Measured]:
    """``python -m saltx.data.pack`` of ``data/train.h5`` with GN2's variables and labels
    (what ``bench_dataloader.py`` reads), into the work dir; the one-time cost is timed."""
    out = r.work / "packed" / "train.h5"
    if out.exists():
        out.unlink()
    j = r.work / "pack.json"
    cmd = [sys.executable, "-m", "saltx.data.pack", data / "train.h5", out, "+experiment=gn2"]
    m = r.run("sx_pack_train", [*cmd, "--json", j], j)
    return (out if m.ok else None), m


def pack_figures(figs: Figures, m: Measured) -> None:
    """The packing's one-time cost and sizes."""
    if not m.ok:
        return
    d = m.data
    add_measured(
        figs, "pack.train.seconds", d.get("seconds"), "s", "packing train.h5 (one-time)", m
    )
    add_measured(figs, "pack.train.command_s", m.wall_s, "s", "packing train.h5, whole command", m)
    figs.add("pack.train.mib_in", d["bytes_in"] / 2**20, "MiB", "train.h5 stored (read) size",
             better="none")  # fmt: skip
    figs.add("pack.train.mib_out", d["bytes_out"] / 2**20, "MiB", "packed train.h5 size",
             better="none")  # fmt: skip


def saltx_train(
    r: Runner,
    data: Path,
    exp: str,
    compile_: bool,
    precision: str,
    plan: Plan,
    workers: int,
    tag: str = "",
    profile: int = 0,
    extra_env: dict[str, str] | None = None,
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
    if precision == "32" and plan.peak_size:
        cmd += ["--peak", plan.peak_size]  # MFU against a peak measured in the same run
    if profile:
        cmd += ["--profile", profile]
    return r.run(name, cmd, j, env=r.env(extra_env) if extra_env else None)


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


def saltx_onnx(
    r: Runner,
    run_dir: Path,
    data: Path,
    njets: int,
    reps: int,
    peer: Path | None = None,
    peer_aux: Path | None = None,
    pairs: int = 3,
) -> Measured:
    """``bench_onnx.py --export`` (plain and aux graphs exported and timed); with salt-ml's
    graphs, interleaved A B pairs in one process (``variants.<v>.ort[*].ratio``)."""
    j = r.work / "sx_onnx.json"
    cmd = [sys.executable, SCRIPTS / "bench_onnx.py", "--run-dir", run_dir, "--export"]
    cmd += ["--test-file", data / "test.h5", "--njets", njets, "--reps", reps]
    cmd += ["--threads", "2", "1", "--json", j]
    if peer is not None:
        cmd += ["--peer", peer, "--pairs", pairs, "--floor"]
    if peer_aux is not None:
        cmd += ["--peer-aux", peer_aux]
    return r.run("sx_onnx", cmd, j)


def onnx_ratios(m: Measured) -> dict[str, dict[str, Any]]:
    """saltx/salt-ml ONNX Runtime ratios per variant and thread count (A B pairs)."""
    out = {}
    for variant, entry in (m.data.get("variants") or {}).items():
        for res in entry.get("ort", []):
            ratio = res.get("ratio")
            if ratio:
                e = stats(ratio["values"])
                e["label"] = f"ONNX Runtime, {variant} graph, {res['threads']} thread(s)"
                out[f"onnx_{variant}_t{res['threads']}"] = e
            ceiling = res.get("ceiling")  # saltx's weight products alone / salt-ml's graph
            if ceiling:
                e = stats(ceiling["values"])
                e["label"] = (
                    f"ONNX Runtime, {variant} graph, {res['threads']} thread(s): ceiling "
                    "(saltx's weight products alone / salt-ml)"
                )
                out[f"onnx_{variant}_t{res['threads']}_ceiling"] = e
    return out


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
        f"peak.{exp}.flops_run.mm_fp32_gflops",
        peak,
        "GFLOP/s",
        f"torch.mm {size}x{size} fp32 peak, {threads} threads (in {exp}'s FLOP count run)",
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
        own = t.data.get("peak_gflops")  # measured by the training run itself, after its steps
        ref = own or peak
        if own:
            figs.add(
                f"peak.{exp}.{variant}.mm_fp32_gflops",
                own,
                "GFLOP/s",
                f"torch.mm fp32 peak in {exp} {variant}'s run (its MFU reference)",
                contended=contended(t.foreign_cores, t.load),
            )
        where = "its own run's" if own else "the FLOP run's"
        for kind in ("useful", "padded"):
            g = m[f"train_{kind}_flops_per_jet"] * rate / 1e9
            figs.add(
                f"achieved.{exp}.{variant}.{kind}_gflops",
                g,
                "GFLOP/s",
                f"{exp} {variant} training, {kind} GFLOP/s ({100 * g / ref:.0f}% of {where} "
                "mm peak)",
                fraction_of_peak=g / ref,
                peak_gflops=ref,
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

    packed, pm = pack_train_file(r, data)
    run(pm)
    pack_figures(figs, pm)
    loader_profiles = {}
    for w in sorted({0, args.workers}):
        prof = 0 if w else 100
        m = run(
            saltx_dataloader(
                r, data, plan.batch_size, w, plan.dl_batches, plan.dl_reps, profile=prof
            )
        )
        if m.data.get("profile"):
            loader_profiles["original file"] = m.data["profile"]
        label = f"data loading, {w} workers"
        add_measured(
            figs, f"dataloader.w{w}.jets_per_s", m.data.get("jets_per_s"), "jets/s", label, m
        )
        if packed is not None:
            m = run(
                saltx_dataloader(
                    r,
                    data,
                    plan.batch_size,
                    w,
                    plan.dl_batches,
                    plan.dl_reps,
                    file=packed,
                    profile=prof,
                )
            )
            if m.data.get("profile"):
                loader_profiles["packed file"] = m.data["profile"]
            label = f"data loading, packed file, {w} workers"
            rate = m.data.get("jets_per_s")
            add_measured(figs, f"dataloader.packed.w{w}.jets_per_s", rate, "jets/s", label, m)
    train: dict[str, dict[str, Measured]] = {}
    profile = None
    for exp in plan.experiments:
        for compile_, prec in plan.variants:
            prof = plan.profile_steps if (exp, compile_, prec) == ("gn2", False, "32") else 0
            m = run(saltx_train(r, data, exp, compile_, prec, plan, args.workers, profile=prof))
            if prof and m.ok:
                profile = m.data.get("profile")
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
    return {
        "figures": figs.items,
        "failed": failed,
        "plan": plan.__dict__,
        "profile": profile,
        "loader_profiles": loader_profiles,
    }


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


def salt_onnx_graphs(r: Runner, data: Path, train_dir: Path) -> tuple[Path | None, Path | None]:
    """salt-ml's plain graph (written by the kit's ``bench_onnx.py``) and an aux graph
    (``to_onnx --tasks`` with track origin and vertexing), copied into the work dir."""
    plain = next(iter(sorted(train_dir.glob("logs/*/network.onnx"))), None)
    ckpt = next(iter(sorted(train_dir.glob("logs/*/ckpts/*.ckpt"))), None)
    if plain is None or ckpt is None:
        return None, None
    keep = r.work / "salt_network.onnx"
    shutil.copyfile(plain, keep)
    aux = r.work / "salt_network_aux.onnx"
    tasks = "jets_classification track_origin track_vertexing"
    script = (
        f'cd "{train_dir}" && to_onnx --ckpt_path="{ckpt}" --track_selection=dipsLoose202102 '
        f"--force --overwrite --tasks {tasks}"
    )
    m = r.run("salt_onnx_aux_export", salt_bash(r, data, script), env=salt_env(r, data))
    if m.ok and plain.exists():
        shutil.copyfile(plain, aux)
    shutil.copyfile(keep, plain)  # the plain graph back where the kit wrote it
    return keep, (aux if m.ok else None)


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
    keys = ("dl", "dl0", "dlp", "dlp0", "train", "train_rss", "eval", "eval_rss", "peak")
    sx: dict[str, list] = {k: [] for k in keys}
    sa: dict[str, list] = {k: [] for k in keys}
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
    packed, pack_m = pack_train_file(r, data)  # the one-time conversion, timed
    ok(pack_m)
    loader_profiles: dict[str, Any] = {}
    salt_cfg: Path | None = None
    for i in range(1, pairs + 1):
        print(f"== pair {i}/{pairs}", flush=True)
        m = ok(saltx_train(r, data, "gn2", False, "32", plan, workers, tag=f"_{i}"))
        put(sx, "train", m.data.get("jets_per_s"), m)
        put(sx, "peak", m.data.get("peak_gflops"), m)
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
            prof = 100 if i == 1 and w == 0 else 0  # where the time goes, once
            m = ok(saltx_dataloader(r, data, bs, w, 40, 3, tag=f"_{i}", profile=prof))
            put(sx, key, m.data.get("jets_per_s"), m)
            if m.data.get("profile"):
                loader_profiles["saltx, original file"] = m.data["profile"]
            if packed is not None:
                m = ok(saltx_dataloader(r, data, bs, w, 40, 3, f"_{i}", packed, prof))
                put(sx, key.replace("dl", "dlp"), m.data.get("jets_per_s"), m)
                if m.data.get("profile"):
                    loader_profiles["saltx, packed file"] = m.data["profile"]
        if salt_cfg is not None:
            m = ok(salt_dataloader(r, data, salt_cfg, sorted({0, workers}), bs, f"_{i}"))
            put(sa, "dl", m.data["jets_per_s"].get(str(workers)), m)
            put(sa, "dl0", m.data["jets_per_s"].get("0"), m)
        else:
            put(sa, "dl", None, None)
            put(sa, "dl0", None, None)
    print("== once: salt-ml loader profile, saltx compiled training, FLOPs, ONNX", flush=True)
    if salt_cfg is not None:
        m = ok(salt_loader_profile(r, data, salt_cfg))
        if m.ok:
            loader_profiles["salt-ml, original file"] = m.data
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
        salt_plain = salt_aux = None
        if (r.work / "full_1" / "logs").exists():  # first: it exports salt-ml's graph
            salt_onnx_m = ok(salt_onnx(r, data, r.work / "full_1", 1000, 3))
            if salt_onnx_m.ok:
                salt_plain, salt_aux = salt_onnx_graphs(r, data, r.work / "full_1")
        if run_dir is not None:
            sx_onnx = ok(saltx_onnx(r, run_dir, data, 1000, 3, salt_plain, salt_aux, pairs))

    figs, sfigs = Figures(), Figures()
    pack_figures(figs, pack_m)
    rows = [  # (key in sx/sa, figure, unit, label, better)
        ("dl", f"dataloader.w{workers}.jets_per_s", "jets/s", f"data loading, {workers} worker(s)"),
        ("dl0", "dataloader.w0.jets_per_s", "jets/s", "data loading, 0 workers"),
        (
            "dlp",
            f"dataloader.packed.w{workers}.jets_per_s",
            "jets/s",
            f"data loading, packed file, {workers} worker(s)",
        ),
        (
            "dlp0",
            "dataloader.packed.w0.jets_per_s",
            "jets/s",
            "data loading, packed file, 0 workers",
        ),
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
    peaks = stats(sx["peak"])  # each eager run timed torch.mm after its steps
    eager_one.data = {
        "jets_per_s": eager["median"] if eager else None,
        "peak_gflops": peaks["median"] if peaks else None,
    }
    train_for_flops = {"eager_fp32": eager_one, "compiled_fp32": compiled, "compiled_bf16": bf16}
    train_for_flops = {k: v for k, v in train_for_flops.items() if v is not None}
    flops_figures(figs, fl, train_for_flops, "gn2")

    ratios: dict[str, Any] = {}
    salt_train_med = (stats(sa["train"]) or {}).get("median")
    entries = [
        ("dataloader", f"data loading, packed file, {workers} worker", sx["dlp"], sa["dl"]),
        ("dataloader_w0", "data loading, packed file, 0 workers", sx["dlp0"], sa["dl0"]),
        (
            "dataloader_original",
            f"data loading, original file, {workers} worker",
            sx["dl"],
            sa["dl"],
        ),
        ("dataloader_original_w0", "data loading, original file, 0 workers", sx["dl0"], sa["dl0"]),
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
    if sx_onnx is not None and sx_onnx.ok:
        ratios.update(onnx_ratios(sx_onnx))  # interleaved pairs in one process
        for variant, entry in (sx_onnx.data.get("variants") or {}).items():
            for res in entry.get("ort", []):
                if "salt" in res:
                    label = (
                        f"GN2 ONNX Runtime, {variant} graph, 1 jet/call, {res['threads']} thread(s)"
                    )
                    key = f"onnx.gn2.{variant}.t{res['threads']}.jets_per_s"
                    add_measured(sfigs, key, res["salt"]["median"], "jets/s", label, sx_onnx)
                    add_measured(figs, key, res["saltx"]["median"], "jets/s", label, sx_onnx)
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
        "loader_profiles": loader_profiles,
    }


# ------------------------------------------------------------------------------- contention
class Background:
    """``k`` background loads of one kind (``bench_background.py``) while a block runs.

    ``busy``: plain busy loops (one core each); ``torch``: 2-thread torch jobs doing small
    matrix products, with torch's own OpenMP settings (saltx's defaults removed from their
    environment: they stand for someone else's job). Their throughput (ops/s, from their
    logs) is kept, so one can see whether saltx also leaves them their share.
    """

    def __init__(self, r: Runner, kind: str, k: int, tag: str, threads: int = 2) -> None:
        self.r, self.kind, self.k, self.tag, self.threads = r, kind, k, tag, threads
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def __enter__(self) -> Background:
        env = self.r.env({"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": "1"})
        for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            env.pop(key, None)
        for i in range(self.k):
            log = self.r.work / f"background_{self.tag}_{i}.log"
            cmd = [sys.executable, SCRIPTS / "bench_background.py", self.kind]
            cmd += ["--threads", str(self.threads)]
            with log.open("w") as fo:
                self.procs.append(
                    subprocess.Popen(list(map(str, cmd)), stdout=fo, stderr=fo, env=env)
                )
            self.logs.append(log)
        if self.procs:
            time.sleep(3)  # started and spinning
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def ops_per_s(self) -> float | None:
        """Mean ops/s of the torch jobs over their logged 5 s windows (None for busy loops)."""
        rates = []
        for log in self.logs:
            for line in log.read_text().splitlines():
                if line.endswith(" ops/s"):
                    rates.append(float(line.split()[0]))
        return statistics.mean(rates) if rates else None


def run_contention(args: argparse.Namespace, r: Runner, data: Path) -> dict[str, Any]:
    """GN2 training next to K background loads (busy loops, 2-thread torch jobs).

    For each condition (idle, then each load kind and K), ``--pairs`` times: saltx's
    training, then with ``--peer`` salt-ml's, under the same load. Figures: jets/s (median
    over the pairs), the fraction of the idle rate, the fraction of the fair share
    (``idle / (1 + K)``), and saltx/salt-ml (median of the pairs' ratios). The threads
    saltx's steps ran on are kept (``trainer.adapt_threads`` lowers them under load).
    """
    plan = Plan(
        experiments=["gn2"],
        variants=[(False, "32")],
        batch_size=args.batch_size,
        train_steps=args.steps - args.warmup,
        train_warmup=args.warmup,
        eval_jets=0,
        peak_size=0,
    )
    conditions = [("none", 0)] + [(kind, k) for kind in args.loads for k in args.k]
    saltx_env = dict(x.split("=", 1) for x in args.saltx_env or [])
    rows, failed = [], []
    figs, sfigs = Figures(), Figures()
    for kind, k in conditions:
        tag = f"{kind}{k}" if k else "idle"
        print(f"== {tag}: GN2 training next to {k} background {kind} load(s)", flush=True)
        row: dict[str, Any] = {"load": kind, "k": k}
        for key in ("saltx_runs", "saltx_threads", "salt_runs", "pair_ratios"):
            row[key] = []
        for side in ("saltx", "salt"):
            row[f"background_ops_per_s_{side}"] = []
        for pair in range(args.pairs):  # A B pairs under the same load
            with Background(r, kind, k, f"sx_{tag}_{pair}") as bg:
                m = saltx_train(
                    r,
                    data,
                    "gn2",
                    False,
                    "32",
                    plan,
                    args.workers,
                    f"_{tag}_{pair}",
                    args.profile_steps if pair == 0 else 0,
                    saltx_env,
                )
            sx = m.data.get("jets_per_s") if m.ok else None
            row["saltx_runs"].append(sx)
            row["saltx_threads"].append(m.data.get("threads_per_step"))  # adapt_threads
            row["background_ops_per_s_saltx"].append(bg.ops_per_s())
            if pair == 0:
                row["profile"] = m.data.get("profile")
            if not m.ok:
                failed.append(m.name)
            if args.peer:
                out = r.work / f"salt_{tag}_{pair}"
                with Background(r, kind, k, f"salt_{tag}_{pair}") as bg:
                    m = salt_train(
                        r, data, out, args.steps, args.warmup, args.workers, args.batch_size
                    )
                sa = m.data.get("jets_per_s") if m.ok else None
                row["salt_runs"].append(sa)
                row["background_ops_per_s_salt"].append(bg.ops_per_s())
                if sx and sa:
                    row["pair_ratios"].append(sx / sa)
                if not m.ok:
                    failed.append(m.name)
        for side in ("saltx", "salt"):
            done = [v for v in row[f"{side}_runs"] if v]
            row[side] = statistics.median(done) if done else None
        if row["pair_ratios"]:
            row["ratio"] = statistics.median(row["pair_ratios"])
        rows.append(row)
    idle = rows[0]
    targets = []
    for row in rows:
        k, tag = row["k"], f"{row['load']}{row['k']}" if row["k"] else "idle"
        for side, f in (("saltx", figs), ("salt", sfigs)):
            v, base = row.get(side), idle.get(side)
            if v is None:
                continue
            label = f"GN2 training next to {k} {row['load']} load(s)" if k else "GN2 training, idle"
            f.add(f"contention.{tag}.jets_per_s", v, "jets/s", label)
            if base:
                row[f"{side}_of_idle"] = v / base
                row[f"{side}_of_fair_share"] = v / (base / (1 + k))
        if k:
            fair, ratio = row.get("saltx_of_fair_share"), row.get("ratio")
            targets.append(
                {
                    "target": f"next to {k} {row['load']} load(s): >= 0.5 of fair share, "
                    ">= 3x salt-ml",
                    "fair_share": fair,
                    "ratio": ratio,
                    "met": None
                    if fair is None or (args.peer and ratio is None)
                    else fair >= 0.5 and (not args.peer or ratio >= 3.0),
                }
            )
    return {
        "figures": figs.items,
        "salt_figures": sfigs.items,
        "contention": rows,
        "contention_targets": targets,
        "slowdown": slowdown(rows),
        "failed": failed,
        "steps_per_run": args.steps,
        "warmup": args.warmup,
        "saltx_env": saltx_env,  # e.g. OMP_WAIT_POLICY= (libgomp's default) to compare
    }


def slowdown(rows: list[dict[str, Any]], top: int = 12) -> list[dict[str, Any]]:
    """Per operator: ms per step idle and under each load (saltx's profiles)."""
    idle = {r["op"]: r["self_ms_per_step"] for r in (rows[0].get("profile") or {}).get("ops", [])}
    if not idle:
        return []
    out = []
    for op in sorted(idle, key=lambda o: -idle[o])[:top]:
        entry = {"op": op, "idle": idle[op]}
        for row in rows[1:]:
            ops = {
                r["op"]: r["self_ms_per_step"] for r in (row.get("profile") or {}).get("ops", [])
            }
            entry[f"{row['load']}{row['k']}"] = ops.get(op)
        out.append(entry)
    return out


def slowdown_rows(table: list[dict[str, Any]]) -> list[str]:
    """Which operators contention slows down (markdown): ms per step and factor vs idle."""
    cols = [k for k in table[0] if k not in ("op", "idle")]
    lines = [
        "saltx's operators, self CPU ms per step idle and under each load (× idle):",
        "",
        "| operator | idle | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for e in table:
        cells = []
        for c in cols:
            v = e.get(c)
            cells.append("" if v is None else f"{v:,.0f} ({v / e['idle']:.1f}×)")
        lines.append(f"| `{e['op']}` | {e['idle']:,.0f} | " + " | ".join(cells) + " |")
    return lines


def contention_rows(sec: dict[str, Any]) -> list[str]:
    """The contention table (markdown)."""
    out = [
        "| background load | saltx jets/s | of idle | of fair share | saltx threads per step "
        "| salt-ml jets/s | of idle | of fair share | saltx / salt-ml |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in sec["contention"]:
        load = f"{row['k']} × {row['load']}" if row["k"] else "none"

        def pct(key: str, row: dict[str, Any] = row) -> str:
            return "" if row.get(key) is None else f"{row[key]:.2f}"

        threads = " / ".join(" ".join(map(str, t or [])) for t in row.get("saltx_threads") or [])
        out.append(
            f"| {load} | {fmt(row.get('saltx'), 0)} | {pct('saltx_of_idle')} | "
            f"{pct('saltx_of_fair_share')} | {threads} | {fmt(row.get('salt'), 1)} | "
            f"{pct('salt_of_idle')} | {pct('salt_of_fair_share')} | {pct('ratio')} |"
        )
    return out


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
def git_commit() -> str | None:
    """The checkout's commit (short hash), with ``+dirty`` when tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


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
        "commit": git_commit(),
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
    p.add_argument(
        "--contention",
        action="store_true",
        help="GN2 training next to background loads (--loads, --k); with --peer salt-ml too",
    )
    p.add_argument("--loads", nargs="+", default=["busy", "torch"], choices=["busy", "torch"])
    p.add_argument("--k", type=int, nargs="+", default=[1, 2], help="background processes")
    p.add_argument(
        "--profile-steps", type=int, default=1, help="--contention: saltx steps profiled per load"
    )
    p.add_argument(
        "--saltx-env",
        nargs="*",
        metavar="KEY=VALUE",
        help="--contention: environment of saltx's runs, e.g. OMP_WAIT_POLICY= (empty: "
        "libgomp's spinning default instead of saltx's PASSIVE) to compare",
    )
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
        "--budget-min", type=float, default=40, help="--peer: skip ONNX past this minus 4 min"
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
    if args.contention:  # a run with --saltx-env (an A/B of a setting) keeps its own section
        mode = "contention-env" if args.saltx_env else "contention"
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
        if args.contention:
            sec = run_contention(args, runner, data)
        elif args.peer:
            sec = run_peer(args, runner, data)
        else:
            sec = run_saltx_bench(args, runner, data)
    finally:
        monitor.stop()
    sec["meta"] = {**info, "wall_s": round(time.perf_counter() - t0, 1)}
    sec["meta"]["load_average_end"] = list(os.getloadavg())
    sec["runs"] = runner.records
    prev = previous_results(out).get(mode, {})
    sec["regressions"] = compare(sec["figures"], prev.get("figures"))
    if "salt_figures" in sec:
        sec["regressions"] += [
            {**x, "figure": "salt:" + x["figure"]}
            for x in compare(sec.get("salt_figures", {}), prev.get("salt_figures"))
        ]
    write_results(out, mode, sec)
    print()
    print("\n".join(figure_rows(sec["figures"], {x["figure"] for x in sec["regressions"]})))
    if args.peer and not args.contention:
        print_peer(sec)
    if args.contention:
        print("\n".join(contention_rows(sec)))
    for x in sec["regressions"]:
        print(f"WORSE by >10%: {x['figure']}: {x['old']:.4g} -> {x['new']:.4g}")
    if sec["failed"]:
        print(f"FAILED: {', '.join(sec['failed'])} (logs in {work})")
    print(f"-> {out / 'results.json'}, {out / 'results.md'} ({sec['meta']['wall_s']:.0f} s)")
    return 1 if sec["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
