"""Convert a Salt (Lightning) checkpoint into a saltx run directory.

``python -m saltx.salt checkpoint SALT.ckpt --config SALT.yaml -o RUN_DIR`` writes

* ``config.yaml``: the Salt config converted (:mod:`saltx.salt.config`) and composed;
* ``norm_dict.yaml``: from the checkpoint's InputNorm buffers (the values the weights
  were trained with, whatever file the Salt config names);
* ``class_dict.yaml``: the class weights in the checkpoint's losses, for the tasks with
  ``use_class_dict``;
* ``metadata.yaml``: the jet classes and where the weights came from;
* ``checkpoints/best.pt``: ``{"model": weights}`` under saltx's parameter names (Salt's
  packed q/k/v projection split into three), loadable with ``torch.load(weights_only=True)``.

``saltx.evaluate`` and ``saltx.export`` then take ``run_dir=RUN_DIR``, and training starts
from the weights with ``ckpt_path=RUN_DIR/checkpoints/best.pt``. Salt's optimizer and
schedule state are not carried over (a fine-tune starts a new schedule).

Checkpoints of salt-ml's ``Transformer`` encoder (0.11 and later, e.g. 0.13) are read.
The seed-era encoders (``TransformerEncoder``, GATv2, the cross-attention encoder and
pooling) are not: their configs convert, but their parameter layout is not mapped.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from saltx.io.rundir import RunDir, load_checkpoint_dict
from saltx.salt.config import (
    SPECIAL,
    Converted,
    SaltConfigError,
    compose,
    convert_config,
    experiment_text,
    load_salt_config,
)

Tensors = dict[str, torch.Tensor]


def read_salt_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Salt checkpoint (``torch.load(weights_only=True)``); its ``state_dict`` and hparams.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, or one that is not a Lightning checkpoint of a Salt model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Salt checkpoint not found: '{path}'")
    return load_checkpoint_dict(
        str(path),
        "state_dict",
        "Salt checkpoint (a Lightning dict)",
        hints={"model": "a saltx checkpoint needs no conversion"},
    )


def _split_qkv(value: torch.Tensor, prefix: str, suffix: str) -> Tensors:
    q, k, v = value.chunk(3, dim=0)
    return {f"{prefix}.linear_{n}.{suffix}": t.clone() for n, t in zip("qkv", (q, k, v))}


def weight_rules(init_nets: list[str], tasks: list[str]) -> list[tuple[str, Callable]]:
    """``(pattern, rename)`` pairs from salt-ml's parameter names to saltx's.

    Parameters
    ----------
    init_nets
        saltx names of Salt's ``init_nets`` list, in Salt's order.
    tasks
        saltx names of Salt's tasks, in Salt's order.
    """
    layer = r"model\.encoder\.layers\.(\d+)"

    def one(target: str) -> Callable:
        return lambda m, v: {target.format(*m.groups()): v}

    return [
        (
            r"model\.init_nets\.(\d+)\.net\.(.+)",
            lambda m, v: {f"init_nets.{init_nets[int(m[1])]}.net.{m[2]}": v},
        ),
        (
            r"model\.tasks\.(\d+)\.net\.(.+)",
            lambda m, v: {f"tasks.{tasks[int(m[1])]}.net.{m[2]}": v},
        ),
        (r"model\.encoder\.registers", one("encoder.registers")),
        (
            rf"{layer}\.attn\.fn\.in_proj_(weight|bias)",
            lambda m, v: _split_qkv(v, f"encoder.layers.{m[1]}.attn", m[2]),
        ),
        (
            rf"{layer}\.attn\.fn\.out_proj\.(weight|bias)",
            one("encoder.layers.{}.attn.linear_out.{}"),
        ),
        (rf"{layer}\.dense\.fn\.in_proj\.(weight|bias)", one("encoder.layers.{}.ffn.fc1.{}")),
        (rf"{layer}\.dense\.fn\.out_proj\.(weight|bias)", one("encoder.layers.{}.ffn.fc2.{}")),
        (r"model\.encoder\.out_proj\.(weight|bias)", one("encoder.final_linear.{}")),
        (r"model\.pool_net\.gate_nn\.(weight|bias)", one("pooling.gate.{}")),
        (
            r"norm\.(.+)_(means|stds)",
            lambda m, v: {f"input_norm.{SPECIAL.get(m[1], m[1])}_{m[2]}": v},
        ),
        # buffers saltx keeps elsewhere: register padding mask, class weights of the losses
        (r"model\.encoder\.register_mask", lambda m, v: {}),
        (r"model\.tasks\.\d+\.loss\.weight", lambda m, v: {}),
    ]


def map_weights(
    state: Mapping[str, torch.Tensor], init_nets: list[str], tasks: list[str]
) -> Tensors:
    """Salt's ``state_dict`` under saltx's names.

    Raises
    ------
    ValueError
        Naming the Salt parameters no rule maps (an architecture saltx does not read).
    """
    rules = [(re.compile(p), f) for p, f in weight_rules(init_nets, tasks)]
    out: Tensors = {}
    unknown = []
    for key, value in state.items():
        key = key.replace("._orig_mod.", ".")  # torch.compile's prefix (Salt's repair_ckpt)
        for pattern, rename in rules:
            match = pattern.fullmatch(key)
            if match:
                out.update(rename(match, value))
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Salt parameters saltx does not map: {unknown[:8]}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    return out


def norm_dict_from(weights: Tensors, variables: Mapping[str, list[str]], cfg: Any) -> dict:
    """The norm dict the checkpoint's InputNorm buffers hold, keyed by h5 dataset."""
    from saltx.models.inputnorm import UNNORMALISED, norm_dataset_name

    global_object = str(cfg.data.global_object)
    input_map = OmegaConf.to_container(cfg.data.input_map) if cfg.data.input_map else None
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, fields in variables.items():
        if name in UNNORMALISED:
            continue
        means, stds = weights[f"input_norm.{name}_means"], weights[f"input_norm.{name}_stds"]
        dataset = norm_dataset_name(name, global_object, input_map)
        for i, field in enumerate(fields):
            out.setdefault(dataset, {})[field] = {
                "mean": float(means[i]),
                "std": float(stds[i]),
            }
    return out


def class_dict_from(state: Mapping[str, torch.Tensor], salt: Mapping, cfg: Any) -> dict:
    """Class weights of the Salt losses, for the tasks that read them from the class dict."""
    modules = salt["model"]["model"]["init_args"]["tasks"]["init_args"]["modules"]
    out: dict[str, dict[str, list[float]]] = {}
    input_map = cfg.data.get("input_map") or {}
    for i, task in enumerate(modules):
        args = task.get("init_args", {})
        if not (args.get("use_class_dict") or args.get("use_class_dict_weights")):
            continue
        weight = state.get(f"model.tasks.{i}.loss.weight")
        if weight is None:
            raise ValueError(
                f"task {args.get('name')!r} uses the class dict but the checkpoint holds no "
                "class weights for it"
            )
        dataset = str(input_map.get(args["input_name"], args["input_name"]))
        out.setdefault(dataset, {})[str(args["label"])] = [float(w) for w in weight]
    return out


def _class_names(conv: Converted, ckpt: Mapping, config_path: Path) -> list[str] | None:
    """Jet classes: the converted config, the checkpoint's hparams, or Salt's metadata.yaml."""
    names = conv.values.get("model.tasks.jet_classification.class_names")
    if names:
        return [str(n) for n in names]
    try:
        modules = ckpt["hyper_parameters"]["model"]["init_args"]["tasks"]["init_args"]["modules"]
        for task in modules:
            args = task.get("init_args", {})
            if conv.task_names.get(args.get("name")) == "jet_classification" and args.get(
                "class_names"
            ):
                return [str(n) for n in args["class_names"]]
    except (KeyError, TypeError):
        pass
    meta = config_path.parent / "metadata.yaml"
    if meta.is_file():
        data = yaml.safe_load(meta.read_text()) or {}
        for key in ("object_classes", "jet_classes"):
            if isinstance(data.get(key), Mapping):
                return [str(data[key][k]) for k in sorted(data[key], key=int)]
    return None


def convert_checkpoint(
    salt_ckpt: str | Path, salt_config: str | Path, out_dir: str | Path, force: bool = False
) -> str:
    """Write a saltx run directory holding a Salt checkpoint's weights; returns its path.

    Raises
    ------
    SaltConfigError
        A Salt key saltx cannot honour, or a seed-era encoder.
    ValueError
        Weights that do not fit the converted model (the message lists the keys).
    FileExistsError
        ``out_dir`` exists (pass ``force``).
    """
    from saltx.assemble import build_model
    from saltx.engine.checkpoint import BEST, save_checkpoint
    from saltx.engine.run_setup import dump_yaml, environment_metadata, plain_config
    from saltx.run import fit_weights

    salt_config, out = Path(salt_config), Path(out_dir)
    salt = load_salt_config(salt_config)
    conv = convert_config(salt)
    if conv.salt_version != "0.13":
        raise SaltConfigError(
            "checkpoint conversion reads salt-ml's Transformer encoder (0.11 and later); this "
            "config's encoder is a seed-era one: convert the config and train in saltx"
        )
    if conv.values.get("model.edges.embed_dim") is not None:
        raise SaltConfigError(
            "edge features: salt-ml 0.13's EdgeAttention updates edges as "
            "edge + LayerNorm(edge), saltx as in the seed (docs/salt.md); the weights do not "
            "carry over"
        )
    ckpt = read_salt_checkpoint(salt_ckpt)
    class_names = _class_names(conv, ckpt, salt_config)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"'{out}' exists and is not empty; pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix="saltx-salt-") as tmp:
        exp = Path(tmp) / "experiment" / "salt.yaml"
        exp.parent.mkdir()
        exp.write_text(experiment_text(conv, str(salt_config)))
        overrides = [
            "+experiment=salt",
            f"paths.output_dir={out.resolve()}",
            f"data.norm_dict={out.resolve() / 'norm_dict.yaml'}",
            f"data.class_dict={out.resolve() / 'class_dict.yaml'}",
        ]
        if class_names:
            overrides.append(
                f"model.tasks.jet_classification.class_names=[{','.join(class_names)}]"
            )
        cfg = compose(overrides, tmp)
    OmegaConf.resolve(cfg)
    init_nets = [n for n in conv.values["_init_nets"]]
    tasks = list(conv.task_names.values())
    weights = map_weights(ckpt["state_dict"], init_nets, tasks)
    variables = OmegaConf.to_container(cfg.data.variables)
    norm_dict = norm_dict_from(weights, variables, cfg)
    class_dict = class_dict_from(ckpt["state_dict"], salt, cfg)
    model = build_model(cfg, norm_dict, class_dict, class_names)
    problem = f"the weights of {salt_ckpt} do not fit the model converted from the Salt config"
    weights = fit_weights(model, weights, problem, ("saltx", "Salt"))
    model.load_state_dict(weights)  # the run loads exactly these
    config = plain_config(cfg, str(out.resolve()))
    for secret in ("pubKey", "secKey", "pub_key", "sec_key"):
        (config["data"].get("config_S3") or {}).pop(secret, None)
    metadata = {
        "jet_classes": dict(enumerate(class_names)) if class_names else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "converted_from_salt": {
            "checkpoint": str(Path(salt_ckpt).resolve()),
            "config": str(salt_config.resolve()),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "lightning_version": ckpt.get("pytorch-lightning_version"),
            "task_names": conv.task_names,
        },
        **environment_metadata(),
    }
    if out.exists() and force:
        shutil.rmtree(out)
    rundir = RunDir(str(out))
    rundir.makedirs("checkpoints")
    rundir.write_text("config.yaml", dump_yaml(config))
    rundir.write_text("norm_dict.yaml", dump_yaml(norm_dict))
    rundir.write_text("class_dict.yaml", dump_yaml(class_dict))
    rundir.write_text("metadata.yaml", dump_yaml(metadata))
    save_checkpoint(rundir, BEST, {"model": weights})
    return str(out)
