"""Train → evaluate → export on tiny synthetic files, and the errors users hit on the way."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from numpy.lib import recfunctions as rfn
from omegaconf import OmegaConf

import saltx
from saltx.data.labels import read_class_names
from saltx.errors import DataError
from saltx.evaluate import evaluate
from saltx.export import export
from saltx.models.build import build_model
from saltx.onnx.check import session
from saltx.onnx.export import export_layout
from saltx.onnx.metadata import main as metadata_main
from saltx.run import RunDirError, load_run
from saltx.train import train

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
N_TEST = 300  # conftest.SYNTHETIC_COUNTS["test"]
TINY = (
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.out_dim=16",
    "data.batch_size=100",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
)
WPS = {"60", "70", "77", "85"}
QUICK = ("validate.trials=1", "validate.max_constituents=6")  # shorter export validation


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    if name == "train":
        OmegaConf.resolve(cfg)
    return cfg


def make_run_dir(data_dir: Path, out: Path, *overrides: str, class_names=None) -> Path:
    """A run directory without training: config.yaml, norm dict and an initial checkpoint.

    The class dict is not copied: evaluation falls back to ``data.class_dict``.
    """
    cfg = compose_cfg(
        "train", *TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *overrides
    )
    norm = yaml.safe_load((data_dir / "norm_dict.yaml").read_text())
    classes = class_names or read_class_names(str(data_dir / "train.h5"))
    torch.manual_seed(0)
    class_dict = yaml.safe_load((data_dir / "class_dict.yaml").read_text())
    model = build_model(cfg, norm, class_dict, classes)
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict()}, out / "checkpoints" / "last.pt")
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (out / "norm_dict.yaml").write_text(yaml.safe_dump(norm))
    return out


@pytest.fixture(scope="module")
def demo_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = compose_cfg(
        "train",
        "+experiment=demo",
        *TINY,
        "trainer.max_epochs=1",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=1",
        f"paths.data_dir={synthetic_dir}",
        f"paths.output_dir={out}",
    )
    train(cfg)
    return out


def test_evaluate_writes_predictions_metrics_and_plots(demo_run: Path) -> None:
    result = evaluate(compose_cfg("evaluate", f"run_dir={demo_run}", "write_tracks=true"))
    pred = demo_run / "predictions" / "best__test_test.h5"
    assert result["predictions"] == str(pred)
    with h5py.File(pred) as f:
        jets, tracks = f["jets"][:], f["tracks"][:]
        assert list(f["jets"].attrs["flavour_label"]) == ["bjets", "cjets", "ujets", "taujets"]
    assert jets.shape == (N_TEST,)
    probs = np.stack([jets[f"demo_{p}"] for p in ("pb", "pc", "pu", "ptau")], -1)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert {"pt", "eta", "flavour_label", "ref_pb"} <= set(jets.dtype.names)
    assert tracks.shape == (N_TEST, 40)
    pad = tracks["mask"]
    np.testing.assert_array_equal(pad, ~tracks["valid"])
    assert tracks.dtype["VertexIndex"] == np.int64  # as salt-ml 0.13 writes it
    assert (tracks["VertexIndex"][pad] == np.iinfo(np.int32).min).all()
    assert (tracks["VertexIndex"][~pad] >= 0).all()
    origin = np.stack([tracks[n] for n in tracks.dtype.names if n.startswith("demo_p")], -1)
    assert origin.shape[-1] == 8
    np.testing.assert_allclose(origin[~pad].sum(-1), 1.0, atol=1e-5)
    assert (origin[pad] == 0).all()

    metrics = json.loads((demo_run / "predictions" / "metrics.json").read_text())
    assert metrics["n_jets"] == N_TEST
    assert metrics["btag"]["fractions"] == {"fc": 0.2, "fu": 0.8, "ftau": 0.0}
    for tagger in ("demo", "ref"):
        assert set(metrics["btag"][tagger]["ujets"]) == WPS
        assert set(metrics["btag"][tagger]["cjets"]) == WPS
    assert set(metrics["ctag"]["demo"]["ujets"]) == WPS
    acc = metrics["track_origin"]["track_origin"]
    assert 0.0 <= acc["accuracy"] <= 1.0 and acc["n_tracks"] == int((~pad).sum())
    vtx = metrics["vertexing"]["track_vertexing"]
    assert vtx["tp"] + vtx["fn"] > 0
    for png in metrics["plots"]:
        assert Path(png).is_file() and Path(png).stat().st_size > 1000
    assert {Path(p).name for p in metrics["plots"]} >= {"roc_bvsu.png", "roc_bvsc.png", "D_b.png"}
    leftovers = [p.name for p in (demo_run / "predictions").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_evaluate_subset_fields_and_checkpoint(demo_run: Path, synthetic_dir: Path) -> None:
    evaluate(
        compose_cfg(
            "evaluate",
            f"run_dir={demo_run}",
            "ckpt=last",
            "data.num_test=120",
            "jet_fields=[pt,eta]",
            f"data.test_file={synthetic_dir / 'test.h5'}",
            "batch_size=50",
            "plots=false",
            "f_c=0.1",
        )
    )
    with h5py.File(demo_run / "predictions" / "last__test_test.h5") as f:
        assert "tracks" not in f
        jets = f["jets"][:]
    assert jets.dtype.names == ("pt", "eta", "demo_pb", "demo_pc", "demo_pu", "demo_ptau")
    assert jets.shape == (120,)
    with h5py.File(synthetic_dir / "test.h5", locking=False) as f:
        np.testing.assert_array_equal(jets["pt"], f["jets"]["pt"][:120])
    metrics = json.loads((demo_run / "predictions" / "metrics.json").read_text())
    assert metrics["btag"]["fractions"]["fc"] == 0.1


def _padded_torch_probs(model, layout, jet, tracks, width=40):
    """The torch model on a padded batch (B=1, N=width, mask True = padded)."""
    n = tracks.shape[0]
    x = torch.zeros(1, width, tracks.shape[1])
    x[0, :n] = tracks
    mask = torch.ones(1, width, dtype=torch.bool)
    mask[0, :n] = False
    inputs = {"jets": jet[:, layout.gather["jets"]], "tracks": x}
    with torch.no_grad():
        preds, _ = model(inputs, {"tracks": mask})
        probs = model.tasks["jet_classification"].predict(preds)["probs"][0]
        batch = {"masks": {"tracks": mask}}
        origin = model.tasks["track_origin"].predict(preds, batch)["probs"][0, :n].argmax(-1)
        vertex = model.tasks["track_vertexing"].predict(preds, batch)["vertex_index"][0, :n]
    return probs.numpy(), origin.numpy(), vertex.numpy()


def test_export_with_aux_matches_padded_evaluation(demo_run: Path, capsys) -> None:
    result = export(
        compose_cfg("export", f"run_dir={demo_run}", "include_aux=true", "validate.trials=1")
    )
    path = demo_run / "network.onnx"
    assert result["path"] == str(path)
    names = ["demo_pb", "demo_pc", "demo_pu", "demo_ptau", "demo_TrackOrigin", "demo_VertexIndex"]
    assert result["outputs"] == names
    assert result["graph"] == "single"
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["jet_features", "track_features"]
    dims = model.graph.input[1].type.tensor_type.shape.dim
    assert dims[0].dim_param == "n_tracks"
    assert [p.key for p in model.metadata_props] == ["gnn_config"]

    run = load_run(str(demo_run))
    layout = export_layout(OmegaConf.to_container(run.cfg.data.variables))
    sess = session(path)
    gen = torch.Generator().manual_seed(7)
    for n in (0, 1, 7, 40):
        jet = torch.rand(1, len(layout.jet_variables), generator=gen) * 3
        trk = torch.randn(n, len(layout.constituent_variables["tracks"]), generator=gen)
        got = sess.run(names, {"jet_features": jet.numpy(), "track_features": trk.numpy()})
        probs, origin, vertex = _padded_torch_probs(run.model, layout, jet, trk)
        onnx_probs = np.concatenate([np.ravel(g) for g in got[:4]])
        assert all(g.shape == () for g in got[:4])  # per-jet scalars, as Salt writes them
        assert np.isfinite(onnx_probs).all()
        np.testing.assert_allclose(onnx_probs, probs, rtol=0, atol=1e-5)
        assert got[4].shape == (n,) and got[4].dtype == np.int8
        np.testing.assert_array_equal(got[4], origin)
        np.testing.assert_array_equal(got[5], vertex)

    with pytest.raises(FileExistsError, match="overwrite=true"):
        export(compose_cfg("export", f"run_dir={demo_run}"))
    # the temporary folder of a killed export is removed by the next one
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = demo_run / f".saltx-onnx-{host}-{dead.pid}-x1y2"
    orphan.mkdir()
    (orphan / "network.onnx").write_bytes(b"partial")
    with pytest.raises(ValueError, match="neither '_' nor '-'"):
        export(compose_cfg("export", f"run_dir={demo_run}", "overwrite=true", "name=GN2-x"))
    export(compose_cfg("export", f"run_dir={demo_run}", "overwrite=true", "name=GN2x", *QUICK))
    assert not orphan.exists()
    assert not list(demo_run.glob(".saltx-onnx-*"))
    assert [o.name for o in onnx.load(str(path)).graph.output] == [
        "GN2x_pb",
        "GN2x_pc",
        "GN2x_pu",
        "GN2x_ptau",
    ]
    capsys.readouterr()
    meta = metadata_main([str(path)])
    assert meta["model_name"] == "GN2x"
    assert [v["name"] for v in meta["inputs"][0]["variables"]] == ["pt", "eta"]
    assert "Printing config for model: 'GN2x'" in capsys.readouterr().out


def test_export_gn2emu_has_one_input_per_constituent_type(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    run = make_run_dir(synthetic_dir, tmp_path / "emu", "+experiment=gn2emu")
    result = export(compose_cfg("export", f"run_dir={run}", "include_aux=true", *QUICK))
    assert result["inputs"] == ["jet_features", "track_features", "electron_features"]
    # GLOBAL (soft-muon) variables follow the jet variables in jet_features
    assert result["jet_variables"][:2] == ["pt_btagJes", "eta_btagJes"]
    assert "softMuon_pt" in result["jet_variables"]
    model = onnx.load(str(run / "network.onnx"))
    axes = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input}
    assert axes["electron_features"] == "n_electrons"
    meta = json.loads(model.metadata_props[0].value)
    assert [s["name"] for s in meta["input_sequences"]] == [
        "tracks_r22default_sd0sort",
        "electrons_r22default",
    ]
    # different constituent counts per type, including none
    sess = session(run / "network.onnx")
    n_trk, n_el = (len(s["variables"]) for s in meta["input_sequences"])
    rng = np.random.default_rng(0)
    feed = {
        "jet_features": rng.random((1, len(result["jet_variables"])), "f4"),
        "track_features": rng.random((5, n_trk), "f4"),
        "electron_features": np.zeros((0, n_el), "f4"),
    }
    outs = sess.run(None, feed)
    assert np.isfinite(np.concatenate([np.ravel(o) for o in outs[:4]])).all()
    assert outs[-1].shape == (5,)


def test_export_parameterised_model(synthetic_dir: Path, tmp_path: Path) -> None:
    run = make_run_dir(synthetic_dir, tmp_path / "param", "+experiment=gn2_param")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    params = cfg["data"]["variables"]["PARAMETERS"]
    result = export(compose_cfg("export", f"run_dir={run}", *QUICK))
    assert result["jet_variables"][-len(params) :] == params


def test_missing_run_dir_and_checkpoint(tmp_path: Path, synthetic_dir: Path) -> None:
    with pytest.raises(RunDirError, match="run directory not found"):
        evaluate(compose_cfg("evaluate", f"run_dir={tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=r"no config\.yaml"):
        export(compose_cfg("export", f"run_dir={tmp_path / 'empty'}"))
    run = make_run_dir(synthetic_dir, tmp_path / "run")
    with pytest.raises(RunDirError, match=r"checkpoint best not found.*last\.pt"):
        evaluate(compose_cfg("evaluate", f"run_dir={run}", "ckpt=best"))
    with pytest.raises(RunDirError, match="not found"):
        export(compose_cfg("export", f"run_dir={run}", f"ckpt={tmp_path / 'x.pt'}"))


def test_test_file_without_model_variables(tmp_path: Path, synthetic_dir: Path) -> None:
    run = make_run_dir(synthetic_dir, tmp_path / "run")
    bad = tmp_path / "test_bad.h5"
    with h5py.File(synthetic_dir / "test.h5") as src, h5py.File(bad, "w") as dst:
        for name in src:
            data = src[name][:50]
            if name == "tracks":
                data = rfn.drop_fields(data, ["d0"], usemask=False)
            dst.create_dataset(name, data=data)
            for k, v in src[name].attrs.items():
                dst[name].attrs[k] = v
    with pytest.raises(DataError, match="d0"):
        evaluate(compose_cfg("evaluate", f"run_dir={run}", f"data.test_file={bad}"))
    assert not (run / "predictions" / "last__test_bad.h5").exists()


def test_class_list_that_does_not_match_the_head(tmp_path: Path, synthetic_dir: Path) -> None:
    three = ["bjets", "cjets", "ujets"]
    run = make_run_dir(
        synthetic_dir,
        tmp_path / "run",
        f"model.tasks.jet_classification.class_names=[{','.join(three)}]",
        "model.tasks.jet_classification.use_class_dict=false",
        class_names=three,
    )
    # the file's flavour_label has four classes, the trained head three
    with pytest.raises(ValueError, match="class list does not match"):
        evaluate(compose_cfg("evaluate", f"run_dir={run}"))
    # a config edited to four classes no longer fits the checkpoint's 3-output head
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["tasks"]["jet_classification"]["class_names"] = [*three, "taujets"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"4 classes .* 3 outputs"):
        export(compose_cfg("export", f"run_dir={run}"))


def test_write_tracks_with_truncated_inputs(tmp_path: Path, synthetic_dir: Path) -> None:
    run = make_run_dir(
        synthetic_dir, tmp_path / "run", "+experiment=demo", "+data.num_inputs.tracks=10"
    )
    evaluate(
        compose_cfg(
            "evaluate", f"run_dir={run}", "write_tracks=true", "plots=false", "track_fields=[valid]"
        )
    )
    with h5py.File(run / "predictions" / "last__test_test.h5") as f:
        tracks = f["tracks"][:]
    # the file's 40 slots are kept; slots the model did not see are padded in the outputs
    assert tracks.shape == (N_TEST, 40)
    assert tracks.dtype.names[:2] == ("valid", "demo_pPileup")
    assert tracks["mask"][:, 10:].all()
    assert (tracks["VertexIndex"][:, 10:] == np.iinfo(np.int32).min).all()
    assert (tracks["demo_pFake"][:, 10:] == 0).all()
    np.testing.assert_array_equal(tracks["mask"][:, :10], ~tracks["valid"][:, :10])
