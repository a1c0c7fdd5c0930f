"""Soak test: train the tiny ``demo`` over and over, killing it with SIGKILL at random points.

    python scripts/soak.py --minutes 30 [--seed 0] [--workdir DIR] [--keep]

Each *run* is one training job (24 optimizer steps, see ``tests/reliability/relhelp.py``)
started again with ``trainer.resume=auto`` after every death until it finishes. A death is
either injected at a random point by ``tests/reliability/fault_runner.py`` (inside an
optimizer step, inside validation, half way through writing ``last.pt``/``best.pt``) or a
``kill -9`` sent from here after a random delay. After every death each checkpoint present
must load with ``torch.load(weights_only=True)``; at the end of a run its ``last.pt`` must
equal, bit for bit, the one of an uninterrupted reference run.

Prints a summary (runs, kills survived, resumes, corruptions, mismatches) and exits 1 if
any checkpoint was corrupt, any finished run differed from the reference, or a child failed
in any other way than the kill.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "reliability"))

from relhelp import (  # noqa: E402
    TOTAL_STEPS,
    assert_same_state,
    child_env,
    corrupt_checkpoints,
    load_ckpt,
    runner_cmd,
    stale_temp_files,
    train_overrides,
    write_tiny_data,
)

#: validation every 5 steps, last.pt every 3 steps and at epoch ends (8, 16, 24)
VAL_STEPS = (5, 10, 15, 20)
LAST_STEPS = (3, 6, 8, 9, 12, 15, 16, 18, 21)


def random_fault(rng: random.Random, done: int) -> str | None:
    """An injected fault after step ``done`` (None: an external kill after a random delay)."""
    kind = rng.choice(["step", "val", "write:last.pt", "write:best.pt", "external", "external"])
    if kind == "step":
        return f"step@{rng.randint(done + 1, TOTAL_STEPS)}"
    if kind == "val":
        later = [s for s in VAL_STEPS if s > done]
        return f"val@{rng.choice(later)}" if later else None
    if kind == "write:last.pt":
        later = [s for s in LAST_STEPS if s > done]
        return f"write:last.pt@{rng.choice(later)}" if later else None
    if kind == "write:best.pt":  # best.pt is written only when validation improves
        later = [s for s in VAL_STEPS if s > done]
        return f"write:best.pt@{rng.choice(later)}" if later else None
    return None


def run_once(cmd: list[str], fault: str | None, kill_after: float | None) -> tuple[int, str]:
    """Start one child; SIGKILL it after ``kill_after`` s if given. Returns (exit code, stderr)."""
    proc = subprocess.Popen(
        cmd, env=child_env(fault), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="time budget (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--max-kills", type=int, default=4, help="kills per run (at most)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="saltx-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_tiny_data(work / "data")
    stats: Counter[str] = Counter()
    problems: list[str] = []
    deadline = time.monotonic() + 60 * args.minutes

    t0 = time.monotonic()
    ref_dir = work / "reference"
    code, err = run_once(runner_cmd("train", train_overrides(data, ref_dir)), None, None)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
        return 2
    reference = load_ckpt(ref_dir / "checkpoints/last.pt")
    child_s = time.monotonic() - t0
    print(f"reference run: {child_s:.1f} s; soaking for {args.minutes:g} min in {work}", flush=True)

    while time.monotonic() < deadline:
        stats["runs"] += 1
        run = work / f"run{stats['runs']:04d}"
        cmd = runner_cmd("train", train_overrides(data, run, "trainer.resume=auto"))
        kills = rng.randint(1, args.max_kills)
        finished = False
        while not finished and time.monotonic() < deadline:
            last = run / "checkpoints/last.pt"
            done = load_ckpt(last)["state"]["step"] if last.exists() else 0
            stats["resumes"] += int(last.exists())
            fault = random_fault(rng, done) if kills > 0 else None
            kill_after = None
            if kills > 0 and fault is None:
                kill_after = rng.uniform(0.3, 1.0) * child_s  # often during start-up too
            stats["children"] += 1
            code, err = run_once(cmd, fault, kill_after)
            if code == -signal.SIGKILL:
                kills -= 1
                stats["kills survived"] += 1
                stats["kills (injected)" if fault else "kills (external, random time)"] += 1
                if fault:
                    stats[f"kills at {fault.split('@')[0]}"] += 1
            elif code == 0:
                finished = True
                if kill_after is not None:
                    stats["external kills that came too late"] += 1
            else:
                stats["failures"] += 1
                problems.append(f"{run.name}: exit {code} with fault {fault}: {err[-1500:]}")
                break
            for path, why in corrupt_checkpoints(run):
                stats["corrupt checkpoints"] += 1
                problems.append(f"{run.name}: corrupt {path.name} after {fault}: {why}")
        # half-written files of killed writes: only ever under a temporary name
        stats["stale temp files left"] += len(stale_temp_files(run))
        if finished:
            stats["runs finished"] += 1
            try:
                assert_same_state(load_ckpt(run / "checkpoints/last.pt"), reference)
                stats["runs equal to the reference"] += 1
            except AssertionError as err:
                stats["mismatches"] += 1
                problems.append(f"{run.name}: final state differs from the reference: {err}")
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)

    for key in ("corrupt checkpoints", "mismatches", "failures"):
        stats.setdefault(key, 0)
    summary = {"minutes": args.minutes, "seed": args.seed, **dict(sorted(stats.items()))}
    print(json.dumps(summary, indent=2))
    for line in problems:
        print("PROBLEM:", line, file=sys.stderr)
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    bad = stats["corrupt checkpoints"] + stats["mismatches"] + stats["failures"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
