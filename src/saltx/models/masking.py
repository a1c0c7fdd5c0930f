"""Mask and numerics helpers shared by the attention, encoder and pooling modules.

Masks follow one convention everywhere: ``True`` = padded (blocked).

Padding invariance to the bit
-----------------------------
saltx promises that appending padded constituents to a batch leaves every output of the
valid constituents bit-identical (on CPU). Floating-point sums are not associative, so
every reduction along the sequence axis must add the appended entries *after* the valid
ones, in a fixed order, as exact zeros. The helpers here do that:

* :func:`exact_sum` sums along a dimension with ``cumsum`` (on CPU a sequential loop
  accumulating in float64) and takes the last entry, so trailing zeros change nothing;
* :func:`masked_softmax` takes the max (exact), exponentiates, zeroes the masked entries
  and normalises with :func:`exact_sum`;
* :func:`stable_sigmoid` / :func:`stable_silu` are composed of elementwise operations
  whose result does not depend on the position of an element in memory (PyTorch's
  fused ``sigmoid``/``silu`` kernels give results that differ in the last bit between
  their vectorised body and their scalar tail).

On other devices (CUDA), while exporting and under ``torch.compile`` these helpers fall
back to the plain fast reductions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saltx.models.eager import is_eager

__all__ = [
    "build_attn_mask",
    "compact_valid",
    "concat_inputs",
    "exact_mode",
    "exact_sum",
    "gather_seq",
    "masked_softmax",
    "stable_sigmoid",
    "stable_silu",
    "zero_pad_valid_first",
]


def exact_mode(x: Tensor) -> bool:
    """Whether the padding-exact (order-preserving) formulations should be used for ``x``.

    True on CPU in eager mode (:func:`saltx.models.eager.is_eager`); False on accelerators,
    while tracing or exporting and inside ``torch.compile`` regions, where the plain fused
    operations are used instead.
    Compiled code gives no bitwise padding invariance anyway (inductor generates its own
    kernels), and the tiled formulation costs about 3.5x the compile time of the fused
    one (a GN2 block, forward and backward, on 2 CPU cores) and runs slower.
    """
    return x.device.type == "cpu" and is_eager()


def exact_sum(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """Sum ``x`` along ``dim`` in a fixed sequential order.

    Parameters
    ----------
    x : Tensor
        Any shape; ``x.shape[dim]`` may be 0 (the sum is then 0).
    dim : int
        Dimension to reduce.
    keepdim : bool
        Keep the reduced dimension with size 1.

    Returns
    -------
    Tensor
        ``x.sum(dim, keepdim)``. On CPU it is computed as the last entry of ``cumsum``,
        a sequential float64 accumulation, so trailing zeros leave it bit-identical.
    """
    if not exact_mode(x) or x.shape[dim] == 0:
        return x.sum(dim, keepdim=keepdim)
    out = x.cumsum(dim).select(dim, -1)
    return out.unsqueeze(dim) if keepdim else out


def masked_softmax(x: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` ignoring masked entries; fully masked rows give zeros.

    Parameters
    ----------
    x : Tensor
        Logits, e.g. ``(B, H, Lq, Lk)``.
    mask : Tensor or None
        Bool, True = masked; broadcastable to ``x``. Masks with fewer dimensions than
        ``x`` are expanded with singleton dimensions after the batch dimension (Salt's
        convention), e.g. a ``(B, Lk)`` mask for ``(B, H, Lq, Lk)`` logits.
    dim : int
        The softmax dimension.

    Returns
    -------
    Tensor
        Same shape as ``x``; masked entries are exactly 0, a fully masked row is all 0,
        never NaN (also in the backward pass).
    """
    if x.shape[dim] == 0:
        return torch.zeros_like(x)
    if mask is None:
        mask = torch.zeros((), dtype=torch.bool, device=x.device)
    elif mask.dim() < x.dim():
        mask = mask.view(mask.shape[:1] + (1,) * (x.dim() - mask.dim()) + mask.shape[1:])
    # The max over valid entries is a constant for autograd (softmax is shift invariant);
    # the finite fill keeps fully masked rows free of inf - inf = NaN. Shifted logits are
    # clamped into [-80, 0]: masked entries cannot overflow (they are zeroed after exp),
    # and exp never takes its slow denormal path (e^-80 ~ 2e-35 is below the float
    # resolution next to the max's weight 1).
    with torch.no_grad():
        top = x.masked_fill(mask, torch.finfo(x.dtype).min).amax(dim, keepdim=True)
    e = torch.exp((x - top).clamp(-80.0, 0.0)).masked_fill(mask, 0.0)
    denom = exact_sum(e, dim, keepdim=True)
    return e / denom.clamp_min(torch.finfo(x.dtype).tiny)


def stable_sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid built from position-independent elementwise operations.

    Finite for every finite input and with finite gradients (no overflow in ``exp``).
    """
    e = torch.exp(-x.abs())
    r = 1.0 / (1.0 + e)
    return torch.where(x >= 0, r, e * r)


def stable_silu(x: Tensor) -> Tensor:
    """SiLU ``x * sigmoid(x)`` with :func:`stable_sigmoid`."""
    return x * stable_sigmoid(x)


def build_attn_mask(
    q_mask: Tensor | None, kv_mask: Tensor | None, block_queries: bool = False
) -> Tensor | None:
    """Attention mask, built once per forward pass and shared by all layers.

    Parameters
    ----------
    q_mask : Tensor or None
        ``(B, Lq)`` bool, True = padded query. Only used with ``block_queries``.
    kv_mask : Tensor or None
        ``(B, Lk)`` bool, True = padded key/value.
    block_queries : bool
        Also block padded queries (Salt's seed behaviour). Off by default: a padded
        query's output is never read, and blocking it only costs a larger mask. Either
        way a fully masked row gives a zero attention output.

    Returns
    -------
    Tensor or None
        Bool, True = blocked: ``(B, 1, 1, Lk)``, or ``(B, 1, Lq, Lk)`` with
        ``block_queries``; None when nothing is masked.
    """
    if kv_mask is None:
        if not block_queries or q_mask is None:
            return None
        return q_mask[:, None, :, None]
    mask = kv_mask[:, None, None, :]
    if block_queries and q_mask is not None:
        mask = mask | q_mask[:, None, :, None]
    return mask


def concat_inputs(
    x: dict[str, Tensor], masks: dict[str, Tensor] | None
) -> tuple[Tensor, Tensor | None, list[int]]:
    """Concatenate a dict of constituent inputs along the sequence (dict order).

    Parameters
    ----------
    x : dict[str, Tensor]
        ``{name: (B, N_name, D)}``.
    masks : dict[str, Tensor] or None
        ``{name: (B, N_name)}`` bool, True = padded. A missing key means no padding.

    Returns
    -------
    tuple
        ``(B, sum N, D)`` tensor, ``(B, sum N)`` mask (None if no input has one), and
        the list of sizes ``N_name`` for splitting back.
    """
    if not x:
        raise ValueError("Expected at least one input in the dict of constituents; got none.")
    masks = masks or {}
    names = list(x)
    for name in names:
        if x[name].dim() != 3:
            raise ValueError(
                f"Input {name!r} must have shape (B, N, D); got {tuple(x[name].shape)}."
            )
        if name in masks and masks[name].shape != x[name].shape[:2]:
            raise ValueError(
                f"Mask {name!r} has shape {tuple(masks[name].shape)}; expected "
                f"{tuple(x[name].shape[:2])} to match its input."
            )
    sizes = [x[name].shape[1] for name in names]
    h = x[names[0]] if len(names) == 1 else torch.cat([x[n] for n in names], dim=1)
    if not any(name in masks for name in names):
        return h, None, sizes
    parts = [
        masks[n] if n in masks else x[n].new_zeros(x[n].shape[:2], dtype=torch.bool) for n in names
    ]
    mask = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return h, mask, sizes


def compact_valid(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Stable permutation that moves the valid constituents of each jet to the front.

    Concatenating several padded inputs leaves padding in the middle of the sequence,
    where the tiled attention sums would group the valid keys differently for different
    amounts of padding. Gathering with ``order`` puts all valid constituents first (in
    their original order) and all padded ones last.

    Parameters
    ----------
    mask : Tensor
        ``(B, L)`` bool, True = padded.

    Returns
    -------
    tuple
        ``order`` ``(B, L)``: ``x.gather(1, order)`` is the compacted sequence; ``pos``
        ``(B, L)``: ``y.gather(1, pos)`` maps a compacted output back to the input order.
    """
    valid = ~mask
    n_valid = valid.sum(1, keepdim=True)
    pos = torch.where(valid, valid.cumsum(1) - 1, n_valid + mask.cumsum(1) - 1)
    arange = torch.arange(mask.shape[1], device=mask.device).expand_as(pos)
    order = torch.empty_like(pos).scatter_(1, pos, arange)
    return order, pos


def zero_pad_valid_first(
    h: Tensor, mask: Tensor, num_inputs: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Prepare joined inputs for attention: zero the padded rows, then, with several
    inputs in :func:`exact_mode`, put the valid constituents first (:func:`compact_valid`).

    Valid constituents first keeps padding from splitting them, which the bitwise padding
    invariance of the tiled attention needs.

    Parameters
    ----------
    h : Tensor
        ``(B, L, D)`` the inputs joined by :func:`concat_inputs`.
    mask : Tensor
        ``(B, L)`` bool, True = padded.
    num_inputs : int
        How many inputs were joined.

    Returns
    -------
    tuple
        ``h`` ``(B, L, D)`` and ``mask`` ``(B, L)``, reordered or not; ``order`` and
        ``pos`` ``(B, L)`` of :func:`compact_valid`, or None when not reordered.
    """
    h = h.masked_fill(mask.unsqueeze(-1), 0.0)
    if num_inputs > 1 and exact_mode(h):
        order, pos = compact_valid(mask)
        return gather_seq(h, order), gather_seq(mask, order), order, pos
    return h, mask, None, None


def gather_seq(x: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """Gather ``x`` ``(B, L, ...)`` along the sequence dimension ``dim`` with ``(B, L)``."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    index = index.view(shape).expand(*x.shape[:dim], index.shape[1], *x.shape[dim + 1 :])
    return x.gather(dim, index)
