"""Benchmark the training DataLoader (GN2 inputs and labels) in jets per second.

    python scripts/bench_dataloader.py --file train.h5 --batch-size 1000 --workers 4 \
        [--num-batches 200] [--reps 5] [--json out.json] [--conversion] [--profile 100]

``--make N`` writes a synthetic file of N jets first (when ``--file`` does not exist).
``--conversion`` also times ways of turning the structured track records into float32.
``--profile N`` then reads N batches under cProfile in this process: where a batch's time
goes (self time per function). The file may be a packed one (``python -m saltx.data.pack``).
Prints the median jets/s over the reps; ``--json`` writes ``jets_per_s`` and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import saltx.config
from saltx.data.dataset import DEFAULT_READ_THREADS, JetDataset, _field_runs, gather_fields
from saltx.data.h5 import RowReader
from saltx.data.loader import build_dataloader

# GN2's inputs, from the same file the training configs use
GN2_VARIABLES = OmegaConf.to_container(
    OmegaConf.load(Path(saltx.config.__file__).parent / "conf/data/variables/gn2.yaml")
)
GN2_LABELS = {
    "jets": ["flavour_label"],
    "tracks": ["ftagTruthOriginLabel", "ftagTruthVertexIndex"],
}


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's live children (loader workers); Linux only."""
    total, me = 0.0, str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def time_loader(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Jets/s of each rep (one rep = ``num_batches`` batches of one epoch), by wall time
    and by CPU time (main process plus workers; robust to other jobs on the machine)."""
    dataset = JetDataset(
        args.file, GN2_VARIABLES, labels=GN2_LABELS, seed=0, read_threads=args.read_threads
    )
    loader = build_dataloader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        seed=0,
        pin_memory=args.pin_memory,
        prefetch_factor=args.prefetch_factor,
        shared_slots=not args.no_shared_slots,
    )
    num = min(args.num_batches, len(loader))
    rates, cpu_rates = [], []
    for rep in range(args.reps + 1):  # rep 0 warms up (worker start, page cache)
        loader.set_epoch(rep)
        jets = 0
        start, cpu = time.perf_counter(), time.process_time() + children_cpu_s()
        for i, batch in enumerate(loader):
            jets += batch.num_jets
            if i + 1 == num:
                break
        elapsed = time.perf_counter() - start
        cpu = time.process_time() + children_cpu_s() - cpu
        if rep > 0:
            rates.append(jets / elapsed)
            cpu_rates.append(jets / cpu)
            print(
                f"rep {rep}: {jets} jets in {elapsed:.3f} s = {jets / elapsed:,.0f} jets/s "
                f"({jets / cpu:,.0f} jets per CPU-s)"
            )
    return rates, cpu_rates


def time_conversions(path: str, batch_size: int, repeats: int = 5) -> dict[str, float]:
    """Jets/s of several structured -> float32 strategies on the track inputs.

    ``subset_*``: HDF5 reads only the wanted fields (it converts field by field);
    ``fields_s2u``: h5py's ``ds.fields(names)``; ``full_*``: read whole records (h5py's
    read_direct, still converting), then numpy (a per-field loop, ``structured_to_
    unstructured``, or the run gather); ``raw_runs``: whole records with the file type as
    memory type (a byte copy) and the run gather; ``chunks_runs``: the stored chunks
    decoded in place (``RowReader.read_rows``, what JetDataset does where it can) and the
    run gather.
    """
    import h5py
    from numpy.lib.recfunctions import structured_to_unstructured

    names = GN2_VARIABLES["tracks"]
    with h5py.File(path, "r") as f:
        ds = f["tracks"]
        n = min(ds.shape[0] // batch_size, 20) * batch_size
        subset = np.dtype([(v, ds.dtype[v]) for v in names])
        full = np.empty((batch_size, ds.shape[1]), ds.dtype)
        part = np.empty((batch_size, ds.shape[1]), subset)
        runs = _field_runs(ds.dtype, names)

        def subset_s2u(s: slice) -> np.ndarray:
            ds.read_direct(part, s)
            return structured_to_unstructured(part, dtype=np.float32)

        def fields_s2u(s: slice) -> np.ndarray:
            return structured_to_unstructured(ds.fields(names)[s], dtype=np.float32)

        def full_loop(s: slice) -> np.ndarray:
            ds.read_direct(full, s)
            out = np.empty((*full.shape, len(names)), np.float32)
            for k, v in enumerate(names):
                out[..., k] = full[v]
            return out

        def full_s2u(s: slice) -> np.ndarray:
            ds.read_direct(full, s)
            return structured_to_unstructured(full[names], dtype=np.float32)

        def full_runs(s: slice) -> np.ndarray:
            ds.read_direct(full, s)
            return gather_fields(full, runs, len(names))

        reader = RowReader(ds)
        hdf5_reader = RowReader(ds)
        hdf5_reader.decoders = None  # HDF5 decodes

        def raw_runs(s: slice) -> np.ndarray:
            hdf5_reader.read(full, s.start)
            return gather_fields(full, runs, len(names))

        def chunks_runs(s: slice) -> np.ndarray:  # what JetDataset does
            rows = reader.read_rows(s.start, s.stop) if reader.chunked else ds[s]
            return gather_fields(rows, runs, len(names))

        strategies = [subset_s2u, fields_s2u, full_loop, full_s2u, full_runs, raw_runs]
        strategies.append(chunks_runs)
        ref = full_loop(np.s_[0:batch_size])
        results = {}
        for fn in strategies:
            np.testing.assert_array_equal(
                np.nan_to_num(fn(np.s_[0:batch_size])), np.nan_to_num(ref)
            )
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for a in range(0, n, batch_size):
                    fn(np.s_[a : a + batch_size])
                best = min(best, time.perf_counter() - start)
            results[fn.__name__] = n / best
            print(f"conversion {fn.__name__:12s} {n / best:>12,.0f} jets/s")
    return results


def profile_batches(args: argparse.Namespace, top: int = 12) -> dict:
    """cProfile of ``args.profile`` shuffled batches read in this process (no workers):
    where a batch's time goes, by function (self time), as ms per batch and share."""
    import cProfile
    import pstats

    dataset = JetDataset(
        args.file, GN2_VARIABLES, labels=GN2_LABELS, seed=0, read_threads=args.read_threads
    )
    loader = build_dataloader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=1
    )
    it = iter(loader)
    next(it)  # open the file, first reads
    n = min(args.profile, len(loader) - 1)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(n):
        next(it)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (path, line, name), (_, _, tottime, _, _) in st.stats.items():
        where = f"{Path(path).name}:{name}" if line else name
        rows.append({"function": where, "ms_per_batch": 1e3 * tottime / n})
    rows.sort(key=lambda r: -r["ms_per_batch"])
    for r in rows:
        r["share"] = r["ms_per_batch"] / (1e3 * wall / n)
    return {"batches": n, "ms_per_batch": 1e3 * wall / n, "functions": rows[:top]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--num-batches", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prefetch-factor", type=int, default=4)
    parser.add_argument("--pin-memory", action="store_true")
    parser.add_argument(
        "--read-threads",
        type=int,
        default=DEFAULT_READ_THREADS,
        help="chunk-decoding threads per process (JetDataset's default, as in training)",
    )
    parser.add_argument(
        "--no-shared-slots", action="store_true", help="use torch's default worker transport"
    )
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--make", type=int, help="write a synthetic file of this many jets")
    parser.add_argument(
        "--compression", default="none", help="filter of the --make file: none (like Salt) or lzf"
    )
    parser.add_argument("--conversion", action="store_true", help="time conversion strategies")
    parser.add_argument(
        "--profile", type=int, default=0, help="then cProfile this many batches (no workers)"
    )
    args = parser.parse_args(argv)

    if args.make and not Path(args.file).exists():
        from saltx.data.synthetic import write_split

        start = time.perf_counter()
        compression = None if args.compression == "none" else args.compression
        write_split(Path(args.file), args.make, 0, "train", 40, 10, compression=compression)
        print(f"wrote {args.file} ({args.make} jets) in {time.perf_counter() - start:.1f} s")
    result: dict = {
        "file": args.file,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "shared_slots": not args.no_shared_slots,
        "read_threads": args.read_threads,
        "cpus": os.cpu_count(),
    }
    if args.conversion:
        result["conversion_jets_per_s"] = time_conversions(args.file, args.batch_size)
    load = os.getloadavg()[0]
    rates, cpu_rates = time_loader(args)
    result["reps_jets_per_s"] = rates
    result["jets_per_s"] = statistics.median(rates)
    result["jets_per_cpu_s"] = statistics.median(cpu_rates)
    result["load_average_1min"] = [load, os.getloadavg()[0]]
    print(
        f"median: {result['jets_per_s']:,.0f} jets/s, {result['jets_per_cpu_s']:,.0f} jets per "
        f"CPU-s (batch {args.batch_size}, {args.workers} workers, load {load:.1f})"
    )
    if args.profile:
        result["profile"] = prof = profile_batches(args)
        print(f"profile: {prof['ms_per_batch']:.2f} ms per batch (cProfile), self time:")
        for r in prof["functions"]:
            print(f"  {r['function']:<40} {r['ms_per_batch']:7.2f} ms  {100 * r['share']:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
