"""Whether the model runs as plain eager PyTorch: the one test every model part uses.

Several parts of the forward pass have an eager-only form: they branch on tensor values in
Python or make tensors whose shape depends on the data (trimming padded slots, length
groups, the pair MLP on valid pairs only, the edge-list connected components), or they
rely on CPU eager kernels for bitwise padding invariance (the padding-exact attention and
sums in :mod:`saltx.models.masking`). A graph that is traced, exported or compiled records
one path with static shapes, so there the plain, shape-static form must run instead.
"""

from __future__ import annotations

import torch

__all__ = ["is_eager"]


def is_eager() -> bool:
    """True unless a graph is being captured; False in any of these cases.

    * ``torch.jit.is_tracing()`` — ``torch.jit.trace``, and so the TorchScript-based
      ONNX exporter (``torch.onnx.export(..., dynamo=False)``, which saltx uses);
    * ``torch.jit.is_scripting()`` — code compiled by ``torch.jit.script``;
    * ``torch.onnx.is_in_onnx_export()`` — inside any ``torch.onnx.export`` call;
    * ``torch.compiler.is_exporting()`` — ``torch.export`` (and the dynamo ONNX exporter);
    * ``torch.compiler.is_compiling()`` — inside a ``torch.compile`` region (dynamo).

    Why all of them: each captures one execution path with static shapes, so a Python
    branch on a tensor value would be frozen into the graph and a data-dependent shape
    would fail or be baked in; inside compiled code inductor writes its own kernels, so the
    padding-exact formulations would only cost compile time without their guarantee.

    Returns
    -------
    bool
        True in plain eager execution.
    """
    return not (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
    )
