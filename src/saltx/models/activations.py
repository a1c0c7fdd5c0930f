"""Activation modules by their ``torch.nn`` class name: the one lookup every model part uses.

Two families, chosen by the caller:

* ``position_independent=True`` (attention kernels, transformer feed-forward blocks):
  SiLU, Sigmoid and Mish are built from elementwise operations whose result for an element
  does not depend on its position in the tensor (see :func:`saltx.models.masking.stable_silu`),
  which the padding-exact formulation needs. The other names are the ``torch.nn`` classes.
* ``position_independent=False`` (:class:`saltx.models.dense.Dense`, Salt's MLP): always the
  ``torch.nn`` classes, as Salt builds them, so that imported Salt weights give Salt's outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saltx.models.masking import stable_sigmoid, stable_silu

__all__ = ["ACTIVATIONS", "get_activation"]

ACTIVATIONS = (
    "CELU",
    "ELU",
    "GELU",
    "Hardswish",
    "LeakyReLU",
    "Mish",
    "ReLU",
    "ReLU6",
    "SELU",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
)
"""The accepted names (``torch.nn`` elementwise activation classes built without arguments)."""


class _StableSiLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return stable_silu(x)


class _StableSigmoid(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return stable_sigmoid(x)


class _StableMish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        softplus = torch.relu(x) + torch.log(1.0 + torch.exp(-x.abs()))
        return x * torch.tanh(softplus)


_POSITION_INDEPENDENT: dict[str, type[nn.Module]] = {
    "SiLU": _StableSiLU,
    "Sigmoid": _StableSigmoid,
    "Mish": _StableMish,
}


def get_activation(name: str, *, position_independent: bool) -> nn.Module:
    """A fresh activation module by its ``torch.nn`` class name (``"ReLU"``, ``"SiLU"``, ...).

    Parameters
    ----------
    name
        One of :data:`ACTIVATIONS`.
    position_independent
        Replace SiLU, Sigmoid and Mish by position-independent equivalents (equal to the
        ``torch.nn`` ones to float rounding); the other names are unaffected.

    Returns
    -------
    nn.Module
        Maps a tensor of any shape to a tensor of the same shape.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`ACTIVATIONS`; the message names it and lists them.
    """
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)} "
            "(torch.nn class names)"
        )
    if position_independent and name in _POSITION_INDEPENDENT:
        return _POSITION_INDEPENDENT[name]()
    return getattr(nn, name)()
