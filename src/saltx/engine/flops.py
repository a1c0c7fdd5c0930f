"""Model FLOPs utilisation (MFU): counted FLOPs of a training step over the device's peak.

The FLOPs of one (micro-)batch (forward and backward) are counted once with
``torch.utils.flop_counter.FlopCounterMode`` on the first batch. MFU is then
``flops_per_batch × batches/s / peak FLOP/s``. The peak comes from
``trainer.peak_tflops`` or, on known GPUs, from the dense bf16/fp16 tensor-core peak in
the table below (TF32 for ``precision=32`` is half of it).
"""

from __future__ import annotations

import torch

# dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s, by a substring of the device name
GPU_PEAK_BF16 = {
    "B200": 2.25e15,
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device, precision: str, override_tflops: float | None) -> float | None:
    """Peak FLOP/s of ``device`` for ``precision`` (``None`` when unknown)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
        if key in name:
            peak = GPU_PEAK_BF16[key]
            return peak if precision in {"bf16", "fp16"} else peak / 2
    return None


class FlopCounter:
    """Counts the FLOPs of the code run inside :meth:`count` (a context manager)."""

    def __init__(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.mode = FlopCounterMode(display=False)

    def __enter__(self) -> FlopCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)

    @property
    def total(self) -> int:
        """FLOPs counted so far."""
        return int(self.mode.get_total_flops())
