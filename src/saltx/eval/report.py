"""Evaluation metrics over the test set and their report.

:class:`MetricState` sums what each batch contributes (jet probabilities and truth,
track-origin and vertex-pair counts); :func:`flavour_metrics` turns the jet part into
b- and c-tagging rejections and plots, :func:`track_metrics` the rest;
:func:`test_metrics` gathers both for the evaluation; :func:`print_summary` prints the
rejection table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch import nn

from saltx.data.h5 import open_h5
from saltx.eval import metrics as M
from saltx.eval import plots
from saltx.eval.testset import dataset_name


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


def finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
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


def read_reference_taggers(
    cfg: DictConfig, model_name: str, n_jets: int
) -> dict[str, dict[str, np.ndarray]]:
    """``{prefix: {bjets: pb, cjets: pc, ujets: pu}}`` of the test file's reference taggers."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with open_h5(str(cfg.data.test_file)) as f:
        jets_ds = f[dataset_name(cfg, str(cfg.data.global_object))]
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


def test_metrics(
    state: MetricState,
    class_names: Sequence[str] | None,
    cfg: DictConfig,
    ecfg: DictConfig,
    out_dir: Path,
    model_name: str,
    n_jets: int,
) -> tuple[dict[str, Any], list[str]]:
    """Every metric of an evaluation: the jet classifier's flavour metrics and plots (beside
    the test file's reference taggers) and the track metrics.

    Parameters
    ----------
    state
        The running sums over the test set.
    class_names
        The jet classification task's classes (``None``: there is none).
    cfg, ecfg
        The run's config (test file, global object) and the evaluate config.
    out_dir
        Where the plots go.
    n_jets
        Jets evaluated (the first ``n_jets`` of the test file).

    Returns
    -------
    tuple[dict[str, Any], list[str]]
        ``{btag, ctag, track_origin, vertexing}`` and the paths of the plots.
    """
    out: dict[str, Any] = {}
    pngs: list[str] = []
    if class_names is not None and state.probs:
        names = list(class_names)
        probs = np.concatenate(state.probs)
        idx = np.concatenate(state.truth)
        truth = np.where(idx >= 0, np.asarray(names, dtype=object)[idx.clip(0)], "")
        taggers = {model_name: {c: probs[:, i] for i, c in enumerate(names)}}
        taggers.update(read_reference_taggers(cfg, model_name, n_jets))
        out, pngs = flavour_metrics(taggers, truth, ecfg, out_dir, model_name)
    out.update(track_metrics(state))
    return out, pngs
