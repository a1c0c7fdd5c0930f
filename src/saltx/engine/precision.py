"""Numerical precision: autocast, the fp16 gradient scaler, TF32 and gradient clipping.

``trainer.precision``:

* ``32``: full float32 (TF32 matmuls on Ampere+ GPUs);
* ``bf16``: bfloat16 autocast on CPU and GPU, no scaler needed;
* ``fp16``: float16 autocast with a ``GradScaler`` (dynamic loss scaling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {
    "32-true": "32",
    "32": "32",
    "fp32": "32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "16": "fp16",
    "fp16": "fp16",
    "16-mixed": "fp16",
}


def normalise_precision(value: str | int) -> str:
    """``32 | bf16 | fp16`` from a config value (Lightning spellings accepted)."""
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"trainer.precision={value!r} is not supported; use one of 32, bf16, fp16")
    return _ALIASES[key]


def enable_tf32(device: torch.device) -> None:
    """Allow TF32 matmuls and convolutions on CUDA (no effect on CPU)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


class Precision:
    """Autocast context, backward and optimizer step for one precision setting.

    Parameters
    ----------
    precision
        ``32``, ``bf16`` or ``fp16``.
    device
        The training device; autocast uses its type (``cpu`` or ``cuda``).
    """

    def __init__(self, precision: str | int, device: torch.device) -> None:
        self.name = normalise_precision(precision)
        self.device = device
        self.dtype = PRECISIONS[self.name]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass and loss."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (loss scaled under fp16)."""
        self.scaler.scale(loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.nn.Parameter],
        clip_val: float | None,
    ) -> torch.Tensor | None:
        """Unscale, clip the gradient norm (when ``clip_val``), and step the optimizer.

        Returns the total gradient norm before clipping (a device tensor, no sync) when
        clipping, else ``None``.
        """
        norm = None
        if clip_val is not None and clip_val > 0:
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(list(params), clip_val)
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def state_dict(self) -> dict:
        """GradScaler state (empty when the scaler is off)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the GradScaler state (ignored when the scaler is off)."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
