"""ONNX Runtime throughput of a saltx run's exported graph, one jet per call (as Athena).

    python scripts/bench_onnx.py --run-dir RUN [--test-file F] [--njets 1000] [--reps 3] \\
        [--threads 2 1] [--export] [--json out.json]

``RUN/network.onnx`` is written with ``python -m saltx.export run_dir=RUN overwrite=true``
when it is missing or ``--export`` is given (``export_s`` then includes saltx's own
onnxruntime-vs-torch check). Real test jets are fed one at a time with their valid
constituents only: ``jet_features`` ``(1, F)``, ``track_features`` ``(n_tracks, F)``.
Each thread count gets its own session (``intra_op_num_threads``, 1 inter-op thread),
50 warm-up calls, then ``--reps`` timed passes over the jets; ``jets_per_s`` is their
median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def run_export(run_dir: Path) -> float:
    """Export ``run_dir`` with ``python -m saltx.export``; returns the wall time in s."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "saltx.export", f"run_dir={run_dir}", "overwrite=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    dt = time.perf_counter() - t0
    (run_dir / "export.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"saltx.export failed (rc {proc.returncode}) for {run_dir}: {proc.stderr[-2000:]}"
        )
    return dt


def load_samples(
    cfg: dict[str, Any], test_file: str, njets: int, input_names: list[str]
) -> list[dict[str, np.ndarray]]:
    """Feeds for ``njets`` test jets: ``{input name: array}``, valid constituents only.

    ``jet_features`` holds the global-object variables; ``<constituent>_features``
    (``track_features`` for ``tracks``) the constituent variables of the valid slots.
    """
    import h5py

    data = cfg["data"]
    variables = data["variables"]
    imap = data.get("input_map") or {}
    g = data.get("global_object", "jets")
    with h5py.File(test_file, "r") as f:
        jets = f[imap.get(g, g)][:njets]
        arrays = {"jet_features": np.stack([jets[v] for v in variables[g]], -1)}
        masks = {}
        for name in input_names:
            if name == "jet_features":
                continue
            const = next(
                (c for c in variables if name in (f"{c}_features", f"{c.rstrip('s')}_features")),
                None,
            )
            if const is None:
                raise KeyError(f"ONNX input '{name}' matches no input of data.variables")
            rows = f[imap.get(const, const)][:njets]
            arrays[name] = np.stack([rows[v] for v in variables[const]], -1)
            masks[name] = rows["valid"]
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    samples = []
    for i in range(len(jets)):
        feed = {"jet_features": arrays["jet_features"][i : i + 1]}
        for name, valid in masks.items():
            feed[name] = np.ascontiguousarray(arrays[name][i][valid[i]])
        samples.append(feed)
    return samples


def time_session(onnx_path: Path, samples: list[dict], threads: int, reps: int) -> dict:
    """Jets/s of one onnxruntime session at ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    for feed in samples[:50]:
        sess.run(None, feed)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for feed in samples:
            sess.run(None, feed)
        rates.append(len(samples) / (time.perf_counter() - t0))
    return {
        "threads": threads,
        "reps_jets_per_s": rates,
        "jets_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--test-file", help="default: the run's data.test_file")
    p.add_argument("--njets", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--export", action="store_true", help="re-export even if network.onnx exists")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import onnxruntime as ort

    onnx_path = args.run_dir / "network.onnx"
    export_s = None
    if args.export or not onnx_path.exists():
        export_s = run_export(args.run_dir)
    cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    test_file = args.test_file or cfg["data"]["test_file"]
    names = [i.name for i in ort.InferenceSession(str(onnx_path)).get_inputs()]
    samples = load_samples(cfg, test_file, args.njets, names)
    per_thread = [time_session(onnx_path, samples, t, args.reps) for t in args.threads]
    n_const = [next((v.shape[0] for k, v in s.items() if k != "jet_features"), 0) for s in samples]
    result = {
        "onnx": str(onnx_path),
        "onnx_size_mb": onnx_path.stat().st_size / 1e6,
        "export_s": export_s,
        "test_file": test_file,
        "njets": len(samples),
        "mean_valid_constituents": float(np.mean(n_const)) if n_const else 0.0,
        "ort_version": ort.__version__,
        "inputs": names,
        "ort": per_thread,
        "jets_per_s": {str(r["threads"]): r["jets_per_s"] for r in per_thread},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": os.getloadavg()[0],
    }
    for r in per_thread:
        print(
            f"onnxruntime, {r['threads']} thread(s): {r['jets_per_s']:,.0f} jets/s "
            f"[{r['min']:,.0f}, {r['max']:,.0f}]"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
