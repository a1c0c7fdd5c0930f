"""build_model / required_labels: derived sizes, class dicts, clear config errors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from saltx.models.build import build_model, required_labels
from saltx.models.tasks import ClassificationTask


class StubEncoder(nn.Module):
    """Per-token linear map (enough to exercise the builder's size plumbing)."""

    def __init__(self, embed_dim: int, num_heads: int, out_dim: int = 0, num_layers: int = 1):
        super().__init__()
        self.out_size = out_dim or embed_dim
        self.proj = nn.Linear(embed_dim, self.out_size)

    def forward(self, x: dict, masks: dict, edges=None, context=None) -> dict:
        return {k: self.proj(v) for k, v in x.items()}


class StubPooling(nn.Module):
    def __init__(self, input_size: int):
        super().__init__()
        self.input_size = input_size

    def forward(self, x: dict, masks: dict) -> Tensor:
        tot = sum((v * (~masks[k])[..., None]).sum(1) for k, v in x.items())
        n = sum((~m).sum(1, keepdim=True) for m in masks.values()).clamp_min(1)
        return tot / n


VARS = {"jets": ["pt", "eta"], "tracks": ["d0", "z0", "qOverP"]}
NORM = {
    "jets": {v: {"mean": 0.0, "std": 1.0} for v in ["pt", "eta", "m1", "m2"]},
    "tracks": {v: {"mean": 0.0, "std": 1.0} for v in VARS["tracks"]},
}
CLASS_DICT = {
    "jets": {"flavour_label": [1.0, 2.0, 3.0]},
    "tracks": {"ftagTruthOriginLabel": [1.0] * 8},
}


def make_cfg(variables=None, tasks=None, **model):
    tasks = tasks or {
        "jet_classification": {
            "_target_": "saltx.models.tasks.ClassificationTask",
            "input_name": "jets",
            "label": "flavour_label",
            "use_class_dict": True,
            "hidden_layers": [8],
        },
        "track_origin": {
            "_target_": "saltx.models.tasks.ClassificationTask",
            "input_name": "tracks",
            "label": "ftagTruthOriginLabel",
            "weight": 0.5,
            "hidden_layers": [8],
        },
        "track_vertexing": {
            "_target_": "saltx.models.vertexing.VertexingTask",
            "input_name": "tracks",
            "hidden_layers": [8],
        },
    }
    m = {
        "embed_dim": 16,
        "num_heads": 2,
        "out_dim": 12,
        "init_nets": {"tracks": {"hidden_layers": [16]}},
        "attention": None,
        "encoder": {"_target_": f"{__name__}.StubEncoder", "num_layers": 1},
        "pooling": {"_target_": f"{__name__}.StubPooling"},
        "tasks": tasks,
    }
    m.update(model)
    data = {"variables": variables or VARS, "global_object": "jets", "input_map": None}
    # the stub encoder and pooling live in this test module: trust it (saltx.targets)
    allowed = [f"{__name__}."]
    return OmegaConf.create({"name": "GNX", "data": data, "model": m, "allowed_targets": allowed})


def test_sizes_are_derived():
    cfg = make_cfg(variables={**VARS, "GLOBAL": ["m1", "m2"]})
    model = build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])
    assert model.name == "GNX"
    assert model.init_nets["tracks"].input_size == 5
    jc, to, vx = (model.tasks[k] for k in ("jet_classification", "track_origin", "track_vertexing"))
    assert jc.net.input_size == 12 + 2 and jc.net.context_size == 0
    assert to.net.input_size == 12 and to.net.context_size == 14
    assert vx.net.input_size == 24 and vx.net.context_size == 14
    assert jc.class_names == ["b", "c", "u"]
    torch.testing.assert_close(jc.class_weights, torch.tensor([1.0, 2.0, 3.0]))
    assert to.class_weights is None


def test_class_dict_errors():
    cfg = make_cfg()
    with pytest.raises(ValueError, match="no class dict"):
        build_model(cfg, NORM, None, class_names=["b", "c", "u"])
    with pytest.raises(KeyError, match=r"jets\.flavour_label"):
        build_model(cfg, NORM, {"tracks": {}}, class_names=["b", "c", "u"])
    cfg.model.tasks.jet_classification.class_weights = [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="use one of them"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])


def test_derived_size_in_yaml_is_an_error():
    cfg = make_cfg()
    cfg.model.tasks.track_origin.input_size = 3
    with pytest.raises(ValueError, match="input_size"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])
    cfg = make_cfg()
    cfg.model.encoder.embed_dim = 3
    with pytest.raises(ValueError, match="embed_dim"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])


def test_init_nets_must_match_inputs():
    cfg = make_cfg(init_nets={"electrons": {}})
    with pytest.raises(ValueError, match=r"missing \['tracks'\], not an input \['electrons'\]"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])


def test_edges_without_model_edges_is_an_error():
    cfg = make_cfg(variables={**VARS, "EDGE": ["dR"]})
    with pytest.raises(ValueError, match=r"\+model/edges=default"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])


def test_jets_only_model():
    tasks = {
        "jet_classification": {
            "_target_": "saltx.models.tasks.ClassificationTask",
            "input_name": "jets",
            "label": "flavour_label",
            "hidden_layers": [8],
        },
        "jet_regression": {
            "_target_": "saltx.models.tasks.RegressionTask",
            "input_name": "jets",
            "targets": "ptb",
            "target_denominators": "pt",
        },
    }
    cfg = make_cfg(
        variables={"jets": ["pt", "eta"]},
        tasks=tasks,
        init_nets={"jets": {"hidden_layers": [16]}},
        encoder=None,
        pooling=None,
    )
    model = build_model(cfg, NORM, None, class_names=["b", "c", "u"])
    assert model.encoder is None
    inputs = {"jets": torch.randn(5, 2)}
    labels = {
        "jets": {
            "flavour_label": torch.tensor([0, 1, 2, 0, 1]),
            "ptb": torch.rand(5),
            "pt": torch.rand(5) + 1,
        }
    }
    preds, losses = model(inputs, {}, labels)
    assert preds["jet_classification"].shape == (5, 3)
    assert preds["jet_regression"].shape == (5, 1)
    assert set(losses) == {"jet_classification", "jet_regression"}
    sum(losses.values()).backward()


def test_required_labels():
    cfg = make_cfg(
        tasks={
            "jc": {
                "_target_": "saltx.models.tasks.ClassificationTask",
                "input_name": "jets",
                "label": "flavour_label",
                "sample_weight": "w",
            },
            "reg": {
                "_target_": "saltx.models.tasks.RegressionTask",
                "input_name": "jets",
                "targets": ["ptb"],
                "target_denominators": ["pt"],
            },
            "vx": {"_target_": "saltx.models.vertexing.VertexingTask", "input_name": "tracks"},
        }
    )
    assert required_labels(cfg, "fit") == {
        "jets": ["flavour_label", "w", "ptb", "pt"],
        "tracks": ["ftagTruthVertexIndex", "ftagTruthOriginLabel"],
    }
    assert required_labels(cfg, "test") == {"jets": ["pt"], "tracks": []}


def test_classification_task_is_built_with_class_names_from_config():
    cfg = make_cfg()
    cfg.model.tasks.jet_classification.class_names = ["x", "y"]
    cfg.model.tasks.jet_classification.use_class_dict = False
    model = build_model(cfg, NORM, None, class_names=["b", "c", "u"])
    task = model.tasks["jet_classification"]
    assert isinstance(task, ClassificationTask) and task.class_names == ["x", "y"]


def test_derived_argument_the_encoder_ignores_is_an_error():
    """A derived argument that matters must reach the encoder, never be dropped silently."""
    cfg = make_cfg(muP=True)  # StubEncoder has no muP argument
    target = f"{__name__}.StubEncoder"
    msg = rf"model\.encoder: {target} does not accept the argument 'muP'.*model\.muP"
    with pytest.raises(ValueError, match=msg):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])
    cfg = make_cfg(
        variables={**VARS, "EDGE": ["dR", "isSelfLoop"]},
        edges={"embed_dim": 4, "hidden_layers": [4]},
        encoder={"_target_": "saltx.models.crossattn.TransformerCrossAttentionEncoder"},
    )
    cfg.model.encoder.num_layers = 1
    msg = r"TransformerCrossAttentionEncoder does not accept the argument 'edge_embed_dim'.*"
    with pytest.raises(ValueError, match=msg + r"model\.edges\.embed_dim"):
        build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])


class RecordingEncoder(StubEncoder):
    """A stub encoder that keeps the arguments the builder gave it."""

    def __init__(self, embed_dim: int, num_heads: int, out_dim: int = 0, **kwargs):
        super().__init__(embed_dim, num_heads, out_dim)
        self.kwargs = {"out_dim": out_dim, **kwargs}


def test_keys_a_config_leaves_out_take_the_schema_defaults():
    """The builder has no defaults of its own: what a config leaves out is the schema's."""
    from saltx.config import DataConfig, ModelConfig, TrainConfig

    cfg = make_cfg(encoder={"_target_": f"{__name__}.RecordingEncoder"})
    for key in ("out_dim", "attention"):
        del cfg.model[key]  # nor dropout, activation, norm_affine, muP, edges
    del cfg.data["global_object"], cfg.data["input_map"], cfg["name"]
    model = build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])
    schema = ModelConfig()
    assert model.name == TrainConfig.name
    assert model.global_object == DataConfig.global_object
    assert model.encoder.kwargs == {
        "out_dim": schema.out_dim,
        "dropout": schema.dropout,
        "activation": schema.activation,
        "norm_affine": schema.norm_affine,
        "muP": schema.muP,
        "input_names": ["tracks"],
    }
    assert model.edge_net is None
    # the encoder's output size follows the schema's out_dim into the tasks
    assert model.tasks["track_origin"].net.input_size == schema.out_dim


def test_builder_reads_a_typed_config():
    """A :class:`saltx.config.TrainConfig` builds the same model as its DictConfig."""
    from saltx.config import typed_config

    cfg = make_cfg()
    cfg.data.update(train_file="t.h5", val_file="v.h5", norm_dict="n.yaml")
    cfg.paths = {"output_dir": "out"}
    torch.manual_seed(0)
    a = build_model(cfg, NORM, CLASS_DICT, class_names=["b", "c", "u"])
    torch.manual_seed(0)
    b = build_model(typed_config(cfg), NORM, CLASS_DICT, class_names=["b", "c", "u"])
    assert a.name == b.name == "GNX"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
