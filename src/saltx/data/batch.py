"""The one batch type that flows from the data layer into the model and the loop."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """A batch of jets, as read from one contiguous slice of an h5 file.

    Attributes
    ----------
    inputs
        Raw (un-normalised) float32 features per input name:
        global object ``(B, F)``, constituents ``(B, N, F)`` (padded slots zeroed),
        ``GLOBAL`` ``(B, G)``, ``PARAMETERS`` ``(B, P)``, and ``EDGE`` ``(B, N, 4)``
        holding the raw ``[pt, eta, phi, subjetIndex]`` of the edge input's constituents.
    masks
        ``(B, N)`` bool per constituent input, True = padded (Salt's convention).
    labels
        ``labels[input_name][field]``: ``(B,)`` or ``(B, N)``; integer fields are
        ``torch.long``, float fields ``torch.float32``.
    """

    inputs: dict[str, Tensor]
    masks: dict[str, Tensor]
    labels: dict[str, dict[str, Tensor]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        return Batch(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.masks.items()},
            {
                name: {f: t.to(device, non_blocking=non_blocking) for f, t in fields.items()}
                for name, fields in self.labels.items()
            },
        )

    @property
    def num_jets(self) -> int:
        """Number of jets in the batch."""
        return next(iter(self.inputs.values())).shape[0]
