"""muP step 1: base/delta configs from the `mup:` block and the base-shape file."""

from __future__ import annotations

import mup
import pytest
import yaml
from omegaconf import OmegaConf

from saltx.assemble import shape_model
from saltx.mup.shapes import (
    MupConfigError,
    base_delta_assignments,
    base_shapes_from_config,
    compose_train,
    dimension_assignments,
    main,
    make_shapes,
    mup_dimensions,
)


def tiny_overrides(shape_dir, *extra: str) -> list[str]:
    """A small GN2 muP config (base 16, delta 32, two heads, one layer)."""
    return [
        "+experiment=gn2_mup",  # experiment=gn2_mup works as well
        f"mup.shape_path={shape_dir}",
        "model.num_heads=2",
        "model.out_dim=8",
        "model.encoder.num_layers=1",
        "mup.embed_dim.parameter_base=16",
        "mup.embed_dim.parameter_delta=32",
        *extra,
    ]


def test_experiment_composes_with_mup_block():
    cfg = compose_train(["experiment=gn2_mup"])
    assert cfg.model.muP is True
    assert cfg.optimizer._target_ == "mup.MuAdamW"
    assert cfg.mup.shape_path == "mup_shapes/GN2_muP"
    assert list(cfg.mup.embed_dim.apply_to) == ["model", "model.init_nets"]
    assert cfg.mup.embed_dim.parameter_base != cfg.mup.embed_dim.parameter_delta


def test_schema_rejects_unknown_mup_key():
    with pytest.raises(Exception, match="embed_dimm"):
        compose_train(["experiment=gn2_mup", "mup.embed_dimm=3"])


def test_assignments_cover_width_and_init_net_hidden_layers():
    cfg = compose_train(["experiment=gn2_mup", "mup.embed_dim.parameter_base=48"])
    assign = base_delta_assignments(cfg)
    assert assign["base"] == {
        "model.embed_dim": 48,
        "model.init_nets.tracks.hidden_layers": [48],
    }
    assert assign["delta"]["model.embed_dim"] == cfg.mup.embed_dim.parameter_delta


def test_salt_style_bare_apply_to_is_under_model():
    cfg = compose_train(
        [
            "experiment=gn2_mup",
            "mup.embed_dim.apply_to=[init_nets]",
            "mup.embed_dim.parameter_name=[hidden_layers]",
        ]
    )
    assert dimension_assignments(cfg, {"embed_dim": 8}) == {
        "model.init_nets.tracks.hidden_layers": [8]
    }


def test_a_plain_mup_block_takes_the_schema_defaults():
    """Keys a mup block leaves out are the schema's (saltx.config.MupDimConfig), as composed."""
    from saltx.config import MupDimConfig

    cfg = OmegaConf.create({"mup": {"embed_dim": {"parameter_base": 16, "parameter_delta": 32}}})
    dims = mup_dimensions(cfg)
    assert dims == {
        "embed_dim": {
            "apply_to": MupDimConfig().apply_to,
            "parameter_name": MupDimConfig().parameter_name,
            "base": 16,
            "delta": 32,
        }
    }


def test_unknown_parameter_name_is_a_clear_error():
    cfg = compose_train(
        [
            "experiment=gn2_mup",
            "mup.embed_dim.apply_to=[encoder]",
            "mup.embed_dim.parameter_name=[embed_dim]",
        ]
    )
    with pytest.raises(MupConfigError, match=r"no key 'embed_dim' under `model.encoder`"):
        base_delta_assignments(cfg)


def test_make_shapes_writes_storeshapes_and_configs(tmp_path):
    path = make_shapes(tiny_overrides(tmp_path / "shapes"), shape_model)
    assert path == tmp_path / "shapes" / "storeshapes"
    shapes = yaml.safe_load(path.read_text())
    # width dimensions carry the base size, fixed ones are null
    assert shapes["encoder.layers.0.attn.linear_q.weight"] == [16, 16]
    assert shapes["encoder.layers.0.ffn.fc1.weight"] == [32, 16]
    assert shapes["encoder.final_linear.weight"] == [None, 16]
    assert shapes["init_nets.tracks.net.net.2.weight"] == [16, 16]  # hidden layer scaled too
    assert shapes["init_nets.tracks.net.net.0.weight"][1] is None  # input features fixed
    assert shapes["pooling.gate.weight"] == [None, None]
    base = OmegaConf.load(path.parent / "base.yaml")
    delta = OmegaConf.load(path.parent / "delta.yaml")
    assert (base.model.embed_dim, delta.model.embed_dim) == (16, 32)
    assert list(delta.model.init_nets.tracks.hidden_layers) == [32]
    assert base.model.encoder.num_layers == 1  # same config, only the widths differ


def test_in_memory_shapes_equal_the_file(tmp_path):
    overrides = tiny_overrides(tmp_path)
    path = make_shapes(overrides, shape_model)
    from_file = mup.load_base_shapes(str(path))
    in_memory = base_shapes_from_config(compose_train(overrides), shape_model)
    assert {k: v.base_shape() for k, v in in_memory.items()} == {
        k: v.base_shape() for k, v in from_file.items()
    }


def test_refuses_equal_base_and_delta(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, "mup.embed_dim.parameter_delta=16")
    with pytest.raises(MupConfigError, match="must differ"):
        make_shapes(overrides, shape_model)
    assert main(overrides, build=shape_model) == 2
    assert "parameter_base and parameter_delta are both 16" in capsys.readouterr().err
    assert not (tmp_path / "storeshapes").exists()


def test_refuses_width_not_divisible_by_heads(tmp_path):
    overrides = tiny_overrides(tmp_path, "mup.embed_dim.parameter_base=15")
    with pytest.raises(
        MupConfigError, match=r"embed_dim=15 is not divisible by model\.num_heads=2"
    ):
        make_shapes(overrides, shape_model)


def test_missing_mup_block_is_explained():
    cfg = compose_train(["experiment=gn2"])
    with pytest.raises(MupConfigError, match="no `mup:` block"):
        base_delta_assignments(cfg)


def test_num_heads_dimension_scales_heads_with_the_width(tmp_path):
    heads = ["mup.num_heads.parameter_base=2", "mup.num_heads.parameter_delta=4"]
    path = make_shapes(tiny_overrides(tmp_path, *heads), shape_model)
    base = OmegaConf.load(path.parent / "base.yaml")
    delta = OmegaConf.load(path.parent / "delta.yaml")
    assert (base.model.num_heads, delta.model.num_heads) == (2, 4)
    assert (base.model.embed_dim, delta.model.embed_dim) == (16, 32)
    with pytest.raises(MupConfigError, match="not divisible"):
        make_shapes(
            tiny_overrides(tmp_path, heads[0], "mup.num_heads.parameter_delta=3"), shape_model
        )
    with pytest.raises(MupConfigError, match="parameter_delta must be a positive integer"):
        make_shapes(tiny_overrides(tmp_path, heads[0]), shape_model)
