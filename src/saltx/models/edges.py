"""Pairwise edge features between the constituents of a jet (Salt's EDGE inputs).

For every ordered pair ``(i, j)``, with ``Δη = η_j − η_i``, ``Δφ = φ_j − φ_i`` wrapped into
``(−π, π]`` and ``ΔR = sqrt(Δη² + Δφ²)``:

==============  ==============================================  ===================
name            value                                           raw fields used
==============  ==============================================  ===================
``dR``          ``log ΔR``                                      eta, phi
``kt``          ``log(min(pT_i, pT_j) · ΔR)``                   pt, eta, phi
``z``           ``log(min(pT_i, pT_j) / (pT_i + pT_j))``        pt
``isSelfLoop``  ``1`` if ``i == j`` else ``0``                  –
``subjetIndex`` ``1`` if ``s_i == s_j`` and ``s_i ≥ 0`` else 0  subjetIndex
==============  ==============================================  ===================

NaN and ±inf become 0 (e.g. ``log 0`` on the diagonal), and so does every pair that
involves a padded constituent. Deliberate difference from Salt: Salt wrapped Δφ only
above π (values below −π stayed unwrapped, so the matrix could be asymmetric); saltx
wraps both ways.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["EDGE_FEATURES", "EdgeFeatures", "edge_features", "wrap_phi"]

EDGE_FEATURES = ("dR", "kt", "z", "isSelfLoop", "subjetIndex")
"""Edge feature names, in no particular order (the output follows the requested order)."""

RAW_FIELDS = ("pt", "eta", "phi", "subjetIndex")
"""Fields of the raw EDGE tensor ``(B, N, 4)``, in order."""


def wrap_phi(dphi: Tensor) -> Tensor:
    """Wrap angle differences into ``(−π, π]``."""
    return math.pi - torch.remainder(math.pi - dphi, 2 * math.pi)


def _check_names(names: Sequence[str]) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError(f"No edge features requested; choose from {list(EDGE_FEATURES)}.")
    unknown = [n for n in names if n not in EDGE_FEATURES]
    if unknown:
        raise ValueError(
            f"Unknown edge feature(s) {unknown} in variables.EDGE; available: "
            f"{list(EDGE_FEATURES)}."
        )
    return names


def edge_features(raw: Tensor, mask: Tensor | None, names: Sequence[str]) -> Tensor:
    """Compute edge features from raw (un-normalised) constituent kinematics.

    Parameters
    ----------
    raw : Tensor
        ``(B, N, 4)`` = ``[pt, eta, phi, subjetIndex]`` per constituent (fields that no
        requested feature needs may hold anything).
    mask : Tensor or None
        ``(B, N)`` bool, True = padded.
    names : sequence of str
        Features to compute, in output order (see :data:`EDGE_FEATURES`).

    Returns
    -------
    Tensor
        ``(B, N, N, len(names))`` float32; entry ``[b, i, j]`` describes the pair
        ``(i, j)``.
    """
    names = _check_names(names)
    if raw.dim() != 3 or raw.shape[-1] != len(RAW_FIELDS):
        raise ValueError(
            f"EDGE input must have shape (B, N, {len(RAW_FIELDS)}) with fields "
            f"{list(RAW_FIELDS)}; got {tuple(raw.shape)}."
        )
    raw = raw.float()
    pt, eta, phi, subjet = raw.unbind(-1)
    n = raw.shape[1]

    def pair(f: Tensor) -> tuple[Tensor, Tensor]:
        return f.unsqueeze(2), f.unsqueeze(1)  # values of i (rows), of j (columns)

    cache: dict[str, Tensor] = {}

    def delta_r() -> Tensor:
        if "dr" not in cache:
            eta_i, eta_j = pair(eta)
            phi_i, phi_j = pair(phi)
            deta = eta_j - eta_i
            # Only Δφ² enters, so wrap |Δφ|: exactly symmetric in (i, j).
            dphi = wrap_phi((phi_j - phi_i).abs())
            cache["dr"] = torch.sqrt(deta * deta + dphi * dphi)
        return cache["dr"]

    def pt_min() -> Tensor:
        if "ptmin" not in cache:
            pt_i, pt_j = pair(pt)
            cache["ptmin"] = torch.minimum(pt_i, pt_j)
        return cache["ptmin"]

    feats = []
    for name in names:
        if name == "dR":
            f = torch.log(delta_r())
        elif name == "kt":
            f = torch.log(pt_min() * delta_r())
        elif name == "z":
            pt_i, pt_j = pair(pt)
            f = torch.log(pt_min() / (pt_i + pt_j))
        elif name == "isSelfLoop":
            eye = torch.eye(n, dtype=raw.dtype, device=raw.device)
            f = eye.expand(raw.shape[0], n, n)
        else:  # subjetIndex
            s_i, s_j = pair(subjet)
            f = ((s_i == s_j) & (s_i >= 0)).to(raw.dtype)
        feats.append(f)
    out = torch.nan_to_num(torch.stack(feats, dim=-1), nan=0.0, posinf=0.0, neginf=0.0)
    if mask is not None:
        pad = mask.unsqueeze(2) | mask.unsqueeze(1)
        out = out.masked_fill(pad.unsqueeze(-1), 0.0)
    return out


class EdgeFeatures(nn.Module):
    """Module form of :func:`edge_features` (no parameters).

    Parameters
    ----------
    names : sequence of str
        Features to compute, in output order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = _check_names(names)

    @property
    def num_features(self) -> int:
        """Number of features E in the output."""
        return len(self.names)

    def forward(self, raw: Tensor, mask: Tensor | None = None) -> Tensor:
        """raw ``(B, N, 4)``, mask ``(B, N)`` -> ``(B, N, N, E)``."""
        return edge_features(raw, mask, self.names)
