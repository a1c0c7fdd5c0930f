"""The composition step: what a run is made of, assembled from the config.

The parts of saltx do not know each other: ``saltx.models`` builds a model and knows
nothing of muP, ``saltx.mup`` sets base shapes on any model, and the training loop
(``saltx.engine``) takes a build function. This module joins them, once, for every
caller (training, run loading, the Salt converter, the muP tools and the bench scripts):

* :func:`build_model`: the model of a config, muP base shapes applied when ``model.muP``;
* :func:`shape_model`: the same model for its parameter shapes only (muP's base shapes);
* :func:`fit_datasets` and :func:`build`: the training data and the loop's default build
  function (model, loaders, metadata, files to copy into the run directory);
* :func:`training_callbacks`: what plugs into the loop (the Katib performance writer and
  Optuna's pruning report; the engine imports neither).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from saltx.config import schema_config
from saltx.data.class_weights import load_class_dict
from saltx.data.h5 import open_h5
from saltx.data.labels import MissingClassNames, fit_class_names, read_class_names
from saltx.data.loader import build_dataloader, build_datasets
from saltx.data.norm import load_norm_dict
from saltx.engine.callbacks import Callback
from saltx.engine.distributed import DistInfo
from saltx.engine.loop import Components
from saltx.hpo.katib_writer import PerformanceWriter
from saltx.hpo.pruning import PruneTrial
from saltx.models import build as model_build
from saltx.models.inputnorm import UNNORMALISED, norm_dataset_name
from saltx.mup.setup import apply_mup
from saltx.mup.shapes import base_shapes

NORM_DICT_COPY = "norm_dict.yaml"
CLASS_DICT_COPY = "class_dict.yaml"


# -- the model ----------------------------------------------------------------------------
def build_model(
    cfg: Any,
    norm_dict: Mapping,
    class_dict: Mapping | None = None,
    class_names: list[str] | None = None,
) -> nn.Module:
    """The model of ``cfg`` (:func:`saltx.models.build.build_model`), with muP's base shapes
    set once when ``model.muP`` is true (before any optimizer exists).

    Parameters are those of :func:`saltx.models.build.build_model`.

    Returns
    -------
    SaltModel
    """
    conf = schema_config(cfg)
    model = model_build.build_model(conf, norm_dict, class_dict, class_names)
    if conf.model.muP:
        apply_mup(model, cfg, base_shapes(cfg, shape_model))
    return model


def model_from_config(cfg: DictConfig) -> nn.Module:
    """:func:`build_model` with the norm dict, class dict and class names of ``cfg.data``."""
    data = cfg.data
    class_dict = load_class_dict(data.class_dict) if data.class_dict else None
    class_names = read_class_names(data.train_file, data.global_object)
    return build_model(cfg, load_norm_dict(data.norm_dict), class_dict, class_names)


def _unit_norm_dict(cfg: Any) -> dict[str, dict[str, dict[str, float]]]:
    """A norm dict with mean 0, std 1 for every variable (shapes do not depend on it)."""
    data = schema_config(cfg).data
    variables = OmegaConf.to_container(data.variables, resolve=True)
    input_map = OmegaConf.to_container(data.input_map) if data.input_map is not None else None
    global_object = data.global_object
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, names in variables.items():
        if name in UNNORMALISED:
            continue
        dataset = norm_dataset_name(name, global_object, input_map)
        out.setdefault(dataset, {}).update({v: {"mean": 0.0, "std": 1.0} for v in names})
    return out


def _shape_class_names(cfg: Any) -> list[str]:
    """Jet class names from the training file, else placeholders.

    Class counts are fixed (non-width) dimensions, so they do not enter the base shapes.
    """
    try:
        return list(read_class_names(str(cfg.data.train_file), str(cfg.data.global_object)))
    except Exception:  # no file here: any names will do for shapes
        return ["b", "c", "u"]


def shape_model(cfg: Any) -> nn.Module:
    """Build the model of ``cfg`` for its parameter shapes only (no data files needed).

    muP is switched off (it changes initial values, not shapes, and would need the base
    shapes this model is built to produce) and class weights are not read. This is the
    ``build`` function of :mod:`saltx.mup.shapes`.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(schema_config(cfg), resolve=True))
    OmegaConf.set_struct(cfg, False)
    cfg.model.muP = False
    for task in cfg.model.tasks.values():
        if isinstance(task, DictConfig):
            task.pop("use_class_dict", None)
            task.pop("class_weights", None)
    return model_build.build_model(cfg, _unit_norm_dict(cfg), class_names=_shape_class_names(cfg))


# -- data and the loop's build function ---------------------------------------------------
def fit_datasets(cfg: DictConfig) -> dict[str, Any]:
    """The ``train`` and ``val`` datasets of ``cfg.data`` with the labels the tasks need."""
    return build_datasets(
        cfg.data, model_build.required_labels(cfg, "fit"), "fit", seed=int(cfg.seed)
    )


def _file_metadata(path: str, global_object: str) -> dict[str, Any]:
    """Available jets and UPP attributes (``unique_jets``, ``jet_counts``, ``config``)."""
    out: dict[str, Any] = {}
    try:
        with open_h5(path) as f:
            if global_object in f:
                out["available"] = int(f[global_object].shape[0])
            attrs = dict(f.attrs)
            if global_object in f:
                attrs.update({k: v for k, v in f[global_object].attrs.items() if k not in attrs})
            for key in ("unique_jets", "jet_counts", "config"):
                if key in attrs:
                    value = attrs[key]
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    if isinstance(value, str) and key != "config":
                        with contextlib.suppress(ValueError):
                            value = json.loads(value)
                    out[key] = value
    except Exception as err:  # metadata is informative only
        out["error"] = f"could not read attributes: {err}"
    return out


def build(cfg: DictConfig, info: DistInfo) -> Components:
    """The training loop's default build function: model and loaders from ``cfg``."""
    data = cfg.data
    norm_dict = load_norm_dict(data.norm_dict)
    class_dict = load_class_dict(data.class_dict) if data.class_dict else None
    try:
        class_names = fit_class_names(data.train_file, data.val_file, data.global_object)
    except MissingClassNames:  # the task config may name the classes itself
        class_names = None
    model = build_model(cfg, norm_dict, class_dict, class_names)
    datasets = fit_datasets(cfg)
    common = {
        "batch_size": int(data.batch_size),
        "num_workers": int(data.num_workers),
        "seed": int(cfg.seed),
        "rank": info.rank,
        "world_size": info.world_size,
        "pin_memory": bool(data.pin_memory) and info.device.type == "cuda",
        "prefetch_factor": data.prefetch_factor,
    }
    train_loader = build_dataloader(
        datasets["train"],
        shuffle=True,
        drop_last=True,
        shuffle_buffer=int(data.shuffle_buffer),
        **common,
    )
    val_loader = build_dataloader(
        datasets["val"], shuffle=False, drop_last=False, shuffle_buffer=0, **common
    )
    metadata: dict[str, Any] = {
        "train_file": str(data.train_file),
        "val_file": str(data.val_file),
        "num_train": len(datasets["train"]),
        "num_val": len(datasets["val"]),
        "batch_size": int(data.batch_size),
        "num_workers": int(data.num_workers),
        "jet_classes": dict(enumerate(class_names)) if class_names else None,
    }
    for split in ("train", "val"):
        for key, value in _file_metadata(str(data[f"{split}_file"]), data.global_object).items():
            metadata[f"{key}_{split}"] = value
    files = {NORM_DICT_COPY: str(data.norm_dict)}
    if data.class_dict:
        files[CLASS_DICT_COPY] = str(data.class_dict)
    return Components(model, train_loader, val_loader, metadata, files)


def training_callbacks(cfg: DictConfig) -> list[Callback]:
    """The loop's callbacks for ``cfg``: Katib's performance writer (when
    ``trainer.performance_writer.enabled``), then the Optuna pruning report of
    ``optimized_metric`` (which does nothing outside a sweep)."""
    out: list[Callback] = []
    writer = cfg.trainer.performance_writer
    if writer.enabled:
        out.append(
            PerformanceWriter(
                dir_path=writer.dir_path,
                add_metrics=list(writer.add_metrics or []),
                std_out=bool(writer.std_out),
            )
        )
    out.append(PruneTrial(str(cfg.optimized_metric)))
    return out
