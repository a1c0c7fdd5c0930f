"""Salt configs in: `python -m saltx.salt config` converts each generation of Salt YAML.

The inputs are our own small Salt configs (tests/fixtures/salt/configs, written from
salt-semantics.md) and variants of them built here; the salt-ml 0.13 ones are the fixture's
config (gn2_tiny.yaml) and the config `salt fit` saved for it. Every converted experiment
is composed, built on synthetic data and run forward and backward once; the parameter
counts equal Salt's where Salt's count is known.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from saltx.assemble import build_model
from saltx.data.class_weights import load_class_dict
from saltx.data.labels import read_class_names
from saltx.data.loader import build_datasets
from saltx.data.norm import load_norm_dict
from saltx.models.build import required_labels
from saltx.salt.__main__ import main as salt_main
from saltx.salt.config import (
    SaltConfigError,
    compose,
    convert_config,
    load_salt_config,
    write_experiment,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "salt"
SEED_GN2 = load_salt_config(FIXTURES / "configs" / "gn2_seed.yaml")
SEED_GN2EMU = load_salt_config(FIXTURES / "configs" / "gn2emu_seed.yaml")
TINY_013 = load_salt_config(FIXTURES / "gn2_tiny.yaml")
RUN_013 = load_salt_config(FIXTURES / "run" / "config.yaml")
GN1_TRACKS = ["numberOfPixelHoles", "numberOfSCTHoles"]


def _args(cfg: dict) -> dict:
    return cfg["model"]["model"]["init_args"]


def _tasks(cfg: dict) -> list[dict]:
    return _args(cfg)["tasks"]["init_args"]["modules"]


def gn1() -> dict:
    """GN1 (salt-semantics §2.14): 21 track variables, deeper init net, 3 layers, 2 heads,
    constant learning rate, 3 classes."""
    cfg = copy.deepcopy(SEED_GN2)
    cfg["name"] = "GN1"
    cfg["data"]["variables"]["tracks"] += GN1_TRACKS
    _args(cfg)["init_nets"][0]["dense_config"]["hidden_layers"] = [64, 64, 64]
    enc = _args(cfg)["encoder"]["init_args"]
    enc["num_layers"], enc["mha_config"]["num_heads"] = 3, 2
    cfg["model"]["lrs_config"] = {"initial": 1e-3, "max": 1e-3, "end": 1e-3}
    jet = _tasks(cfg)[0]["init_args"]
    jet["class_names"] = ["bjets", "cjets", "ujets"]
    jet["loss"] = "torch.nn.CrossEntropyLoss"
    jet["dense_config"].update(output_size=3, hidden_layers=[128, 64, 32, 16])
    return cfg


def gatv2() -> dict:
    cfg = copy.deepcopy(SEED_GN2)
    att = {"num_heads": 2, "head_dim": 128, "activation": "SiLU"}
    _args(cfg)["encoder"]["init_args"]["mha_config"] = {
        "num_heads": 2,
        "attention": {"class_path": "salt.models.GATv2Attention", "init_args": att},
    }
    return cfg


def cross_attention_pooling() -> dict:
    cfg = copy.deepcopy(SEED_GN2)
    _args(cfg)["pool_net"] = {
        "class_path": "salt.models.TensorCrossAttentionPooling",
        "init_args": {
            "input_size": 128,
            "num_layers": 2,
            "mha_config": {"num_heads": 8},
            "dense_config": {"activation": "SiLU", "hidden_layers": [384]},
        },
    }
    return cfg


def cross_attention_encoder() -> dict:
    cfg = copy.deepcopy(SEED_GN2EMU)
    _args(cfg)["encoder"] = {
        "class_path": "salt.models.TransformerCrossAttentionEncoder",
        "init_args": {
            "input_names": ["tracks", "electrons"],
            "embed_dim": 256,
            "num_layers": 2,
            "out_dim": 128,
            "ca_every_layer": True,
            "mha_config": {"num_heads": 8},
            "sa_dense_config": {"activation": "ReLU"},
            "ca_dense_config": {"activation": "ReLU"},
        },
    }
    return cfg


def edges() -> dict:
    cfg = copy.deepcopy(SEED_GN2)
    edge_net = {"output_size": 32, "hidden_layers": [32], "activation": "ReLU"}
    _args(cfg)["init_nets"].append(
        {"input_name": "EDGE", "attach_global": False, "dense_config": edge_net}
    )
    _args(cfg)["encoder"]["init_args"].update(edge_embed_dim=32, update_edges=True)
    cfg["data"]["variables"]["EDGE"] = ["dR", "z", "kt", "subjetIndex", "isSelfLoop"]
    cfg["data"]["input_map"] = {"jets": "jets", "tracks": "tracks", "EDGE": "tracks"}
    return cfg


def parameters(top_level: bool = False) -> dict:
    cfg = copy.deepcopy(SEED_GN2)
    cfg["data"]["variables"]["PARAMETERS"] = ["mass_param"]
    cfg["data"]["input_map"] = {"jets": "jets", "tracks": "tracks", "PARAMETERS": "jets"}
    block = {"mass_param": {"train": [5.0, 16.0, 55.0], "test": 40.0, "prob": [0.2, 0.3, 0.5]}}
    if top_level:  # the form Salt's docs show
        cfg["PARAMETERS"] = block
    else:
        cfg["data"]["parameters"] = block
    return cfg


def mup() -> dict:
    cfg = copy.deepcopy(SEED_GN2)
    _args(cfg)["encoder"]["init_args"]["muP"] = True
    _args(cfg)["init_nets"][0]["dense_config"]["muP"] = True
    cfg["model"]["muP_config"] = {
        "shape_path": "mup_shapes/GN2",
        "embed_dim": {
            "apply_to": ["init_nets", "encoder"],
            "parameter_name": ["output_size", "embed_dim"],
            "parameter_base": 64,
            "parameter_delta": 128,
        },
    }
    return cfg


def gn2_salt013() -> dict:
    """salt-ml 0.13's GN2 at full width: the fixture's config with GN2's sizes."""
    cfg = copy.deepcopy(TINY_013)
    _args(cfg)["init_nets"][0]["dense_config"].update(output_size=256, hidden_layers=[256])
    enc = _args(cfg)["encoder"]["init_args"]
    enc.update(embed_dim=256, num_layers=4, out_dim=128, num_registers=1)
    enc["attn_kwargs"]["num_heads"] = 8
    for task in _tasks(cfg):
        task["init_args"]["dense_config"]["hidden_layers"] = [128, 64, 32]
    return cfg


def gn2emu_salt013() -> dict:
    """0.13 names: lowercase `global`, `parameters`, non-affine norms, 4 registers."""
    cfg = copy.deepcopy(TINY_013)
    data = cfg["data"]
    data["variables"]["electrons"] = SEED_GN2EMU["data"]["variables"]["electrons"]
    data["variables"]["global"] = SEED_GN2EMU["data"]["variables"]["GLOBAL"]
    data["variables"]["parameters"] = ["mass_param"]
    data["parameters"] = {"mass_param": {"train": [5.0, 55.0], "test": 40.0}}
    data["non_finite_to_num"] = True
    _args(cfg)["init_nets"].append(copy.deepcopy(_args(cfg)["init_nets"][0]))
    _args(cfg)["init_nets"][1]["input_name"] = "electrons"
    _args(cfg)["encoder"]["init_args"]["num_registers"] = 4
    return cfg


def edges_salt013() -> dict:
    """0.13's edges: an edge constructor on tracks and an edge init net."""
    cfg = copy.deepcopy(TINY_013)
    cfg["data"]["edge_constructors"] = [
        {"input_name": "tracks", "edge_features": ["dR", "z", "kt", "isSelfLoop"]}
    ]
    dense = {"output_size": 8, "hidden_layers": [8], "activation": "ReLU"}
    _args(cfg)["edge_init_nets"] = [{"input_name": "tracks", "dense_config": dense}]
    _args(cfg)["encoder"]["init_args"].update(edge_embed_dim=8, update_edges=True)
    return cfg


CASES = {
    # name: (Salt config, Salt's trainable parameter count when known)
    "gn2_seed": (lambda: SEED_GN2, 2_343_502),  # salt-semantics §2.14
    "gn1_seed": (gn1, None),
    "gn2emu_seed": (lambda: SEED_GN2EMU, None),
    "gatv2": (gatv2, 2_343_502 + 4 * 2 * 128),  # + a (H, Dh) vector per layer
    "cross_attention_pooling": (cross_attention_pooling, None),
    "cross_attention_encoder": (cross_attention_encoder, None),
    "edges": (edges, None),
    "parameters": (parameters, 2_343_502 + 256),  # one more init-net input
    "parameters_top_level": (lambda: parameters(top_level=True), 2_343_502 + 256),
    "mup": (mup, 2_343_502),
    "gn2_salt013": (gn2_salt013, 2_339_150),  # the peer kit's salt-ml 0.13 GN2
    "gn2_tiny_salt013": (lambda: TINY_013, 6_614),  # trainable_params in Salt's metadata.yaml
    "run_config_salt013": (lambda: RUN_013, 6_614),
    "gn2emu_salt013": (gn2emu_salt013, None),
    "edges_salt013": (edges_salt013, None),
}


def convert_and_compose(salt: dict, tmp_path: Path, data_dir: Path, name: str = "salt"):
    """Write ``salt`` as a Salt YAML, convert it, compose the experiment on ``data_dir``."""
    src = tmp_path / f"{name}_salt.yaml"
    src.write_text(yaml.safe_dump(salt, sort_keys=False))
    out, conv = write_experiment(src, tmp_path / "conf" / "experiment" / f"{name}.yaml")
    overrides = [
        f"+experiment={name}",
        *(f"data.{k}={data_dir / k.split('_')[0]}.h5" for k in ("train_file", "val_file")),
        f"data.norm_dict={data_dir / 'norm_dict.yaml'}",
        f"data.class_dict={data_dir / 'class_dict.yaml'}",
        "data.num_train=-1",
        "data.num_val=-1",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    cfg = compose(overrides, tmp_path / "conf")
    OmegaConf.resolve(cfg)
    return out, conv, cfg


@pytest.mark.parametrize("case", sorted(CASES))
def test_salt_configs_convert_build_and_train(case, tmp_path, synthetic_dir):
    make, salt_params = CASES[case]
    _, conv, cfg = convert_and_compose(make(), tmp_path, synthetic_dir)
    norm, class_dict = load_norm_dict(cfg.data.norm_dict), load_class_dict(cfg.data.class_dict)
    model = build_model(cfg, norm, class_dict, read_class_names(cfg.data.train_file))
    if salt_params is not None:
        assert model.trainable_params == salt_params
    torch.manual_seed(0)
    batch = build_datasets(cfg.data, required_labels(cfg, "fit"), "fit", seed=0)["train"][0:6]
    _, losses = model(batch.inputs, batch.masks, batch.labels)
    assert set(losses) == set(model.tasks) == set(conv.task_names.values())
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()


def test_converted_values(tmp_path, synthetic_dir):
    """Salt's values reach the saltx keys that replace them."""
    salt = cross_attention_pooling()
    salt["trainer"].update(
        default_root_dir="/runs/salt/GN2_20240101-T120000",  # a reused run config
        limit_train_batches=50.0,
        limit_val_batches=4,
        max_epochs=2,
        gradient_clip_val=1.0,
    )
    salt["seed_everything"] = 7
    salt["data"]["nan_to_num"] = True
    _, conv, cfg = convert_and_compose(salt, tmp_path, synthetic_dir)
    assert cfg.seed == 7
    assert cfg.paths.log_dir == "/runs/salt"  # Salt's rule: a timestamped dir stands for its parent
    assert cfg.trainer.max_steps == 100 and cfg.trainer.limit_val_batches == 4
    assert cfg.trainer.precision == "fp16" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.monitor == "val/jet_classification_loss"
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.float32_matmul_precision == "medium"  # what `salt fit` sets
    assert cfg.data.non_finite_to_num is True
    assert cfg.lrs.end == 1e-5 and cfg.lrs.pct_start == 0.01
    assert cfg.model.pooling._target_.endswith("CrossAttentionPooling")
    assert cfg.model.pooling.num_layers == 2 and cfg.model.pooling.hidden_dim_scale == 3
    assert cfg.model.pooling.activation == "SiLU"
    assert cfg.model.tasks.track_origin.class_weights[1] == 73.7
    assert any("limit_train_batches" in n for n in conv.notes)


def test_salt013_conversion_and_task_names(tmp_path, synthetic_dir):
    _, conv, cfg = convert_and_compose(RUN_013, tmp_path, synthetic_dir)
    assert conv.salt_version == "0.13"
    assert conv.task_names["jets_classification"] == "jet_classification"
    enc = cfg.model.encoder
    assert (enc.num_registers, enc.final_norm, enc.qkv_init) == (
        2,
        "after_out_proj",
        "xavier_packed",
    )
    assert cfg.model.norm_affine is False
    assert (cfg.model.embed_dim, cfg.model.out_dim, cfg.model.num_heads) == (16, 12, 2)
    assert list(cfg.model.tasks.jet_classification.class_names) == [
        "bjets",
        "cjets",
        "ujets",
        "taujets",
    ]


def test_experiment_is_deltas_on_groups(tmp_path):
    out, _ = write_experiment(
        FIXTURES / "configs" / "gn2emu_seed.yaml", tmp_path / "experiment" / "emu.yaml"
    )
    text = out.read_text()
    assert text.startswith("# @package _global_\n")
    exp = yaml.safe_load(text)
    assert "override /data/variables" in str(exp["defaults"])
    assert "tracks" not in exp["data"].get("variables", {})  # the gn2emu group has them
    assert exp["data"]["variables"]["GLOBAL"][0] == "softMuon_pt"
    assert exp["data"]["num_inputs"] == {"tracks": 30, "electrons": 8}


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: _args(c)["encoder"]["init_args"].update(norm="RMSNorm"), "init_args.norm"),
        (
            lambda c: _args(c)["encoder"]["init_args"]["dense_kwargs"].update(gated=True),
            "dense_kwargs.gated",
        ),
        (lambda c: _args(c).update(merge_dict={"x": ["tracks"]}), "init_args.merge_dict"),
        (
            lambda c: _tasks(c)[0].update(class_path="salt.models.GaussianRegressionTask"),
            "[0].class_path",
        ),
        (lambda c: c["trainer"].update(fast_dev_run=5), "trainer.fast_dev_run"),
        (lambda c: c["data"].update(move_files_temp="/dev/shm/x"), "data.move_files_temp"),
        (lambda c: c["data"].update(bach_size=10), "data.bach_size"),
        (lambda c: c["model"].update(loss_mode="GLS"), "model.loss_mode"),
        (lambda c: c["trainer"].update(precision="64-true"), "trainer.precision"),
        (lambda c: c["trainer"].update(limit_train_batches=0.25), "trainer.limit_train_batches"),
        (lambda c: c.update(ckpt_path="logs/x/ckpts/epoch=001.ckpt"), "ckpt_path"),
    ],
)
def test_unsupported_salt_keys_are_refused_by_name(edit, key):
    salt = copy.deepcopy(TINY_013)
    edit(salt)
    with pytest.raises(SaltConfigError, match=r"saltx cannot honour") as err:
        convert_config(salt)
    assert key in str(err.value)


def test_all_refusals_are_listed_at_once():
    salt = copy.deepcopy(SEED_GN2)
    salt["trainer"]["fast_dev_run"] = 3
    salt["data"]["labeller_config"] = {"x": 1}
    salt["foo"] = 1
    with pytest.raises(SaltConfigError) as err:
        convert_config(salt)
    text = str(err.value)
    assert "trainer.fast_dev_run" in text and "data.labeller_config" in text and "  foo:" in text


def test_cli_writes_experiment_and_train_composes_it(tmp_path, capsys):
    out = tmp_path / "conf" / "experiment" / "tiny.yaml"
    assert salt_main(["config", str(FIXTURES / "run" / "config.yaml"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"--config-dir {tmp_path / 'conf'} +experiment=tiny" in printed
    assert "jets_classification is saltx's jet_classification" in printed
    # the exact command a user types, composed by Hydra in a fresh process
    cmd = [sys.executable, "-m", "saltx.train", "--config-dir", str(tmp_path / "conf")]
    res = subprocess.run(
        [*cmd, "+experiment=tiny", "--cfg", "job"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    job = yaml.safe_load(res.stdout)
    assert job["model"]["encoder"]["num_registers"] == 2 and job["model"]["embed_dim"] == 16


def test_cli_refusal_exit_code(tmp_path, capsys):
    salt = copy.deepcopy(TINY_013)
    salt["trainer"]["fast_dev_run"] = 2
    src = tmp_path / "s.yaml"
    src.write_text(yaml.safe_dump(salt))
    out = tmp_path / "e" / "experiment" / "x.yaml"
    assert salt_main(["config", str(src), "-o", str(out)]) == 2
    assert "trainer.fast_dev_run" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        salt_main(["config", str(src)])  # -o is required
    assert salt_main(["config", str(src), "-o", str(tmp_path / "x.yaml")]) == 2
