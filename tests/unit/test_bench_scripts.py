"""The benchmark scripts' pure parts: FLOP counting, token selection, comparison, results.

The scripts live in ``scripts/`` (not a package); they are imported by path. Nothing here
times anything.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from saltx.data.batch import Batch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("bench")
flops = _load("flops")
bench_eval = _load("bench_eval")


def _batch(valid_counts: list[int], n_slots: int = 5, feats: int = 3) -> Batch:
    """Tracks ``(B, n_slots, feats)`` where track value = slot index + 1; valid slots are
    scattered (last slots first) so that selection must reorder them."""
    b = len(valid_counts)
    mask = torch.ones(b, n_slots, dtype=torch.bool)
    for i, n in enumerate(valid_counts):
        mask[i, n_slots - n :] = False  # valid slots at the end
    x = torch.arange(1, n_slots + 1, dtype=torch.float32).view(1, n_slots, 1).expand(b, -1, feats)
    return Batch(
        {"jets": torch.randn(b, 2), "tracks": x.clone()},
        {"tracks": mask},
        {
            "jets": {"flavour_label": torch.arange(b)},
            "tracks": {"ftagTruthOriginLabel": torch.arange(n_slots).repeat(b, 1)},
        },
    )


class TinyModel(torch.nn.Module):
    """Per-token linear plus a pairwise term, so FLOPs grow with n and n**2."""

    def __init__(self, f: int = 3, d: int = 4) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(f, d, bias=False)

    def forward(self, inputs, masks, labels=None):
        h = self.lin(inputs["tracks"])  # (B, N, d)
        pair = torch.bmm(h, h.transpose(1, 2))  # (B, N, N)
        losses = {} if labels is None else {"x": pair.float().mean() + h.mean()}
        return {"pair": pair}, losses


def test_select_jets_moves_valid_slots_first_and_cuts():
    batch = _batch([2, 4, 1])
    sub = flops.select_jets(batch, torch.tensor([0, 1]), 4)
    assert sub.inputs["tracks"].shape == (2, 4, 3)
    assert sub.masks["tracks"].shape == (2, 4)
    # jet 0: valid slots 4, 5 (values 4, 5) come first
    assert sub.inputs["tracks"][0, :2, 0].tolist() == [4.0, 5.0]
    assert not sub.masks["tracks"][0, :2].any() and sub.masks["tracks"][0, 2:].all()
    assert not sub.masks["tracks"][1].any()
    # per-track labels are cut with the same order; per-jet labels only selected
    assert sub.labels["tracks"]["ftagTruthOriginLabel"][0, :2].tolist() == [3, 4]
    assert sub.labels["jets"]["flavour_label"].tolist() == [0, 1]


def test_count_flops_of_a_matmul():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert flops.count_flops(lambda: torch.mm(a, b)) == 2 * 3 * 5 * 7


def test_cpu_attention_is_counted():
    q = torch.randn(1, 2, 6, 4)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    counted = flops.count_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    )
    assert counted == 2 * (2 * 2 * 6 * 4 * 6)  # QK^T and PV


def test_useful_flops_scale_with_valid_tokens():
    model = TinyModel()
    batch = _batch([2, 4, 1, 2])
    useful, hist = flops.useful_flops(model, batch, backward=False)
    assert hist == {1: 1, 2: 2, 4: 1}

    def expected(n: int) -> int:  # linear 2*n*3*4 + bmm 2*n*4*n
        return 2 * n * 3 * 4 + 2 * n * 4 * n

    assert useful == expected(1) + 2 * expected(2) + expected(4)
    padded = flops.padded_flops(model, batch, backward=False)
    assert padded == expected(5)
    assert flops.useful_flops(model, batch, backward=True)[0] > useful


def test_useful_flops_need_one_constituent_input():
    batch = _batch([1, 2])
    two = Batch(batch.inputs, {**batch.masks, "electrons": batch.masks["tracks"]}, batch.labels)
    with pytest.raises(ValueError, match="exactly one masked"):
        flops.useful_flops(TinyModel(), two, backward=False)


def test_compare_flags_only_figures_more_than_10_percent_worse():
    old = {
        "a": {"value": 100.0, "better": "higher"},
        "b": {"value": 100.0, "better": "higher"},
        "m": {"value": 1000.0, "better": "lower"},
        "f": {"value": 5.0, "better": "none"},
    }
    new = {
        "a": {"value": 89.0, "better": "higher"},  # 11% slower: flagged
        "b": {"value": 91.0, "better": "higher"},  # 9%: not flagged
        "m": {"value": 1150.0, "better": "lower"},  # 15% more memory: flagged
        "f": {"value": 1.0, "better": "none"},  # not a performance figure
        "n": {"value": 1.0, "better": "higher"},  # new figure: nothing to compare
    }
    flagged = {x["figure"]: x for x in bench.compare(new, old)}
    assert set(flagged) == {"a", "m"}
    assert flagged["a"]["change"] == pytest.approx(-0.11)
    assert bench.compare(new, None) == []


def test_ratio_entry_pairs_and_targets():
    r = bench.ratio_entry("x", [300.0, 200.0, None, 90.0], [100.0, 100.0, 100.0, 0.0])
    assert r["values"] == [3.0, 2.0]  # pairs with a missing side are skipped
    assert (r["min"], r["median"], r["max"], r["n"]) == (2.0, 2.5, 3.0, 2)
    targets = bench.target_status(
        {"dataloader": {"median": 3.5}, "train_peak_rss": {"median": 1.2}}
    )
    by_key = {t["key"]: t for t in targets}
    assert by_key["dataloader"]["met"] is True
    assert by_key["train_peak_rss"]["met"] is False
    assert by_key["eval"]["met"] is None


def test_write_results_keeps_other_sections(tmp_path: Path):
    figs = bench.Figures()
    figs.add_stats("train.gn2.eager_fp32.jets_per_s", [10.0, 12.0, 11.0], "jets/s", "GN2 train")
    figs.add("skipped", None, "jets/s", "absent")
    assert "skipped" not in figs.items
    assert figs.items["train.gn2.eager_fp32.jets_per_s"]["value"] == 11.0
    bench.write_results(tmp_path, "bench", {"meta": {}, "figures": figs.items})
    bench.write_results(tmp_path, "quick", {"meta": {}, "figures": {}})
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) == {"bench", "quick"}
    md = (tmp_path / "results.md").read_text()
    assert "| GN2 train | 11.0 | jets/s | 10.0 – 12.0 (3) |" in md


def test_steady_rate_leaves_out_warmup():
    marks = [0.0, 5.0, 6.0, 7.0]
    r = bench_eval.steady_rate(marks, [100, 100, 100], warmup=1)
    assert r["jets_per_s"] == pytest.approx(200 / 2.0)
    assert r["jets_per_s_all"] == pytest.approx(300 / 7.0)
    assert bench_eval.steady_rate(marks[:2], [100], warmup=1)["jets_per_s"] == pytest.approx(20.0)


def _measured(data: dict, name: str = "m") -> object:
    m = bench.Measured(name, 0, 1.0, 1.0, 1.0, 0.0, 1.0, "")
    m.data = data
    return m


def test_each_experiment_keeps_its_peak_and_mfu_uses_the_runs_own():
    """Two experiments' FLOP runs no longer overwrite one peak key; a training run that
    timed torch.mm itself is compared with that peak."""
    figs = bench.Figures()
    model = {f"{k}_{kind}_flops_per_jet": 1e8 for k in ("train", "forward") for kind in
             ("useful", "padded")}  # fmt: skip
    for exp, peak in (("gn2", 160.0), ("demo", 120.0)):
        fl = _measured({"model": model, "peak": {"gflops_best": peak, "size": 2048, "threads": 2}})
        train = {"eager_fp32": _measured({"jets_per_s": 500.0, "peak_gflops": 100.0})}
        if exp == "demo":
            train = {"eager_fp32": _measured({"jets_per_s": 500.0})}  # no own peak
        bench.flops_figures(figs, fl, train, exp)
    f = figs.items
    assert f["peak.gn2.flops_run.mm_fp32_gflops"]["value"] == 160.0
    assert f["peak.demo.flops_run.mm_fp32_gflops"]["value"] == 120.0
    assert "peak.mm_fp32_gflops" not in f
    assert f["peak.gn2.eager_fp32.mm_fp32_gflops"]["value"] == 100.0
    # 1e8 FLOP/jet x 500 jets/s = 50 GFLOP/s: 50% of gn2's own 100, 42% of demo's 120
    assert f["achieved.gn2.eager_fp32.useful_gflops"]["fraction_of_peak"] == pytest.approx(0.5)
    assert f["achieved.demo.eager_fp32.useful_gflops"]["fraction_of_peak"] == pytest.approx(
        50 / 120
    )


def test_docs_blocks_are_rewritten_from_the_results(tmp_path: Path):
    doc = tmp_path / "performance.md"
    doc.write_text(
        "intro\n<!-- bench:bench -->\nold table\n<!-- /bench:bench -->\nmiddle\n"
        "<!-- bench:peer -->\nold peer\n<!-- /bench:peer -->\nend\n"
    )
    figs = bench.Figures()
    figs.add("dataloader.packed.w1.jets_per_s", 250000.0, "jets/s", "data loading, packed")
    sec = {"meta": {"commit": "abc1234", "date": "today"}, "figures": figs.items}
    assert bench.update_docs({"bench": sec}, doc)
    text = doc.read_text()
    assert "old table" not in text and "old peer" in text  # only the bench block changed
    assert "commit `abc1234`" in text and "| data loading, packed | 250,000 |" in text
    tail = "middle\n<!-- bench:peer -->\nold peer\n<!-- /bench:peer -->\nend\n"
    assert text.startswith("intro\n") and text.endswith(tail)
    assert not bench.update_docs({"bench": sec}, doc)  # same results: unchanged


def test_contention_tables():
    prof = {"ops": [{"op": "aten::addmm", "self_ms_per_step": 100.0},
                    {"op": "aten::add", "self_ms_per_step": 10.0}]}  # fmt: skip
    slow = {"ops": [{"op": "aten::addmm", "self_ms_per_step": 150.0},
                    {"op": "aten::add", "self_ms_per_step": 80.0}]}  # fmt: skip
    rows = [
        {"load": "none", "k": 0, "saltx": 400.0, "salt": 80.0, "profile": prof},
        {"load": "torch", "k": 1, "saltx": 150.0, "salt": 40.0, "profile": slow,
         "saltx_threads": [[2, 1, 1], [1, 1, 1]]},
    ]  # fmt: skip
    table = bench.slowdown(rows)
    assert table == [
        {"op": "aten::addmm", "idle": 100.0, "torch1": 150.0},
        {"op": "aten::add", "idle": 10.0, "torch1": 80.0},
    ]
    assert "| `aten::add` | 10 | 80 (8.0×) |" in bench.slowdown_rows(table)
    for row in rows:  # what run_contention adds before the table is printed
        row["saltx_of_fair_share"] = row["saltx"] / (400.0 / (1 + row["k"]))
    text = "\n".join(bench.contention_rows({"contention": rows}))
    assert "| 1 × torch | 150 | " in text and "| 2 1 1 / 1 1 1 |" in text


# -- bench_physics --combine ----------------------------------------------------------------
def _physics_doc(path: Path, seeds: dict[str, list[int]], settings: dict, commit: str) -> Path:
    meta = {
        "date": f"2026-12-0{len(commit)}T00:00:00",
        "saltx_commit": commit,
        "settings": settings,
        "seeds": sorted({s for v in seeds.values() for s in v}),
        "variants": {name: {"name": name} for name in seeds},
        "wall_min": 10.0,
        "failures": [],
        "work": str(path.parent),
        "quick": False,
    }
    runs = {name: [{"seed": s, "params": 1} for s in reversed(ss)] for name, ss in seeds.items()}
    path.write_text(json.dumps({"meta": meta, "summary": {}, "runs": runs}))
    return path


def test_physics_combine_pools_seeds_and_refuses_mixed_settings(tmp_path):
    physics = _load("bench_physics")
    settings = {"n_train": 100, "difficulty": 2.0}
    a = _physics_doc(tmp_path / "a.json", {"salt-ml": [1, 2], "saltx-fast": [1]}, settings, "aa")
    b = _physics_doc(tmp_path / "b.json", {"salt-ml": [4, 3]}, settings, "bbb")
    meta, runs = physics.combine([a, b])
    assert [r["seed"] for r in runs["salt-ml"]] == [1, 2, 3, 4]
    assert [r["seed"] for r in runs["saltx-fast"]] == [1]
    assert meta["seeds"] == [1, 2, 3, 4] and meta["wall_min"] == 20.0
    assert meta["saltx_commit"] == "aa + bbb" and len(meta["parts"]) == 2

    # pooling a pooled file again keeps which commit ran which seeds
    pooled = tmp_path / "ab.json"
    pooled.write_text(json.dumps({"meta": meta, "summary": {}, "runs": runs}))
    c = _physics_doc(tmp_path / "c5.json", {"saltx-fast": [5]}, settings, "cc")
    meta2, _ = physics.combine([pooled, c])
    assert [p["saltx_commit"] for p in meta2["parts"]] == ["aa", "bbb", "cc"]

    again = _physics_doc(tmp_path / "c.json", {"salt-ml": [2]}, settings, "c")
    with pytest.raises(SystemExit, match="salt-ml seed 2 is in two files"):
        physics.combine([a, again])
    other = _physics_doc(tmp_path / "d.json", {"salt-ml": [9]}, {**settings, "n_train": 5}, "d")
    with pytest.raises(SystemExit, match="other settings"):
        physics.combine([a, other])
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"not a bench_physics physics\.json"):
        physics.combine([a, tmp_path / "e.json"])


# -- check_step_parity ------------------------------------------------------------------------
def test_step_parity_differences_per_group():
    """Differences are measured against each group's scale: a gradient that is zero in
    exact arithmetic (attention key bias, pooling gate bias) holds rounding noise on both
    sides and must not read as a 100 % difference; a real one must show."""
    parity = _load("check_step_parity")
    ref = {
        "encoder.layers.0.attn.linear_k.weight": torch.tensor([1.0, -2.0]),
        "encoder.layers.0.attn.linear_k.bias": torch.tensor([1e-20, 0.0]),
        "pooling.gate.weight": torch.tensor([0.5, 0.25]),
        "pooling.gate.bias": torch.tensor([3e-20]),
        "tasks.jet_classification.net.net.0.weight": torch.tensor([4.0]),
    }
    ours = {k: v.clone() for k, v in ref.items()}
    ours["encoder.layers.0.attn.linear_k.bias"] = torch.tensor([-1e-20, 2e-20])
    ours["pooling.gate.bias"] = torch.tensor([-3e-20])
    ours["tasks.jet_classification.net.net.0.weight"] = torch.tensor([4.004])
    diffs = parity.per_group(ours, ref)
    assert set(diffs) == {"encoder.layers.0.attn", "pooling", "tasks.jet_classification"}
    assert diffs["encoder.layers.0.attn"] < 1e-18 and diffs["pooling"] < 1e-18
    assert diffs["tasks.jet_classification"] == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match=r"pooling\.gate\.bias"):
        parity.per_group({k: v for k, v in ours.items() if k != "pooling.gate.bias"}, ref)


def test_step_parity_batch_sequence():
    """Full batches only, each a contiguous slice, every batch once before any repeats."""
    parity = _load("check_step_parity")
    slices = parity.batch_slices(2750, 500, 8, seed=1)
    assert all(b - a == 500 and a % 500 == 0 and b <= 2500 for a, b in slices)
    assert sorted(a for a, _ in slices[:5]) == [0, 500, 1000, 1500, 2000]
    assert slices[5:] == slices[:3]


def test_onnx_floor_keeps_every_weight_product_with_its_shapes(tmp_path: Path):
    """The floor graph holds exactly the products with a weight operand (not the one between
    two activations), with their weights, and each input gets the shape the real graph
    gives it for any constituent count: rows, a computed bias, and pairs (n x n)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    bench_onnx = _load("bench_onnx")
    rng = np.random.default_rng(0)
    w = {
        k: rng.standard_normal(s).astype(np.float32)
        for k, s in (("w1", (4, 6)), ("w2", (6, 3)), ("w3", (6, 5)), ("b", (6,)))
    }
    nodes = [
        helper.make_node("Gemm", ["jet_features", "w1", "b"], ["jb"]),  # 1 row
        helper.make_node("Reshape", ["jb", "flat"], ["bias"]),  # a bias computed in the graph
        helper.make_node("Gemm", ["track_features", "w1", "bias"], ["h"]),  # n rows
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Unsqueeze", ["r", "ax1"], ["ri"]),
        helper.make_node("Unsqueeze", ["r", "ax0"], ["rj"]),
        helper.make_node("Add", ["ri", "rj"], ["pairs3"]),  # (n, n, 6)
        helper.make_node("Reshape", ["pairs3", "rows6"], ["pairs"]),  # (n², 6)
        helper.make_node("MatMul", ["pairs", "w3"], ["po"]),
        helper.make_node("Unsqueeze", ["r", "ax2"], ["rk"]),  # (n, 6, 1)
        helper.make_node("MatMul", ["ri", "rk"], ["att"]),  # two activations: not a product
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([-1, 6], np.int64), "rows6"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("jet_features", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("track_features", TensorProto.FLOAT, ["n", 4]),
        ],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in ("o", "po", "att")],
        inits,
    )
    path = tmp_path / "g.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    samples = [
        {
            "jet_features": rng.standard_normal((1, 4)).astype(np.float32),
            "track_features": rng.standard_normal((n, 4)).astype(np.float32),
        }
        for n in (9, 2, 7, 0)
    ]
    info = bench_onnx.floor_graph(path, "extended", samples, tmp_path / "floor.onnx")
    assert info["products"] == 4  # 2 Gemm (maybe fused with the Relu) + 2 MatMul
    assert info["weight_mb"] == pytest.approx((2 * 24 + 18 + 30) * 4 / 1e6)
    feeds = bench_onnx.floor_samples(info, samples)
    sess = ort.InferenceSession(str(tmp_path / "floor.onnx"), providers=["CPUExecutionProvider"])
    for s, feed in zip(samples, feeds, strict=True):
        n = s["track_features"].shape[0]
        shapes = sorted(v.shape for v in feed.values())
        assert shapes == sorted([(1, 4), (6,), (n, 4), (n, 6), (n * n, 6)]), n
        outs = sess.run(None, feed)
        assert sorted(o.shape for o in outs) == sorted([(1, 6), (n, 6), (n, 3), (n * n, 5)])


def test_physics_ratio_interval_brackets_the_ratio_and_separates_only_real_gaps():
    physics = _load("bench_physics")
    ref = [3.9, 3.7, 4.1, 3.8, 4.0]
    same = [v * 1.0 for v in reversed(ref)]
    lo, hi = physics.ratio_interval(same, ref)
    assert lo < 1.0 < hi and hi - lo < 0.12  # equal samples: 1 inside, a narrow interval
    assert physics.ratio_interval(same, ref) == (lo, hi)  # the same runs, the same interval
    lo, hi = physics.ratio_interval([v * 1.3 for v in ref], ref)
    assert 1.0 < lo < 1.3 < hi  # a 30 % gap over this spread: 1 is excluded
    lo, hi = physics.ratio_interval([3.9, 3.9, 3.9], [3.8, 4.0, 3.9])
    assert lo < 1.0 < hi


def _paired_run(seed: int, c_rej: float) -> dict:
    val = [{"step": 100, "jet_classification": 0.8, "track_origin": 0.5, "track_vertexing": 0.9}]
    figures = {"light_rej_77": 70.0, "light_rej_70": 150.0, "c_rej_70": 5.5}
    run = {"seed": seed, "params": 1, "train_s": 1.0, "val": val, "lr": [[0, 1e-7]]}
    return {**run, "c_rej_77": c_rej, **figures}


def test_physics_pairs_resolve_what_the_seed_spread_hides():
    physics = _load("bench_physics")
    spread = [3.70, 4.05, 3.85, 3.95, 3.78, 4.10]  # seed to seed, shared by a pair
    partner = [_paired_run(s, c) for s, c in enumerate(spread, 1)]
    ours = [_paired_run(s, c * 1.01 + 0.002 * (-1) ** s) for s, c in enumerate(spread, 1)]
    ours.append(_paired_run(99, 9.0))  # a seed its partner did not run: not a pair
    runs = {"salt-ml-paired": partner, "saltx-salt013-paired": ours}
    pair = physics.summarise(runs)["paired"]["saltx-salt013-paired"]
    assert pair["partner"] == "salt-ml-paired" and pair["seeds"] == [1, 2, 3, 4, 5, 6]
    c = pair["c_rej_77"]
    assert c["ratio"] == pytest.approx(1.01, abs=1e-3)
    lo, hi = c["interval_95"]
    assert 1.0 < lo < c["ratio"] < hi < 1.02  # pairs: a 1 % gain is resolved
    unpaired = physics.ratio_interval([r["c_rej_77"] for r in ours[:-1]], spread)
    assert unpaired[0] < 1.0 < unpaired[1]  # the same runs unpaired: it is not
    assert c["difference"]["std"] < 0.01 < c["partner"]["std"]
    target = [t for t in physics.summarise(runs)["targets"] if "paired parity: c" in t["target"]]
    assert target[0]["met"] and target[0]["seeds"] == [6, 6]
