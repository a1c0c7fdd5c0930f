"""Build a :class:`SaltModel` from the composed config, deriving every size.

Sizes never appear in YAML: init-net input sizes follow from ``data.variables`` (plus the
global object and PARAMETERS), the encoder width from ``model.embed_dim``, task input and
context sizes from the encoder output size and ``data.variables.GLOBAL``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from saltx.config import ModelConfig, schema_config
from saltx.models.initnet import InitNet
from saltx.models.inputnorm import InputNorm
from saltx.models.saltmodel import SaltModel
from saltx.models.tasks import stage_has_labels
from saltx.models.transformer import REGISTERS
from saltx.targets import DEFAULT_ALLOWED, allow_list, instantiate, plain, resolve

# data.variables keys that are not constituent inputs of the encoder
SPECIAL_INPUTS = ("GLOBAL", "PARAMETERS", "EDGE")
# keys the builder derives; writing them in a model node is an error
DERIVED_KEYS = (
    "input_size",
    "context_size",
    "context_dim",
    "embed_dim",
    "input_names",
    "edge_embed_dim",
    "out_dim",
)


def constituent_inputs(variables: Mapping[str, Any], global_object: str) -> list[str]:
    """Names of the constituent inputs (``tracks``, ``electrons``, ...) in variables order."""
    return [k for k in variables if k != global_object and k not in SPECIAL_INPUTS]


def _accepted(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``cls.__init__`` accepts."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def _construct(
    node: Any,
    where: str,
    derived: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    allowed: tuple[str, ...] = DEFAULT_ALLOWED,
    required: Mapping[str, str] | None = None,
) -> nn.Module:
    """Instantiate a ``_target_`` node with derived sizes and model-level defaults.

    ``derived`` keys must not appear in the node (sizes are never written in YAML);
    ``defaults`` are used only where the node does not set the key. Keys the target's
    constructor does not accept are dropped from both, except the keys of ``required``
    (``{argument: config key it comes from}``): the derived arguments whose values matter,
    which the target must accept.
    """
    node = plain(node)
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be a mapping with a `_target_` class, got {node!r}")
    cls = resolve(node["_target_"], where, nn.Module, allowed)
    clash = sorted(k for k in node if k in derived or k in DERIVED_KEYS)
    if clash:
        raise ValueError(
            f"{where}: {clash} are derived from data.variables and model.* and must not be set "
            "here; remove them"
        )
    kwargs = {k: v for k, v in (defaults or {}).items() if k not in node}
    kwargs.update(derived)
    accepted = _accepted(cls, kwargs)
    for key, source in (required or {}).items():
        if key not in accepted:
            raise ValueError(
                f"{where}: {node['_target_']} does not accept the argument {key!r}, which the "
                f"builder derives from {source} (value {derived[key]!r}) and which would be "
                f"ignored; add {key!r} to the target's constructor or change {source}"
            )
    return instantiate(node, where, nn.Module, allowed, **accepted)


def _class_weights(
    name: str,
    node: dict[str, Any],
    class_dict: Mapping | None,
    dataset: str,
) -> list[float] | None:
    """Class weights of a classification task (explicit, or from the class dict)."""
    explicit = node.get("class_weights")
    if not node.get("use_class_dict", False):
        return explicit
    if explicit is not None:
        raise ValueError(
            f"model.tasks.{name}: use_class_dict is true and class_weights are also given; "
            "use one of them"
        )
    label = node.get("label")
    if class_dict is None:
        raise ValueError(
            f"model.tasks.{name}: use_class_dict is true but no class dict was loaded "
            "(set data.class_dict)"
        )
    if dataset not in class_dict or label not in (class_dict[dataset] or {}):
        have = {k: list(v or {}) for k, v in class_dict.items()}
        raise KeyError(
            f"model.tasks.{name}: the class dict has no weights for {dataset}.{label} "
            f"(use_class_dict: true); it has {have}"
        )
    return [float(w) for w in class_dict[dataset][label]]


def _build_task(
    name: str,
    node: Any,
    *,
    global_object: str,
    node_size: int | None,
    global_size: int,
    class_dict: Mapping | None,
    class_names: list[str] | None,
    input_map: Mapping[str, str] | None,
    allowed: tuple[str, ...] = DEFAULT_ALLOWED,
) -> nn.Module:
    node = plain(node)
    where = f"model.tasks.{name}"
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be a mapping with a `_target_` task class")
    if "input_name" not in node:
        raise ValueError(f"{where} needs an input_name (e.g. jets or tracks)")
    cls = resolve(node["_target_"], where, nn.Module, allowed)
    kind = getattr(cls, "kind", "")
    input_name = node["input_name"]
    if input_name == global_object:
        sizes = {"input_size": global_size, "context_size": 0}
    else:
        if node_size is None:
            raise ValueError(
                f"{where}: runs on {input_name!r} but the model has no encoder (jets-only)"
            )
        factor = 2 if kind == "vertexing" else 1
        sizes = {"input_size": factor * node_size, "context_size": global_size}
    extra: dict[str, Any] = {"name": name, **sizes}
    if kind == "classification":
        fill_names = node.get("class_names") is None and node.get("label") == "flavour_label"
        if fill_names and input_name == global_object and class_names is not None:
            extra["class_names"] = list(class_names)
        dataset = input_map.get(input_name, input_name) if input_map else input_name
        extra["class_weights"] = _class_weights(name, node, class_dict, dataset)
    node.pop("use_class_dict", None)
    node.pop("class_weights", None)
    clash = sorted(k for k in node if k in extra and k not in ("class_names",))
    if clash:
        raise ValueError(f"{where}: {clash} are derived and must not be set in the config")
    return instantiate(node, where, nn.Module, allowed, **extra)


def _build_init_nets(
    mcfg: ModelConfig, variables: dict[str, list[str]], global_object: str, constituents: list[str]
) -> dict[str, InitNet]:
    """One init net per constituent input (or, jets-only, one on the global object)."""
    init_cfgs = plain(mcfg.init_nets) or {}
    wanted = constituents or [global_object]
    missing = [c for c in wanted if c not in init_cfgs]
    unused = [c for c in init_cfgs if c not in wanted]
    if missing or unused:
        raise ValueError(
            f"model.init_nets must have exactly one entry per input {wanted}; "
            f"missing {missing}, not an input {unused}"
        )
    init_nets = {}
    for name in wanted:
        conf = dict(init_cfgs[name] or {})
        for key in ("input_size", "output_size", "input_name", "variables"):
            if key in conf:
                raise ValueError(f"model.init_nets.{name}.{key} is derived; remove it")
        conf.setdefault("muP", bool(mcfg.muP))
        if not constituents:
            conf.setdefault("attach_global", False)
        init_nets[name] = InitNet(
            name, variables, output_size=int(mcfg.embed_dim), global_object=global_object, **conf
        )
    return init_nets


def _edge_input(input_map: Mapping[str, str] | None, constituents: list[str]) -> str:
    """The constituent input whose dataset the EDGE features read (``data.input_map.EDGE``;
    default: the first constituent's dataset), or that dataset's name if none reads it."""
    datasets = {c: str((input_map or {}).get(c, c)) for c in constituents}
    default = datasets[constituents[0]] if constituents else "tracks"
    edge_dataset = str((input_map or {}).get("EDGE", default))
    return next((c for c, d in datasets.items() if d == edge_dataset), edge_dataset)


def _build_edges(
    mcfg: ModelConfig, variables: dict[str, list[str]], edge_input: str, constituents: list[str]
) -> tuple[nn.Module | None, InitNet | None, dict[str, Any]]:
    """Edge-feature module, edge init net and the encoder's edge arguments (or Nones)."""
    edge_cfg = plain(mcfg.edges)
    if "EDGE" in variables and not edge_cfg:
        raise ValueError(
            "data.variables.EDGE is set but model.edges is null; add `+model/edges=default` "
            "or remove the EDGE variables"
        )
    if not edge_cfg:
        return None, None, {}
    if "EDGE" not in variables:
        raise ValueError(
            "model.edges is set but data.variables.EDGE lists no edge features "
            "(e.g. [dR, z, kt, subjetIndex, isSelfLoop])"
        )
    if not constituents or edge_input != constituents[0]:
        raise ValueError(
            f"edges belong to {edge_input!r} (the input reading dataset data.input_map.EDGE), "
            "which must be the first "
            f"constituent input in data.variables; the inputs are {constituents}"
        )
    from saltx.models.edges import EdgeFeatures

    edge_cfg = dict(edge_cfg)
    edge_dim = int(edge_cfg.pop("embed_dim"))
    update_edges = bool(edge_cfg.pop("update_edges", False))
    edge_net = InitNet("EDGE", variables, output_size=edge_dim, attach_global=False, **edge_cfg)
    derived = {"edge_embed_dim": edge_dim, "update_edges": update_edges}
    return EdgeFeatures(variables["EDGE"]), edge_net, derived


def _build_encoder_pooling(
    mcfg: ModelConfig, constituents: list[str], edge_args: dict[str, Any], allowed: tuple[str, ...]
) -> tuple[nn.Module, nn.Module]:
    """Encoder and pooling with derived sizes; the attention node is a per-layer factory."""
    attention = None
    if mcfg.attention is not None:
        attention = instantiate(mcfg.attention, "model.attention", nn.Module, allowed)
    if isinstance(attention, nn.Module):
        raise ValueError(
            "model.attention must be a factory: add `_partial_: true` so each layer builds "
            "its own attention kernel"
        )
    heads = {"num_heads": int(mcfg.num_heads)}
    if attention is not None:
        heads["attention"] = attention
    embed_dim, out_dim = int(mcfg.embed_dim), int(mcfg.out_dim)
    enc_derived = {
        "embed_dim": embed_dim,
        "out_dim": out_dim,
        "input_names": constituents,
        "muP": bool(mcfg.muP),
        **heads,
        **edge_args,
    }
    # model-wide defaults of the encoder and pooling (a node may set its own)
    shared = {
        "dropout": mcfg.dropout,
        "activation": mcfg.activation,
        "norm_affine": mcfg.norm_affine,
    }
    if not mcfg.norm_affine:
        target = plain(mcfg.encoder).get("_target_", "")
        cls = resolve(target, "model.encoder", nn.Module, allowed)
        if "norm_affine" not in inspect.signature(cls.__init__).parameters:
            raise ValueError(
                f"model.norm_affine=false, but the encoder {target} has no non-affine "
                "LayerNorm option"
            )
    # the derived arguments whose values matter: an encoder must accept them
    # (input_names matters only to per-type encoders; model.dropout etc. are defaults)
    enc_required = {"embed_dim": "model.embed_dim", "num_heads": "model.num_heads"}
    if attention is not None:
        enc_required["attention"] = "model.attention"
    if enc_derived["muP"]:
        enc_required["muP"] = "model.muP"
    if out_dim:
        enc_required["out_dim"] = "model.out_dim"
    if edge_args.get("edge_embed_dim"):
        enc_required["edge_embed_dim"] = "model.edges.embed_dim"
    if edge_args.get("update_edges"):
        enc_required["update_edges"] = "model.edges.update_edges"
    encoder = _construct(
        mcfg.encoder, "model.encoder", enc_derived, shared, allowed, required=enc_required
    )
    node_size = int(getattr(encoder, "out_size", out_dim or embed_dim))
    # a pooling without heads (gated sum) takes neither num_heads nor the attention
    pooling = _construct(
        mcfg.pooling,
        "model.pooling",
        {"input_size": node_size, **heads},
        shared,
        allowed,
        required={"input_size": "the encoder's output size (model.out_dim or model.embed_dim)"},
    )
    return encoder, pooling


def build_model(
    cfg: Any,
    norm_dict: Mapping,
    class_dict: Mapping | None = None,
    class_names: list[str] | None = None,
) -> SaltModel:
    """Build the model described by ``cfg.model`` for the inputs in ``cfg.data.variables``.

    Parameters
    ----------
    cfg
        The root config (reads ``data.variables``, ``data.global_object``,
        ``data.input_map``, ``model``, ``name`` and ``allowed_targets``): composed, a
        run's ``config.yaml``, a plain dict or a :class:`saltx.config.TrainConfig`. Keys
        it leaves out take the schema's defaults (:func:`saltx.config.schema_config`).
    norm_dict
        ``{dataset: {variable: {mean, std}}}``.
    class_dict
        ``{dataset: {label: [weights]}}``; needed by tasks with ``use_class_dict: true``.
    class_names
        Class names of ``flavour_label`` (file attribute); fill the jet classification
        task's names when its config gives none.

    Returns
    -------
    SaltModel
    """
    conf = schema_config(cfg)
    data, mcfg = conf.data, conf.model
    for key in ("embed_dim", "num_heads"):
        if mcfg[key] < 1:
            raise ValueError(f"model.{key}={mcfg[key]} must be a positive integer")
    if mcfg.out_dim < 0:
        raise ValueError(f"model.out_dim={mcfg.out_dim} must be >= 0 (0: no projection)")
    variables = {k: list(v) for k, v in plain(data.variables).items()}
    global_object = data.global_object
    input_map = plain(data.input_map) or None
    if global_object not in variables:
        raise KeyError(
            f"data.variables has no entry for the global object {global_object!r} "
            f"(it has {list(variables)})"
        )
    constituents = constituent_inputs(variables, global_object)
    if REGISTERS in constituents:
        raise ValueError(
            f"data.variables may not have an input named {REGISTERS!r}: the encoder uses "
            "that name for its register tokens"
        )
    edge_input = _edge_input(input_map, constituents)
    allowed = allow_list(plain(conf.allowed_targets))

    input_norm = InputNorm(norm_dict, variables, global_object, input_map)
    init_nets = _build_init_nets(mcfg, variables, global_object, constituents)
    edge_features, edge_net, edge_args = _build_edges(mcfg, variables, edge_input, constituents)
    encoder = pooling = None
    node_size, pooled_size = None, int(mcfg.embed_dim)  # jets-only: the init net output
    if constituents:
        encoder, pooling = _build_encoder_pooling(mcfg, constituents, edge_args, allowed)
        node_size = int(getattr(encoder, "out_size", 0) or mcfg.out_dim or mcfg.embed_dim)
        pooled_size = int(getattr(pooling, "out_size", node_size))
    global_size = pooled_size + len(variables.get("GLOBAL", []))

    task_cfgs = mcfg.tasks
    if not task_cfgs:
        raise ValueError("model.tasks is empty: the model needs at least one task")
    tasks = {
        str(name): _build_task(
            str(name),
            node,
            global_object=global_object,
            node_size=node_size,
            global_size=global_size,
            class_dict=class_dict,
            class_names=class_names,
            input_map=input_map,
            allowed=allowed,
        )
        for name, node in task_cfgs.items()
    }
    model = SaltModel(
        input_norm,
        init_nets,
        tasks,
        encoder=encoder,
        pooling=pooling,
        global_object=global_object,
        edge_features=edge_features,
        edge_net=edge_net,
        edge_input=edge_input,
        use_global=bool(variables.get("GLOBAL")),
    )
    model.name = conf.name
    return model


def required_labels(cfg: Any, stage: str = "fit") -> dict[str, list[str]]:
    """Label fields each input must provide at ``stage``.

    At fit (train/val): classification labels and sample weights, regression targets,
    the vertex index and the origin label (vertexing pair weights). At every stage:
    regression target denominators (to invert the scaling).

    Returns
    -------
    dict[str, list[str]]
        ``{input_name: [field, ...]}`` without duplicates, in task order.
    """
    out: dict[str, list[str]] = {}
    fit = stage_has_labels(stage)
    conf = schema_config(cfg)
    allowed = allow_list(plain(conf.allowed_targets))
    for name, node in plain(conf.model.tasks).items():
        cls = resolve(node["_target_"], f"model.tasks.{name}", nn.Module, allowed)
        kind = getattr(cls, "kind", "")
        fields: list[str] = []
        if kind == "classification" and fit:
            fields.append(node["label"])
            if node.get("sample_weight"):
                fields.append(node["sample_weight"])
        elif kind == "regression":
            targets = node.get("targets", [])
            targets = [targets] if isinstance(targets, str) else list(targets)
            dens = node.get("target_denominators") or []
            dens = [dens] if isinstance(dens, str) else list(dens)
            fields += (targets if fit else []) + dens
        elif kind == "vertexing" and fit:
            fields += cls.fit_labels(node.get("label"), node.get("origin_label"))
        elif not kind:
            raise ValueError(f"model.tasks.{name}: {node['_target_']} is not a saltx task")
        if "input_name" not in node:
            raise ValueError(f"model.tasks.{name} needs an input_name")
        bucket = out.setdefault(node["input_name"], [])
        bucket += [f for f in fields if f not in bucket]
    return out
