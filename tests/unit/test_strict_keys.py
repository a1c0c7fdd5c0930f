"""Strict keys: a key no schema declares is an error naming it (and the saltx key for
Salt's names); the user-keyed data dicts take new keys without '+'; input_map with EDGE."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from saltx.config import ConfigKeyError, check_keys, unknown_keys
from saltx.data.loader import build_datasets
from saltx.data.norm import load_norm_dict
from saltx.models.build import build_model, required_labels
from saltx.train import main


def compose_train(*overrides: str):
    with initialize_config_module("saltx.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("+model.lrs_config.max=1e-3", "model.lrs_config", "lrs"),
        ("+PARAMETERS={mass: {train: [1]}}", "PARAMETERS", "data.parameters"),
        ("+data.nan_to_num=true", "data.nan_to_num", "data.non_finite_to_num"),
        (
            "+trainer.default_root_dir=s3://bucket/runs",
            "trainer.default_root_dir",
            "paths.output_dir",
        ),
        ("+data.config_s3={use_S3: true}", "data.config_s3", "data.config_S3"),
        ("+model.muP_config={shape_path: x}", "model.muP_config", "mup"),
        ("+seed_everything=3", "seed_everything", "seed"),
        ("+trainer.bach_size=3", "trainer.bach_size", "not a key"),
    ],
)
def test_salt_keys_typed_with_plus_are_errors(override, key, hint):
    cfg = compose_train(override)
    assert unknown_keys(cfg) == [key]
    with pytest.raises(ConfigKeyError) as err:
        check_keys(cfg)
    line = next(x for x in str(err.value).splitlines() if x.strip().startswith(f"{key}:"))
    assert hint in line


def test_train_refuses_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = compose_train(
        "+data.nan_to_num=true", "+model.lrs_config.max=1", f"paths.output_dir={out}"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)  # python -m saltx.train (and every sweep trial)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ConfigKeyError" in err and "data.nan_to_num: Salt's name; in saltx: data" in err
    assert not out.exists()  # no run directory, no config.yaml holding the ignored keys


def test_every_experiment_has_only_declared_keys():
    conf = Path(__file__).parents[2] / "src" / "saltx" / "conf" / "experiment"
    for exp in sorted(p.stem for p in conf.glob("*.yaml")):
        assert unknown_keys(compose_train(f"+experiment={exp}")) == [], exp
    assert unknown_keys(compose_train("+experiment=gn2", "hparams_search=gn2_optuna")) == []


def test_user_keyed_dicts_need_no_plus():
    cfg = compose_train(
        "data.num_inputs.tracks=10",
        "data.input_map.tracks=tracks_loose",
        "data.config_S3.bucket=my-bucket",
        "data.parameters.mass_param={train: [5, 55], test: 40}",
    )
    assert cfg.data.num_inputs.tracks == 10
    assert cfg.data.input_map.tracks == "tracks_loose"
    assert cfg.data.config_S3.bucket == "my-bucket"
    assert cfg.data.parameters.mass_param.test == 40
    assert unknown_keys(cfg) == []
    # the schema's other nodes stay closed: a typo still fails at compose time
    with pytest.raises(Exception, match=r"bach_size"):
        compose_train("data.bach_size=10")


def test_evaluate_keys_are_checked():
    with initialize_config_module("saltx.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=["run_dir=x", "+test_suf=m40", "+data.foo=1"])
    reference = OmegaConf.load(Path(__file__).parents[2] / "src/saltx/conf/evaluate.yaml")
    assert unknown_keys(cfg, reference) == ["data.foo", "test_suf"]
    with pytest.raises(ConfigKeyError, match=r"test_suf: not a key"):
        check_keys(cfg, reference)


def test_input_map_with_edges_on_renamed_tracks(tmp_path, synthetic_dir):
    """The tracks dataset renamed: EDGE follows it (data.input_map.tracks only)."""
    src, path = synthetic_dir / "train.h5", tmp_path / "renamed.h5"
    with h5py.File(src) as fin, h5py.File(path, "w") as fout:
        for name in ("jets", "tracks"):
            fin.copy(name, fout, name="tracks_loose" if name == "tracks" else name)
    norm = yaml.safe_load((synthetic_dir / "norm_dict.yaml").read_text())
    norm["tracks_loose"] = norm.pop("tracks")
    (tmp_path / "norm.yaml").write_text(yaml.safe_dump(norm))
    for explicit_edge in (False, True):
        overrides = [
            "+experiment=gn2_edges",
            "model.embed_dim=16",
            "model.num_heads=2",
            "model.out_dim=8",
            "data.input_map.tracks=tracks_loose",
            f"data.train_file={path}",
            f"data.val_file={path}",
            f"data.norm_dict={tmp_path / 'norm.yaml'}",
            "data.class_dict=null",
            "model.tasks.track_origin.use_class_dict=false",
            "model.tasks.jet_classification.use_class_dict=false",
            "model.tasks.jet_classification.class_names=[b,c,u,tau]",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
        if explicit_edge:
            overrides.append("data.input_map.EDGE=tracks_loose")  # Salt's explicit form
        cfg = compose_train(*overrides)
        model = build_model(cfg, load_norm_dict(cfg.data.norm_dict))
        assert model.edge_input == "tracks"
        batch = build_datasets(cfg.data, required_labels(cfg), "fit", seed=0)["train"][0:4]
        assert batch.inputs["EDGE"].shape[:2] == batch.inputs["tracks"].shape[:2]
        _, losses = model(batch.inputs, batch.masks, batch.labels)
        assert torch.isfinite(sum(losses.values()))
    cfg = compose_train(*overrides[:-1], "data.input_map.EDGE=no_such_dataset")
    with pytest.raises(ValueError, match=r"edges belong to 'no_such_dataset'"):
        build_model(cfg, load_norm_dict(cfg.data.norm_dict))


def test_export_refuses_unknown_keys_before_loading_the_run(tmp_path):
    from saltx.export import export

    with initialize_config_module("saltx.conf", version_base="1.3"):
        cfg = compose(
            "export", overrides=[f"run_dir={tmp_path}/none", "+include_auxx=true", "+name2=x"]
        )
    with pytest.raises(ConfigKeyError, match=r"include_auxx: not a key"):
        export(cfg)  # not "run directory not found": the typo is reported first
