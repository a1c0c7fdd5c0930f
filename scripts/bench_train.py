"""Training throughput: jets/s of full training steps (forward, backward, optimizer).

Examples
--------
    python scripts/bench_train.py --experiment gn2 --steps 30
    python scripts/bench_train.py --experiment gn2 --file train.h5 --batch-size 1000 \\
        --compile --precision bf16 --json bench.json

Without ``--file`` a synthetic training file is written to a temporary folder. Prints
the median jets/s over the steps after the warm-up and the peak resident memory (MB); the
JSON has ``jets_per_s`` and ``peak_rss_mb`` (plus the settings).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import saltx
import saltx.config
from saltx.engine.distributed import DistInfo, resolve_accelerator
from saltx.engine.loop import compile_model, configure_torch, train_step
from saltx.engine.precision import Precision
from saltx.engine.schedule import build_optimizer
from saltx.engine.threads import thread_governor

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experiment", default="gn2", help="experiment config (conf/experiment)")
    p.add_argument("--file", help="training h5 file (default: synthetic jets)")
    p.add_argument("--norm-dict", help="norm_dict.yaml (default: next to --file)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--compile", action="store_true", help="compile the transformer blocks")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--peak",
        type=int,
        default=0,
        help="after the steps, time a torch.mm of two PEAK x PEAK fp32 matrices at the same "
        "threads in this process (the peak MFU is measured against; 0 = off)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="then profile this many more steps (torch.profiler): share of step time per op",
    )
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    return p.parse_args(argv)


def prepare_data(args: argparse.Namespace, tmp: Path) -> tuple[str, str, str | None]:
    """(train file, norm dict, class dict): the user's, or freshly written synthetic ones."""
    if args.file:
        norm = args.norm_dict or str(Path(args.file).with_name("norm_dict.yaml"))
        cls = Path(args.file).with_name("class_dict.yaml")
        return args.file, norm, str(cls) if cls.exists() else None
    from saltx.data.synthetic import write_dataset

    n = args.batch_size * (args.steps + args.warmup)
    paths = write_dataset(tmp, {"train": n, "val": args.batch_size}, splits=("train", "val"))
    return str(paths["train"]), str(paths["norm_dict"]), str(paths["class_dict"])


def compile_stats() -> dict[str, int]:
    """Dynamo's counts for this process: frames compiled, graphs, recompilations.

    A recompilation is a frame compiled again after a guard failed (new shapes, ...);
    ``TORCH_LOGS=recompiles`` prints the guard that failed each time.
    """
    from torch._dynamo.utils import counters, get_compilation_metrics

    metrics = get_compilation_metrics()
    recompiles = [m for m in metrics if m.compile_id and not m.compile_id.endswith("/0")]
    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "recompiles": len(recompiles),
        "compile_s": sum((m.duration_us or 0) for m in metrics) / 1e6,
    }


def profile_steps(model, loader, precision, optimizer, args) -> dict:
    """Profile ``args.profile`` training steps: self CPU time per operator, as a share of
    the profiled wall time (what bounds a step; elementwise work included)."""
    from torch.profiler import ProfilerActivity, profile

    steps = []
    for batch in loader:
        steps.append(batch)
        if len(steps) == args.profile:
            break
    device = next(model.parameters()).device
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for batch in steps:
            batch = batch.to(device)
            train_step(model, batch, precision, accumulate=1, sync=True)
            precision.step(optimizer, model.parameters(), clip_val=None)
            optimizer.zero_grad(set_to_none=True)
        wall = time.perf_counter() - t0
    rows = []
    for e in prof.key_averages():
        if e.self_cpu_time_total <= 0:
            continue
        rows.append(
            {
                "op": e.key,
                "calls_per_step": e.count / len(steps),
                "self_ms_per_step": e.self_cpu_time_total / 1e3 / len(steps),
            }
        )
    rows.sort(key=lambda r: -r["self_ms_per_step"])
    total = sum(r["self_ms_per_step"] for r in rows)
    for r in rows:
        r["share"] = r["self_ms_per_step"] / total if total else 0.0
    return {"steps": len(steps), "wall_s_per_step": wall / len(steps), "ops": rows[:40]}


def print_profile(prof: dict, top: int = 15) -> None:
    print(f"profile of {prof['steps']} steps ({prof['wall_s_per_step']:.2f} s/step), self CPU:")
    for r in prof["ops"][:top]:
        print(
            f"  {r['op']:<45} {100 * r['share']:5.1f}%  {r['self_ms_per_step']:8.1f} ms/step"
            f"  {r['calls_per_step']:7.0f} calls/step"
        )


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="saltx-bench-") as tmpdir:
        train_file, norm, cls = prepare_data(args, Path(tmpdir))
        overrides = [
            f"+experiment={args.experiment}",
            f"data.train_file={train_file}",
            f"data.val_file={train_file}",
            f"data.norm_dict={norm}",
            f"data.class_dict={cls}" if cls else "data.class_dict=null",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            f"paths.output_dir={tmpdir}/run",
            *args.overrides,
        ]
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        acc = resolve_accelerator(args.accelerator)
        device = torch.device("cuda", 0) if acc == "gpu" else torch.device("cpu")
        info = DistInfo(device=device)
        configure_torch(cfg.trainer, info)  # threads, TF32, allocator: as saltx.train

        from saltx.assemble import build

        torch.manual_seed(int(cfg.seed))
        parts = build(cfg, info)
        model = parts.model.to(device).train()
        if args.compile:
            compile_model(model)
        optimizer = build_optimizer(
            cfg.get("optimizer"),
            model.parameters(),
            lr=float(cfg.lrs.max),
            weight_decay=float(cfg.lrs.weight_decay),
            device=device,
        )
        precision = Precision(args.precision, device)
        t = cfg.trainer  # as the loop: fewer threads while other processes take the CPUs
        governor = thread_governor(
            t.adapt_threads, t.deterministic, device.type, torch.get_num_threads()
        )
        threads: list[int] = []
        times: list[float] = []
        jets: list[int] = []
        t_start = time.perf_counter()
        warmup_s = 0.0
        step = 0
        while step < args.warmup + args.steps:
            for batch in parts.train_loader:
                if step >= args.warmup + args.steps:
                    break
                t0 = time.perf_counter()
                batch = batch.to(device, non_blocking=True)
                train_step(model, batch, precision, accumulate=1, sync=True)
                precision.step(optimizer, model.parameters(), clip_val=None)
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= args.warmup:
                    times.append(time.perf_counter() - t0)
                    jets.append(batch.num_jets)
                    threads.append(torch.get_num_threads())
                if governor is not None:
                    governor.poll()
                step += 1
                if step == args.warmup:
                    warmup_s = time.perf_counter() - t_start
        if args.profile:
            result_profile = profile_steps(model, parts.train_loader, precision, optimizer, args)
        if governor is not None:
            governor.close()
    if not times:
        raise SystemExit("no timed steps: raise --steps or provide more jets")
    median = statistics.median(times)
    result = {
        "experiment": args.experiment,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "compile": bool(args.compile),
        "device": str(device),
        "steps": len(times),
        "median_step_s": median,
        "jets_per_s": statistics.median(jets) / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warmup_s": warmup_s,
        "max_step_s": max(times),
        "threads_per_step": threads,  # intra-op threads of each timed step
    }
    if args.compile:
        result.update(compile_stats())
    if args.peak:
        from flops import matmul_peak  # scripts/flops.py

        result["peak"] = matmul_peak(args.peak, torch.get_num_threads())
        result["peak_gflops"] = result["peak"]["gflops_best"]
        print(f"torch.mm {args.peak}^2 peak: {result['peak_gflops']:.1f} GFLOP/s (same process)")
    if args.profile:
        result["profile"] = result_profile
        print_profile(result_profile)
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"training: {result['jets_per_s']:.1f} jets/s (median of {len(times)} steps)")
    print(f"peak RSS: {result['peak_rss_mb']:.1f} MB")
    print(
        f"warm-up: {warmup_s:.1f} s for {args.warmup} steps; slowest timed step {max(times):.2f} s"
    )
    if args.compile:
        print(
            f"compiled: {result['graphs']} graphs from {result['frames']} frame compilations "
            f"({result['recompiles']} recompilations), {result['compile_s']:.1f} s compiling"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
