"""ONNX Runtime throughput of a saltx run's exported graph, one jet per call (as Athena).

    python scripts/bench_onnx.py --run-dir RUN [--test-file F] [--njets 1000] [--reps 3] \\
        [--threads 2 1] [--export] [--variants plain aux] [--level extended] \\
        [--peer SALT.onnx] [--peer-aux SALT_AUX.onnx] [--pairs 3] [--floor] [--json out.json]

Variants: ``plain`` is ``RUN/network.onnx`` (the flavour outputs, what Athena schedules),
``aux`` is ``RUN/network_aux.onnx`` (plus track origin and vertex index). A variant's file
is written with ``python -m saltx.export run_dir=RUN overwrite=true [include_aux=true]``
when it is missing or ``--export`` is given; ``export_s`` then includes saltx's own
onnxruntime-vs-torch check, and ``max_abs_diff`` is the largest |ONNX - torch| it found.

Real test jets are fed one at a time with their valid constituents only:
``jet_features`` ``(1, F)``, ``track_features`` ``(n_tracks, F)``. Sessions use Athena's
options: ``intra_op_num_threads`` (each ``--threads`` value), 1 inter-op thread and
``ORT_ENABLE_EXTENDED`` graph optimisations (``--level``). Each session gets 50 warm-up
calls; a pass is one call per jet.

* Without a peer: ``--reps`` passes per session; ``jets_per_s`` is their median.
* Every pass is also timed in CPU seconds of this process (``*_per_cpu_s``): with one
  thread the calls run in this process's thread, so jets per CPU second leave out the
  time the process waited for a core on a shared machine.
* With ``--peer`` (a salt-ml ``network.onnx``, e.g. the kit's ``bench_onnx.py`` export)
  and/or ``--peer-aux``: the same jets go through saltx's and salt-ml's graphs in
  ``--pairs`` interleaved A B pairs (one pass each, in the same process and onnxruntime);
  each pair gives a ratio saltx/salt-ml, reported as median [min, max]. The peer's
  outputs must have the same names and ranks (``<name>_p<flavour>`` scalars).

With ``--floor``, each pair also times a third graph: only the weight-bearing ``Gemm`` and
``MatMul`` nodes of saltx's graph (after onnxruntime's optimisations), with their weights
and attributes, each fed zeros of the shape it sees for that jet (tracks, registers, one
row or pairs). A call fetches one output (onnxruntime runs every node whatever is
fetched), so the floor has no output copies. A graph of GN2 in standard fp32 operators
runs these products in onnxruntime's kernels (saltx's graph already forms q, k and v in
one ``Gemm``), so ``ceiling`` = floor jets/s / salt-ml jets/s is the highest saltx/salt-ml
ratio such a graph could reach on this machine, with all its other nodes free.

Node counts are reported for each graph as written and after onnxruntime's optimisations
at the session's level (what runs). The 1-minute load average before and after each
measurement is recorded next to it: on a shared machine, compare only figures taken
under similar load.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

VARIANT_FILES = {"plain": "network.onnx", "aux": "network_aux.onnx"}
LEVELS = ("basic", "extended", "all")


def run_export(run_dir: Path, aux: bool) -> dict[str, Any]:
    """Export ``run_dir`` (``include_aux`` for the aux variant) to its variant's file.

    Returns ``{"export_s": wall time, "max_abs_diff": the export's validation, "graph": ...}``.
    """
    cmd = [sys.executable, "-m", "saltx.export", f"run_dir={run_dir}", "overwrite=true"]
    plain = run_dir / VARIANT_FILES["plain"]
    kept = run_dir / "network.onnx.bench-keep"
    if aux:
        cmd.append("include_aux=true")
        if plain.exists():  # the export writes network.onnx: keep the plain graph aside
            os.replace(plain, kept)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if aux and proc.returncode == 0:
            os.replace(plain, run_dir / VARIANT_FILES["aux"])
    finally:
        if kept.exists():
            os.replace(kept, plain)
    dt = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (run_dir / f"export{'_aux' if aux else ''}.log").write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(
            f"saltx.export failed (rc {proc.returncode}) for {run_dir}: {log[-2000:]}"
        )
    diff = re.search(r"max \|Δ\| = ([0-9.e+-]+)", log)
    graph = re.search(r"^graph: (\w+)", log, re.MULTILINE)
    return {
        "export_s": dt,
        "max_abs_diff": float(diff.group(1)) if diff else None,
        "graph": graph.group(1) if graph else None,
    }


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


def session_options(threads: int, level: str, optimized_path: str | None = None):
    """Athena's session options (1 inter-op thread, ``level`` graph optimisations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def graph_info(path: Path, level: str) -> dict[str, Any]:
    """Node counts of the graph as written and as onnxruntime runs it, plus its interface."""
    import onnx

    model = onnx.load(str(path))
    optimized = optimized_graph(path, level)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    return {
        "nodes": len(model.graph.node),
        "nodes_optimized": len(optimized.graph.node),
        "ops_optimized": dict(ops.most_common()),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
        "outputs": {o.name: len(o.type.tensor_type.shape.dim) for o in model.graph.output},
        "size_mb": path.stat().st_size / 1e6,
    }


def optimized_graph(path: Path, level: str):
    """The graph onnxruntime runs at ``level`` (one thread), as an onnx model."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(
            str(path), session_options(1, level, out), providers=["CPUExecutionProvider"]
        )
        return onnx.load(out)


def weight_products(model) -> list[Any]:
    """The ``Gemm``/``FusedGemm``/``MatMul`` nodes whose second operand is a weight."""
    weights = {t.name for t in model.graph.initializer}
    ops = ("Gemm", "FusedGemm", "MatMul")
    return [n for n in model.graph.node if n.op_type in ops and n.input[1] in weights]


def n_constituents(sample: dict[str, np.ndarray]) -> int:
    """The valid constituents of one jet's feed (0 for a jets-only graph)."""
    return next((v.shape[0] for k, v in sample.items() if k != "jet_features"), 0)


def floor_graph(path: Path, level: str, samples: list[dict], out: Path) -> dict[str, Any]:
    """Write the weight-product floor of ``path`` to ``out`` (see the module docstring).

    Returns ``{"inputs": {name: [(a, b, c), ...]}, "products": N, "weight_mb": MB}``: a
    product input's shape for a jet with ``n`` constituents is ``a + b n + c n²`` per
    dimension (pairs of constituents are quadratic), read from three probe runs of the real
    graph. Inputs that are not weights (the activations, a bias computed in the graph)
    become zero-filled graph inputs.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = optimized_graph(path, level)
    products = weight_products(model)
    inits = {t.name: t for t in model.graph.initializer}
    fed = list(dict.fromkeys(x for n in products for x in n.input if x and x not in inits))
    probe = onnx.ModelProto()  # the real graph, with the fed values as outputs
    probe.CopyFrom(model)
    probe.graph.output.extend(
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in fed]
    )
    sess = ort.InferenceSession(
        probe.SerializeToString(), session_options(1, "basic"), providers=["CPUExecutionProvider"]
    )
    outs = [o.name for o in sess.get_outputs()]
    probes, shapes = (3, 5, 8), []
    for n in probes:
        base = next(s for s in samples if n_constituents(s) >= n)
        feed = {k: (v if k == "jet_features" else v[:n]) for k, v in base.items()}
        got = dict(zip(outs, sess.run(outs, {i.name: feed[i.name] for i in sess.get_inputs()})))
        shapes.append({x: got[x].shape for x in fed})
    inputs = {}
    for x in fed:
        dims = np.array([shape[x] for shape in shapes], dtype=float)  # (probe, dim)
        coef = np.linalg.solve(np.vander(np.array(probes, float), 3, increasing=True), dims)
        inputs[x] = [tuple(round(v) for v in col) for col in coef.T]
    rename = {x: f"x{i}" for i, x in enumerate(fed)}
    nodes, outputs, keep = [], [], {}
    for i, node in enumerate(products):
        new = helper.make_node(
            node.op_type,
            [rename.get(x, x) for x in node.input],
            [f"y{i}"],
            domain=node.domain,
            name=f"p{i}",
        )
        new.attribute.extend(node.attribute)
        nodes.append(new)
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
        keep.update({w: inits[w] for w in node.input if w in inits})
    graph = helper.make_graph(
        nodes,
        "weight_product_floor",
        [
            helper.make_tensor_value_info(rename[x], TensorProto.FLOAT, [None] * len(dims))
            for x, dims in inputs.items()
        ],
        outputs,
        list(keep.values()),
    )
    floor = helper.make_model(graph, opset_imports=list(model.opset_import))
    floor.ir_version = model.ir_version
    onnx.save(floor, str(out))
    weight_mb = sum(numpy_helper.to_array(inits[n.input[1]]).nbytes for n in products) / 1e6
    return {
        "inputs": {rename[x]: dims for x, dims in inputs.items()},
        "products": len(products),
        "weight_mb": weight_mb,
    }


def floor_samples(info: dict[str, Any], samples: list[dict]) -> list[dict]:
    """The floor graph's feeds: zeros of each input's shape for each jet."""
    feeds = []
    for s in samples:
        n = n_constituents(s)
        feeds.append(
            {
                x: np.zeros([a + b * n + c * n * n for a, b, c in dims], np.float32)
                for x, dims in info["inputs"].items()
            }
        )
    return feeds


def make_session(path: Path, threads: int, level: str) -> tuple[Any, list[str]]:
    """A session with Athena's options and its input names."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(path), session_options(threads, level), providers=["CPUExecutionProvider"]
    )
    return sess, [i.name for i in sess.get_inputs()]


def one_pass(
    sess, names: list[str], samples: list[dict], fetch: list[str] | None = None
) -> tuple[float, float]:
    """Jets per wall second and per CPU second (of this process) of one call per jet
    (fetching ``fetch``, default all outputs)."""
    feeds = [{k: s[k] for k in names} for s in samples]
    t0, c0 = time.perf_counter(), time.process_time()
    for feed in feeds:
        sess.run(fetch, feed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(feeds) / wall, len(feeds) / max(cpu, 1e-9)


def warm(sess, names: list[str], samples: list[dict]) -> None:
    for s in samples[:50]:
        sess.run(None, {k: s[k] for k in names})


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def measure(
    path: Path,
    peer: Path | None,
    samples: list[dict],
    threads: int,
    level: str,
    passes: int,
    floor: tuple[Path, list[dict]] | None = None,
) -> dict[str, Any]:
    """saltx alone (``passes`` passes), or saltx/peer in ``passes`` interleaved A B pairs
    (A B F triples with ``floor``: the floor graph and its feeds)."""
    load0 = os.getloadavg()[0]
    sx, sx_names = make_session(path, threads, level)
    warm(sx, sx_names, samples)
    res: dict[str, Any] = {"threads": threads}
    if peer is None:
        rates = [one_pass(sx, sx_names, samples) for _ in range(passes)]
        res["saltx"] = summary([r[0] for r in rates])
        res["saltx_per_cpu_s"] = summary([r[1] for r in rates])
    else:
        pe, pe_names = make_session(peer, threads, level)
        warm(pe, pe_names, samples)
        fl = fl_names = None
        if floor is not None:
            fl, fl_names = make_session(floor[0], threads, level)
            warm(fl, fl_names, floor[1])
        a, b, c = [], [], []
        for _ in range(passes):
            a.append(one_pass(sx, sx_names, samples))
            b.append(one_pass(pe, pe_names, samples))
            if fl is not None:  # onnxruntime runs every node whatever is fetched
                c.append(one_pass(fl, fl_names, floor[1], [fl.get_outputs()[-1].name]))
        for key, idx in (("", 0), ("_per_cpu_s", 1)):
            res[f"saltx{key}"] = summary([x[idx] for x in a])
            res[f"salt{key}"] = summary([y[idx] for y in b])
            res[f"ratio{key}"] = summary([x[idx] / y[idx] for x, y in zip(a, b, strict=True)])
            if c:
                res[f"floor{key}"] = summary([z[idx] for z in c])
                res[f"ceiling{key}"] = summary([z[idx] / y[idx] for z, y in zip(c, b, strict=True)])
    res["jets_per_s"] = res["saltx"]["median"]
    res["load_1min"] = [load0, os.getloadavg()[0]]
    return res


def check_peer_interface(ours: dict[str, Any], peer: dict[str, Any], what: str) -> None:
    """The peer's per-jet outputs must be ours (same names and ranks)."""
    ours_jet = {k: v for k, v in ours["outputs"].items() if v == 0}
    peer_jet = {k: v for k, v in peer["outputs"].items() if v == 0}
    if ours_jet != peer_jet:
        raise SystemExit(
            f"{what}: the per-jet outputs differ (saltx {ours_jet}, salt-ml {peer_jet}); "
            "compare graphs of the same tasks and model name"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--test-file", help="default: the run's data.test_file")
    p.add_argument("--njets", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3, help="passes per session (no peer)")
    p.add_argument("--pairs", type=int, default=3, help="A B pairs per session (with a peer)")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--variants", nargs="+", choices=list(VARIANT_FILES), default=["plain", "aux"])
    p.add_argument("--level", choices=LEVELS, default="extended", help="graph optimisations")
    p.add_argument("--export", action="store_true", help="re-export even if the files exist")
    p.add_argument("--peer", type=Path, help="salt-ml's network.onnx (plain variant)")
    p.add_argument("--peer-aux", type=Path, help="salt-ml's network.onnx with the aux tasks")
    p.add_argument(
        "--floor",
        action="store_true",
        help="with a peer: also time saltx's weight products alone (the ratio's ceiling)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import onnxruntime as ort

    peers = {"plain": args.peer, "aux": args.peer_aux}
    cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    test_file = args.test_file or cfg["data"]["test_file"]
    result: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "test_file": test_file,
        "ort_version": ort.__version__,
        "level": args.level,
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "variants": {},
    }
    samples = None
    for variant in args.variants:
        path = args.run_dir / VARIANT_FILES[variant]
        entry: dict[str, Any] = {"onnx": str(path), "export": None}
        if args.export or not path.exists():
            entry["export"] = run_export(args.run_dir, aux=variant == "aux")
        entry["graph"] = graph_info(path, args.level)
        peer = peers[variant]
        if peer is not None:
            entry["peer"] = {"onnx": str(peer), "graph": graph_info(peer, args.level)}
            check_peer_interface(entry["graph"], entry["peer"]["graph"], variant)
        if samples is None:
            names = [i.name for i in ort.InferenceSession(str(path)).get_inputs()]
            samples = load_samples(cfg, test_file, args.njets, names)
        passes = args.pairs if peer is not None else args.reps
        floor = None
        if args.floor and peer is not None:
            floor_path = args.run_dir / f"floor_{VARIANT_FILES[variant]}"
            info = floor_graph(path, args.level, samples, floor_path)
            entry["floor"] = {"onnx": str(floor_path), **info}
            floor = (floor_path, floor_samples(info, samples))
        entry["ort"] = [
            measure(path, peer, samples, t, args.level, passes, floor) for t in args.threads
        ]
        result["variants"][variant] = entry
    n_const = [n_constituents(s) for s in samples]
    result["njets"] = len(samples)
    result["mean_valid_constituents"] = float(np.mean(n_const)) if n_const else 0.0
    result["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_average_1min"] = os.getloadavg()[0]
    # the keys scripts/bench.py reads: the plain (or first) variant
    first = result["variants"].get("plain") or next(iter(result["variants"].values()))
    result["onnx"] = first["onnx"]
    result["onnx_size_mb"] = first["graph"]["size_mb"]
    result["export_s"] = (first["export"] or {}).get("export_s")
    result["inputs"] = list(samples[0]) if samples else []
    result["ort"] = first["ort"]
    result["jets_per_s"] = {str(r["threads"]): r["jets_per_s"] for r in first["ort"]}
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict[str, Any]) -> None:
    """Print the node counts and the jets/s table."""
    print(
        f"{result['njets']} jets, {result['mean_valid_constituents']:.1f} valid constituents "
        f"on average; onnxruntime {result['ort_version']}, {result['level']} optimisations"
    )
    print(f"load: {result['uptime_before']}")
    for variant, entry in result["variants"].items():
        g = entry["graph"]
        line = f"[{variant}] saltx nodes {g['nodes']} -> {g['nodes_optimized']} after onnxruntime"
        if "peer" in entry:
            pg = entry["peer"]["graph"]
            line += f"; salt-ml {pg['nodes']} -> {pg['nodes_optimized']}"
        if entry["export"]:
            ex = entry["export"]
            line += f"; export {ex['export_s']:.1f} s, graph {ex['graph']}, "
            line += f"max |Δ| vs torch {ex['max_abs_diff']:.1e}"
        print(line)
        if "floor" in entry:
            fl = entry["floor"]
            print(
                f"[{variant}] floor: {fl['products']} weight products, {fl['weight_mb']:.2f} MB "
                "of weights"
            )
        for r in entry["ort"]:
            s = r["saltx"]
            text = (
                f"[{variant}] {r['threads']} thread(s): saltx {s['median']:,.0f} jets/s "
                f"[{s['min']:,.0f}, {s['max']:,.0f}]"
            )
            if "salt" in r:
                q, ratio, cpu = r["salt"], r["ratio"], r["ratio_per_cpu_s"]
                text += (
                    f", salt-ml {q['median']:,.0f} [{q['min']:,.0f}, {q['max']:,.0f}], "
                    f"ratio {ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] "
                    f"({len(ratio['values'])} pairs; per CPU s {cpu['median']:.2f})"
                )
            if "ceiling" in r:
                fl, ce = r["floor"], r["ceiling"]
                text += (
                    f"; weight products alone {fl['median']:,.0f} jets/s, ceiling of the ratio "
                    f"{ce['median']:.2f} [{ce['min']:.2f}, {ce['max']:.2f}]"
                )
            text += f"; load {r['load_1min'][0]:.1f} -> {r['load_1min'][1]:.1f}"
            print(text)
    print(f"load: {result['uptime_after']}")


if __name__ == "__main__":
    sys.exit(main() and 0)
