"""Every experiment composes (`--cfg job --resolve`), instantiates, and trains one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx.config  # registers the schemas
from saltx.data.class_weights import load_class_dict
from saltx.data.labels import read_class_names
from saltx.data.loader import build_datasets
from saltx.data.norm import load_norm_dict
from saltx.models.build import build_model, required_labels

CONF_DIR = Path(saltx.config.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_experiment(experiment: str, data_dir: Path, tmp_path: Path, *extra: str):
    overrides = [
        f"+experiment={experiment}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        *extra,
    ]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_all_experiments_present():
    expected = {"gn1", "gn2", "gn2emu", "gn2_gatv2", "gn2_edges", "gn2_param", "gn2_global"}
    assert expected | {"gn2_crossattn", "demo"} <= set(EXPERIMENTS)


def step(cfg) -> None:
    """Build the model of ``cfg``, run one forward/backward on 6 jets, and predict."""
    torch.manual_seed(0)
    norm = load_norm_dict(cfg.data.norm_dict)
    class_dict = load_class_dict(cfg.data.class_dict)
    class_names = read_class_names(cfg.data.train_file)
    model = build_model(cfg, norm, class_dict, class_names)
    assert model.trainable_params > 0
    if cfg.model.muP:  # muP models need their base shapes before the first forward
        from saltx.assemble import shape_model
        from saltx.mup.setup import apply_mup
        from saltx.mup.shapes import base_shapes_from_config

        apply_mup(model, cfg, base_shapes_from_config(cfg, shape_model))

    labels = required_labels(cfg, "fit")
    batch = build_datasets(cfg.data, labels, "fit", seed=0)["train"][0:6]
    preds, losses = model(batch.inputs, batch.masks, batch.labels)
    assert set(losses) == set(model.tasks)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    for name, task in model.tasks.items():
        out = task.predict(preds, batch)
        assert all(torch.is_tensor(v) for v in out.values()), name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates_and_steps(experiment, synthetic_dir, tmp_path):
    cfg = compose_experiment(experiment, synthetic_dir, tmp_path)
    assert cfg.name
    step(cfg)


def test_gn2_parameter_count(synthetic_dir, tmp_path):
    """Salt's GN2 on 19 track + 2 jet variables with 4 classes has 2,343,502 parameters."""
    cfg = compose_experiment("gn2", synthetic_dir, tmp_path)
    assert len(cfg.data.variables.tracks) == 19 and len(cfg.data.variables.jets) == 2
    norm = load_norm_dict(cfg.data.norm_dict)
    class_dict = load_class_dict(cfg.data.class_dict)
    model = build_model(cfg, norm, class_dict, ["bjets", "cjets", "ujets", "taujets"])
    assert model.trainable_params == 2_343_502


def test_switches_compose(synthetic_dir, tmp_path):
    cfg = compose_experiment(
        "gn2",
        synthetic_dir,
        tmp_path,
        "model/attention=gatv2",
        "model/pooling=cross_attention",
        "+model/edges=default",
        "+data.variables.EDGE=[dR,isSelfLoop]",
        "model/tasks=[jet_classification,jet_regression]",
    )
    assert cfg.model.attention._target_.endswith("GATv2Attention")
    assert cfg.model.edges.embed_dim == 32
    assert list(cfg.model.tasks) == ["jet_classification", "jet_regression"]
    assert required_labels(cfg, "test") == {"jets": ["pt"]}
    step(cfg)
