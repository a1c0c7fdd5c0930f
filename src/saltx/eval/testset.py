"""The test set of an evaluation: the run's data config with the evaluate overrides, the
labels to read, and the check that the file's classes are the model's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, open_dict
from torch import nn

from saltx.data.h5 import open_h5
from saltx.data.labels import _to_names
from saltx.io.fs import exists
from saltx.models.build import required_labels

if TYPE_CHECKING:  # run.py loads runs with this module's helpers; only the type is needed
    from saltx.run import LoadedRun


def jet_classification_task(model: nn.Module, global_object: str) -> nn.Module | None:
    """The model's classification task on the global object (the jet flavour), if any."""
    for task in model.tasks.values():
        if task.input_name == global_object and getattr(task, "kind", "") == "classification":
            return task
    return None


def dataset_name(cfg: DictConfig, input_name: str) -> str:
    input_map = cfg.data.get("input_map") or {}
    return str(input_map.get(input_name, input_name))


def metric_labels(model: nn.Module, cfg: DictConfig, test_file: str) -> dict[str, list[str]]:
    """Labels the test stage needs plus the truth fields of the metrics present in the file."""
    labels = {k: list(v) for k, v in required_labels(cfg, "test").items()}
    with open_h5(test_file) as f:
        for task in model.tasks.values():
            if getattr(task, "kind", "") not in ("classification", "vertexing"):
                continue
            ds = dataset_name(cfg, task.input_name)
            have = set(f[ds].dtype.names or []) if ds in f else set()
            fld = task.label
            if fld in have and fld not in labels.setdefault(task.input_name, []):
                labels[task.input_name].append(fld)
    return {k: v for k, v in labels.items() if v}


def check_class_names(model: nn.Module, cfg: DictConfig, test_file: str) -> None:
    """The test file's ``flavour_label`` names must be the model's jet classes."""
    g = str(cfg.data.global_object)
    task = jet_classification_task(model, g)
    if task is None or getattr(task, "label_map", None) is not None:
        return
    with open_h5(test_file) as f:
        if g not in f or task.label not in f[g].attrs:
            return
        names = _to_names(f[g].attrs[task.label])
    if names != list(task.class_names):
        raise ValueError(
            f"test file '{test_file}' labels {g}.{task.label} as {names}, but the model's task "
            f"'{task.name}' predicts {list(task.class_names)}: the class list does not match "
            "the trained head"
        )


def prepare_test_config(run: LoadedRun, ecfg: DictConfig) -> str:
    """Apply the ``data.*``/``batch_size``/``parameters`` overrides; return the test file."""
    cfg = run.cfg
    overrides = {k: v for k, v in (ecfg.get("data") or {}).items() if v is not None}
    with open_dict(cfg):
        cfg.data.update(overrides)
        if ecfg.get("batch_size"):
            cfg.data.batch_size = int(ecfg.batch_size)
        for name, value in (ecfg.get("parameters") or {}).items():
            if name not in (cfg.data.get("parameters") or {}):
                raise KeyError(
                    f"parameters.{name}: the run has no PARAMETERS input {name!r}; its "
                    f"data.parameters are {list(cfg.data.get('parameters') or {})}"
                )
            cfg.data.parameters[name].test = value
    test_file = cfg.data.get("test_file")
    if not test_file:
        raise ValueError("no test file: the run's config has none; pass data.test_file=...")
    if not exists(str(test_file)):
        raise FileNotFoundError(f"test file not found: '{test_file}'")
    check_class_names(run.model, cfg, str(test_file))
    return str(test_file)
