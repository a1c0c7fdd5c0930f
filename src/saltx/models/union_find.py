"""Vertex assignment from pair logits: connected components, vectorised in torch.

Salt (§2.13) runs a TorchScript loop over a flattened edge list; here the same result
comes from min-label propagation over the dense ``(B, N, N)`` adjacency, which keeps
static shapes (torch.compile / ONNX friendly).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pair_adjacency(edge_logits: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Symmetrised adjacency of valid tracks.

    Parameters
    ----------
    edge_logits
        ``(B, N, N)`` pair logits ``s_ij``.
    mask
        ``(B, N)`` bool, True = padded.
    threshold
        Probability cut on ``p_ij = sigmoid((s_ij + s_ji) / 2)``.

    Returns
    -------
    Tensor
        ``(B, N, N)`` bool, symmetric, False on the diagonal and for padded tracks.
    """
    sym = 0.5 * (edge_logits + edge_logits.transpose(1, 2))
    adj = torch.sigmoid(sym.float()) >= threshold
    valid = ~mask
    adj = adj & valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return adj & ~eye


def connected_components(adj: Tensor, mask: Tensor, early_stop: bool = True) -> Tensor:
    """Label each valid node by the smallest node index in its connected component.

    Iterates ``label_i <- min(label_i, min_{j ~ i} label_j)`` followed by a pointer jump
    ``label_i <- label_{label_i}``, at most N times (enough for any component).

    Parameters
    ----------
    adj
        ``(B, N, N)`` bool symmetric adjacency (no edges to padded nodes).
    mask
        ``(B, N)`` bool, True = padded.
    early_stop
        Stop once no label changes (one device sync per iteration); set False for a
        fixed-iteration graph (tracing/export).

    Returns
    -------
    Tensor
        ``(B, N)`` long: component id per node, ``-1`` for padded nodes.
    """
    B, N = mask.shape
    big = torch.full((), N, dtype=torch.long, device=mask.device)
    labels = torch.arange(N, device=mask.device).expand(B, N).clone()
    for _ in range(N):
        neighbour = torch.where(adj, labels[:, None, :], big).amin(dim=-1)
        new = torch.minimum(labels, neighbour)
        new = torch.gather(new, 1, new)  # pointer jump: labels stay inside the component
        if early_stop and torch.equal(new, labels):
            break
        labels = new
    return labels.masked_fill(mask, -1)


def get_node_assignment(edge_logits: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Vertex index per track from pair logits (Salt's union-find result, dense layout).

    Parameters
    ----------
    edge_logits
        ``(B, N, N)`` pair logits.
    mask
        ``(B, N)`` bool, True = padded.
    threshold
        Probability cut on the symmetrised pair probability.

    Returns
    -------
    Tensor
        ``(B, N)`` long: the smallest valid track index of the track's component,
        ``-1`` in padded slots.
    """
    return connected_components(pair_adjacency(edge_logits, mask, threshold), mask)
