"""Evaluation throughput: jets/s of the forward pass plus the predictions h5 writer.

    python scripts/bench_eval.py --run-dir RUN [--test-file F] [--num-test 10000] \\
        [--batch-size 1000] [--workers 0] [--warmup 1] [--json out.json]

It runs ``saltx.evaluate.evaluate`` (what ``python -m saltx.evaluate`` runs, without
the plots), which streams the predictions to ``RUN/predictions/`` and computes the
metrics. The test loader is wrapped to time every batch: a batch's time is from the end of the
previous batch to the end of its own (data loading, forward pass, task outputs, h5
append), like Salt's ``salt test`` step timer. The first ``--warmup`` batches are left
out of the steady rate ``jets_per_s``; ``jets_per_s_all`` includes them (not start-up).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


class TimedLoader:
    """Iterates ``loader`` and records ``perf_counter`` after each batch was consumed.

    ``marks[0]`` is the start; ``marks[i]`` is when the consumer asked for batch ``i``
    (so the span ``marks[i-1] .. marks[i]`` is batch ``i - 1``'s load and processing).
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.marks: list[float] = []
        self.jets: list[int] = []

    def __iter__(self) -> Iterator[Any]:
        self.marks = [time.perf_counter()]
        for batch in self.loader:
            self.jets.append(batch.num_jets)
            yield batch
            self.marks.append(time.perf_counter())

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def steady_rate(marks: list[float], jets: list[int], warmup: int) -> dict[str, float | None]:
    """Jets/s over all batches and over the batches after ``warmup``.

    Parameters
    ----------
    marks
        ``len(jets) + 1`` times: the start, then the end of each batch.
    jets
        Jets of each batch.
    """
    n = min(len(jets), len(marks) - 1)
    out: dict[str, float | None] = {"batches": n, "jets": sum(jets[:n])}
    out["jets_per_s_all"] = sum(jets[:n]) / (marks[n] - marks[0]) if n else None
    w = warmup if n > warmup else 0
    out["jets_per_s"] = sum(jets[w:n]) / (marks[n] - marks[w]) if n > w else None
    out["batch_s"] = [round(b - a, 5) for a, b in itertools.pairwise(marks[: n + 1])]
    return out


def capped_jets(test_file: str, num: int, cfg: Any) -> int:
    """``num``, or -1 (all) when the test file holds no more than ``num`` jets."""
    from saltx.data.h5 import open_h5

    g = str(cfg.data.get("global_object", "jets"))
    name = str((cfg.data.get("input_map") or {}).get(g, g))
    with open_h5(test_file) as f:
        n_file = int(f[name].shape[0])
    return -1 if num < 0 or num >= n_file else num


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a saltx training run directory")
    p.add_argument("--ckpt", default=None, help="best | last | path (default best, else last)")
    p.add_argument("--test-file", help="default: the run's data.test_file")
    p.add_argument("--num-test", type=int, default=10_000, help="-1 = the whole file")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="loader worker processes")
    p.add_argument("--warmup", type=int, default=1, help="batches left out of jets_per_s")
    p.add_argument("--write-tracks", action="store_true", help="also write the tracks group")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_module

    from saltx.evaluate import evaluate
    from saltx.run import read_run_config

    t_start = time.perf_counter()
    cfg = read_run_config(args.run_dir)[1]
    test_file = args.test_file or str(cfg.data.test_file)
    overrides = [
        f"run_dir={args.run_dir}",
        f"data.num_test={capped_jets(test_file, args.num_test, cfg)}",
        f"batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"write_tracks={args.write_tracks}",
        f"device={args.device}",
        "plots=false",
    ]
    overrides += [f"ckpt={args.ckpt}"] if args.ckpt else []
    overrides += [f"data.test_file={args.test_file}"] if args.test_file else []
    with initialize_config_module("saltx.conf", version_base="1.3"):
        ecfg = compose("evaluate", overrides=overrides)
    timed: list[TimedLoader] = []

    def wrap(loader: Iterable[Any]) -> TimedLoader:
        timed.append(TimedLoader(loader))
        return timed[0]

    t_setup = time.perf_counter() - t_start
    out = evaluate(ecfg, wrap_loader=wrap)
    loader = timed[0]
    result: dict[str, Any] = {
        "run_dir": args.run_dir,
        "test_file": test_file,
        "predictions": out["predictions"],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "warmup_batches": args.warmup,
        "setup_s": t_setup,
        "total_s": time.perf_counter() - t_start,
        **steady_rate(loader.marks, loader.jets, args.warmup),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    rate = result["jets_per_s"] or result["jets_per_s_all"] or 0.0
    print(
        f"evaluation: {rate:,.1f} jets/s ({result['jets']} jets in {result['batches']} batches, "
        f"{args.warmup} warm-up left out); predictions {out['predictions']}"
    )
    print(f"peak RSS: {result['peak_rss_mb']:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
