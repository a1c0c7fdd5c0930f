"""Evaluate a trained run: predictions h5, physics metrics, plots.

``python -m saltx.evaluate run_dir=RUN [ckpt=best|last|PATH] [data.test_file=F]
[data.num_test=N] [write_tracks=true] [f_c=0.2] [batch_size=B] [jet_fields=[pt,eta]]``

The run's own ``config.yaml`` (and its norm/class dict copies) rebuild the model; only
the test-data keys given under ``data`` override it. Outputs go to ``RUN/predictions/``:
``<ckpt stem>__test_<sample>.h5``, ``metrics.json`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

import saltx.config  # noqa: F401  (registers the saltx_local_dir resolver)
from saltx.engine.allocator import reuse_freed_memory
from saltx.engine.rundir import RunDir, load_torch, path_exists
from saltx.eval import metrics as M
from saltx.eval import plots
from saltx.eval.predictions import (
    H5Appender,
    constituent_columns,
    jet_columns,
    join_fields,
    output_spec,
    prediction_file_name,
    read_rows,
    select_fields,
    task_outputs,
)

CKPT_DIR = "checkpoints"


class RunDirError(FileNotFoundError):
    """A run directory, or a file in it, is missing or unusable."""


@dataclass
class LoadedRun:
    """A run directory's model, rebuilt from its config and loaded from a checkpoint.

    Attributes
    ----------
    rundir
        The run directory.
    cfg
        Its ``config.yaml``.
    metadata
        Its ``metadata.yaml`` (empty when absent).
    model
        The model in eval mode, on the CPU.
    ckpt_path
        The checkpoint loaded.
    class_names
        Class names of the jet classification task (if any).
    """

    rundir: RunDir
    cfg: DictConfig
    metadata: dict[str, Any]
    model: nn.Module
    ckpt_path: str
    class_names: list[str] | None = None
    norm_dict: dict[str, Any] = field(default_factory=dict)

    @property
    def ckpt_stem(self) -> str:
        """``best`` for ``.../best.pt``."""
        return Path(self.ckpt_path.rstrip("/")).stem


def _read_yaml(rundir: RunDir, rel: str) -> Any:
    return yaml.safe_load(rundir.read_text(rel))


def _run_or_config_yaml(rundir: RunDir, rel: str, fallback: str | None) -> Any:
    """``rel`` from the run directory, else the file the config points at, else None."""
    if rundir.exists(rel):
        return _read_yaml(rundir, rel)
    if fallback and path_exists(str(fallback)):
        import fsspec

        with fsspec.open(str(fallback), "rt") as f:
            return yaml.safe_load(f)
    return None


def resolve_checkpoint(rundir: RunDir, ckpt: str | None) -> str:
    """Path of the checkpoint: ``best``/``last``/``epoch=NNN`` in the run, or a path.

    ``None`` takes ``best.pt`` when it exists, else ``last.pt``.

    Raises
    ------
    RunDirError
        When the checkpoint does not exist (the message lists the available ones).
    """
    names = [ckpt] if ckpt else ["best", "last"]
    for name in names:
        name = str(name)
        if name.endswith(".pt") and ("/" in name or path_exists(name)):
            if path_exists(name):
                return name
            continue
        rel = f"{CKPT_DIR}/{name if name.endswith('.pt') else name + '.pt'}"
        if rundir.exists(rel):
            return rundir.path(rel)
    available = []
    if rundir.exists(CKPT_DIR):
        available = sorted(Path(p).name for p in rundir.fs.ls(rundir._fs_path(CKPT_DIR)))
    raise RunDirError(
        f"checkpoint {ckpt or 'best/last'} not found in {rundir.path(CKPT_DIR)}; "
        f"available: {available or 'none'} (use ckpt=best, last, epoch=NNN or a path)"
    )


def _jet_task(model: nn.Module, global_object: str) -> nn.Module | None:
    for task in model.tasks.values():
        if task.input_name == global_object and getattr(task, "kind", "") == "classification":
            return task
    return None


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Clear errors for a checkpoint that does not fit the model built from the config."""
    for name, task in model.tasks.items():
        names = getattr(task, "class_names", None)
        if not names:
            continue
        linears = [(k, m) for k, m in task.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        key = f"tasks.{name}.{linears[-1][0]}.weight"
        if key in state and state[key].shape[0] != len(names):
            raise ValueError(
                f"task '{name}' has {len(names)} classes {list(names)} but the head in "
                f"checkpoint {where} has {state[key].shape[0]} outputs: the class list does "
                "not match the trained head (check model.tasks.<task>.class_names and the "
                "file's flavour_label attribute)"
            )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(state[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {where} does not fit the model built from the run's config.yaml: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )


def class_names_of_run(cfg: DictConfig, metadata: Mapping[str, Any]) -> list[str] | None:
    """Jet class names from the config, else ``metadata.yaml``, else the train file."""
    for key in ("object_classes", "jet_classes", "class_names"):
        value = metadata.get(key)
        if isinstance(value, Mapping):
            return [str(value[k]) for k in sorted(value, key=int)]
        if isinstance(value, list):
            return [str(v) for v in value]
    for split in ("train_file", "test_file"):
        path = cfg.data.get(split)
        if path and path_exists(str(path)):
            from saltx.data.labels import read_class_names

            try:
                return read_class_names(str(path), str(cfg.data.get("global_object", "jets")))
            except ValueError:
                continue
    return None


def load_run(run_dir: str, ckpt: str | None = None) -> LoadedRun:
    """Rebuild a run's model from its ``config.yaml`` and load a checkpoint.

    Parameters
    ----------
    run_dir
        The run directory (local path or URL).
    ckpt
        ``best``, ``last``, ``epoch=NNN``, a path, or None (best, else last).

    Raises
    ------
    RunDirError
        Missing run directory, ``config.yaml`` or checkpoint.
    ValueError
        A checkpoint that does not fit the model (e.g. another class list).
    """
    from saltx.models.build import build_model

    if not run_dir or str(run_dir) == "???":
        raise RunDirError("no run directory given: pass run_dir=path/to/run")
    rundir = RunDir(run_dir)
    if not path_exists(rundir.root):
        raise RunDirError(f"run directory not found: '{rundir.root}'")
    if not rundir.exists("config.yaml"):
        raise RunDirError(
            f"'{rundir.root}' has no config.yaml: not a saltx run directory (or training "
            "has not written it yet)"
        )
    cfg = OmegaConf.create(_read_yaml(rundir, "config.yaml"))
    metadata = _read_yaml(rundir, "metadata.yaml") if rundir.exists("metadata.yaml") else {}
    norm_dict = _run_or_config_yaml(rundir, "norm_dict.yaml", cfg.data.get("norm_dict"))
    if norm_dict is None:
        raise RunDirError(
            f"'{rundir.root}' has no norm_dict.yaml and data.norm_dict "
            f"({cfg.data.get('norm_dict')}) does not exist"
        )
    class_dict = _run_or_config_yaml(rundir, "class_dict.yaml", cfg.data.get("class_dict"))
    class_names = class_names_of_run(cfg, metadata or {})
    model = build_model(cfg, norm_dict, class_dict, class_names)
    ckpt_path = resolve_checkpoint(rundir, ckpt)
    state = load_torch(ckpt_path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{ckpt_path} is not a saltx checkpoint (a dict with a 'model' key)")
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    # buffers the model no longer saves (non-persistent, e.g. class weights) are ignored
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    weights = {k: v for k, v in weights.items() if k not in transient}
    _check_state_dict(model, weights, ckpt_path)
    model.load_state_dict(weights)
    model.eval()
    jet = _jet_task(model, str(cfg.data.get("global_object", "jets")))
    return LoadedRun(
        rundir=rundir,
        cfg=cfg,
        metadata=dict(metadata or {}),
        model=model,
        ckpt_path=ckpt_path,
        class_names=list(jet.class_names) if jet is not None else None,
        norm_dict=norm_dict,
    )


# ------------------------------------------------------------------------------- evaluation
def _dataset_name(cfg: DictConfig, input_name: str) -> str:
    input_map = cfg.data.get("input_map") or {}
    return str(input_map.get(input_name, input_name))


def metric_labels(model: nn.Module, cfg: DictConfig, test_file: str) -> dict[str, list[str]]:
    """Labels the test stage needs plus the truth fields of the metrics present in the file."""
    from saltx.data.h5 import open_h5
    from saltx.models.build import required_labels

    labels = {k: list(v) for k, v in required_labels(cfg, "test").items()}
    with open_h5(test_file) as f:
        for task in model.tasks.values():
            if getattr(task, "kind", "") not in ("classification", "vertexing"):
                continue
            ds = _dataset_name(cfg, task.input_name)
            have = set(f[ds].dtype.names or []) if ds in f else set()
            fld = task.label
            if fld in have and fld not in labels.setdefault(task.input_name, []):
                labels[task.input_name].append(fld)
    return {k: v for k, v in labels.items() if v}


def check_class_names(model: nn.Module, cfg: DictConfig, test_file: str) -> None:
    """The test file's ``flavour_label`` names must be the model's jet classes."""
    from saltx.data.h5 import open_h5

    g = str(cfg.data.get("global_object", "jets"))
    task = _jet_task(model, g)
    if task is None or getattr(task, "label_map", None) is not None:
        return
    with open_h5(test_file) as f:
        if g not in f or task.label not in f[g].attrs:
            return
        from saltx.data.labels import _to_names

        names = _to_names(f[g].attrs[task.label])
    if names != list(task.class_names):
        raise ValueError(
            f"test file '{test_file}' labels {g}.{task.label} as {names}, but the model's task "
            f"'{task.name}' predicts {list(task.class_names)}: the class list does not match "
            "the trained head"
        )


@dataclass
class MetricState:
    """Running sums for the metrics over the evaluated batches."""

    probs: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    origin: dict[str, list[int]] = field(default_factory=dict)
    vertex: dict[str, list[int]] = field(default_factory=dict)

    def update(self, model: nn.Module, outputs: Mapping, batch: Any, jet_task: str | None):
        """Add one batch: jet probabilities/truth, track-origin and vertex-pair counts."""
        for name, task in model.tasks.items():
            labels = batch.labels.get(task.input_name, {})
            if getattr(task, "label", None) not in labels:
                continue
            kind = getattr(task, "kind", "")
            if name == jet_task:
                self.probs.append(outputs[name]["probs"])
                self.truth.append(task.class_targets(labels, None).numpy())
            elif kind == "classification" and task.input_name in batch.masks:
                mask = batch.masks[task.input_name]
                y = task.class_targets(labels, mask).numpy()
                c, t = M.accuracy_counts(outputs[name]["probs"], y, y >= 0)
                acc = self.origin.setdefault(name, [0, 0])
                acc[0] += c
                acc[1] += t
            elif kind == "vertexing":
                valid = ~batch.masks[task.input_name].numpy()
                truth = labels[task.label].numpy()
                counts = M.pair_counts(outputs[name]["vertex_index"], truth, valid)
                acc = self.vertex.setdefault(name, [0, 0, 0])
                for i, v in enumerate(counts):
                    acc[i] += v


def reference_taggers(dtype_names: Sequence[str], exclude: str) -> list[str]:
    """Prefixes ``P`` with ``P_pb``, ``P_pc`` and ``P_pu`` fields (e.g. ``ref``)."""
    names = set(dtype_names)
    out = []
    for n in dtype_names:
        if n.endswith("_pb"):
            p = n[: -len("_pb")]
            if p != exclude and {f"{p}_pc", f"{p}_pu"} <= names:
                out.append(p)
    return out


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def flavour_metrics(
    probs: Mapping[str, Mapping[str, np.ndarray]],
    truth: np.ndarray,
    ecfg: DictConfig,
    out_dir: Path,
    model_name: str,
) -> tuple[dict[str, Any], list[str]]:
    """b- and c-tagging rejections per tagger, and the ROC / D_b plots.

    Parameters
    ----------
    probs
        Tagger -> class name -> ``(J,)`` probabilities (the model first).
    truth
        ``(J,)`` truth class names.
    """
    wps = [float(w) for w in ecfg.working_points]
    classes = list(probs[model_name])
    out: dict[str, Any] = {}
    pngs: list[str] = []
    for signal, frac, key in (("bjets", ecfg.f_c, "btag"), ("cjets", ecfg.f_b, "ctag")):
        if signal not in classes or "ujets" not in classes:
            continue
        fracs = {
            t: M.fractions_for(signal, list(p), float(frac), float(ecfg.f_tau))
            for t, p in probs.items()
        }
        out[key] = {"fractions": fracs[model_name]}
        for t, p in probs.items():
            out[key][t] = M.rejection_table(p, truth, signal, fracs[t], wps)
        if not ecfg.plots:
            continue
        discs = {t: M.discriminant(p, signal, fracs[t]) for t, p in probs.items()}
        for bkg in classes:
            if bkg == signal or not (truth == bkg).any() or not (truth == signal).any():
                continue
            curves = {
                t: M.roc_curve(d[truth == signal], d[truth == bkg])
                for t, d in discs.items()
                if bkg in probs[t]
            }
            short = re.sub(r"[^\w.-]|\.\.", "_", f"{signal[0]}vs{bkg.removesuffix('jets')}")
            pngs.append(str(plots.plot_roc(curves, signal, bkg, out_dir / f"roc_{short}.png")))
        sym = "D_b" if signal == "bjets" else "D_c"
        pngs.append(
            str(
                plots.plot_discriminant(
                    discs[model_name],
                    truth,
                    classes,
                    f"${sym}$ ({model_name})",
                    out_dir / f"{sym}.png",
                )
            )
        )
    return out, pngs


def print_summary(result: Mapping[str, Any], model_name: str) -> None:
    """The rejection table, track metrics and plot paths, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for key, title in (("btag", "b-tagging"), ("ctag", "c-tagging")):
        block = result.get(key)
        if not block:
            continue
        taggers = [t for t in block if t != "fractions"]
        fr = ", ".join(f"{k}={v:g}" for k, v in block["fractions"].items())
        table = Table(title=f"{title} rejections ({fr})")
        table.add_column("background")
        table.add_column("eff")
        for t in taggers:
            table.add_column(t, justify="right")
        for bkg, row in block[model_name].items():
            for wp in row:
                cells = [block[t].get(bkg, {}).get(wp) for t in taggers]
                table.add_row(bkg, f"{wp}%", *(f"{c:.1f}" if c is not None else "-" for c in cells))
        console.print(table)
    for name, m in result.get("track_origin", {}).items():
        console.print(f"{name}: accuracy {m['accuracy']:.4f} on {m['n_tracks']} tracks")
    for name, m in result.get("vertexing", {}).items():
        p, r = m["pair_precision"], m["pair_recall"]
        console.print(f"{name}: pair precision {p:.4f}, pair recall {r:.4f}")
    console.print(f"predictions: {result['predictions']}")
    console.print(f"metrics: {result['metrics_file']}")
    for png in result.get("plots", []):
        console.print(f"plot: {png}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _field_list(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_predictions(
    model: nn.Module,
    loader: Any,
    spec: Any,
    cfg: DictConfig,
    ecfg: DictConfig,
    out_path: Path,
    n_jets: int,
    device: torch.device,
    class_names: list[str] | None,
) -> MetricState:
    """Run the model over ``loader`` and stream the predictions h5 to ``out_path``.

    The file appears under its final name only when every batch was written; on any
    error the temporary file is removed.

    Returns
    -------
    MetricState
        The running metric sums over the test set.
    """
    from saltx.data.h5 import open_h5

    test_file = str(cfg.data.test_file)
    g = str(cfg.data.get("global_object", "jets"))
    writer = H5Appender(out_path, chunk_rows=min(int(cfg.data.batch_size), 10_000))
    state = MetricState()
    try:
        with open_h5(test_file) as f, torch.inference_mode():
            jets_ds = f[_dataset_name(cfg, g)]
            jet_fields = select_fields(
                jets_ds,
                _field_list(ecfg.get("jet_fields")),
                f"jet_fields ({test_file}:{jets_ds.name})",
            )
            const_ds = {}
            if ecfg.get("write_tracks", False):
                for inp in spec.constituent_fields:
                    ds = f[_dataset_name(cfg, inp)]
                    fields = select_fields(
                        ds,
                        _field_list(ecfg.get("track_fields")),
                        f"track_fields ({test_file}:{ds.name})",
                    )
                    const_ds[inp] = (ds, fields)
            start = 0
            threads = torch.get_num_threads()
            # only the forward pass runs on all intra-op threads: loading, task outputs,
            # metrics and h5 rows are small ops whose thread barriers cost more than
            # they gain (and much more when the CPUs are shared)
            with intra_op_threads(1):
                for batch in loader:
                    on_device = batch.to(device)
                    with intra_op_threads(threads):
                        preds, _ = model(on_device.inputs, on_device.masks)
                    outputs = task_outputs(model.tasks, preds, on_device)
                    stop = start + batch.num_jets
                    rows = read_rows(jets_ds, jet_fields, start, stop)
                    writer.append("jets", join_fields(rows, jet_columns(spec, outputs)))
                    for inp, (ds, fields) in const_ds.items():
                        mask = batch.masks[inp].numpy()
                        cols = constituent_columns(spec, inp, outputs, mask, ds.shape[1])
                        writer.append(inp, join_fields(read_rows(ds, fields, start, stop), cols))
                    state.update(model, outputs, batch, spec.jet_classification_task)
                    start = stop
            if start != n_jets:
                raise RuntimeError(f"evaluated {start} jets but the test set has {n_jets}")
        if class_names:
            writer.set_attr("jets", "flavour_label", class_names)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return state


def read_reference_taggers(
    cfg: DictConfig, model_name: str, n_jets: int
) -> dict[str, dict[str, np.ndarray]]:
    """``{prefix: {bjets: pb, cjets: pc, ujets: pu}}`` of the test file's reference taggers."""
    from saltx.data.h5 import open_h5

    out: dict[str, dict[str, np.ndarray]] = {}
    with open_h5(str(cfg.data.test_file)) as f:
        jets_ds = f[_dataset_name(cfg, str(cfg.data.get("global_object", "jets")))]
        for ref in reference_taggers(list(jets_ds.dtype.names or []), model_name):
            cols = jets_ds.fields([f"{ref}_pb", f"{ref}_pc", f"{ref}_pu"])[:n_jets]
            out[ref] = {c: cols[f"{ref}_{M.prob_suffix(c)}"] for c in ("bjets", "cjets", "ujets")}
    return out


def track_metrics(state: MetricState) -> dict[str, Any]:
    """Track-origin accuracy and vertexing pair precision/recall from the running sums."""
    origin = {
        n: {"accuracy": c / t if t else float("nan"), "n_tracks": t}
        for n, (c, t) in state.origin.items()
    }
    vertexing = {}
    for n, (tp, fp, fn) in state.vertex.items():
        p, r = M.precision_recall(tp, fp, fn)
        vertexing[n] = {"pair_precision": p, "pair_recall": r, "tp": tp, "fp": fp, "fn": fn}
    return {"track_origin": origin, "vertexing": vertexing}


def _prepare_config(run: LoadedRun, ecfg: DictConfig) -> str:
    """Apply the ``data.*``/``batch_size`` overrides; return the checked test file."""
    cfg = run.cfg
    overrides = {k: v for k, v in (ecfg.get("data") or {}).items() if v is not None}
    with open_dict(cfg):
        cfg.data.update(overrides)
        if ecfg.get("batch_size"):
            cfg.data.batch_size = int(ecfg.batch_size)
    test_file = cfg.data.get("test_file")
    if not test_file:
        raise ValueError("no test file: the run's config has none; pass data.test_file=...")
    if not path_exists(str(test_file)):
        raise FileNotFoundError(f"test file not found: '{test_file}'")
    check_class_names(run.model, cfg, str(test_file))
    return str(test_file)


def evaluate(ecfg: DictConfig) -> dict[str, Any]:
    """Write predictions, metrics and plots of a run; return the metrics dict.

    Parameters
    ----------
    ecfg
        The evaluate config (``conf/evaluate.yaml``).
    """
    from saltx.data.loader import build_dataloader, build_datasets

    run = load_run(str(ecfg.run_dir), ecfg.get("ckpt"))
    if run.cfg.get("trainer", {}).get("reuse_freed_memory", True):
        reuse_freed_memory()  # as in training: no page faults for per-batch tensors
    test_file = _prepare_config(run, ecfg)
    cfg, model = run.cfg, run.model
    device = _device(str(ecfg.get("device", "cpu")))
    model.to(device)
    model_name = str(cfg.get("name", "salt"))
    spec = output_spec(model.tasks, model_name, str(cfg.data.get("global_object", "jets")))
    labels = metric_labels(model, cfg, test_file)
    dataset = build_datasets(cfg.data, labels, "test", seed=int(cfg.get("seed", 0)))["test"]
    n_jets = len(dataset)
    loader = build_dataloader(
        dataset,
        batch_size=int(cfg.data.batch_size),
        shuffle=False,
        drop_last=False,
        num_workers=int(cfg.data.get("num_workers", 0)),
    )
    rel = f"predictions/{prediction_file_name(run.ckpt_stem, test_file)}"
    if run.rundir.remote:  # written locally, then uploaded in one piece
        out_path = Path(tempfile.mkdtemp(prefix="saltx-eval-")) / Path(rel).name
    else:
        out_path = Path(run.rundir._fs_path(rel))
    try:
        state = write_predictions(
            model, loader, spec, cfg, ecfg, out_path, n_jets, device, run.class_names
        )
    finally:
        dataset.close()
    pred_path = run.rundir.copy_in(str(out_path), rel) if run.rundir.remote else str(out_path)

    result: dict[str, Any] = {
        "run_dir": run.rundir.root,
        "checkpoint": run.ckpt_path,
        "test_file": test_file,
        "predictions": pred_path,
        "n_jets": n_jets,
        "working_points": [float(w) for w in ecfg.working_points],
    }
    pngs: list[str] = []
    jet = spec.jet_classification_task
    if jet is not None and state.probs:
        names = list(model.tasks[jet].class_names)
        probs = np.concatenate(state.probs)
        idx = np.concatenate(state.truth)
        truth = np.where(idx >= 0, np.asarray(names, dtype=object)[idx.clip(0)], "")
        taggers = {model_name: {c: probs[:, i] for i, c in enumerate(names)}}
        taggers.update(read_reference_taggers(cfg, model_name, n_jets))
        flav, pngs = flavour_metrics(taggers, truth, ecfg, out_path.parent, model_name)
        result.update(flav)
    result.update(track_metrics(state))
    if run.rundir.remote:
        pngs = [run.rundir.copy_in(png, f"predictions/{Path(png).name}") for png in pngs]
    result["plots"] = pngs
    text = json.dumps(_finite(result), indent=2)
    result["metrics_file"] = run.rundir.write_text("predictions/metrics.json", text + "\n")
    print_summary(result, model_name)
    return result


def open_dict(cfg: DictConfig):
    """``omegaconf.open_dict`` (imported lazily so that this module imports fast)."""
    from omegaconf import open_dict as _open_dict

    return _open_dict(cfg)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``python -m saltx.evaluate``."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
