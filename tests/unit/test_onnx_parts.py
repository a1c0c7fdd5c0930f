"""ONNX export building blocks: input layout, graph-friendly vertex finder, muP folding,
metadata round trip and CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from saltx.models.pair_components import connected_components
from saltx.onnx.check import session
from saltx.onnx.export import export_layout, feature_input_name, set_min_ir_version, vertex_index
from saltx.onnx.metadata import add_metadata, build_gnn_config, main, read_metadata, sequence_name
from saltx.onnx.outputs import (
    OutputPlan,
    onnx_class_suffix,
    onnx_model_name,
    parse_combination,
)


def test_layout_gathers_global_and_parameters_from_jet_features():
    variables = {
        "jets": ["pt_btagJes", "eta_btagJes"],
        "tracks": ["d0", "z0"],
        "electrons": ["pt"],
        "GLOBAL": ["eta_btagJes", "mass"],
        "PARAMETERS": ["mH"],
        "EDGE": ["dR"],
    }
    layout = export_layout(variables)
    assert layout.jet_variables == ["pt_btagJes", "eta_btagJes", "mass", "mH"]
    assert layout.gather == {"jets": [0, 1], "GLOBAL": [1, 2], "PARAMETERS": [3]}
    assert layout.constituents == ["tracks", "electrons"]
    assert layout.input_names == [
        "jet_features",
        "track_features",
        "electron_features",
        "edge_features",
    ]
    assert layout.dynamic_axes == {
        "track_features": {0: "n_tracks"},
        "electron_features": {0: "n_electrons"},
        "edge_features": {0: "n_tracks"},
    }


def test_names():
    assert feature_input_name("tracks") == "track_features"
    # Salt's rule: no '_' or '-' in the model name (Athena splits output names at '_')
    assert onnx_model_name("GN2-v01") == "GN2v01"
    assert onnx_model_name("GN2_v01") == "GN2v01"
    with pytest.raises(ValueError, match="neither '_' nor '-'"):
        onnx_model_name("GN2_v01", explicit=True)
    assert [sequence_name(c, "r22default") for c in ("tracks", "electrons", "hits")] == [
        "tracks_r22default_sd0sort",
        "electrons_r22default",
        "hits_var",
    ]
    assert [onnx_class_suffix(c) for c in ["bjets", "cjets", "ujets", "taujets"]] == [
        "pb",
        "pc",
        "pu",
        "ptau",
    ]


@pytest.mark.parametrize("seed", range(5))
def test_vertex_index_matches_pair_components(seed):
    g = torch.Generator().manual_seed(seed)
    n = 12
    adj = torch.rand(3, n, n, generator=g) > 0.85
    adj = adj | adj.transpose(1, 2)
    adj = adj & ~torch.eye(n, dtype=torch.bool)
    mask = torch.zeros(3, n, dtype=torch.bool)
    expected = connected_components(adj, mask)
    assert torch.equal(vertex_index(adj), expected)


def test_vertex_index_long_chain():
    n = 50  # a path graph needs many propagation steps
    adj = torch.zeros(1, n, n, dtype=torch.bool)
    idx = torch.arange(n - 1)
    adj[0, idx, idx + 1] = True
    adj[0, idx + 1, idx] = True
    assert torch.equal(vertex_index(adj), torch.zeros(1, n, dtype=torch.long))


def _tiny_onnx(path, opset=17):
    class M(nn.Module):
        def forward(self, jet, trk):
            return (jet.sum(-1) + trk.sum()).sigmoid()

    torch.onnx.export(
        M(),
        (torch.rand(1, 2), torch.rand(3, 2)),
        str(path),
        dynamo=False,
        input_names=["jet_features", "track_features"],
        output_names=["GN2_pb"],
        dynamic_axes={"track_features": {0: "n_tracks"}},
        opset_version=opset,
    )


def test_metadata_round_trip_and_cli(tmp_path, capsys):
    path = tmp_path / "network.onnx"
    _tiny_onnx(path)
    layout = export_layout({"jets": ["pt_btagJes", "eta_btagJes"], "tracks": ["d0", "z0"]})
    plan = OutputPlan("GN2", [("jet_classification", ["pb"])])
    cfg = build_gnn_config(
        {"name": "GN2", "data": {"batch_size": 3}},
        {"jet_classes": {0: "bjets"}},
        layout,
        "run/checkpoints/best.pt",
        plan,
    )
    add_metadata(path, cfg, doc="GN2")
    meta = read_metadata(path)
    assert meta["inputs"][0]["name"] == "jet_var"
    assert [v["name"] for v in meta["inputs"][0]["variables"]] == ["pt", "eta"]
    assert {v["offset"] for v in meta["inputs"][0]["variables"]} == {0.0}
    assert {v["scale"] for v in meta["inputs"][0]["variables"]} == {1.0}
    assert meta["input_sequences"][0]["name"] == "tracks_r22default_sd0sort"
    assert [v["name"] for v in meta["input_sequences"][0]["variables"]] == ["d0", "z0"]
    assert meta["config.yaml"]["name"] == "GN2"
    assert meta["onnx_model_version"] == "v1"
    assert meta["layers"] == [] and meta["nodes"] == []
    assert meta["combine_outputs"] == [] and meta["rename_outputs"] == {}
    model = onnx.load(str(path))
    assert model.doc_string == "GN2"
    assert [p.key for p in model.metadata_props] == ["gnn_config"]
    # the annotated model still runs
    out = session(path).run(
        None,
        {
            "jet_features": np.ones((1, 2), np.float32),
            "track_features": np.ones((0, 2), np.float32),
        },
    )
    assert out[0].shape == (1,)

    main([str(path)])
    text = capsys.readouterr().out
    assert text.startswith("Printing config for model: 'GN2' and key: 'gnn_config'")
    assert json.loads(text.split("\n", 1)[1])["model_name"] == "GN2"


def test_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_metadata(tmp_path / "missing.onnx")
    path = tmp_path / "n.onnx"
    _tiny_onnx(path)
    with pytest.raises(KeyError, match="gnn_config"):
        read_metadata(path)
    layout = export_layout({"jets": ["pt"], "tracks": ["d0"]})
    with pytest.raises(ValueError, match="track_selection"):
        plan = OutputPlan("GN2", [("jet_classification", ["pb"])])
        build_gnn_config({}, {}, layout, "c.pt", plan, track_selection="bogus")


def test_output_plan_renames_and_combinations():
    plan = OutputPlan(
        "GN2",
        [("jet_classification", ["pb", "pc", "pu", "ptau"])],
        rename={"pu": "plight"},
        combine=[parse_combination("pbc,pb,0.5*pc"), parse_combination("pq,plight")],
    )
    assert plan.names == ["GN2_pb", "GN2_pc", "GN2_plight", "GN2_ptau", "GN2_pbc", "GN2_pq"]
    assert plan.combination_indices() == [[(1.0, 0), (0.5, 1)], [(1.0, 2)]]
    # as salt-ml writes them into gnn_config
    assert plan.metadata() == {
        "combine_outputs": [["pbc", [[1.0, "pb"], [0.5, "pc"]]], ["pq", [[1.0, "plight"]]]],
        "rename_outputs": {"pu": "plight"},
    }
    for bad in ("pbc", "pbc,", "pbc,x*pb"):
        with pytest.raises(ValueError, match="combine_outputs"):
            parse_combination(bad)


def test_min_ir_version_for_the_opset(tmp_path):
    path = tmp_path / "network.onnx"
    _tiny_onnx(path)
    model = onnx.load(str(path))
    model.ir_version = 10  # what a newer exporter may write for the same opset
    onnx.save(model, str(path))
    assert set_min_ir_version(path) == 8  # opset 17 needs no more than IR 8
    assert onnx.load(str(path)).ir_version == 8
    assert session(path).run(
        None,
        {
            "jet_features": np.ones((1, 2), np.float32),
            "track_features": np.ones((2, 2), np.float32),
        },
    )
