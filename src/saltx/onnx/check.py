"""Validate an exported ONNX model against the torch model with onnxruntime.

For every constituent count ``n`` from 0 to ``max_constituents`` and several random draws
of raw inputs in ``[0, 1)`` (all constituents valid, as Athena passes them), the ONNX
flavour probabilities must equal the torch ones within ``rtol = atol = 1e-4`` and be
finite; the aux outputs (track origin, vertex index) must be exactly equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from torch import nn

from saltx.onnx.export import ExportLayout, example_inputs, torch_reference

TOLERANCE = 1e-4


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
        Largest absolute difference of any flavour probability.
    """

    n_cases: int
    max_abs_diff: float


def session(path: str | os.PathLike) -> ort.InferenceSession:
    """A CPU onnxruntime session, quiet (log severity 3)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_outputs(
    model: nn.Module,
    layout: ExportLayout,
    onnx_path: str | os.PathLike,
    output_names: list[str],
    include_aux: bool = False,
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
    output_names
        The graph's outputs, flavour probabilities first, then the aux outputs.
    include_aux
        Whether the graph has aux outputs.
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
        On a NaN/inf, a probability difference above 1e-4, or an aux mismatch.
    """
    sess = session(onnx_path)
    names = layout.input_names
    n_cases, max_diff = 0, 0.0
    for n in range(max_constituents + 1):
        for trial in range(trials):
            inputs = example_inputs(layout, n=n, seed=seed + 1000 * n + trial)
            ref = torch_reference(model, layout, inputs, include_aux)
            feed = {k: v.numpy() for k, v in zip(names, inputs, strict=True)}
            got = dict(zip(output_names, sess.run(output_names, feed), strict=True))
            n_cls = len(ref["probs"])
            probs = np.concatenate([np.ravel(got[k]) for k in output_names[:n_cls]])
            where = f"n_constituents={n}, trial {trial}"
            if not np.isfinite(probs).all():
                raise ONNXValidationError(f"ONNX probabilities are not finite ({where}): {probs}")
            diff = float(np.max(np.abs(probs - ref["probs"])))
            max_diff = max(max_diff, diff)
            if not np.allclose(probs, ref["probs"], rtol=TOLERANCE, atol=TOLERANCE):
                raise ONNXValidationError(
                    f"ONNX and torch probabilities differ by {diff:.3g} > {TOLERANCE} ({where}): "
                    f"onnx {probs}, torch {ref['probs']}"
                )
            for key in output_names[n_cls:]:
                want = ref["origin"] if key.endswith("_TrackOrigin") else ref["vertex"]
                if want is None or not np.array_equal(got[key].astype(np.int64), want):
                    raise ONNXValidationError(
                        f"ONNX output {key} differs from torch ({where}): onnx {got[key]}, "
                        f"torch {want}"
                    )
            n_cases += 1
    return CheckReport(n_cases=n_cases, max_abs_diff=max_diff)
