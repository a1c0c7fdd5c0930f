"""``is_eager``: False in every graph-capturing mode that the model parts must respect."""

from __future__ import annotations

import io

import torch
from torch import nn

from saltx.models.eager import is_eager
from saltx.models.masking import exact_mode


class _Probe(nn.Module):
    """Records ``is_eager()`` (and ``exact_mode``) each time its forward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((is_eager(), exact_mode(x)))
        return x + 1


def test_plain_call_is_eager():
    probe = _Probe()
    probe(torch.zeros(2))
    assert probe.seen == [(True, True)]


def test_jit_trace_is_not_eager():
    probe = _Probe()
    torch.jit.trace(probe, torch.zeros(2), check_trace=False)
    assert probe.seen == [(False, False)]


def test_onnx_export_is_not_eager():
    """saltx's exporter (TorchScript-based, ``dynamo=False``) sees the static-shape path."""
    probe = _Probe()
    torch.onnx.export(probe, (torch.zeros(2),), io.BytesIO(), dynamo=False)
    assert probe.seen and all(s == (False, False) for s in probe.seen)


def test_torch_compile_is_not_eager():
    probe = _Probe()
    torch.compiler.reset()
    torch.compile(probe, backend="eager", dynamic=True)(torch.zeros(3))
    torch.compiler.reset()
    assert probe.seen == [(False, False)]
