"""muP step 2: give a freshly built model its base shapes (Salt's ``instantiate_mup``).

:func:`apply_mup` is called once, right after the model is constructed and before the
optimizer is built, by the composition step (:func:`saltx.assemble.build_model` when
``model.muP`` is true; ``saltx.models`` knows nothing of muP). It

* checks the config (a ``mup:`` block, a muP optimizer such as ``mup.MuAdamW``);
* calls ``mup.set_base_shapes(model, <base shapes>, rescale_params=...)``, so every
  parameter gets an ``infshape`` (``MuAdamW`` divides the learning rate of matrix-like
  groups by their width multiplier);
* turns every ``mup.MuReadout`` into :class:`CachedMuReadout`, whose forward uses the width
  multiplier cached as a Python float (``torch.compile`` then sees a constant instead of
  reading ``weight.infshape`` in forward).

Checkpoints: build the model (this runs ``apply_mup`` with ``rescale_params=True`` on fresh
weights), then ``load_state_dict``. To give base shapes to a model whose weights were
already loaded, pass ``rescale_params=False`` (rescaling is not idempotent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mup
from torch import Tensor, nn

from saltx.mup.shapes import MupConfigError, cfg_get

#: optimizers that apply muP's per-group learning-rate scaling
MUP_OPTIMIZERS = ("mup.MuAdamW", "mup.MuAdam", "mup.MuSGD", "mup.optim.MuAdamW")


class CachedMuReadout(mup.MuReadout):
    """``mup.MuReadout`` whose forward divides by a width multiplier cached as a float.

    ``y = W (output_mult * x / width_mult) + b`` with ``x: (..., in_features)``. The
    multiplier is read from ``weight.infshape`` once, by :meth:`cache_width_mult`.
    """

    _cached_width_mult: float | None = None

    def cache_width_mult(self) -> float:
        """Read ``weight.infshape.width_mult()`` once and keep it as a Python float."""
        self._cached_width_mult = float(mup.MuReadout.width_mult(self))
        return self._cached_width_mult

    def width_mult(self) -> float:
        """The cached width multiplier (reads the infshape if not cached yet)."""
        if self._cached_width_mult is None:
            return self.cache_width_mult()
        return self._cached_width_mult

    def forward(self, x: Tensor) -> Tensor:
        """``x: (..., in_features) -> (..., out_features)``."""
        if self._cached_width_mult is None:
            raise RuntimeError(
                "CachedMuReadout has no width multiplier: call saltx.mup.setup.apply_mup(model, "
                "cfg) (mup.set_base_shapes) before running the model"
            )
        scale = float(self.output_mult) / self._cached_width_mult
        return nn.functional.linear(x * scale, self.weight, self.bias)


def cache_readouts(model: nn.Module) -> int:
    """Turn every ``mup.MuReadout`` of ``model`` into a :class:`CachedMuReadout` in place.

    Returns the number of readouts; each must already have its base shapes.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, mup.MuReadout) and not isinstance(module, mup.MuSharedReadout):
            if not isinstance(module, CachedMuReadout):
                module.__class__ = CachedMuReadout
            module.cache_width_mult()
            n += 1
    return n


def check_optimizer(cfg: Any) -> None:
    """Raise unless ``cfg.optimizer`` (when present) is a muP optimizer."""
    opt = cfg_get(cfg, "optimizer")
    target = str(cfg_get(opt, "_target_", "")) if opt is not None else ""
    if target and target not in MUP_OPTIMIZERS:
        raise MupConfigError(
            f"model.muP is true but the optimizer is {target}; muP needs its per-group learning "
            "rates: use `optimizer=muadamw` (mup.MuAdamW)"
        )


def apply_mup(
    model: nn.Module,
    cfg: Any,
    base_shapes: str | Path | dict,
    rescale_params: bool = True,
) -> nn.Module:
    """Set muP base shapes on ``model`` (in place) and cache the readout width multipliers.

    Parameters
    ----------
    model
        The model built from ``cfg`` with ``model.muP: true``; not yet wrapped in DDP.
    cfg
        The root config; reads ``optimizer._target_`` if set.
    base_shapes
        The shape file (a path), or a dict of ``InfShape``
        (:func:`saltx.mup.shapes.base_shapes`: the file of ``mup.shape_path`` when written,
        else the shapes computed from the ``mup`` block).
    rescale_params
        ``mup.set_base_shapes``'s flag: True for freshly initialised weights, False when
        the weights come from a checkpoint already (rescaling is not idempotent).

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    MupConfigError
        A non-muP optimizer, or a model that muP cannot parametrise (a layer from the
        width to a fixed size that is not a MuReadout).
    """
    check_optimizer(cfg)
    if isinstance(base_shapes, Path):
        base_shapes = str(base_shapes)
    try:
        mup.set_base_shapes(model, base_shapes, rescale_params=rescale_params)
    except AssertionError as err:
        source = base_shapes if isinstance(base_shapes, str) else "the mup block"
        raise MupConfigError(
            f"mup.set_base_shapes rejected the model ({err}); base shapes from {source}: "
            "rewrite them (make mup-shapes) if the model changed"
        ) from err
    n = cache_readouts(model)
    if n == 0:
        raise MupConfigError(
            "model.muP is true but the model has no MuReadout: the encoder's output projection "
            "(model.out_dim > 0) must be the muP readout"
        )
    return model
