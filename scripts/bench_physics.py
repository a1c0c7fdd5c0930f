"""Learning quality, side by side: saltx against salt-ml 0.13 (``make bench-physics``).

    python scripts/bench_physics.py                      # the full comparison (~80 min, 2 cores)
    python scripts/bench_physics.py --quick              # plumbing check (~5 min)
    python scripts/bench_physics.py --variants salt-ml,saltx-salt013 --seeds 1 2 3
    python scripts/bench_physics.py --variants saltx-gn2-register --seeds 1 2 3   # an ablation
    python scripts/bench_physics.py --combine A/physics.json B/physics.json --out DIR

Both frameworks train the same small GN2 (the kit's ``configs/learning_small.yaml``: embed
64, 3 layers, 4 heads, out_dim 128, init net [64], heads [128, 64, 32], all three GN2 tasks)
on the same synthetic files, with the same batch (500), epochs (2), class weights
(``class_dict.yaml``) and learning-rate schedule (GN2's OneCycle: 1e-7 -> 5e-4 -> 1e-5,
pct_start 0.01, weight decay 1e-5), for every seed. The variants:

* ``salt-ml``: salt-ml 0.13 through the kit (``run_train.sh`` / ``run_test.sh``, i.e.
  ``salt fit`` / ``salt test`` with ``gn2_cpu.yaml`` + ``learning_small.yaml`` and
  ``--seed_everything``);
* ``saltx-salt013``: saltx with salt-ml 0.13's architecture (``+experiment=gn2_salt013``)
  and the same hyperparameters: the parity measurement;
* ``saltx-gn2``: saltx's seed-era GN2 (``+experiment=gn2``), as measured in issue 17;
* ``saltx-fast``: saltx's recipe for short trainings (``+experiment=gn2_fast``: the 0.13
  architecture with its own schedule and optimizer settings), same sizes, data and epochs.

The paired comparison (not run by default: ``--variants salt-ml-paired,saltx-salt013-paired``)
removes the two sources of seed noise that the frameworks draw differently, so that a small
difference between them can be resolved with few seeds:

* ``salt-ml-paired``: ``salt-ml``, except that its training batches come in saltx's order
  for the seed (the same contiguous batches, permuted by saltx's generator instead of
  ``torch.randperm``), and that it saves its initial weights (``salt_learning_cb``);
* ``saltx-salt013-paired``: ``saltx-salt013`` started from those initial weights
  (converted by ``python -m saltx.salt checkpoint``, passed as ``ckpt_path``), with the same
  seed and so the same batch order (checked against the order salt-ml recorded).

What is left between a pair is the arithmetic of the two implementations (float rounding,
bfloat16 matmuls at salt's "medium" precision); the ratios of the paired variant are taken
against its partner, with an interval that resamples whole pairs.

Data: ``saltx.data.synthetic`` at ``--difficulty`` (rejections not saturated), written once
per setting into the work folder. Per run: per-task validation losses every
``--val-every`` steps (the learning curve), and light and c rejections at 70 % and 77 %
b-jet efficiency (``f_c = 0.2``, ``f_tau = 0``) on the test file, computed by the same code
(``saltx.eval.metrics``) from both frameworks' prediction files; the checkpoint is the one
with the lowest validation jet-classification loss in both frameworks (salt's choice).
The learning rate and AdamW's beta1 of every step are logged on both sides
(``salt_learning_cb.LearningCurve`` for salt-ml) and compared.

Prints per variant the mean, the sample standard deviation and the range over seeds, the
ratio saltx/salt-ml of the means, and the issue's targets; writes ``--out``/physics.json
(every run, every curve) and physics.md (the tables). ``--quick`` runs tiny files, one seed
and a few steps, into ``~/.cache/saltx/bench/physics-quick`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saltx" / "bench"
KIT = Path(os.environ.get("SALT_KIT", ROOT.parent / "shared" / "peers" / "salt"))
PEERS = Path(os.environ.get("PEERS", ROOT.parent / "peers"))
CLASSES = ("bjets", "cjets", "ujets", "taujets")
PROBS = {"bjets": "pb", "cjets": "pc", "ujets": "pu", "taujets": "ptau"}
WORKING_POINTS = (0.70, 0.77)
F_C = 0.2
# salt-ml's task names -> saltx's (the kit's GN2 config names the jet task "jets_...")
SALT_TASKS = {
    "jets_classification": "jet_classification",
    "track_origin": "track_origin",
    "track_vertexing": "track_vertexing",
}
TASKS = tuple(SALT_TASKS.values())

# saltx overrides mirroring the kit's configs/learning_small.yaml (sizes) and gn2_cpu.yaml
# (GN2's learning-rate schedule); the task heads keep gn2's [128, 64, 32]
SMALL = [
    "model.embed_dim=64",
    "model.num_heads=4",
    "model.out_dim=128",
    "model.encoder.num_layers=3",
    "model.init_nets.tracks.hidden_layers=[64]",
]
GN2_SCHEDULE = [
    "lrs.initial=1e-7",
    "lrs.max=5e-4",
    "lrs.end=1e-5",
    "lrs.pct_start=0.01",
    "lrs.weight_decay=1e-5",
]


@dataclass(frozen=True)
class Variant:
    """One framework + configuration, trained once per seed."""

    name: str
    framework: str  # "salt" or "saltx"
    experiment: str = ""
    overrides: tuple[str, ...] = ()
    same_schedule: bool = True  # uses salt-ml's schedule (compared step by step)
    note: str = ""
    # salt: train in saltx's batch order for the seed and save the initial weights
    replay_order: bool = False
    # saltx: start from the initial weights of this (replay_order) salt variant's run of the
    # same seed; its ratios are taken against that variant, pair by pair
    start_from: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("salt-ml", "salt", note="salt-ml 0.13 through the kit"),
        Variant(
            "saltx-salt013",
            "saltx",
            "gn2_salt013",
            (*SMALL, *GN2_SCHEDULE),
            note="salt-ml 0.13's architecture and hyperparameters",
        ),
        Variant(
            "salt-ml-paired",
            "salt",
            replay_order=True,
            note="salt-ml 0.13, batches in saltx's order for the seed, initial weights saved",
        ),
        Variant(
            "saltx-salt013-paired",
            "saltx",
            "gn2_salt013",
            (*SMALL, *GN2_SCHEDULE),
            start_from="salt-ml-paired",
            note="saltx-salt013 from salt-ml-paired's initial weights, same batch order",
        ),
        Variant(
            "saltx-gn2",
            "saltx",
            "gn2",
            (*SMALL, *GN2_SCHEDULE),
            note="seed-era GN2, salt-ml's hyperparameters (issue 17's measurement)",
        ),
        Variant(
            "saltx-fast",
            "saltx",
            "gn2_fast",
            tuple(SMALL),
            same_schedule=False,
            note="saltx's short-training recipe (+experiment=gn2_fast)",
        ),
        # ablations (not run by default): one salt-ml 0.13 option at a time on the seed-era GN2
        Variant(
            "saltx-gn2-register",
            "saltx",
            "gn2",
            (*SMALL, *GN2_SCHEDULE, "model.encoder.num_registers=1"),
            note="seed-era GN2 plus salt-ml's learned register token, nothing else",
        ),
        Variant(
            "saltx-salt013-noregister",
            "saltx",
            "gn2_salt013",
            (*SMALL, *GN2_SCHEDULE, "model.encoder.num_registers=0"),
            note="salt-ml 0.13's GN2 without its register token",
        ),
        Variant(
            "saltx-salt013-fp32",
            "saltx",
            "gn2_salt013",
            (*SMALL, *GN2_SCHEDULE, "trainer.float32_matmul_precision=null"),
            note="salt-ml 0.13's GN2 at full float32 matmul precision (salt fit: 'medium')",
        ),
    )
}
DEFAULT_VARIANTS = ("salt-ml", "saltx-salt013", "saltx-gn2", "saltx-fast")


@dataclass(frozen=True)
class Settings:
    """Everything that fixes the data and the training budget."""

    n_train: int = 100_000
    n_val: int = 10_000
    n_test: int = 50_000
    difficulty: float = 2.0
    data_seed: int = 17
    batch_size: int = 500
    epochs: int = 2
    val_every: int = 100

    def data_key(self) -> str:
        key = (self.n_train, self.n_val, self.n_test, self.difficulty, self.data_seed)
        return hashlib.sha1(repr(key).encode()).hexdigest()[:10]

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(self.n_train / self.batch_size)


QUICK = Settings(n_train=4000, n_val=1000, n_test=2000, val_every=4)


# ------------------------------------------------------------------------------- helpers
def run(cmd: Sequence[Any], log: Path, env: dict[str, str], cwd: Path | None = None) -> float:
    """Run ``cmd`` with output to ``log``; returns the wall time; raises on failure."""
    t0 = time.perf_counter()
    with log.open("w") as fo:
        fo.write("$ " + " ".join(map(str, cmd)) + "\n")
        fo.flush()
        rc = subprocess.call(
            list(map(str, cmd)), stdout=fo, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (exit {rc}); log {log}:\n{tail}")
    return time.perf_counter() - t0


def base_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HYDRA_FULL_ERROR="1")
    env.setdefault("WANDB_MODE", "offline")
    return env


def write_data(settings: Settings, out: Path) -> Path:
    """The synthetic files of ``settings`` (written once; reused when complete)."""
    data = out / f"data-{settings.data_key()}"
    done = data / "done.json"
    if done.exists():
        return data
    from saltx.data.synthetic import write_dataset

    print(f"-- writing synthetic data to {data}", flush=True)
    counts = {"train": settings.n_train, "val": settings.n_val, "test": settings.n_test}
    write_dataset(data, counts, seed=settings.data_seed, difficulty=settings.difficulty)
    done.write_text(json.dumps(asdict(settings)))
    return data


def rejections(pred_file: Path) -> dict[str, float]:
    """Light and c rejections at the working points of b-tagging (f_c = 0.2, f_tau = 0)."""
    from saltx.eval.metrics import fractions_for, rejection_table

    with h5py.File(pred_file, "r") as f:
        jets = f["jets"][:]
    probs = {c: jets[f"GN2_{PROBS[c]}"].astype(np.float64) for c in CLASSES}
    truth = np.asarray(CLASSES)[jets["flavour_label"]]
    table = rejection_table(
        probs, truth, "bjets", fractions_for("bjets", CLASSES, F_C), WORKING_POINTS
    )
    out = {}
    for bkg, short in (("ujets", "light"), ("cjets", "c")):
        for wp in WORKING_POINTS:
            key = f"{round(wp * 100)}"
            out[f"{short}_rej_{key}"] = float(table[bkg][key])
    return out


# -------------------------------------------------------------------------------- saltx
def saltx_batch_order(seed: int, s: Settings) -> dict[str, list[int]]:
    """The batch numbers saltx's training sampler yields in each epoch for ``seed``."""
    from saltx.data.sampler import SliceSampler

    sampler = SliceSampler(s.n_train, s.batch_size, shuffle=True, drop_last=True, seed=seed)
    order = {}
    for epoch in range(s.epochs):
        sampler.set_epoch(epoch)
        order[str(epoch)] = [int(b) for b in sampler.batch_ids()]
    return order


# callbacks of the bench's salt-ml runs (timing, curves) that a converted config must not name
BENCH_CALLBACKS = ("salt_bench_cb.", "salt_learning_cb.")


def convert_salt_init(salt_rundir: Path, out: Path, env) -> Path:
    """saltx's checkpoint of the initial weights a ``replay_order`` salt-ml run saved."""
    init = salt_rundir / "init.ckpt"
    configs = sorted(glob.glob(str(salt_rundir / "logs" / "*" / "config.yaml")))
    if not init.exists() or not configs:
        raise RuntimeError(
            f"{salt_rundir} holds no init.ckpt and logs/*/config.yaml: run its salt-ml "
            "variant (replay_order) for this seed first, in the same invocation"
        )
    config = yaml.safe_load(Path(configs[0]).read_text())
    callbacks = config.get("trainer", {}).get("callbacks") or []
    config["trainer"]["callbacks"] = [
        c for c in callbacks if not str(c.get("class_path", "")).startswith(BENCH_CALLBACKS)
    ]
    salt_config = out.parent / f"{out.name}_salt_config.yaml"
    salt_config.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "saltx.salt", "checkpoint", init, "--config", salt_config]
    run([*cmd, "-o", out, "--force"], out.parent / f"{out.name}.log", env)
    found = sorted(glob.glob(str(out / "checkpoints" / "*.pt")))
    if len(found) != 1:
        raise RuntimeError(f"the conversion of {init} left {found or 'no'} checkpoints in {out}")
    return Path(found[0])


def train_saltx(
    v: Variant,
    seed: int,
    s: Settings,
    data: Path,
    rundir: Path,
    env,
    init_ckpt: Path | None = None,
) -> dict:
    """One saltx run; ``init_ckpt``: start from these weights (``ckpt_path``)."""
    py = sys.executable
    cmd = [
        py,
        "-m",
        "saltx.train",
        f"+experiment={v.experiment}",
        *v.overrides,
        f"paths.data_dir={data}",
        f"paths.output_dir={rundir}",
        f"seed={seed}",
        f"data.batch_size={s.batch_size}",
        f"data.num_train={s.n_train}",
        f"data.num_val={s.n_val}",
        f"trainer.max_epochs={s.epochs}",
        f"trainer.val_check_interval={s.val_every}",
        "trainer.monitor=val/jet_classification_loss",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=0",
        "trainer.resume=never",
        "trainer.progress_bar=false",
        "trainer.adapt_threads=false",  # fixed threads, as salt-ml's: a seed is one result
        "logger=none",
    ]
    if init_ckpt is not None:
        cmd.append(f"ckpt_path={init_ckpt}")
    train_log = rundir.parent / f"{rundir.name}_train.log"
    t_train = run(cmd, train_log, env)
    if init_ckpt is not None and f"starting from the weights of {init_ckpt} at step 0" not in (
        train_log.read_text()
    ):
        raise RuntimeError(f"{train_log} does not say it started from the weights of {init_ckpt}")
    cmd = [py, "-m", "saltx.evaluate", f"run_dir={rundir}", "ckpt=best", "plots=false"]
    t_test = run(cmd, rundir.parent / f"{rundir.name}_test.log", env)
    preds = sorted(glob.glob(str(rundir / "predictions" / "*.h5")))
    if not preds:
        raise RuntimeError(f"saltx.evaluate wrote no predictions under {rundir}/predictions")
    val, lr = [], []
    for line in (rundir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        step = int(row.get("step", -1))
        if "val/loss" in row:
            val.append({"step": step, **{t: row[f"val/{t}_loss"] for t in TASKS}})
        if "train/lr" in row:
            lr.append([step, row["train/lr"]])
    meta = yaml.safe_load((rundir / "metadata.yaml").read_text())
    result = {
        "val": val,
        "lr": lr,
        "params": int(meta["trainable_params"]),
        "train_s": t_train,
        "test_s": t_test,
        **rejections(Path(preds[0])),
    }
    if init_ckpt is not None:
        result["init_from"] = str(init_ckpt)
    return result


# --------------------------------------------------------------------------------- salt
def ensure_salt_venv() -> None:
    """Install salt-ml 0.13 with the kit's setup.sh when the venv is missing."""
    if not (KIT / "run_train.sh").exists():
        raise SystemExit(f"salt-ml kit not found at {KIT} (set SALT_KIT)")
    if (PEERS / "salt-venv" / "bin" / "activate").exists():
        return
    print(f"-- no salt-ml venv at {PEERS}/salt-venv: running {KIT}/setup.sh", flush=True)
    env = dict(os.environ, PEERS=str(PEERS))
    if subprocess.call(["bash", str(KIT / "setup.sh")], env=env, cwd=ROOT) != 0:
        raise SystemExit(f"{KIT}/setup.sh failed")


def train_salt(
    seed: int, s: Settings, data: Path, rundir: Path, env, replay_order: bool = False
) -> dict:
    """One salt-ml run; ``replay_order``: in saltx's batch order, initial weights saved."""
    rundir.mkdir(parents=True, exist_ok=True)
    curve = rundir / "curve.json"
    env = dict(
        env,
        PEERS=str(PEERS),
        SALT_DATA=str(data),
        SALTX_CURVE_OUT=str(curve),
        PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])),
    )
    for key in ("SALT_TRAIN", "SALT_VAL", "SALT_TEST", "SALT_NORM_DICT", "SALT_CLASS_DICT"):
        env.pop(key, None)
    for key in ("SALTX_INIT_OUT", "SALTX_BATCH_ORDER_SEED"):  # set only for a paired run
        env.pop(key, None)
    if replay_order:
        env.update(SALTX_INIT_OUT=str(rundir / "init.ckpt"), SALTX_BATCH_ORDER_SEED=str(seed))
    cmd = [
        "bash",
        KIT / "run_train.sh",
        "full",
        rundir,
        "2",  # replaced: learning_small.yaml sets limit_train_batches to null (whole epochs)
        "--config",
        KIT / "configs" / "learning_small.yaml",
        f"--seed_everything={seed}",
        f"--data.batch_size={s.batch_size}",
        f"--data.num_train={s.n_train}",
        f"--data.num_val={s.n_val}",
        f"--trainer.max_epochs={s.epochs}",
        f"--trainer.val_check_interval={s.val_every}",
        "--trainer.callbacks+=salt_learning_cb.LearningCurve",
    ]
    t_train = run(cmd, rundir.parent / f"{rundir.name}_train.log", env)
    t_test = run(
        ["bash", KIT / "run_test.sh", rundir, "-1"], rundir.parent / f"{rundir.name}_test.log", env
    )
    preds = sorted(glob.glob(str(rundir / "logs" / "*" / "ckpts" / "*.h5")))
    if not preds:
        raise RuntimeError(f"salt test wrote no predictions under {rundir}/logs/*/ckpts")
    data_curve = json.loads(curve.read_text())
    val = [
        {"step": row["step"], **{SALT_TASKS[t]: row[f"val/{t}_loss"] for t in SALT_TASKS}}
        for row in data_curve["val"]
    ]
    result = {
        "val": val,
        "lr": [[step, lr_] for step, lr_, _ in data_curve["lr"]],
        "beta1": [[step, b] for step, _, b in data_curve["lr"]],
        "params": int(data_curve.get("params", 0)),
        "train_s": t_train,
        "test_s": t_test,
        **rejections(Path(preds[0])),
    }
    if replay_order:
        used, expected = data_curve.get("batch_order"), saltx_batch_order(seed, s)
        if used != expected:
            raise RuntimeError(
                f"salt-ml's batch order ({curve}) is not saltx's for seed {seed}: the paired "
                "comparison would not be paired"
            )
        result["batch_order_as_saltx"] = True
    return result


# ----------------------------------------------------------------------------- analysis
METRICS = ("light_rej_77", "c_rej_77", "light_rej_70", "c_rej_70", "val_jet_loss")


def final_values(result: dict) -> dict[str, float]:
    """The figures of one run that get a mean and a spread."""
    out = {k: result[k] for k in METRICS if k in result}
    if result.get("val"):
        last = result["val"][-1]
        out["val_jet_loss"] = last["jet_classification"]
        out["val_origin_loss"] = last["track_origin"]
        out["val_vertexing_loss"] = last["track_vertexing"]
    out["train_s"] = result["train_s"]
    return out


def stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio_interval(
    ours: Sequence[float],
    ref: Sequence[float],
    level: float = 0.95,
    draws: int = 20_000,
    paired: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(ours) / mean(ref): the seeds of each side are
    resampled with replacement, independently (the frameworks' seeds are not paired), or,
    with ``paired`` (``ours[i]`` started from the weights and batch order of ``ref[i]``),
    as whole pairs. Fixed generator, so the same runs always give the same interval."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(ours, float), np.asarray(ref, float)
    pick_a = rng.integers(0, len(a), (draws, len(a)))
    pick_b = pick_a if paired else rng.integers(0, len(b), (draws, len(b)))
    ratios = a[pick_a].mean(axis=1) / b[pick_b].mean(axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_figure(ours: Sequence[float], ref: Sequence[float]) -> dict[str, Any]:
    """One figure of paired runs: each side's statistics, the per-pair difference (with the
    standard error of its mean, ``se``), the ratio of the means and its paired interval."""
    ours_st, ref_st = stats(ours), stats(ref)
    diff = stats([a - b for a, b in zip(ours, ref, strict=True)])
    return {
        "ours": ours_st,
        "partner": ref_st,
        "difference": {**diff, "se": diff["std"] / math.sqrt(diff["n"])},
        "ratio": ours_st["mean"] / ref_st["mean"],
        "interval_95": ratio_interval(ours, ref, paired=True),
    }


def pairs(runs: dict[str, list[dict]], name: str) -> tuple[list[int], list[dict], list[dict]]:
    """The seeds that ``name`` and its partner both ran, and the final values of each side."""
    partner = {r["seed"]: r for r in runs.get(VARIANTS[name].start_from, [])}
    matched = [(r, partner[r["seed"]]) for r in runs[name] if r["seed"] in partner]
    return (
        [r["seed"] for r, _ in matched],
        [final_values(a) for a, _ in matched],
        [final_values(b) for _, b in matched],
    )


def schedule_difference(salt_runs: list[dict], saltx_runs: list[dict]) -> dict | None:
    """Largest relative difference of the learning rate at the same step (salt vs saltx)."""
    if not salt_runs or not saltx_runs:
        return None
    ref = {int(step): lr for step, lr in salt_runs[0]["lr"]}
    worst, n = 0.0, 0
    for r in saltx_runs:
        for step, lr in r["lr"]:
            if int(step) in ref:
                worst = max(worst, abs(lr - ref[int(step)]) / max(abs(ref[int(step)]), 1e-30))
                n += 1
    return {"steps_compared": n, "max_rel_diff": worst}


def curves(results: list[dict]) -> dict[int, dict[str, float]]:
    """Mean validation loss per task at each validation step over seeds."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for r in results:
        for row in r["val"]:
            slot = by_step.setdefault(int(row["step"]), {t: [] for t in TASKS})
            for t in TASKS:
                slot[t].append(row[t])
    return {
        step: {t: statistics.fmean(v) for t, v in tasks.items() if v}
        for step, tasks in sorted(by_step.items())
    }


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Per-variant statistics, ratios to salt-ml, curves, targets."""
    summary: dict[str, Any] = {
        "variants": {},
        "ratios": {},
        "paired": {},
        "curves": {},
        "targets": [],
    }
    finals_of: dict[str, list[dict[str, float]]] = {}
    for name, results in runs.items():
        if not results:
            continue
        finals = finals_of[name] = [final_values(r) for r in results]
        keys = sorted(set.intersection(*(set(f) for f in finals)))
        summary["variants"][name] = {
            "seeds": [r["seed"] for r in results],
            "params": sorted({r["params"] for r in results}),
            **{k: stats([f[k] for f in finals]) for k in keys},
        }
        summary["curves"][name] = curves(results)
    for name in summary["variants"]:
        partner = VARIANTS[name].start_from
        if partner:  # the means over the seeds both ran
            seeds, ours, theirs = pairs(runs, name)
            if seeds:
                summary["paired"][name] = {
                    "partner": partner,
                    "seeds": seeds,
                    **{
                        k: paired_figure([f[k] for f in ours], [f[k] for f in theirs])
                        for k in (*METRICS, "val_origin_loss", "val_vertexing_loss")
                        if all(k in f for f in ours + theirs)
                    },
                }
    ref = summary["variants"].get("salt-ml")
    if ref:
        for name, var in summary["variants"].items():
            if VARIANTS[name].framework == "salt" or VARIANTS[name].start_from:
                continue
            summary["ratios"][name] = {
                k: var[k]["mean"] / ref[k]["mean"]
                for k in METRICS
                if k in var and k in ref and ref[k]["mean"]
            }
    for name, pair in summary["paired"].items():
        summary["ratios"][name] = {k: pair[k]["ratio"] for k in METRICS if k in pair}
    salt = runs.get("salt-ml") or runs.get("salt-ml-paired", [])
    if salt:
        same = [
            r
            for n, rs in runs.items()
            if VARIANTS[n].framework == "saltx" and VARIANTS[n].same_schedule
            for r in rs
        ]
        summary["schedule"] = schedule_difference(salt, same)
        rat = summary["ratios"]
        checks = [
            ("saltx-salt013", "light_rej_77", ">=", 0.95, "parity: light rejection @77% >= 0.95x"),
            ("saltx-salt013", "c_rej_77", ">=", 1.0, "parity: c rejection @77% no worse (>= 1.0x)"),
            ("saltx-fast", "light_rej_77", ">=", 1.3, "beyond: light rejection @77% >= 1.3x"),
            ("saltx-fast", "c_rej_77", ">=", 1.15, "beyond: c rejection @77% >= 1.15x"),
            (
                "saltx-salt013-paired",
                "light_rej_77",
                ">=",
                0.95,
                "paired parity: light rejection @77% >= 0.95x",
            ),
            (
                "saltx-salt013-paired",
                "c_rej_77",
                ">=",
                1.0,
                "paired parity: c rejection @77% no worse (>= 1.0x)",
            ),
        ]
        for variant, key, _, threshold, text in checks:
            if variant in rat and key in rat[variant]:
                value = rat[variant][key]
                if variant in summary["paired"]:  # pairs: resampled together
                    lo, hi = summary["paired"][variant][key]["interval_95"]
                    seeds = [len(summary["paired"][variant]["seeds"])] * 2
                else:
                    ours = [f[key] for f in finals_of[variant]]
                    ref_values = [f[key] for f in finals_of["salt-ml"]]
                    lo, hi = ratio_interval(ours, ref_values)
                    seeds = [len(ours), len(ref_values)]
                summary["targets"].append(
                    {
                        "target": text,
                        "ratio": value,
                        "met": bool(value >= threshold),
                        "interval_95": [lo, hi],
                        "threshold": threshold,
                        "seeds": seeds,
                    }
                )
    return summary


def fmt(st: dict[str, float], digits: int = 1) -> str:
    """``mean ± std [min, max]``."""
    m, s, lo, hi = (f"{st[k]:.{digits}f}" for k in ("mean", "std", "min", "max"))
    return f"{m} ± {s} [{lo}, {hi}]"


def markdown(summary: dict[str, Any], meta: dict[str, Any], runs: dict[str, list[dict]]) -> str:
    s = meta["settings"]
    load = meta["load_average_start_end"]
    lines = [
        "# Learning quality: saltx vs salt-ml 0.13 (scripts/bench_physics.py)",
        "",
        f"{meta['date']}, {meta['machine']}, saltx {meta['saltx_commit']}, "
        f"{meta['wall_min']:.0f} min in all (15-min load average {load[0]} at the start, "
        f"{load[1]} at the end: times are of a shared machine). Data: saltx.data.synthetic, "
        "difficulty "
        f"{s['difficulty']}, {s['n_train']:,} train / {s['n_val']:,} val / {s['n_test']:,} test "
        f"jets; batch {s['batch_size']}, {s['epochs']} epochs ({meta['steps']} steps); "
        "rejections at b-jet efficiency 70 % / 77 %, f_c = 0.2; mean ± sample std "
        "[min, max] over seeds.",
        "",
        "| variant | seeds | params | light rej @77% | c rej @77% | light rej @70% | "
        "c rej @70% | val jet loss | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in summary["variants"].items():
        lines.append(
            f"| {name} | {len(v['seeds'])} | {', '.join(f'{p:,}' for p in v['params'])} | "
            f"{fmt(v['light_rej_77'])} | {fmt(v['c_rej_77'], 2)} | {fmt(v['light_rej_70'])} | "
            f"{fmt(v['c_rej_70'], 2)} | {fmt(v['val_jet_loss'], 3)} | "
            f"{v['train_s']['mean']:.0f} |"
        )
    if summary["ratios"]:
        lines += [
            "",
            "Ratio of the means, saltx / salt-ml (a paired variant: against its partner, "
            "over the seeds both ran):",
            "",
            "| variant | light rej @77% | c rej @77% | light rej @70% | c rej @70% "
            "| val jet loss |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in summary["ratios"].items():
            cells = " | ".join(
                f"{r[k]:.3f}" if k in r else "-"
                for k in ("light_rej_77", "c_rej_77", "light_rej_70", "c_rej_70", "val_jet_loss")
            )
            lines.append(f"| {name} | {cells} |")
    for name, pair in summary["paired"].items():
        lines += [
            "",
            f"Paired: {name} against {pair['partner']}, {len(pair['seeds'])} pairs (each saltx "
            "run started from the salt-ml run's initial weights, in the same batch order); the "
            "spread of the per-pair differences against the spread over seeds shows what "
            "the pairing removes. The difference per pair is its mean ± sample std (standard "
            "error of the mean); the interval resamples whole pairs (a percentile bootstrap: "
            "too narrow for a handful of pairs, where mean ± t(n-1) x standard error is the "
            "safer interval):",
            "",
            f"| figure | {pair['partner']} | {name} | difference per pair | ratio [95 %] |",
            "|---|---|---|---|---|",
        ]
        for k, row in pair.items():
            if not isinstance(row, dict):
                continue
            digits = 1 if k.startswith("light") else 3
            d = row["difference"]
            lo, hi = row["interval_95"]
            lines.append(
                f"| {k} | {fmt(row['partner'], digits)} | {fmt(row['ours'], digits)} | "
                f"{d['mean']:+.{digits + 1}f} ± {d['std']:.{digits + 1}f} "
                f"({d['se']:.{digits + 1}f}) | "
                f"{row['ratio']:.4f} [{lo:.4f}, {hi:.4f}] |"
            )
    if summary["targets"]:
        lines += [
            "",
            "Targets (issue 17), by the ratio of the means; in brackets the 95 % bootstrap "
            "interval of that ratio over the seeds (`ratio_interval`; for a paired variant "
            "with `paired=True`, which resamples whole pairs):",
            "",
        ]
        for t in summary["targets"]:
            line = f"- {t['target']}: {t['ratio']:.3f} -> {'met' if t['met'] else 'NOT met'}"
            if "interval_95" in t:
                lo, hi = t["interval_95"]
                line += f" [{lo:.3f}, {hi:.3f}]"
                if lo < t["threshold"] <= hi:
                    line += " (the threshold lies inside: these seeds do not decide it)"
                elif t["threshold"] <= lo:
                    line += " (above the threshold at these seeds)"
                else:
                    line += " (below the threshold at these seeds)"
            lines.append(line)
    if summary.get("schedule"):
        sch = summary["schedule"]
        lines += [
            "",
            f"Learning-rate schedule, saltx vs salt-ml at the same step: largest relative "
            f"difference {sch['max_rel_diff']:.2e} over {sch['steps_compared']} steps.",
        ]
    lines += ["", "Validation losses (mean over seeds) at fixed steps:", ""]
    names = list(summary["curves"])
    lines.append("| step | " + " | ".join(f"{n} jet / origin / vertexing" for n in names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    steps = sorted({st for c in summary["curves"].values() for st in c})
    for st in steps:
        cells = []
        for n in names:
            row = summary["curves"][n].get(st)
            cells.append(
                "-" if row is None else " / ".join(f"{row[t]:.4f}" for t in TASKS if t in row)
            )
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per run:",
        "",
        "| variant | seed | light @77 | c @77 | light @70 | c @70 | val jet loss |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        for r in results:
            f = final_values(r)
            loss = f.get("val_jet_loss", float("nan"))
            lines.append(
                f"| {name} | {r['seed']} | {f['light_rej_77']:.1f} | {f['c_rej_77']:.2f} | "
                f"{f['light_rej_70']:.1f} | {f['c_rej_70']:.2f} | {loss:.4f} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- main
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny files, one seed: plumbing only")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 1 2 3 (quick: 1)")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {list(VARIANTS)}",
    )
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--difficulty", type=float, default=None)
    p.add_argument("--val-every", type=int, default=None, help="validation interval (steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="physics.json/md (default bench/)")
    p.add_argument("--work", type=Path, default=None, help="data and runs (default ~/.cache)")
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        metavar="PHYSICS_JSON",
        help="train nothing: pool the runs of these physics.json files (same settings, "
        "different seeds) into --out's physics.json/md",
    )
    return p.parse_args(argv)


def combine(paths: Sequence[Path]) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Pool the runs of several ``physics.json`` files: more seeds for the same comparison.

    Returns the combined ``meta`` and ``runs``. The files must share their settings (data,
    sizes, schedule) and must not repeat a (variant, seed); the commits, dates and wall
    times of every part are kept in ``meta["parts"]``.
    """
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
            docs.append((path, doc["meta"], doc["runs"]))
        except (OSError, ValueError, KeyError) as err:
            msg = f"--combine: {path} is not a bench_physics physics.json ({err})"
            raise SystemExit(msg) from err
    first_path, first, _ = docs[0]
    runs: dict[str, list[dict]] = {}
    for path, meta, part in docs:
        if meta["settings"] != first["settings"] or meta.get("quick") != first.get("quick"):
            raise SystemExit(
                f"--combine: {path} has other settings than {first_path} "
                f"({meta['settings']} vs {first['settings']}): only runs of the same "
                "comparison can be pooled"
            )
        for name, results in part.items():
            bucket = runs.setdefault(name, [])
            seen = {r["seed"] for r in bucket}
            for r in results:
                if r["seed"] in seen:
                    raise SystemExit(f"--combine: {name} seed {r['seed']} is in two files")
                bucket.append(r)
    for bucket in runs.values():
        bucket.sort(key=lambda r: r["seed"])
    commits = sorted({m["saltx_commit"] for _, m, _ in docs})
    meta = {
        **first,
        "date": max(m["date"] for _, m, _ in docs),
        "saltx_commit": " + ".join(commits),
        "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
        "variants": {k: v for _, m, _ in docs for k, v in m["variants"].items()},
        "wall_min": sum(m["wall_min"] for _, m, _ in docs),
        "failures": [f for _, m, _ in docs for f in m["failures"]],
        # a pooled file brings its own parts (which commit ran which seeds)
        "parts": [
            part
            for path, m, r in docs
            for part in m.get("parts")
            or [
                {k: m[k] for k in ("date", "saltx_commit", "seeds", "wall_min", "work")}
                | {"file": str(path), "variants": sorted(r)}
            ]
        ],
    }
    return meta, runs


def write_results(out: Path, meta: dict[str, Any], runs: dict[str, list[dict]]) -> None:
    """physics.json (every run and curve) and physics.md (the tables) into ``out``."""
    summary = summarise(runs)
    doc = {"meta": meta, "summary": summary, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "physics.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(summary, meta, runs)
    (out / "physics.md").write_text(md)
    print()
    print(md)
    print(f"wrote {out / 'physics.json'} and {out / 'physics.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        meta, runs = combine(args.combine)
        write_results(args.out or ROOT / "bench", meta, runs)
        return 0
    base = QUICK if args.quick else Settings()
    fields = {
        "n_train": args.n_train,
        "n_val": args.n_val,
        "n_test": args.n_test,
        "difficulty": args.difficulty,
        "val_every": args.val_every,
    }
    settings = Settings(**{**asdict(base), **{k: v for k, v in fields.items() if v is not None}})
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    for i, n in enumerate(names):
        partner = VARIANTS[n].start_from
        if partner and partner not in names[:i]:
            raise SystemExit(
                f"--variants: {n} starts from {partner}'s weights: list {partner} first"
            )
    out = args.out or (CACHE / "physics-quick" if args.quick else ROOT / "bench")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or (CACHE / "physics")
    runs_dir = work / "runs" / stamp
    runs_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if any(VARIANTS[n].framework == "salt" for n in names):
        ensure_salt_venv()
    env = base_env(args.threads)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    data = write_data(settings, work)
    print(
        f"bench-physics: {len(names)} variants x {len(seeds)} seeds, {settings.n_train:,} train "
        f"jets x {settings.epochs} epochs ({settings.steps} steps), runs in {runs_dir}",
        flush=True,
    )
    runs: dict[str, list[dict]] = {n: [] for n in names}
    failures = []
    for seed in seeds:
        for name in names:
            v = VARIANTS[name]
            rundir = runs_dir / f"{name}_seed{seed}"
            t1 = time.perf_counter()
            try:
                if v.framework == "salt":
                    result = train_salt(seed, settings, data, rundir, env, v.replay_order)
                elif v.start_from:
                    if not any(r["seed"] == seed for r in runs[v.start_from]):
                        raise RuntimeError(f"{v.start_from} seed {seed} did not complete")
                    partner = runs_dir / f"{v.start_from}_seed{seed}"
                    init = convert_salt_init(partner, runs_dir / f"{name}_seed{seed}_init", env)
                    result = train_saltx(v, seed, settings, data, rundir, env, init)
                else:
                    result = train_saltx(v, seed, settings, data, rundir, env)
            except RuntimeError as err:
                print(f"!! {name} seed {seed} failed: {err}", flush=True)
                failures.append(f"{name} seed {seed}")
                continue
            result["seed"] = seed
            runs[name].append(result)
            f = final_values(result)
            print(
                f"-- {name:14s} seed {seed}: light rej @77% {f['light_rej_77']:7.1f}, "
                f"c rej @77% {f['c_rej_77']:5.2f}, val jet loss "
                f"{f.get('val_jet_loss', float('nan')):.4f} ({time.perf_counter() - t1:.0f} s)",
                flush=True,
            )
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads",
        "saltx_commit": git_commit(),
        "settings": asdict(settings),
        "steps": settings.steps,
        "seeds": seeds,
        "variants": {n: asdict(VARIANTS[n]) for n in names},
        "wall_min": (time.perf_counter() - t0) / 60.0,
        "load_average_start_end": [round(load_start[2], 2), round(os.getloadavg()[2], 2)],
        "work": str(runs_dir),
        "failures": failures,
        "quick": bool(args.quick),
    }
    write_results(out, meta, runs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
