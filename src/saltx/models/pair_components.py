"""Vertex assignment from pair logits: connected components, vectorised in torch.

Salt (§2.13) runs a TorchScript loop over a flattened edge list. saltx has two
vectorised forms with the same result (each track gets the smallest valid track index
of its component):

* :func:`connected_components`: min-label propagation over the dense ``(B, N, N)``
  adjacency, with static shapes (what torch.compile, tracing and ONNX export use);
* :func:`edge_components`: the same propagation over the list of valid track pairs
  above the cut (``~sum n_i^2 / 2`` pairs instead of ``B N^2``), what eager
  evaluation uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saltx.models.eager import is_eager


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


def edge_components(edge_logits: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """:func:`connected_components` of :func:`pair_adjacency`, on the edge list.

    Only the pairs ``i < j`` of valid tracks are looked at: their symmetrised probability
    (the same float operations as :func:`pair_adjacency`, so the same cut decisions)
    gives an edge list, over which labels (global node indices ``b N + i``) are lowered
    to their neighbours' minimum and pointer-jumped until nothing changes. Labels never
    grow and never leave a component, so the fixed point is each component's smallest
    node, as in the dense form. Data-dependent shapes: eager mode only.

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
        ``(B, N)`` long: component id per node, ``-1`` for padded nodes.
    """
    B, N = mask.shape
    device = mask.device
    if edge_logits.shape != (B, N, N):
        raise ValueError(
            f"edge_logits of shape {tuple(edge_logits.shape)} do not match the track mask "
            f"{tuple(mask.shape)}: expected ({B}, {N}, {N})"
        )
    if mask.numel() == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=device)
    valid = ~mask
    pairs = (valid[:, :, None] & valid[:, None, :]).triu_(1)
    flat = pairs.view(-1).nonzero().squeeze(1)  # b N^2 + i N + j, i < j
    row, col = flat // N % N, flat % N
    logits = edge_logits.reshape(-1)
    # s_ji sits at b N^2 + j N + i = flat - (i - j)(N - 1)
    sym = 0.5 * (logits[flat] + logits[flat - (row - col) * (N - 1)])
    keep = torch.sigmoid(sym.float()) >= threshold
    node = flat[keep] // (N * N) * N
    u, v = node + row[keep], node + col[keep]
    labels = torch.arange(B * N, device=device)
    while True:
        low = torch.minimum(labels[u], labels[v])
        new = labels.scatter_reduce(0, u, low, "amin").scatter_reduce_(0, v, low, "amin")
        new = new[new]  # pointer jump: labels stay inside the component
        if torch.equal(new, labels):
            break
        labels = new
    local = labels.view(B, N) - torch.arange(0, B * N, N, device=device)[:, None]
    return local.masked_fill(mask, -1)


def get_node_assignment(edge_logits: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Vertex index per track from pair logits (Salt's union-find result, dense layout).

    Eager calls (:func:`saltx.models.eager.is_eager`) take the edge-list form
    (:func:`edge_components`); traced, compiled and exported graphs the dense one. Both
    give the same indices.

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
    if is_eager():
        return edge_components(edge_logits, mask, threshold)
    return connected_components(pair_adjacency(edge_logits, mask, threshold), mask)
