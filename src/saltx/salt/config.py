"""Convert a Salt YAML config into a saltx experiment.

``python -m saltx.salt config SALT.yaml -o DIR/experiment/NAME.yaml`` writes an experiment
(``# @package _global_``: a defaults list choosing saltx's config groups, then only the
values that differ from them); ``python -m saltx.train --config-dir DIR +experiment=NAME``
trains it. Every key of the Salt file is read: it maps to a saltx key, is dropped with a
note (Lightning settings at their defaults, logging and git switches that change nothing
in the trained model), or is refused with a :class:`SaltConfigError` that names the key
and why. Both Salt generations are read: the seed-era configs (``TransformerEncoder``,
``mha_config``, GATv2, cross-attention pooling and encoder, ``EDGE``, ``PARAMETERS``,
``muP_config``) and salt-ml 0.13 (``Transformer`` with register tokens and non-affine
norms, ``global``/``parameters``, ``mup_config``, edge constructors). docs/salt.md lists
the whole table.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

import saltx.config  # noqa: F401  (registers the schemas)

# saltx's names of Salt's special inputs, any generation
SPECIAL = {"GLOBAL": "GLOBAL", "global": "GLOBAL", "PARAMETERS": "PARAMETERS"}
SPECIAL |= {"parameters": "PARAMETERS", "EDGE": "EDGE"}
EDGE_FEATURES = ("dR", "z", "kt", "subjetIndex", "isSelfLoop")
TASK_OPTIONS = ("jet_classification", "track_origin", "track_vertexing", "jet_regression")
VARIABLE_OPTIONS = ("gn2", "gn1", "gn2emu")

# Lightning Trainer arguments that change nothing in saltx at these values
LIGHTNING_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "strategy": ("auto", "ddp", None),
    "min_epochs": (None,),
    "min_steps": (None, -1),
    "max_time": (None,),
    "limit_test_batches": (None, 1, 1.0),
    "limit_predict_batches": (None, 1, 1.0),
    "overfit_batches": (0, 0.0),
    "check_val_every_n_epoch": (1, None),
    "enable_checkpointing": (None, True),
    "enable_model_summary": (None, True, False),
    "gradient_clip_algorithm": (None, "norm"),
    "benchmark": (None, True, False),
    "inference_mode": (True,),
    "use_distributed_sampler": (True,),
    "profiler": (None,),
    "detect_anomaly": (False,),
    "barebones": (False,),
    "plugins": (None,),
    "sync_batchnorm": (False,),
    "reload_dataloaders_every_n_epochs": (0,),
    "fast_dev_run": (False, 0),
    "enable_autolog_hparams": (True, False),
    "model_registry": (None,),
    "num_sanity_val_steps": None,  # any value: saltx runs no sanity validation
}
DROPPED_CALLBACKS = ("LearningRateMonitor", "TQDMProgressBar", "RichProgressBar", "ModelSummary")


class SaltConfigError(ValueError):
    """Salt keys saltx cannot honour; the message lists every one with the reason."""


@dataclass
class Converted:
    """A converted Salt config.

    Attributes
    ----------
    groups
        Defaults-list entries of the experiment (``override /model/encoder: cross_attention``).
    values
        Every saltx key the Salt config determines (dotted key -> value).
    notes
        What was dropped or mapped with a caveat, one line per Salt key.
    task_names
        Salt task name -> saltx task name (``jets_classification`` -> ``jet_classification``).
    salt_version
        ``0.13`` (``salt.models.Transformer``) or ``seed`` (the earlier encoders).
    """

    groups: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    task_names: dict[str, str] = field(default_factory=dict)
    salt_version: str = "seed"


def _leaf(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


class _Node:
    """A Salt mapping being read: remembers the keys used, reports the rest."""

    def __init__(self, data: Any, path: str, conv: _Converter) -> None:
        if data is not None and not isinstance(data, Mapping):
            conv.refuse(path, f"expected a mapping, got {data!r}")
            data = {}
        self.data = dict(data or {})
        self.path = path
        self.conv = conv
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        value = self.data.get(name, default)
        return default if value is None and default is not None else value

    def child(self, name: str) -> _Node:
        return _Node(self.get(name), self.key(name), self.conv)

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.data:
            self.used.add(name)
            yield name, self.data[name]

    def expect(self, name: str, allowed: tuple[Any, ...], why: str) -> None:
        """Refuse ``name`` unless absent or one of ``allowed``."""
        if name in self.data:
            value = self.get(name)
            if value not in allowed:
                self.conv.refuse(self.key(name), f"{value!r}: {why}")

    def drop(self, *names: str) -> None:
        self.used.update(names)

    def done(self) -> None:
        for name in self.data:
            if name not in self.used and not str(name).startswith("_"):
                self.conv.refuse(self.key(name), "not a Salt key that saltx knows")


class _Converter:
    def __init__(self) -> None:
        self.out = Converted()
        self.problems: list[str] = []
        self.global_object = "jets"
        self.edges: dict[str, Any] = {}

    # -- bookkeeping ----------------------------------------------------------------------
    def refuse(self, key: str, why: str) -> None:
        self.problems.append(f"  {key}: {why}")

    def note(self, key: str, text: str) -> None:
        self.out.notes.append(f"{key}: {text}")

    def set(self, key: str, value: Any) -> None:
        self.out.values[key] = value

    def group(self, entry: str) -> None:
        if entry not in self.out.groups:
            self.out.groups.append(entry)

    def set_once(self, key: str, value: Any, where: str) -> None:
        """Set ``key``, refusing a second, different value (one saltx key, two Salt keys)."""
        if key in self.out.values and self.out.values[key] != value:
            self.refuse(where, f"{value!r} differs from {self.out.values[key]!r} ({key})")
            return
        self.set(key, value)

    # -- the file -------------------------------------------------------------------------
    def convert(self, salt: Mapping[str, Any]) -> Converted:
        root = _Node(salt, "", self)
        data = root.child("data")
        self.global_object = str(data.data.get("global_object") or "jets")
        self.group("override /model: gn2")
        self._top(root)
        self._data(data, root)
        self._model(root.child("model"))
        self._trainer(root.child("trainer"))
        root.done()
        if self.problems:
            raise SaltConfigError(
                "this Salt config uses keys saltx cannot honour:\n" + "\n".join(self.problems)
            )
        return self.out

    def _top(self, root: _Node) -> None:
        if "seed_everything" in root:
            self.set("seed", int(root.get("seed_everything")))
        if root.get("name") is not None:
            self.set("name", str(root.get("name")))
        if root.get("ckpt_path") is not None:
            self.refuse(
                "ckpt_path",
                "a Salt checkpoint; convert it with `python -m saltx.salt checkpoint` and "
                "pass ckpt_path=<run>/checkpoints/best.pt",
            )
        if root.get("compile"):
            self.set("trainer.compile", True)
        for name in ("force", "tag", "overwrite_config"):
            if root.get(name):
                self.note(name, "dropped (saltx runs no git checks and never overwrites a run)")
        if root.get("log_suffix"):
            suffix = root.get("log_suffix")
            self.set(
                "paths.output_dir", f"${{paths.log_dir}}/${{name}}_${{now:%Y%m%d-%H%M%S}}_{suffix}"
            )
        for name in ("optimizer", "lr_scheduler", "weights_only"):
            root.expect(name, (None,), "LightningCLI's optimizer settings; saltx: optimizer/lrs")
        if "PARAMETERS" in root:  # the block the seed-era docs show at the top level
            self._parameters(root.get("PARAMETERS"), "PARAMETERS")

    # -- data -----------------------------------------------------------------------------
    def _data(self, data: _Node, root: _Node) -> None:
        for key in ("train_file", "val_file", "test_file", "norm_dict", "class_dict"):
            if data.get(key) is not None:
                self.set(f"data.{key}", str(data.get(key)))
        for key in ("batch_size", "num_workers", "num_train", "num_val", "num_test"):
            if data.get(key) is not None:
                self.set(f"data.{key}", int(data.get(key)))
        if data.get("pin_memory") is not None:
            self.set("data.pin_memory", bool(data.get("pin_memory")))
        if data.get("prefetch_factor") is not None:
            self.set("data.prefetch_factor", int(data.get("prefetch_factor")))
        data.drop("persistent_workers", "labels", "multiprocessing_context")
        self.set("data.global_object", self.global_object)
        data.drop("global_object")
        for key in ("nan_to_num", "non_finite_to_num"):
            if data.get(key) is not None:
                self.set_once("data.non_finite_to_num", bool(data.get(key)), f"data.{key}")
        if data.get("nan_to_num"):
            self.note("data.nan_to_num", "-> data.non_finite_to_num (±inf become 0, not ±max)")
        if data.get("test_suff") is not None:
            self.note("data.test_suff", "an evaluation option: saltx.evaluate test_suff=...")
        if data.get("move_files_temp") is not None:
            self.refuse(
                "data.move_files_temp",
                "saltx reads the files in place; copy them first, or use "
                "data.config_S3.download_path",
            )
        for key in ("config_S3", "config_s3"):
            block = data.get(key)
            if block:
                from saltx.data.config_s3 import S3Block

                try:
                    S3Block.from_mapping(block)
                except ValueError as err:
                    self.refuse(f"data.{key}", str(err))
                self.set("data.config_S3", dict(block))
        variables = {}
        for name, fields in data.child("variables").items():
            if str(name).startswith("_"):
                continue  # Salt ignores these (YAML anchors)
            variables[SPECIAL.get(name, name)] = [str(f) for f in fields or []]
        input_map = {}
        given = {SPECIAL.get(k, k): str(v) for k, v in (data.get("input_map") or {}).items()}
        own = [k for k in variables if k not in ("GLOBAL", "PARAMETERS", "EDGE")]
        first = next((k for k in own if k != self.global_object), "tracks")
        for name, dataset in given.items():
            default = given.get(first, first) if name == "EDGE" else name
            if name in ("GLOBAL", "PARAMETERS") or dataset == default:
                continue  # saltx maps these itself
            input_map[name] = dataset
        if input_map:
            self.set("data.input_map", input_map)
        if data.get("num_inputs"):
            self.set("data.num_inputs", {k: int(v) for k, v in data.get("num_inputs").items()})
        for key in ("parameters", "PARAMETERS"):
            if data.get(key):
                self._parameters(data.get(key), f"data.{key}")
        constructors = data.get("edge_constructors")
        if constructors:
            self._edge_constructors(constructors, variables, input_map)
        for key, why in (
            ("labeller_config", "relabelling on the fly; relabel the files"),
            ("selections", "track selections; select in the files"),
            ("transforms", "input transforms"),
            ("multi_target", "multi-target regression"),
            ("mf_config", "MaskFormer"),
            ("train_vds_path", "virtual datasets; give one file per split"),
            ("val_vds_path", "virtual datasets; give one file per split"),
            ("test_vds_path", "virtual datasets; give one file per split"),
        ):
            data.expect(key, (None, {}, []), f"not supported in saltx ({why})")
        data.expect("ignore_finite_checks", (None, False), "saltx always checks inputs")
        data.expect("recover_malformed", (None, False), "saltx does not repair labels")
        if "concat_jet_tracks" in data:
            data.expect("concat_jet_tracks", (None,), "use attach_global of the init nets")
        self._set_variables(variables)
        data.done()

    def _parameters(self, block: Any, where: str) -> None:
        if not isinstance(block, Mapping):
            self.refuse(where, "expected {name: {train: [...], test: x, prob: [...]}}")
            return
        params = {}
        for name, spec in block.items():
            spec = dict(spec or {})
            unknown = sorted(set(spec) - {"train", "test", "prob"})
            if unknown:
                self.refuse(f"{where}.{name}", f"unknown keys {unknown} (train, test, prob)")
            params[str(name)] = {k: spec[k] for k in ("train", "test", "prob") if k in spec}
        self.set_once("data.parameters", params, where)

    def _edge_constructors(self, constructors: Any, variables: dict, input_map: dict) -> None:
        if len(constructors) != 1:
            self.refuse("data.edge_constructors", "saltx supports one edge input")
            return
        ec = _Node(constructors[0], "data.edge_constructors[0]", self)
        features = [str(f) for f in ec.get("edge_features") or []]
        unknown = [f for f in features if f not in EDGE_FEATURES]
        if unknown:
            self.refuse(
                "data.edge_constructors[0].edge_features", f"{unknown} not in {EDGE_FEATURES}"
            )
        variables["EDGE"] = features
        owner = str(ec.get("input_name"))
        own = [k for k in variables if k not in (self.global_object, *SPECIAL.values())]
        if own and owner != own[0]:  # saltx's EDGE default: the first constituent's dataset
            input_map["EDGE"] = input_map.get(owner, owner)
        ec.drop("variables", "indices_map")
        ec.done()

    def _set_variables(self, variables: dict[str, list[str]]) -> None:
        """data.variables, choosing the data/variables option with the same inputs."""
        if self.global_object not in variables:
            self.refuse(
                "data.variables", f"has no entry for the global object {self.global_object!r}"
            )
        option = None
        own = {k for k in variables if k not in ("GLOBAL", "PARAMETERS", "EDGE")}
        for name in VARIABLE_OPTIONS:
            ref = _load_conf(f"data/variables/{name}.yaml")
            if set(ref) == own:
                option = name
                break
        if option is None:
            self.group("override /data/variables: null")
        elif option != "gn2":
            self.group(f"override /data/variables: {option}")
        for name, fields in variables.items():
            self.set(f"data.variables.{name}", fields)
        self.out.values["_variables"] = list(variables)

    # -- model ----------------------------------------------------------------------------
    def _model(self, model: _Node) -> None:
        lrs = model.child("lrs_config")
        for key in ("initial", "max", "end", "pct_start", "weight_decay"):
            if lrs.get(key) is not None:
                self.set(f"lrs.{key}", float(lrs.get(key)))
        lrs.expect("last_epoch", (None, -1), "saltx resumes the schedule from its checkpoint")
        lrs.done()
        model.drop("norm_config", "name", "global_object", "_instantiator")
        model.expect("loss_mode", (None, "wsum"), "saltx sums the weighted task losses")
        model.expect(
            "optimizer", (None, "AdamW", "adamw"), "saltx's optimizers: adamw, adam, muadamw"
        )
        model.expect("edge_constructors", (None, []), "set under data.edge_constructors")
        net = model.child("model")
        if _leaf(net.get("class_path")) != "SaltModel":
            self.refuse(
                "model.model.class_path", f"{net.get('class_path')!r}: saltx builds SaltModel"
            )
        args = net.child("init_args")
        net.done()
        self._init_nets(args.get("init_nets") or [], args.get("edge_init_nets"))
        encoder = args.get("encoder")
        pool = args.get("pool_net")
        if encoder is None and pool is None:
            self._jets_only()
        elif encoder is None or pool is None:
            self.refuse(
                "model.model.init_args", "saltx needs an encoder and a pool_net, or neither"
            )
        else:
            self._encoder(_Node(encoder, "model.model.init_args.encoder", self))
            self._pooling(_Node(pool, "model.model.init_args.pool_net", self))
        self._tasks(args.child("tasks"))
        for key, why in (
            ("mask_decoder", "MaskFormer"),
            ("merge_dict", "merged input streams"),
            ("featurewise_nets", "featurewise (FiLM) parameter networks"),
        ):
            args.expect(key, (None, {}, []), f"not supported in saltx ({why})")
        args.drop("edge_init_nets")
        args.done()
        for key in ("muP_config", "mup_config"):
            if model.get(key):
                self._mup(_Node(model.get(key), f"model.{key}", self))
        if self.edges:
            self.group("/model/edges: default")
            for k, v in self.edges.items():
                self.set(f"model.edges.{k}", v)
        model.done()

    def _dense(self, node: _Node, where: str) -> dict[str, Any]:
        """A Salt Dense config -> saltx's Dense keys (sizes are derived, not copied)."""
        out = {
            "hidden_layers": node.get("hidden_layers"),
            "activation": node.get("activation", "ReLU"),
        }
        if node.get("hidden_dim_scale", 2) != 2:
            out["hidden_dim_scale"] = int(node.get("hidden_dim_scale"))
        if node.get("dropout"):
            out["dropout"] = float(node.get("dropout"))
        if node.get("norm_layer"):
            out["norm_layer"] = str(node.get("norm_layer"))
        if node.get("final_activation"):
            out["final_activation"] = str(node.get("final_activation"))
        node.expect("bias", (None, True), "saltx's dense layers always have biases")
        node.drop("input_size", "output_size", "context_size", "muP", "mup")
        node.done()
        return out

    def _init_nets(self, init_nets: list, edge_init_nets: Any) -> None:
        self.constituents: list[str] = []
        self.init_nets: dict[str, dict] = {}
        for i, raw in enumerate(init_nets):
            node = _Node(raw, f"model.model.init_args.init_nets[{i}]", self)
            name = str(node.get("input_name"))
            dense = node.child("dense_config")
            out_size = dense.data.get("output_size")
            conf = self._dense(dense, dense.path)
            node.drop("variables", "global_object", "muP", "mup")
            for key, why in (("pos_enc", "positional encodings"), ("featurewise", "FiLM")):
                node.expect(key, (None,), f"not supported in saltx ({why})")
            if name == "EDGE":
                self._edge_net(conf, out_size, node)
                continue
            if node.get("attach_global") is not None:
                conf["attach_global"] = bool(node.get("attach_global"))
            elif name != self.global_object:
                conf["attach_global"] = True
            if name != self.global_object:
                self.constituents.append(name)
                if out_size is not None:
                    self.set_once("model.embed_dim", int(out_size), f"{dense.path}.output_size")
            elif out_size is not None:
                self.set("model.embed_dim", int(out_size))
            self.init_nets[name] = conf
            node.done()
        for i, raw in enumerate(edge_init_nets or []):
            node = _Node(raw, f"model.model.init_args.edge_init_nets[{i}]", self)
            dense = node.child("dense_config")
            out_size = dense.data.get("output_size")
            self._edge_net(self._dense(dense, dense.path), out_size, node)
            node.drop("input_name", "variables", "global_object", "attach_global")
            node.done()
        for name, conf in self.init_nets.items():
            for key, value in conf.items():
                self.set(f"model.init_nets.{name}.{key}", value)
        self.out.values["_init_nets"] = list(self.init_nets)

    def _edge_net(self, conf: dict, out_size: Any, node: _Node) -> None:
        conf.pop("attach_global", None)
        node.drop("attach_global")
        self.edges.update(conf)
        if out_size is not None:
            self.edges["embed_dim"] = int(out_size)

    def _jets_only(self) -> None:
        if list(self.init_nets) != [self.global_object]:
            self.refuse(
                "model.model.init_args.init_nets",
                f"a model without encoder needs one init net, on {self.global_object!r}",
            )
        self.group("override /model: null")
        self.out.groups.remove("override /model: gn2")
        self.set("model.encoder", None)
        self.set("model.pooling", None)
        self.set("model.attention", None)
        self.init_nets[self.global_object]["attach_global"] = False
        self.set(f"model.init_nets.{self.global_object}.attach_global", False)

    def _heads(self, value: Any, where: str) -> None:
        if value is not None:
            self.set_once("model.num_heads", int(value), where)

    def _encoder(self, enc: _Node) -> None:
        kind = _leaf(enc.get("class_path"))
        args = enc.child("init_args")
        enc.done()
        if args.get("embed_dim") is not None:
            self.set_once("model.embed_dim", int(args.get("embed_dim")), f"{args.path}.embed_dim")
        self.set("model.out_dim", int(args.get("out_dim") or 0))
        if args.get("num_layers") is not None:
            self.set("model.encoder.num_layers", int(args.get("num_layers")))
        muP = args.get("muP", args.get("mup", False))
        args.drop("muP", "mup")
        self.set("model.muP", bool(muP))
        embed = self.out.values.get("model.embed_dim")
        if kind in ("Transformer", "TransformerV2"):
            self.out.salt_version = "0.13"
            self._transformer_v2(args, embed)
        elif kind == "TransformerEncoder":
            self._mha(args.child("mha_config"))
            self._ffn(args.child("dense_config"), embed, "model.encoder", args.key("dense_config"))
            args.expect("context_dim", (None, 0), "saltx gives the encoder no context")
            self._encoder_edges(args)
        elif kind == "TransformerCrossAttentionEncoder":
            self.group("override /model/encoder: cross_attention")
            self._mha(args.child("mha_config"))
            sa = self._ffn(
                args.child("sa_dense_config"), embed, "model.encoder", args.key("sa_dense_config")
            )
            ca_node = args.child("ca_dense_config")
            if ca_node.data:
                ca = self._ffn(ca_node, embed, None, args.key("ca_dense_config"))
                if ca != sa:
                    self.refuse(args.key("ca_dense_config"), "saltx uses sa_dense_config for both")
            if args.get("ca_every_layer") is not None:
                self.set("model.encoder.ca_every_layer", bool(args.get("ca_every_layer")))
            args.drop("input_names")
            args.expect("context_dim", (None, 0), "saltx gives the encoder no context")
            args.expect("merge_dict", (None, {}), "merged streams are not supported")
            args.expect("update_edges", (None, False), "edges need the transformer encoder")
            self.note(
                args.path, "saltx's layers see the updated representations (Salt's never did)"
            )
        else:
            self.refuse(
                enc.key("class_path"), f"{enc.get('class_path')!r} is not an encoder saltx has"
            )
        args.done()

    def _encoder_edges(self, args: _Node) -> None:
        edge_dim = args.get("edge_embed_dim")
        if edge_dim:
            if self.edges.get("embed_dim") not in (None, int(edge_dim)):
                self.refuse(args.key("edge_embed_dim"), "differs from the EDGE init net's output")
            self.edges["embed_dim"] = int(edge_dim)
        if self.edges:
            self.edges["update_edges"] = bool(args.get("update_edges") or False)
        elif args.get("update_edges"):
            self.refuse(args.key("update_edges"), "true, but the model has no edge init net")

    def _mha(self, mha: _Node) -> None:
        self._heads(mha.get("num_heads"), mha.key("num_heads"))
        att = mha.get("attention")
        if isinstance(att, str):
            att = {"class_path": att}
        att = _Node(att, mha.key("attention"), self)
        kind = _leaf(att.get("class_path")) or "ScaledDotProductAttention"
        init = att.child("init_args")
        if kind == "GATv2Attention":
            self.group("override /model/attention: gatv2")
            self.set("model.attention.activation", init.get("activation", "SiLU"))
            self._heads(init.get("num_heads"), init.key("num_heads"))
            init.drop("head_dim")  # derived: embed_dim / num_heads
            self.note(att.path, "GATv2's edge bias is added with the right axes in saltx")
        elif kind == "ScaledDotProductAttention":
            if init.get("dropout"):
                self.set("model.attention.dropout", float(init.get("dropout")))
        else:
            self.refuse(att.key("class_path"), f"{kind} is not an attention saltx has")
        init.done()
        att.done()
        mha.expect("out_proj", (None, True, *range(1, 100_000)), "saltx always projects")
        mha.expect("k_dim", (None,), "keys come from the same stream")
        mha.expect("v_dim", (None,), "values come from the same stream")
        mha.drop("edge_embed_dim", "update_edges", "muP", "mup")
        mha.done()

    def _ffn(self, node: _Node, embed: Any, where: str | None, path: str) -> dict[str, Any]:
        """A transformer layer's Dense -> hidden_dim_scale (and activation/dropout)."""
        hidden = node.get("hidden_layers")
        scale = int(node.get("hidden_dim_scale", 2))
        if hidden is not None:
            if len(hidden) != 1 or not embed or hidden[0] % int(embed):
                self.refuse(
                    f"{path}.hidden_layers", f"{hidden}: saltx has one hidden layer of k·embed_dim"
                )
            else:
                scale = hidden[0] // int(embed)
        out = {"hidden_dim_scale": scale, "activation": node.get("activation", "ReLU")}
        if node.get("dropout"):
            out["dropout"] = float(node.get("dropout"))
        node.expect("norm_layer", (None,), "saltx's transformer layers use LayerNorm only")
        node.expect("final_activation", (None,), "not in saltx's transformer layers")
        node.drop("hidden_dim_scale", "muP", "mup", "input_size", "output_size", "context_size")
        node.done()
        if where is not None:
            self.set(f"{where}.hidden_dim_scale", scale)
            self.set("model.activation", out["activation"])
            self.set("model.dropout", out.get("dropout", 0.0))
        return out

    def _transformer_v2(self, args: _Node, embed: Any) -> None:
        """salt-ml 0.13's Transformer: registers, non-affine norms, final norm after out_proj."""
        norm = args.get("norm", "LayerNorm")
        if norm == "LayerNorm":
            self.set("model.norm_affine", False)
        else:
            self.refuse(args.key("norm"), f"{norm!r}: saltx has LayerNorm only")
        self.set("model.encoder.num_registers", int(args.get("num_registers", 1)))
        final = args.get("do_final_norm", True)
        self.set("model.encoder.final_norm", "after_out_proj" if final else "none")
        if not args.data.get("mup", args.data.get("muP")):
            self.set("model.encoder.qkv_init", "xavier_packed")  # 0.13's initialisation
        args.drop("attn_type")
        args.expect("drop_registers", (None, False), "saltx's pooling always sees the registers")
        args.expect("ls_init", (None,), "LayerScale is not in saltx")
        args.expect("drop_path", (None, 0, 0.0), "drop-path is not in saltx")
        args.expect("norm_type", (None, "pre"), "saltx's layers are pre-norm")
        args.expect("num_dense", (None, 1), "saltx has one dense block per layer")
        dense = args.child("dense_kwargs")
        hidden = dense.get("hidden_dim")
        scale = 2
        if hidden is not None:
            if not embed or hidden % int(embed):
                self.refuse(dense.key("hidden_dim"), f"{hidden} is not a multiple of embed_dim")
            else:
                scale = hidden // int(embed)
        self.set("model.encoder.hidden_dim_scale", scale)
        self.set("model.activation", dense.get("activation", "SiLU"))
        self.set("model.dropout", float(dense.get("dropout", 0.0)))
        dense.expect("gated", (None, False), "gated linear units are not in saltx")
        dense.expect("bias", (None, True), "saltx's dense layers always have biases")
        dense.drop("mup")
        dense.done()
        attn = args.child("attn_kwargs")
        self.set_once("model.num_heads", int(attn.get("num_heads", 1)), attn.key("num_heads"))
        if attn.get("dropout"):
            self.set("model.attention.dropout", float(attn.get("dropout")))
        attn.expect("bias", (None, True), "saltx's attention projections have biases")
        attn.expect("do_qk_norm", (None, False), "q/k norms are not in saltx")
        attn.expect("do_v_norm", (None, False), "v norms are not in saltx")
        attn.drop("attn_type", "mup")
        attn.done()
        self._encoder_edges(args)

    def _pooling(self, pool: _Node) -> None:
        kind = _leaf(pool.get("class_path"))
        args = pool.child("init_args")
        pool.done()
        args.drop("input_size")  # derived from the encoder output
        if kind == "GlobalAttentionPooling":
            pass
        elif kind in (
            "CrossAttentionPooling",
            "TensorCrossAttentionPooling",
            "DictCrossAttentionPooling",
        ):
            self.group("override /model/pooling: cross_attention")
            if args.get("num_layers") is not None:
                self.set("model.pooling.num_layers", int(args.get("num_layers")))
            mha = args.child("mha_config")
            heads = mha.get("num_heads")
            if heads is not None and heads != self.out.values.get("model.num_heads"):
                self.refuse(
                    mha.key("num_heads"), "saltx's pooling uses the encoder's model.num_heads"
                )
            mha.drop("attention", "out_proj", "muP", "mup")
            mha.done()
            dense = args.child("dense_config")
            if dense.data:
                out = self._ffn(
                    dense,
                    self.out.values.get("model.out_dim") or self.out.values.get("model.embed_dim"),
                    None,
                    dense.path,
                )
                self.set("model.pooling.hidden_dim_scale", out["hidden_dim_scale"])
                self.set("model.pooling.activation", out["activation"])
            args.expect("context_dim", (None, 0), "saltx gives the pooling no context")
            if kind == "DictCrossAttentionPooling":
                self.note(pool.path, "the class token attends to all types at once in saltx")
        else:
            self.refuse(pool.key("class_path"), f"{kind!r} is not a pooling saltx has")
        args.done()

    # -- tasks ----------------------------------------------------------------------------
    def _tasks(self, tasks: _Node) -> None:
        modules = tasks.child("init_args").get("modules") or []
        tasks.drop("class_path", "init_args")
        tasks.done()
        options, names = [], []
        for i, raw in enumerate(modules):
            node = _Node(raw, f"model.model.init_args.tasks.init_args.modules[{i}]", self)
            conf = self._task(node)
            if conf is None:
                continue
            salt_name = conf.pop("name")
            name = salt_name
            if salt_name in (f"{self.global_object}_classification", "jets_classification"):
                name = "jet_classification"
            self.out.task_names[salt_name] = name
            if name in TASK_OPTIONS:
                options.append(name)
            names.append(name)
            for key, value in conf.items():
                self.set(f"model.tasks.{name}.{key}", value)
        if "override /model: gn2" in self.out.groups:
            self.group(f"override /model/tasks: [{', '.join(options)}]")
        self.out.values["_tasks"] = names

    def _task(self, task: _Node) -> dict[str, Any] | None:
        kind = _leaf(task.get("class_path"))
        args = task.child("init_args")
        task.done()
        targets = {
            "ClassificationTask": "saltx.models.tasks.ClassificationTask",
            "RegressionTask": "saltx.models.tasks.RegressionTask",
            "VertexingTask": "saltx.models.vertexing.VertexingTask",
        }
        if kind not in targets:
            self.refuse(task.key("class_path"), f"{kind!r}: saltx's tasks are {sorted(targets)}")
            return None
        conf: dict[str, Any] = {
            "name": str(args.get("name")),
            "_target_": targets[kind],
            "input_name": str(args.get("input_name")),
            "weight": float(args.get("weight", 1.0)),
        }
        conf.update(self._dense(args.child("dense_config"), args.key("dense_config")))
        loss = args.get("loss")
        if isinstance(loss, str):
            loss = {"class_path": loss}
        loss = _Node(loss, args.key("loss"), self)
        loss_kind = _leaf(loss.get("class_path"))
        init = loss.child("init_args")
        loss.done()
        if kind == "ClassificationTask":
            self._classification(args, conf, loss_kind, init)
        elif kind == "RegressionTask":
            conf["targets"] = args.get("targets")
            for key in ("target_denominators", "norm_params"):
                if args.get(key) is not None:
                    conf[key] = args.get(key)
            conf["loss"] = loss_kind or "MSELoss"
            init.drop("reduction", "size_average", "reduce")
            for key in ("scaler", "custom_output_names", "sample_weight"):
                args.expect(key, (None,), "not supported by saltx's RegressionTask")
        else:
            conf["label"] = str(args.get("label"))
            if loss_kind not in ("", "BCEWithLogitsLoss"):
                self.refuse(loss.key("class_path"), "vertexing uses BCEWithLogitsLoss")
            init.drop("reduction", "weight", "size_average", "reduce")
            init.expect("pos_weight", (None,), "not supported by saltx's vertexing")
        init.done()
        args.done()
        return conf

    def _classification(self, args: _Node, conf: dict, loss_kind: str, init: _Node) -> None:
        conf["label"] = str(args.get("label"))
        conf["class_names"] = args.get("class_names")
        if args.get("label_map") is not None:
            conf["label_map"] = {int(k): int(v) for k, v in args.get("label_map").items()}
        if args.get("sample_weight") is not None:
            conf["sample_weight"] = str(args.get("sample_weight"))
        use_dict = bool(args.get("use_class_dict", args.get("use_class_dict_weights", False)))
        args.drop("use_class_dict_weights")
        conf["use_class_dict"] = use_dict
        if loss_kind not in ("", "CrossEntropyLoss"):
            self.refuse(args.key("loss"), f"{loss_kind}: saltx's classification uses cross-entropy")
        weights = init.get("weight")
        if weights is not None and not use_dict:  # with use_class_dict Salt filled them
            conf["class_weights"] = [float(w) for w in weights]
        init.expect("label_smoothing", (None, 0, 0.0), "not supported by saltx")
        init.drop("ignore_index", "reduction", "size_average", "reduce")

    def _mup(self, mup: _Node) -> None:
        self.group("/mup: gn2")
        self.group("override /optimizer: muadamw")
        if mup.get("shape_path") is not None:
            self.set("mup.shape_path", str(mup.get("shape_path")))
        dims = {"embed_dim": None, "num_heads": None}
        for name, raw in mup.items():
            if name == "shape_path":
                continue
            node = _Node(raw, mup.key(name), self)
            pairs = list(
                zip(node.get("apply_to") or [], node.get("parameter_name") or [], strict=False)
            )
            apply, params = [], []
            for where, key in pairs:
                if (where, key) in (("init_nets", "output_size"), ("encoder", "embed_dim")):
                    target = ("model", "embed_dim")
                elif key == "num_heads":
                    target = ("model", "num_heads")
                elif where == "init_nets" and key == "hidden_layers":
                    target = ("model.init_nets", "hidden_layers")
                else:
                    self.refuse(
                        node.path,
                        f"({where}, {key}): saltx scales embed_dim, num_heads and the "
                        "init nets' hidden layers",
                    )
                    continue
                if target not in zip(apply, params, strict=False):
                    apply.append(target[0])
                    params.append(target[1])
            dim = "num_heads" if params == ["num_heads"] else "embed_dim"
            dims[dim] = {
                "apply_to": apply,
                "parameter_name": params,
                "parameter_base": node.get("parameter_base"),
                "parameter_delta": node.get("parameter_delta"),
            }
            node.done()
        for dim, spec in dims.items():
            if spec is None:
                spec = {"parameter_base": None, "parameter_delta": None}
            for key, value in spec.items():
                self.set(f"mup.{dim}.{key}", value)
        if not self.out.values.get("model.muP"):
            self.refuse(mup.path, "muP_config is set but the encoder does not set muP: true")
        mup.done()

    # -- trainer --------------------------------------------------------------------------
    def _trainer(self, trainer: _Node) -> None:
        simple = {
            "max_epochs": "trainer.max_epochs",
            "max_steps": "trainer.max_steps",
            "num_nodes": "trainer.num_nodes",
            "log_every_n_steps": "trainer.log_every_n_steps",
            "accumulate_grad_batches": "trainer.accumulate_grad_batches",
        }
        for key, target in simple.items():
            if trainer.get(key) is not None:
                self.set(target, int(trainer.get(key)))
        if trainer.get("gradient_clip_val") is not None:
            self.set("trainer.gradient_clip_val", float(trainer.get("gradient_clip_val")))
        if trainer.get("deterministic") is not None:
            self.set("trainer.deterministic", bool(trainer.get("deterministic")))
        if trainer.get("enable_progress_bar") is not None:
            self.set("trainer.progress_bar", bool(trainer.get("enable_progress_bar")))
        self._accelerator(trainer)
        self._precision(trainer)
        # `salt fit` sets this for every training run (and not for `salt test`): float32
        # matmuls in bfloat16 on CPUs with AMX/AVX512-BF16, TF32 on GPUs
        self.set("trainer.float32_matmul_precision", "medium")
        self._batches(trainer)
        root = trainer.get("default_root_dir")
        if root is not None:
            self.set("paths.log_dir", _strip_run_dir(str(root)))
        self._logger(trainer.get("logger"))
        self._callbacks(trainer.get("callbacks") or [])
        for key, allowed in LIGHTNING_DEFAULTS.items():
            if allowed is None:
                trainer.drop(key)
            elif key == "fast_dev_run" and trainer.get(key) not in (None, *allowed):
                self.refuse(
                    "trainer.fast_dev_run", "use trainer.max_steps=N trainer.limit_val_batches=N"
                )
            else:
                trainer.expect(key, allowed, "a Lightning option saltx does not have")
        trainer.done()

    def _accelerator(self, trainer: _Node) -> None:
        acc = trainer.get("accelerator")
        names = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "auto": "auto"}
        if acc is not None:
            if str(acc) in names:
                self.set("trainer.accelerator", names[str(acc)])
            else:
                self.refuse("trainer.accelerator", f"{acc!r}: saltx runs on cpu or gpu")
        devices = trainer.get("devices")
        if devices is not None:
            if isinstance(devices, int) or str(devices).isdigit():
                self.set("trainer.devices", int(devices))
            else:
                self.refuse("trainer.devices", f"{devices!r}: give a number of devices")

    def _precision(self, trainer: _Node) -> None:
        value = trainer.get("precision")
        if value is None:
            return
        names = {"32": "32", "32-true": "32", "16-mixed": "fp16", "16": "fp16"}
        names |= {"bf16-mixed": "bf16", "bf16": "bf16"}
        if str(value) in names:
            self.set("trainer.precision", names[str(value)])
        else:
            self.refuse(
                "trainer.precision", f"{value!r}: saltx trains in 32, bf16-mixed or 16-mixed"
            )

    def _batches(self, trainer: _Node) -> None:
        """Lightning's batch limits: 1.0 = all, an integral N > 1 = N batches."""
        for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
            value = trainer.get(key)
            if value is None or value == 1:
                continue  # Salt parses these as floats: 1.0 = all (once per epoch)
            count = _batch_count(value)
            if count is None:
                self.refuse(
                    f"trainer.{key}", f"{value!r}: saltx takes a number of batches, not a fraction"
                )
            elif key == "limit_train_batches":
                epochs = int(
                    self.out.values.get("trainer.max_epochs", trainer.get("max_epochs", 1) or 1)
                )
                self.set("trainer.max_steps", count * epochs)
                self.note(
                    "trainer.limit_train_batches",
                    f"-> trainer.max_steps={count * epochs} ({count} per epoch × {epochs}; "
                    "saltx epochs run over the whole file)",
                )
            else:
                self.set(f"trainer.{key}", count)

    def _logger(self, logger: Any) -> None:
        if logger in (None, False, [], {}):
            return  # saltx's default: logger=none
        kind = _leaf(logger.get("class_path") if isinstance(logger, Mapping) else logger)
        if kind == "TensorBoardLogger":
            self.group("override /logger: tensorboard")
        elif kind == "WandbLogger":
            self.group("override /logger: wandb")
        else:
            self.note(
                "trainer.logger",
                f"{kind or logger}: dropped (saltx logs metrics.jsonl; logger=tensorboard|wandb)",
            )

    def _callbacks(self, callbacks: list) -> None:
        for i, raw in enumerate(callbacks):
            raw = {"class_path": raw} if isinstance(raw, str) else raw
            node = _Node(raw, f"trainer.callbacks[{i}]", self)
            kind = _leaf(node.get("class_path"))
            args = node.child("init_args")
            node.done()
            if kind == "Checkpoint":
                monitor = args.get("monitor_loss")
                if monitor:
                    self.set("trainer.monitor", self._metric(str(monitor)))
                self.set("trainer.save_every_epoch", True)
                args.drop("fname_string")
            elif kind == "PredictionWriter":
                for key, value in args.items():
                    if value not in (None, False, [], {}):
                        self.note(
                            f"{args.path}.{key}",
                            f"{value!r}: an option of python -m saltx.evaluate (docs/salt.md)",
                        )
            elif kind == "PerformanceWriter":
                self.set("trainer.performance_writer.enabled", True)
                if args.get("dir_path") is not None:
                    self.set("trainer.performance_writer.dir_path", str(args.get("dir_path")))
                if args.get("add_metrics"):
                    self.set(
                        "trainer.performance_writer.add_metrics",
                        [self._metric(m) for m in args.get("add_metrics")],
                    )
                for key in ("stdOut", "std_out"):
                    if args.get(key) is not None:
                        self.set("trainer.performance_writer.std_out", bool(args.get(key)))
            elif kind in DROPPED_CALLBACKS:
                args.drop(*args.data)
                self.note(
                    node.path,
                    f"{kind}: dropped (saltx logs the learning rate and shows a progress bar)",
                )
            else:
                self.refuse(f"{node.path}.class_path", f"{kind!r}: a callback saltx does not have")
                args.drop(*args.data)
            args.done()

    def _metric(self, name: str) -> str:
        """A Salt metric name (``val_jet_classification_loss``, ``val/jets_..._loss``)."""
        stage, _, rest = name.replace("/", "_", 1).partition("_")
        task = rest.removesuffix("_loss")
        task = self.out.task_names.get(
            task,
            "jet_classification"
            if task in ("jet_classification", f"{self.global_object}_classification")
            else task,
        )
        return f"{stage}/loss" if rest == "loss" else f"{stage}/{task}_loss"


def _batch_count(value: Any) -> int | None:
    """Batches of a Lightning limit (an int, or a float > 1 that is whole), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and value > 1 and math.isclose(value, round(value)):
        return round(value)
    return None


def _strip_run_dir(path: str) -> str:
    """Salt's rule: a ``<name>_<YYYYmmdd-THHMMSS>`` run dir stands for its parent."""
    import re

    head, _, tail = path.rstrip("/").rpartition("/")
    if head and re.search(r"_\d{8}-T\d{6}$", tail):
        return head
    return path


def _load_conf(rel: str) -> dict[str, Any]:
    conf = Path(__file__).resolve().parent.parent / "conf" / rel
    return yaml.safe_load(conf.read_text()) or {}


# -- the experiment file --------------------------------------------------------------------
def load_salt_config(path: str | Path) -> dict[str, Any]:
    """A Salt YAML file as a dict (anchors and merge keys resolved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Salt config not found: '{path}'")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SaltConfigError(f"'{path}' is not a Salt config (a YAML mapping)")
    return data


def convert_config(salt: Mapping[str, Any]) -> Converted:
    """Map a Salt config (a dict) to saltx config groups and values.

    Raises
    ------
    SaltConfigError
        Listing every Salt key saltx cannot honour, with the reason.
    """
    return _Converter().convert(salt)


def compose(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """Compose saltx's ``train`` config, with ``config_dir`` searched for experiments."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_module("saltx.conf", version_base="1.3"):
        return hydra_compose("train", overrides=[*extra, *overrides])


def _raw(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False)


def _lookup(tree: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Mappings in block style, lists of scalars on one line."""


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def _defaults_yaml(groups: list[str]) -> str:
    lines = ["defaults:"]
    # Hydra takes added groups (/model/edges) before the overrides
    for entry in sorted(groups, key=lambda g: g.startswith("override ")):
        key, _, value = entry.partition(": ")
        lines.append(f"  - {key}: {value}")
    return "\n".join(lines) + "\n"


def _compose_groups(groups: list[str]) -> dict[str, Any]:
    """saltx's train config with only the experiment's defaults list applied."""
    with tempfile.TemporaryDirectory(prefix="saltx-salt-") as tmp:
        (Path(tmp) / "experiment").mkdir()
        (Path(tmp) / "experiment" / "base.yaml").write_text(
            "# @package _global_\n" + _defaults_yaml(groups)
        )
        return _raw(compose(["+experiment=base"], tmp))


def experiment_text(conv: Converted, source: str = "", train: str = "") -> str:
    """The experiment YAML: the defaults list, then the values saltx's groups do not have."""
    base = _compose_groups(conv.groups)
    deltas = {}
    for key, value in conv.values.items():
        if key.startswith("_"):
            continue
        found, have = _lookup(base, key)
        if (found and have != value) or (not found and value is not None):
            deltas[key] = value
    header = [
        "# @package _global_",
        f"# Converted from the Salt config {source} by `python -m saltx.salt config`"
        if source
        else "# Converted from a Salt config by `python -m saltx.salt config`",
        "# (docs/salt.md). Train: "
        + (train or "python -m saltx.train --config-dir DIR +experiment=NAME"),
    ]
    header += [f"# note: {n}" for n in conv.notes]
    body = yaml.dump(_nest(deltas), Dumper=_Dumper, sort_keys=False, width=96)
    return "\n".join(header) + "\n" + _defaults_yaml(conv.groups) + "\n" + body


def check_experiment(conv: Converted, config_dir: Path, name: str) -> DictConfig:
    """Compose ``+experiment=name`` and check it holds every converted value.

    Raises
    ------
    SaltConfigError
        If a value did not reach the composed config (a converter bug, reported as such).
    """
    cfg = compose([f"+experiment={name}"], config_dir)
    raw = _raw(cfg)
    wrong = []
    for key, value in conv.values.items():
        if key.startswith("_"):
            continue
        found, have = _lookup(raw, key)
        if have != value or (not found and value is not None):
            wrong.append(f"  {key}: wanted {value!r}, composed {have!r}")
    owned = {
        "_tasks": "model.tasks",
        "_init_nets": "model.init_nets",
        "_variables": "data.variables",
    }
    for marker, key in owned.items():
        if marker in conv.values:
            have = list((_lookup(raw, key)[1] or {}).keys())
            if have != list(conv.values[marker]):
                wrong.append(f"  {key}: wanted {conv.values[marker]}, composed {have}")
    if wrong:
        raise SaltConfigError(
            "the written experiment does not compose as intended:\n" + "\n".join(wrong)
        )
    return cfg


def train_command(experiment: Path) -> str:
    """The command that trains the experiment file ``DIR/experiment/NAME.yaml``."""
    where, name = experiment.parent.parent, experiment.stem
    return f"python -m saltx.train --config-dir {where} +experiment={name}"


def write_experiment(salt_path: str | Path, out: str | Path) -> tuple[Path, Converted]:
    """Convert ``salt_path`` and write the experiment to ``out`` (``DIR/experiment/NAME.yaml``).

    Returns
    -------
    tuple
        The written path and the conversion (notes, task names).
    """
    out = Path(out)
    if out.suffix != ".yaml" or out.parent.name != "experiment":
        raise ValueError(f"-o {out}: expected DIR/experiment/NAME.yaml (Hydra's experiment group)")
    conv = convert_config(load_salt_config(salt_path))
    text = experiment_text(conv, str(salt_path), train_command(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    try:
        check_experiment(conv, out.parent.parent, out.stem)
    except BaseException:
        out.unlink(missing_ok=True)  # never leave an experiment that is not the Salt config
        raise
    return out, conv
