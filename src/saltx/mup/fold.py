"""Fold muP readouts into plain ``nn.Linear`` layers (for ONNX export).

``MuReadout`` computes ``W (output_mult * x / width_mult) + b``; the same map is the plain
linear layer with weight ``W * output_mult / width_mult`` and bias ``b``. The exported graph
then needs neither the ``mup`` package nor the parameters' ``infshape`` attributes.
"""

from __future__ import annotations

import copy

import mup
import torch
from torch import nn


def _width_mult(name: str, readout: mup.MuReadout) -> float:
    try:
        return float(readout.width_mult())
    except AssertionError as err:
        raise RuntimeError(
            f"cannot fold the MuReadout {name or '(model)'!r} without base shapes: call "
            "saltx.mup.setup.apply_mup(model, cfg) (mup.set_base_shapes) before exporting"
        ) from err


def _folded(readout: mup.MuReadout, width_mult: float) -> nn.Linear:
    """An ``nn.Linear`` equal to ``readout`` (same device and dtype)."""
    w = readout.weight
    linear = nn.Linear(
        readout.in_features,
        readout.out_features,
        bias=readout.bias is not None,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(w * (float(readout.output_mult) / width_mult))
        if readout.bias is not None:
            linear.bias.copy_(readout.bias)
    linear.train(readout.training)
    return linear


def fold_mureadout(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every ``mup.MuReadout`` of ``model`` by an equivalent ``nn.Linear``.

    Parameters
    ----------
    model
        A model whose base shapes are set (``apply_mup``); models without MuReadout are
        returned unchanged (a copy unless ``inplace``).
    inplace
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        A model computing the same outputs, with plain linear readouts. The state-dict
        keys are unchanged (``encoder.final_linear.weight`` ...), the readout weight values
        are scaled by ``output_mult / width_mult``.
    """
    # read the multipliers first: a deep copy of a Parameter drops its ``infshape``
    mults = {
        name: _width_mult(name, module)
        for name, module in model.named_modules()
        if isinstance(module, mup.MuReadout)
    }
    out = model if inplace else copy.deepcopy(model)
    for name, width_mult in mults.items():
        if not name:
            return _folded(out, width_mult)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, _folded(getattr(parent, child), width_mult))
    return out
