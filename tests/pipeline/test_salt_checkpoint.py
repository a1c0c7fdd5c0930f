"""Salt checkpoints in: from the salt-ml 0.13 fixture, with nothing typed by hand.

Convert the fixture's config and checkpoint, evaluate the fixture's test file, export, and
fine-tune; saltx's predictions must match the file `salt test` wrote to 1e-5 (fields,
dtypes and padding included). tests/fixtures/salt/README.md says how the fixture was made.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

import saltx
from saltx.evaluate import evaluate
from saltx.export import export
from saltx.salt.checkpoint import convert_checkpoint, map_weights, read_salt_checkpoint
from saltx.salt.config import SaltConfigError, write_experiment
from saltx.salt.config import compose as compose_train
from saltx.train import train

FIX = Path(__file__).parents[1] / "fixtures" / "salt"
SALT_CKPT = next((FIX / "run" / "ckpts").glob("*.ckpt"))
SALT_PREDICTIONS = next((FIX / "run" / "ckpts").glob("*__test_test_zprime.h5"))
SALT_CONFIG = FIX / "run" / "config.yaml"
TEST_FILE = FIX / "test_zprime.h5"
CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
TOLERANCE = 1e-5


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("salt") / "run"
    assert convert_checkpoint(SALT_CKPT, SALT_CONFIG, out) == str(out)
    return out


def evaluate_fixture(run_dir: Path, *extra: str) -> dict:
    return evaluate(
        compose_cfg(
            "evaluate",
            f"run_dir={run_dir}",
            f"data.test_file={TEST_FILE}",
            "data.batch_size=32",
            "write_tracks=true",
            "plots=false",
            *extra,
        )
    )


def compare(salt_file: Path, saltx_file: Path) -> dict[str, float]:
    """Max |difference| of every float field; asserts everything else is identical."""
    diffs = {}
    with h5py.File(salt_file) as a, h5py.File(saltx_file) as b:
        assert list(a) == list(b)
        for name in a:
            x, y = a[name][:], b[name][:]
            assert x.dtype == y.dtype, f"{name}: Salt {x.dtype.descr} vs saltx {y.dtype.descr}"
            assert x.shape == y.shape
            for field in x.dtype.names:
                u, v = x[field], y[field]
                if u.dtype.kind == "f":
                    np.testing.assert_array_equal(np.isnan(u), np.isnan(v))
                    diffs[f"{name}.{field}"] = float(np.nanmax(np.abs(u - v.astype(u.dtype))))
                else:
                    np.testing.assert_array_equal(u, v, err_msg=f"{name}.{field}")
    return diffs


def test_run_directory_layout(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "metadata.yaml",
        "norm_dict.yaml",
        "class_dict.yaml",
        "checkpoints",
    }
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert "encoder.layers.0.attn.linear_q.weight" in state["model"]
    meta = yaml.safe_load((run_dir / "metadata.yaml").read_text())
    assert meta["jet_classes"] == {0: "bjets", 1: "cjets", 2: "ujets", 3: "taujets"}
    assert meta["converted_from_salt"]["global_step"] == 120
    # the norm dict holds exactly the checkpoint's InputNorm buffers
    salt_state = read_salt_checkpoint(SALT_CKPT)["state_dict"]
    norm = yaml.safe_load((run_dir / "norm_dict.yaml").read_text())
    assert norm["tracks"]["d0"]["std"] == float(salt_state["norm.tracks_stds"][0])
    cls = yaml.safe_load((run_dir / "class_dict.yaml").read_text())
    salt_cls = yaml.safe_load((FIX / "run" / "class_dict.yaml").read_text())
    for label in ("flavour_label", "ftagTruthOriginLabel"):
        dataset = "jets" if label == "flavour_label" else "tracks"
        np.testing.assert_allclose(cls[dataset][label], salt_cls[dataset][label], rtol=1e-6)


def test_predictions_match_salt(run_dir, capsys):
    result = evaluate_fixture(run_dir)
    out = Path(result["predictions"])
    assert out.name == SALT_PREDICTIONS.name.replace("epoch=003-val_loss=0.93312", "best")
    diffs = compare(SALT_PREDICTIONS, out)
    with capsys.disabled():
        worst = max(diffs, key=diffs.get)
        n = len(diffs)
        print(f"\nsaltx vs salt-ml 0.13: max |diff| {diffs[worst]:.3g} ({worst}), {n} fields")
    assert max(diffs.values()) <= TOLERANCE
    assert {"jets.GN2_pb", "tracks.GN2_pPileup"} <= set(diffs)
    with h5py.File(out) as f:  # Salt's padding of VertexIndex, checked beyond equality
        tracks = f["tracks"][:]
    assert tracks.dtype["VertexIndex"] == np.int64
    assert (tracks["VertexIndex"][tracks["mask"]] == np.iinfo(np.int32).min).all()
    assert len(np.unique(tracks["VertexIndex"][~tracks["mask"]])) > 3  # real vertices


def test_weights_map_one_to_one(run_dir):
    """Every Salt parameter lands in one saltx parameter; q/k/v are Salt's packed rows."""
    salt = read_salt_checkpoint(SALT_CKPT)["state_dict"]
    ours = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    packed = salt["model.encoder.layers.1.attn.fn.in_proj_weight"]
    got = [ours[f"encoder.layers.1.attn.linear_{n}.weight"] for n in "qkv"]
    torch.testing.assert_close(torch.cat(got), packed, rtol=0, atol=0)
    n_salt = sum(v.numel() for k, v in salt.items() if "norm." not in k and "loss" not in k)
    n_ours = sum(v.numel() for k, v in ours.items() if not k.startswith("input_norm"))
    assert n_salt - 2 == n_ours  # the register mask is a buffer saltx does not keep
    with pytest.raises(ValueError, match=r"model\.encoder\.layers\.0\.attn\.fn\.q_norm\.weight"):
        map_weights({"model.encoder.layers.0.attn.fn.q_norm.weight": torch.ones(2)}, [], [])


def test_test_suff_parameters_and_beside_checkpoint(run_dir):
    a = evaluate_fixture(run_dir, "test_suff=m40", "beside_ckpt=true")
    pred = run_dir / "checkpoints" / "best__test_test_zprime_m40.h5"
    assert a["predictions"] == str(pred) and pred.is_file()
    assert a["metrics_file"] == str(run_dir / "predictions" / "m40" / "metrics.json")
    b = evaluate_fixture(run_dir, "test_suff=m55")
    assert Path(b["predictions"]).name == "best__test_test_zprime_m55.h5"
    assert compare(pred, Path(b["predictions"])) and pred.is_file()  # side by side
    with pytest.raises(KeyError, match=r"parameters.mass: the run has no PARAMETERS input"):
        evaluate_fixture(run_dir, "parameters={mass: 40}")


def test_export(run_dir):
    result = export(
        compose_cfg(
            "export", f"run_dir={run_dir}", "validate.trials=1", "validate.max_constituents=4"
        )
    )
    assert result["path"] == str(run_dir / "network.onnx") and Path(result["path"]).is_file()
    assert result["outputs"][:4] == ["GN2_pb", "GN2_pc", "GN2_pu", "GN2_ptau"]
    assert result["max_abs_diff"] < 1e-4


def test_finetune_from_converted_checkpoint(run_dir, tmp_path, synthetic_dir):
    exp = tmp_path / "conf" / "experiment" / "tiny.yaml"
    write_experiment(SALT_CONFIG, exp)
    d = synthetic_dir
    cfg = compose_train(
        [
            "+experiment=tiny",
            f"ckpt_path={run_dir / 'checkpoints' / 'best.pt'}",
            f"data.train_file={d / 'train.h5'}",
            f"data.val_file={d / 'val.h5'}",
            f"data.norm_dict={run_dir / 'norm_dict.yaml'}",
            f"data.class_dict={d / 'class_dict.yaml'}",
            "data.num_train=200",
            "data.num_val=100",
            "trainer.max_steps=2",
            "trainer.progress_bar=false",
            f"paths.output_dir={tmp_path / 'ft'}",
        ],
        tmp_path / "conf",
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"])
    last = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["step"] == 2  # a new run: steps count from the Salt weights
    start = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    moved = last["model"]["pooling.gate.weight"] - start["pooling.gate.weight"]
    assert 0 < moved.abs().max() < 0.1  # trained on from Salt's weights, not from scratch


def test_checkpoint_errors(run_dir, tmp_path):
    with pytest.raises(FileExistsError, match=r"--force"):
        convert_checkpoint(SALT_CKPT, SALT_CONFIG, run_dir)
    saltx_ckpt = run_dir / "checkpoints" / "best.pt"
    with pytest.raises(ValueError, match=r"a saltx checkpoint needs no conversion"):
        convert_checkpoint(saltx_ckpt, SALT_CONFIG, tmp_path / "a")
    seed = FIX / "configs" / "gn2_seed.yaml"
    with pytest.raises(SaltConfigError, match=r"seed-era"):
        convert_checkpoint(SALT_CKPT, seed, tmp_path / "b")
    edges = yaml.safe_load(SALT_CONFIG.read_text())
    edges["data"]["edge_constructors"] = [{"input_name": "tracks", "edge_features": ["dR"]}]
    init = edges["model"]["model"]["init_args"]
    init["edge_init_nets"] = [{"input_name": "tracks", "dense_config": {"output_size": 4}}]
    init["encoder"]["init_args"]["edge_embed_dim"] = 4
    (tmp_path / "edges.yaml").write_text(yaml.safe_dump(edges))
    with pytest.raises(SaltConfigError, match=r"EdgeAttention updates edges"):
        convert_checkpoint(SALT_CKPT, tmp_path / "edges.yaml", tmp_path / "d")
    wider = yaml.safe_load(SALT_CONFIG.read_text())
    enc = wider["model"]["model"]["init_args"]["encoder"]["init_args"]
    enc["num_registers"] = 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(wider))
    with pytest.raises(ValueError, match=r"encoder\.registers: saltx \(3, 16\) vs Salt \(2, 16\)"):
        convert_checkpoint(SALT_CKPT, other, tmp_path / "c")
    assert not (tmp_path / "c").exists()
