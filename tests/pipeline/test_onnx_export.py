"""The exported ONNX graph: Salt's format (against files salt-ml exported), the single-jet
graph and its fallback, and the output options (tasks, renames, combinations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_evaluate_export import QUICK, compose_cfg, make_run_dir

from saltx.export import export
from saltx.onnx import singlejet
from saltx.onnx.check import session

SALT = Path(__file__).resolve().parents[1] / "fixtures" / "salt_onnx"


def _interface(model: onnx.ModelProto) -> dict:
    """Name -> (element type, dims) of every graph input and output."""

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        v.name: (v.type.tensor_type.elem_type, dims(v))
        for v in [*model.graph.input, *model.graph.output]
    }


def _layout(value):
    """The JSON structure with the leaves' types only (lists by their first element)."""
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_layout(value[0])] if value else []
    return type(value).__name__ if value is not None else "null"


@pytest.mark.parametrize(
    ("fixture", "options"),
    [
        ("network.onnx", []),
        (
            "network_aux.onnx",
            [
                "include_aux=true",
                "rename_outputs={pu: plight}",
                'combine_outputs=["pbc,pb,0.5*pc"]',
            ],
        ),
    ],
)
def test_declares_what_salt_declares(synthetic_dir, tmp_path, fixture, options):
    salt = onnx.load(str(SALT / fixture))
    run = make_run_dir(synthetic_dir, tmp_path / "run", "+experiment=gn2")
    result = export(compose_cfg("export", f"run_dir={run}", *options, *QUICK))
    ours = onnx.load(result["path"])
    # names, element types, ranks and dynamic axes of every input and output
    assert _interface(ours) == _interface(salt)
    assert [o.name for o in ours.graph.output] == [o.name for o in salt.graph.output]
    # no newer ONNX than salt-ml's: loads wherever Salt's files load
    assert ours.ir_version <= salt.ir_version
    assert ours.opset_import[0].version <= salt.opset_import[0].version
    # one metadata entry, gnn_config, with Salt's keys and layout
    assert [p.key for p in ours.metadata_props] == [p.key for p in salt.metadata_props]
    assert ours.doc_string == salt.doc_string == "GN2"
    meta = json.loads(ours.metadata_props[0].value)
    ref = json.loads(salt.metadata_props[0].value)
    assert sorted(meta) == sorted(ref)
    same = ("layers", "nodes", "onnx_model_version", "output_names", "model_name")
    assert {k: meta[k] for k in same} == {k: ref[k] for k in same}
    assert meta["combine_outputs"] == ref["combine_outputs"]
    assert meta["rename_outputs"] == ref["rename_outputs"]
    assert meta["inputs"] == ref["inputs"]  # names, offsets 0, scales 1
    assert meta["input_sequences"] == ref["input_sequences"]
    skip = {"config.yaml", "metadata.yaml", "salt_export_hash"}  # saltx's own content
    assert {k: _layout(v) for k, v in meta.items() if k not in skip} == {
        k: _layout(v) for k, v in ref.items() if k not in skip
    }
    # both run with Athena's session options on the same jet and give the same shapes
    rng = np.random.default_rng(0)
    feed = {"jet_features": rng.random((1, 2), "f4"), "track_features": rng.random((7, 19), "f4")}
    got = [o.shape for o in session(result["path"]).run(None, feed)]
    assert got == [o.shape for o in session(SALT / fixture).run(None, feed)]


@pytest.mark.parametrize(
    ("experiment", "graph"),
    [
        ("gn2emu", "single"),  # electrons: two constituent inputs
        ("gn2_param", "single"),  # PARAMETERS attached to the init net
        ("gn2_global", "single"),  # GLOBAL after pooling
        ("gn2_mup", "single"),  # muP: scale 1/d, folded MuReadout
        ("gn2_gatv2", "generic"),
        ("gn2_edges", "generic"),
    ],
)
def test_graph_per_experiment(synthetic_dir, tmp_path, experiment, graph):
    """Every experiment exports with aux outputs, validated against torch to 1e-5."""
    run = make_run_dir(synthetic_dir, tmp_path / "run", f"+experiment={experiment}")
    result = export(compose_cfg("export", f"run_dir={run}", "include_aux=true", *QUICK))
    assert result["graph"] == graph
    assert result["max_abs_diff"] < 1e-5
    if graph == "generic":
        with pytest.raises(ValueError, match="graph=single"):
            export(compose_cfg("export", f"run_dir={run}", "graph=single", "overwrite=true"))


def test_single_graph_is_short_and_forced_generic_agrees(synthetic_dir, tmp_path):
    run = make_run_dir(synthetic_dir, tmp_path / "run", "+experiment=gn2")
    single = export(compose_cfg("export", f"run_dir={run}", *QUICK))
    nodes = onnx.load(single["path"]).graph.node
    ops = {n.op_type for n in nodes}
    assert not ops & {"Where", "Not", "IsNaN", "Shape", "Expand", "Pad"}  # no mask logic
    generic = export(
        compose_cfg("export", f"run_dir={run}", "graph=generic", "overwrite=true", *QUICK)
    )
    assert generic["graph"] == "generic" and single["graph"] == "single"
    assert len(nodes) < len(onnx.load(generic["path"]).graph.node) / 3


def test_falls_back_when_single_graph_disagrees(synthetic_dir, tmp_path, monkeypatch, capsys):
    """A model variant the single-jet graph does not reproduce exports the generic graph."""
    run = make_run_dir(synthetic_dir, tmp_path / "run", "+experiment=gn2")

    def no_ffn(self, i, layer, x):  # a layer the single graph gets wrong
        return x + self._attention(i, layer.attn, layer.norm1(x))

    monkeypatch.setattr(singlejet.SingleJetRepresentation, "_layer", no_ffn)
    result = export(compose_cfg("export", f"run_dir={run}", *QUICK))
    assert result["graph"] == "generic"
    assert "does not reproduce this model" in capsys.readouterr().out
    from saltx.onnx.check import ONNXValidationError

    with pytest.raises(ONNXValidationError, match="differ"):
        export(compose_cfg("export", f"run_dir={run}", "graph=single", "overwrite=true", *QUICK))


def test_tasks_renames_and_combinations(synthetic_dir, tmp_path):
    run = make_run_dir(
        synthetic_dir,
        tmp_path / "run",
        "+experiment=gn2",
        "model/tasks=[jet_classification,jet_regression]",
        "model.tasks.jet_regression.target_denominators=null",
        "+model.tasks.jet_regression.norm_params={mean: 5.0, std: 2.0}",
    )
    opts = ("rename_outputs={ptau: ptaujet}", 'combine_outputs=["plight,pu,0.5*pc"]', *QUICK)
    result = export(compose_cfg("export", f"run_dir={run}", *opts))
    # every global task, in order: probabilities, then the regression target (unscaled)
    assert result["outputs"] == [
        "GN2_pb",
        "GN2_pc",
        "GN2_pu",
        "GN2_ptaujet",
        "GN2_HadronConeExclTruthLabelPt",
        "GN2_plight",
    ]
    sess = session(result["path"])
    rng = np.random.default_rng(1)
    out = sess.run(
        None,
        {"jet_features": rng.random((1, 2), "f4"), "track_features": rng.random((4, 19), "f4")},
    )
    assert all(o.shape == () for o in out)
    np.testing.assert_allclose(out[5], out[2] + 0.5 * out[1], rtol=1e-6)
    only = export(
        compose_cfg(
            "export", f"run_dir={run}", "tasks=[jet_classification]", "overwrite=true", *QUICK
        )
    )
    assert only["outputs"] == ["GN2_pb", "GN2_pc", "GN2_pu", "GN2_ptau"]
    for bad, match in [
        ("tasks=[track_origin]", "not tasks on 'jets'"),
        ("rename_outputs={px: py}", "no output 'px'"),
        ('combine_outputs=["pq,pz"]', "no output 'pz'"),
    ]:
        with pytest.raises(ValueError, match=match):
            export(compose_cfg("export", f"run_dir={run}", bad, "overwrite=true"))


def test_ratio_regression_needs_its_denominator(synthetic_dir, tmp_path):
    run = make_run_dir(
        synthetic_dir,
        tmp_path / "run",
        "+experiment=gn2",
        "model/tasks=[jet_classification,jet_regression]",
    )
    with pytest.raises(ValueError, match="'jet_regression' predicts its targets as ratios"):
        export(compose_cfg("export", f"run_dir={run}"))
