"""Validate an exported ONNX model against the torch model with onnxruntime.

For every constituent count ``n`` from 0 to ``max_constituents`` and several random draws
of raw inputs in ``[0, 1)`` (all constituents valid, as Athena passes them), every per-jet
output of the graph must equal the torch model's (its own forward and ``predict``) within
``TOLERANCE`` and be finite, and keep its declared rank (0); the aux outputs (track origin,
vertex index) must be exactly equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from saltx.mup.fold import fold_mureadout
from saltx.onnx.export import (
    ExportLayout,
    ONNXWrapper,
    choose_graph,
    example_inputs,
    export_onnx,
    torch_reference,
)
from saltx.onnx.outputs import OutputPlan
from saltx.onnx.singlejet import SingleJetRepresentation

TOLERANCE = 1e-5
"""``|onnx - torch| <= TOLERANCE * (1 + |torch|)`` for every per-jet output."""

REPRESENTATION_TOLERANCE = 1e-4
"""Single-jet vs model representations: ``max |Δ| <= tol * max(1, max |model|)``."""

REPRESENTATION_CASES = (0, 1, 3, 17, 40)
"""Constituent counts at which the single-jet representations are compared."""


class ONNXValidationError(RuntimeError):
    """The ONNX model disagrees with the torch model."""


@dataclass
class CheckReport:
    """Summary of a validation run.

    Attributes
    ----------
    n_cases
        Number of (constituent count, draw) cases compared.
    max_abs_diff
        Largest absolute difference of any per-jet output.
    graph
        ``single`` or ``generic`` (see :func:`saltx.onnx.export.choose_graph`).
    note
        Why the generic graph was used, if it was.
    """

    n_cases: int
    max_abs_diff: float
    graph: str = ""
    note: str | None = None


def session(
    path: str | os.PathLike, threads: int = 1, level: str = "extended"
) -> ort.InferenceSession:
    """A quiet CPU onnxruntime session with Athena's options.

    Athena's FlavorTagDiscriminants opens its sessions with 1 intra-op thread and
    ``ORT_ENABLE_EXTENDED`` graph optimisations; ``level`` may be ``basic``, ``extended``
    or ``all``.
    """
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = levels[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_outputs(
    model: nn.Module,
    layout: ExportLayout,
    onnx_path: str | os.PathLike,
    plan: OutputPlan,
    max_constituents: int = 40,
    trials: int = 3,
    seed: int = 0,
) -> CheckReport:
    """Run torch and onnxruntime on the same random inputs and compare.

    Parameters
    ----------
    model
        The exported SaltModel (eval mode).
    layout
        The export layout.
    onnx_path
        The ONNX file.
    plan
        The graph's outputs.
    max_constituents
        Largest constituent count tried (every count from 0 is tried).
    trials
        Random draws per count.
    seed
        Seed of the draws.

    Returns
    -------
    CheckReport

    Raises
    ------
    ONNXValidationError
        On a NaN/inf, a difference above the tolerance, a wrong rank, or an aux mismatch.
    """
    sess = session(onnx_path)
    names = plan.names
    jet_outputs = [*plan.task_outputs, *plan.combined_outputs]
    n_cases, max_diff = 0, 0.0
    for n in range(max_constituents + 1):
        for trial in range(trials):
            inputs = example_inputs(layout, n=n, seed=seed + 1000 * n + trial)
            ref = torch_reference(model, layout, inputs, plan)
            feed = {k: v.numpy() for k, v in zip(layout.input_names, inputs, strict=True)}
            got = dict(zip(names, sess.run(names, feed), strict=True))
            where = f"n_constituents={n}, trial {trial}"
            for key in jet_outputs:
                value, want = got[key], ref[key]
                if value.ndim != 0:
                    raise ONNXValidationError(f"output {key} has shape {value.shape}, not ()")
                if not np.isfinite(value):
                    raise ONNXValidationError(f"output {key} is not finite ({where}): {value}")
                diff = float(abs(value - want))
                max_diff = max(max_diff, diff)
                if diff > TOLERANCE * (1 + abs(float(want))):
                    raise ONNXValidationError(
                        f"ONNX and torch differ by {diff:.3g} in {key} ({where}): onnx {value}, "
                        f"torch {want}"
                    )
            for key in plan.aux_outputs:
                if not np.array_equal(got[key].astype(np.int64), ref[key]):
                    raise ONNXValidationError(
                        f"ONNX output {key} differs from torch ({where}): onnx {got[key]}, "
                        f"torch {ref[key]}"
                    )
            n_cases += 1
    return CheckReport(n_cases=n_cases, max_abs_diff=max_diff)


def compare_representations(model: nn.Module, layout: ExportLayout, seed: int = 0) -> float:
    """Largest relative difference between the single-jet and the model's representations.

    The single-jet computation (:class:`SingleJetRepresentation`) and the model's
    ``representations`` run in torch on the same random inputs (``REPRESENTATION_CASES``
    constituents, every type); the per-constituent encodings and the jet representation
    are compared, each scaled by ``max(1, max |model|)``. This checks the structure much
    more tightly than the flavour probabilities, which a little-trained model keeps close
    to its priors whatever the inputs.
    """
    single = SingleJetRepresentation(model, layout.gather, layout.constituents).eval()
    wrapper = ONNXWrapper(model, layout, OutputPlan("x", []))
    worst = 0.0
    with torch.no_grad():
        for n in REPRESENTATION_CASES:
            inputs = example_inputs(layout, n=n, seed=seed + n)
            encoded, global_rep = single(*inputs)
            ref_encoded, ref_global = model.representations(*wrapper.model_inputs(*inputs))
            pairs = [(global_rep, ref_global[0:1])]
            pairs += [(encoded[k], ref_encoded[k][0]) for k in encoded]
            for got, want in pairs:
                if want.numel():
                    scale = max(1.0, float(want.abs().max()))
                    worst = max(worst, float((got - want).abs().max()) / scale)
    return worst


def export_checked(
    model: nn.Module,
    layout: ExportLayout,
    path: str | os.PathLike,
    plan: OutputPlan,
    graph: str = "auto",
    max_constituents: int = 40,
    trials: int = 3,
) -> CheckReport:
    """Export (:func:`~saltx.onnx.export.export_onnx`) and validate (:func:`compare_outputs`).

    With ``graph=auto`` the single-jet graph is tried first; if the model is outside what
    it supports, or it does not reproduce the torch model (a model variant it does not
    know: :func:`compare_representations`, then the ONNX outputs), the generic graph is
    exported instead and ``note`` says why.

    Raises
    ------
    ONNXValidationError
        When the exported graph (the generic one, or the one forced by ``graph``) does
        not reproduce the torch model.
    """
    model = fold_mureadout(model.eval(), inplace=True)
    single, note = choose_graph(model, graph, plan)
    kwargs = {"max_constituents": max_constituents, "trials": trials}
    if single:
        try:
            diff = compare_representations(model, layout)
            if diff > REPRESENTATION_TOLERANCE:
                raise ONNXValidationError(
                    f"its representations differ from the model's by {diff:.3g} (relative)"
                )
            export_onnx(model, layout, path, plan, single=True)
            report = compare_outputs(model, layout, path, plan, **kwargs)
            report.graph = "single"
            return report
        except ONNXValidationError as err:
            if graph == "single":
                raise
            note = f"the single-jet graph does not reproduce this model ({err})"
        except Exception as err:  # a module variant the single graph cannot even run
            if graph == "single":
                raise
            note = f"the single-jet graph failed on this model ({type(err).__name__}: {err})"
    export_onnx(model, layout, path, plan, single=False)
    report = compare_outputs(model, layout, path, plan, **kwargs)
    report.graph, report.note = "generic", note
    return report


def export_summary(
    path: str, layout: ExportLayout, plan: OutputPlan, report: CheckReport
) -> dict[str, Any]:
    """Print what an export wrote (file, inputs, outputs, graph, validation) and return it.

    Returns
    -------
    dict[str, Any]
        ``{"path", "outputs", "graph", "inputs", "jet_variables", "max_abs_diff", "n_cases"}``.
    """
    print(f"ONNX model: {path}")
    print(f"inputs: {', '.join(layout.input_names)}  (jet_features: {layout.jet_variables})")
    print(f"outputs: {', '.join(plan.names)}")
    print(f"graph: {report.graph}" + (f" ({report.note})" if report.note else ""))
    print(
        f"validated against torch on {report.n_cases} inputs (max |Δ| = {report.max_abs_diff:.2e})"
    )
    return {
        "path": path,
        "outputs": plan.names,
        "graph": report.graph,
        "inputs": layout.input_names,
        "jet_variables": layout.jet_variables,
        "max_abs_diff": report.max_abs_diff,
        "n_cases": report.n_cases,
    }
