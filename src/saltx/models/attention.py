"""Multi-head attention with pluggable kernels (scaled dot-product or GATv2) and edges.

Layout: ``q, k, v`` are ``(B, H, L, Dh)``; masks are bool with True = blocked.

Two formulations of a kernel's sequence reductions exist:

* **exact** (default on CPU in eager mode): queries and keys are zero-padded to a
  multiple of ``BLOCK`` (16) and every product is a batched GEMM of fixed-shape
  ``BLOCK x BLOCK`` tiles; tiles are summed one after the other and the softmax
  denominator comes from the same fixed-shape GEMMs (or a sequential ``cumsum``).
  BLAS then sees the same shapes whatever the padded length, and padded keys appended
  at the end only add exact zeros, so outputs of valid constituents are bit-identical
  with or without extra padding. Cost: the attention part is ~2-3x slower than the
  fused kernel on CPU (about +10-30 % for a whole GN2 layer);
* **fused** (CUDA, ONNX export, inside ``torch.compile``, or ``fused=True``, e.g.
  ``model.attention.fused=true``):
  ``torch.nn.functional.scaled_dot_product_attention`` where there is no edge bias/gate,
  plain ``matmul`` otherwise. Results agree with the exact path to float rounding.

What the exact path guarantees (tested in ``tests/unit``): on CPU in float32, appending
padded constituents (any finite or non-finite garbage) to the end of an input type
leaves every output of the valid constituents, and every pooled output, bit-identical.
The per-token Linear layers are plain BLAS GEMMs over ``B * L`` rows; MKL computes a row
independently of the row count only above a few rows per thread (>= 4 rows with one
thread on the test machine), so the guarantee assumes that and is tested with one thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.activations import get_activation
from saltx.models.dense import mup_init_
from saltx.models.masking import (
    build_attn_mask,
    exact_mode,
    exact_sum,
    masked_softmax,
    stable_sigmoid,
)

__all__ = [
    "BLOCK",
    "QKV_INITS",
    "GATv2Attention",
    "MultiheadAttention",
    "ScaledDotProductAttention",
    "rowwise_linear",
]

BLOCK = 16
"""Tile size of the padding-exact attention GEMMs."""

QKV_INITS = ("linear_default", "xavier_packed")
"""Initialisations of the q/k/v projections (see :class:`MultiheadAttention`)."""


def rowwise_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, computed row by row when the layer has a single output.

    BLAS picks different reduction orders for an ``(M, K) @ (K, 1)`` product depending
    on ``M``; an elementwise product and a last-dimension sum do not.
    """
    if layer.out_features != 1:
        return layer(x)
    out = (x * layer.weight[0]).sum(-1, keepdim=True)
    return out if layer.bias is None else out + layer.bias


# --------------------------------------------------------------------------------------
# padding-exact tiled products


def _num_tiles(length: int) -> int:
    """Tiles covering ``length`` positions (at least one).

    Written as a ceiling division so that a dynamic length of ``torch.compile`` gives
    sizes (``n * BLOCK``) that its shape reasoning simplifies without guards.
    """
    if length == 0:
        return 1
    return (length + BLOCK - 1) // BLOCK


def _pad_amount(length: int) -> int:
    """Positions to add so that ``length`` becomes a positive multiple of BLOCK."""
    return _num_tiles(length) * BLOCK - length


def _pad_seq(x: Tensor, dim: int, pad: int, value: float | bool = 0) -> Tensor:
    """Zero-pad (or ``value``-pad) ``x`` at the end of dimension ``dim``.

    Under ``torch.compile`` the padding is always applied, even when it is 0: testing a
    dynamic length would specialise the graph to lengths that are, or are not, multiples
    of BLOCK (one recompilation each).
    """
    if not torch.compiler.is_compiling() and pad == 0:
        return x
    spec = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, pad]
    return F.pad(x, spec, value=value)


def _tile_bmm(a: Tensor, b: Tensor, transpose_b: bool = False) -> Tensor:
    """``a @ b`` (``a @ b^T`` with ``transpose_b``) over identical leading dims.

    ``a`` ``(..., M, K)``, ``b`` ``(..., K, N)`` (``(..., N, K)``). One ``bmm`` over the
    flattened leading dims, which is what ``matmul`` does after broadcasting; without
    ``matmul``'s broadcasting checks and the view of a transposed operand, which would
    specialise a compiled graph to sequences of one tile (nq == 1 or nk == 1).
    """
    lead = a.shape[:-2]
    n = math.prod(lead)  # not -1: inferring it adds a divisibility guard
    b3 = b.reshape(n, *b.shape[-2:])
    out = torch.bmm(a.reshape(n, *a.shape[-2:]), b3.transpose(1, 2) if transpose_b else b3)
    return out.view(*lead, *out.shape[-2:])


def _sum_tiles(x: Tensor, dim: int) -> Tensor:
    """Sum over the (small) tile dimension ``dim`` in order, one tile after the other."""
    if torch.compiler.is_compiling():
        return exact_sum(x, dim)
    parts = x.unbind(dim)
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def _tiles(t: Tensor, lq: int, lk: int, value: float | bool) -> Tensor:
    """View a ``(..., Lq or 1, Lk or 1)`` tensor in the tile layout of the scores.

    Pads to the tiled lengths with ``value`` and returns ``(..., nq or 1, nk, BLOCK or 1,
    BLOCK)`` (a view of the padded tensor, no copy beyond the padding).
    """
    if t.shape[-1] == 1 and lk != 1:
        t = t.expand(*t.shape[:-1], lk)
    nk, nq = _num_tiles(lk), _num_tiles(lq)
    t = _pad_seq(t, -1, _pad_amount(lk), value)
    if t.shape[-2] == 1:
        return t.unflatten(-1, (nk, BLOCK)).unsqueeze(-2)
    t = _pad_seq(t, -2, _pad_amount(lq), value)
    return t.unflatten(-1, (nk, BLOCK)).unflatten(-3, (nq, BLOCK)).transpose(-3, -2)


def _shifted_logits(s: Tensor, blocked: Tensor) -> Tensor:
    """``s`` minus its row max over the valid keys (tile dims 3 and 5), in [-80, 0].

    The max is a constant for autograd (softmax is shift invariant). Masked entries are
    clamped to 0 (they are zeroed after ``exp``); valid entries more than 80 below the max
    are clamped to -80 (weight e^-80 ~ 2e-35, below float resolution next to the max's 1)
    so that ``exp`` never takes its slow denormal path.
    """
    with torch.no_grad():
        low = blocked.to(s.dtype) * torch.finfo(s.dtype).min
        top = (s + low).amax(-1, keepdim=True).amax(3, keepdim=True)
    return (s - top).clamp(-80.0, 0.0)


def _exact_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float,
    bias: Tensor | None,
    gate: Tensor | None,
    dropout: nn.Dropout,
    return_scores: bool,
) -> tuple[Tensor, Tensor | None]:
    """Padding-exact attention from fixed-shape ``BLOCK x BLOCK`` tiles.

    Scores live in the tile layout ``(B, H, nq, nk, BLOCK, BLOCK)``; the softmax max is
    taken over ``(nk, BLOCK)``; sums over keys run inside a tile in one fixed-shape GEMM
    (the denominator as an extra all-ones column of ``v`` when there is neither gate nor
    dropout) and then sequentially over tiles. Returns the output ``(B, H, Lq, Dh)`` and
    the pre-softmax scores ``(B, H, Lq, Lk)`` if requested.
    """
    b, h, lq, dh = q.shape
    lk = k.shape[2]
    nq, nk = _num_tiles(lq), _num_tiles(lk)
    pq, pk = nq * BLOCK - lq, nk * BLOCK - lk
    # explicit copies along the size-1 tile dims: a broadcast (in matmul, or expand)
    # tests nq == 1 and nk == 1, i.e. specialises a compiled graph to lengths <= BLOCK
    # (matmul copies broadcast operands anyway)
    qb = _pad_seq(q * scale, -2, pq).reshape(b, h, nq, 1, BLOCK, dh).repeat(1, 1, 1, nk, 1, 1)
    kb = _pad_seq(k, -2, pk).reshape(b, h, 1, nk, BLOCK, dh).repeat(1, 1, nq, 1, 1, 1)
    s = _tile_bmm(qb, kb, transpose_b=True)  # (B,H,nq,nk,BLOCK,BLOCK)
    if bias is not None:
        s = s + _tiles(bias, lq, lk, 0.0)
    if mask is None:
        blocked = torch.arange(lk + pk, device=q.device) >= lk
        blocked = blocked.view(nk, 1, BLOCK)
    else:
        blocked = _tiles(mask, lq, lk, True)
    e = torch.exp(_shifted_logits(s, blocked)) * (~blocked).to(s.dtype)
    v = _pad_seq(v, -2, pk)
    tiny = torch.finfo(s.dtype).tiny
    if gate is None and not (dropout.training and dropout.p > 0):
        v1 = torch.cat([v, v.new_ones(b, h, lk + pk, 1)], dim=-1)
        v1 = v1.reshape(b, h, 1, nk, BLOCK, dh + 1).repeat(1, 1, nq, 1, 1, 1)
        o = _sum_tiles(_tile_bmm(e, v1), dim=3)
        out = o[..., :dh] / o[..., dh:].clamp_min(tiny)
    else:
        denom = _sum_tiles(exact_sum(e, 5, keepdim=True), 3).unsqueeze(3)
        w = e / denom.clamp_min(tiny)
        if gate is not None:
            w = w * _tiles(gate, lq, lk, 0.0)
        w = dropout(w)
        vb = v.reshape(b, h, 1, nk, BLOCK, dh).repeat(1, 1, nq, 1, 1, 1)
        out = _sum_tiles(_tile_bmm(w, vb), dim=3)
    out = out.reshape(b, h, nq * BLOCK, dh)[:, :, :lq]
    scores = None
    if return_scores:
        scores = s.transpose(3, 4).reshape(b, h, nq * BLOCK, nk * BLOCK)[:, :, :lq, :lk]
    return out, scores


def _tiled_weighted_sum(w: Tensor, v: Tensor) -> Tensor:
    """``w @ v`` from fixed-shape tiles, summing tiles sequentially.

    w ``(B,H,Lq,Lk)``, v ``(B,H,Lk,Dh)`` (any lengths; zero-padded here) -> ``(B,H,Lq,Dh)``.
    """
    lq, lk = w.shape[-2:]
    nq, nk = _num_tiles(lq), _num_tiles(lk)
    w = _pad_seq(_pad_seq(w, -1, nk * BLOCK - lk), -2, nq * BLOCK - lq)
    v = _pad_seq(v, -2, nk * BLOCK - lk)
    b, h, lqp = w.shape[:3]
    dh = v.shape[-1]
    wb = w.reshape(b, h, nq, BLOCK, nk, BLOCK).permute(0, 1, 2, 4, 3, 5)
    vb = v.reshape(b, h, 1, nk, BLOCK, dh).repeat(1, 1, nq, 1, 1, 1)
    out = _sum_tiles(_tile_bmm(wb, vb), dim=3)  # (B,H,nq,BLOCK,Dh)
    return out.reshape(b, h, lqp, dh)[:, :, :lq]


def _finish(
    scores: Tensor,
    v: Tensor,
    mask: Tensor | None,
    gate: Tensor | None,
    dropout: nn.Module,
    exact: bool,
) -> Tensor:
    """Masked softmax over keys, optional post-softmax gate, dropout, weighted sum."""
    w = masked_softmax(scores, mask)
    if gate is not None:
        w = w * gate
    w = dropout(w)
    return _tiled_weighted_sum(w, v) if exact else torch.matmul(w, v)


def _fused_sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float
) -> Tensor:
    """torch's fused SDPA; fully masked rows are unmasked for the kernel and zeroed."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    empty = mask.all(-1, keepdim=True)
    keep = ~mask | empty  # torch's bool convention: True = take part
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(empty, 0.0)


# --------------------------------------------------------------------------------------
# kernels


class ScaledDotProductAttention(nn.Module):
    """Scaled dot-product attention kernel.

    Parameters
    ----------
    num_heads : int
        Number of heads H (kept for the kernel factory interface).
    head_dim : int
        Head dimension Dh.
    dropout : float
        Dropout on the attention probabilities (after softmax and gate). Salt applied it
        to the logits instead; saltx uses the standard placement (and the one of the
        fused kernel).
    scale : float, optional
        Multiplier of ``q @ k^T``; default ``1 / sqrt(head_dim)`` (muP uses
        ``1 / head_dim``).
    fused : bool, optional
        None (default): the padding-exact formulation on CPU in eager mode, fused SDPA on
        other devices, while exporting and under ``torch.compile``. True: always fused
        where possible. False: never fused (the exact tiles, also when compiled; their
        shape arithmetic keeps lengths symbolic for ``torch.compile``).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        scale: float | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
        self.fused = fused
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: Tensor | None = None,
        gate: Tensor | None = None,
        return_scores: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend.

        Parameters
        ----------
        q : Tensor
            ``(B, H, Lq, Dh)``.
        k, v : Tensor
            ``(B, H, Lk, Dh)``.
        mask : Tensor or None
            Bool, True = blocked, broadcastable to ``(B, H, Lq, Lk)``, e.g. from
            :func:`~saltx.models.masking.build_attn_mask`.
        bias : Tensor, optional
            ``(B, H, Lq, Lk)`` added to the scaled logits.
        gate : Tensor, optional
            ``(B, H, Lq, Lk)`` multiplying the post-softmax weights.
        return_scores : bool
            Also return the pre-softmax logits ``(B, H, Lq, Lk)`` (after bias).

        Returns
        -------
        Tensor or tuple
            ``(B, H, Lq, Dh)``; fully masked rows give 0.
        """
        plain = bias is None and gate is None and not return_scores
        exact = exact_mode(q) if self.fused is None else not self.fused
        if plain and not exact:
            p = self.dropout.p if self.training else 0.0
            return _fused_sdpa(q, k, v, mask, p, self.scale)
        if exact:
            out, scores = _exact_attention(
                q, k, v, mask, self.scale, bias, gate, self.dropout, return_scores
            )
            return (out, scores) if return_scores else out
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if bias is not None:
            scores = scores + bias
        out = _finish(scores, v, mask, gate, self.dropout, exact)
        return (out, scores) if return_scores else out


class GATv2Attention(nn.Module):
    """GATv2 attention kernel: ``s_hij = sum_d a_hd * act(q_hid + k_hjd)``.

    No scaling of the logits (as in Salt). Memory: materialises ``(B, H, Lq, Lk, Dh)``.

    Parameters
    ----------
    num_heads, head_dim : int
        H and Dh; must match the attention module that calls the kernel.
    activation : str
        An activation name (:data:`saltx.models.activations.ACTIVATIONS`); Salt's default SiLU.
    dropout : float
        Dropout on the attention probabilities (Salt had none).
    scale : float, optional
        Accepted for interface compatibility and ignored (GATv2 logits are unscaled).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        activation: str = "SiLU",
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.act = get_activation(activation, position_independent=True)
        self.dropout = nn.Dropout(dropout)
        self.a = nn.Parameter(torch.empty(num_heads, head_dim))
        nn.init.xavier_uniform_(self.a)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: Tensor | None = None,
        gate: Tensor | None = None,
        return_scores: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend; same arguments and shapes as :meth:`ScaledDotProductAttention.forward`.

        The bias is added with its ``(B, H, Lq, Lk)`` axes (Salt added an unpermuted
        ``(B, Lq, Lk, H)`` tensor, a latent shape bug).
        """
        if q.shape[1] != self.num_heads or q.shape[-1] != self.head_dim:
            raise ValueError(
                f"GATv2Attention was built for {self.num_heads} heads of dim "
                f"{self.head_dim}; got q of shape {tuple(q.shape)} (B, H, L, Dh). Set "
                "the attention's num_heads/head_dim to the encoder's."
            )
        hidden = self.act(q.unsqueeze(3) + k.unsqueeze(2))  # (B,H,Lq,Lk,Dh)
        scores = (hidden * self.a[None, :, None, None, :]).sum(-1)
        if bias is not None:
            scores = scores + bias
        out = _finish(scores, v, mask, gate, self.dropout, exact_mode(q))
        return (out, scores) if return_scores else out


# --------------------------------------------------------------------------------------
# multi-head attention


class MultiheadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections and optional edges.

    Parameters
    ----------
    embed_dim : int
        Query and output width; divisible by ``num_heads``.
    num_heads : int
        H; the head dimension is ``embed_dim // num_heads``.
    attention : callable, optional
        Kernel factory called as ``attention(num_heads=H, head_dim=Dh)`` (plus
        ``scale=1/Dh`` under muP), e.g. a Hydra ``_partial_`` of
        :class:`GATv2Attention`. None: :class:`ScaledDotProductAttention`.
    kv_dim : int, optional
        Width of the key/value input; default ``embed_dim``.
    edge_embed_dim : int
        Edge feature width De; 0 = no edges. Edges give a per-head logit bias
        (``linear_e``) and a per-head sigmoid gate on the post-softmax weights
        (``linear_g``).
    update_edges : bool
        Also return ``linear_e_out`` (H -> De) of the pre-softmax logits.
    muP : bool
        muP parametrisation: logits scaled by ``1/Dh`` and Salt's muP initialisation
        (zero ``linear_q`` weights; N(0, 1/fan_in) elsewhere; zero biases).
    qkv_init : str
        Initialisation of the q/k/v projections (without muP): ``linear_default``
        (``nn.Linear``'s own: weights and biases uniform in ``±1/sqrt(fan_in)``) or
        ``xavier_packed`` (salt-ml 0.13: the stacked ``(3D, D)`` q/k/v weight drawn as one
        Xavier-uniform matrix, zero biases). Only for self-attention-shaped projections
        (``kv_dim == embed_dim``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attention: Callable[..., nn.Module] | None = None,
        kv_dim: int | None = None,
        edge_embed_dim: int = 0,
        update_edges: bool = False,
        muP: bool = False,
        qkv_init: str = "linear_default",
    ) -> None:
        super().__init__()
        if qkv_init not in QKV_INITS:
            raise ValueError(
                f"model.encoder.qkv_init={qkv_init!r}; expected one of {list(QKV_INITS)}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
        if update_edges and not edge_embed_dim:
            raise ValueError("update_edges=True needs edge_embed_dim > 0.")
        kv_dim = kv_dim or embed_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.edge_embed_dim = edge_embed_dim
        self.update_edges = update_edges
        self.muP = muP
        self.linear_q = nn.Linear(embed_dim, embed_dim)
        self.linear_k = nn.Linear(kv_dim, embed_dim)
        self.linear_v = nn.Linear(kv_dim, embed_dim)
        self.linear_out = nn.Linear(embed_dim, embed_dim)
        if edge_embed_dim:
            self.linear_e = nn.Linear(edge_embed_dim, num_heads)
            self.linear_g = nn.Linear(edge_embed_dim, num_heads)
            if update_edges:
                self.linear_e_out = nn.Linear(num_heads, edge_embed_dim)
        factory = attention if attention is not None else ScaledDotProductAttention
        extra = {"scale": 1.0 / self.head_dim} if muP else {}
        self.attention = factory(num_heads=num_heads, head_dim=self.head_dim, **extra)
        if muP:
            self.reset_parameters_mup()
        elif qkv_init == "xavier_packed":
            self.reset_qkv_xavier_packed()

    @torch.no_grad()
    def reset_qkv_xavier_packed(self) -> None:
        """salt-ml 0.13's initialisation: q/k/v weights as one Xavier-uniform ``(3D, D)``
        matrix (bound ``sqrt(6 / (D + 3D))``), zero q/k/v biases."""
        layers = (self.linear_q, self.linear_k, self.linear_v)
        if len({layer.in_features for layer in layers}) != 1:
            raise ValueError(
                "qkv_init='xavier_packed' needs queries and keys/values of the same width"
            )
        packed = torch.empty(3 * self.embed_dim, self.linear_q.in_features)
        nn.init.xavier_uniform_(packed)
        for layer, weight in zip(layers, packed.chunk(3), strict=True):
            layer.weight.copy_(weight)
            nn.init.zeros_(layer.bias)

    def reset_parameters_mup(self) -> None:
        """Salt's muP initialisation."""
        nn.init.zeros_(self.linear_q.weight)
        nn.init.zeros_(self.linear_q.bias)
        mup_init_(self.linear_k)
        mup_init_(self.linear_v)
        mup_init_(self.linear_out, self.embed_dim)
        if self.edge_embed_dim:
            mup_init_(self.linear_e, self.edge_embed_dim)
            mup_init_(self.linear_g, self.edge_embed_dim)
            if self.update_edges:
                mup_init_(self.linear_e_out, self.num_heads)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        q: Tensor,
        kv: Tensor | None = None,
        q_mask: Tensor | None = None,
        kv_mask: Tensor | None = None,
        edges: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``q`` to ``kv`` (self-attention when ``kv`` is None).

        Parameters
        ----------
        q : Tensor
            ``(B, Lq, embed_dim)``.
        kv : Tensor, optional
            ``(B, Lk, kv_dim)``; default ``q``.
        q_mask, kv_mask : Tensor, optional
            ``(B, Lq)``, ``(B, Lk)`` bool, True = padded. ``kv_mask`` defaults to
            ``q_mask`` for self-attention. Padded queries are not blocked (their outputs
            are finite and meaningless); queries with no valid key get a zero attention
            output (then ``linear_out``'s bias).
        edges : Tensor, optional
            ``(B, Lq, Lk, edge_embed_dim)``.
        attn_mask : Tensor, optional
            A precomputed :func:`~saltx.models.masking.build_attn_mask`; overrides the
            masks above (build it once per batch and share it between layers).

        Returns
        -------
        tuple
            ``(B, Lq, embed_dim)`` output and, with edges and ``update_edges``, the edge
            update ``(B, Lq, Lk, edge_embed_dim)`` (else None).
        """
        if kv is None:
            kv = q
            kv_mask = q_mask if kv_mask is None else kv_mask
        if attn_mask is None:
            attn_mask = build_attn_mask(q_mask, kv_mask)
        qh = self._heads(self.linear_q(q))
        kh = self._heads(self.linear_k(kv))
        vh = self._heads(self.linear_v(kv))
        if edges is None:
            out = self.attention(qh, kh, vh, attn_mask)
            edge_out = None
        else:
            if not self.edge_embed_dim:
                raise ValueError(
                    "Edges were given to a MultiheadAttention built with edge_embed_dim=0."
                )
            bias = rowwise_linear(self.linear_e, edges).permute(0, 3, 1, 2)
            gate = stable_sigmoid(rowwise_linear(self.linear_g, edges)).permute(0, 3, 1, 2)
            if self.update_edges:
                out, scores = self.attention(
                    qh, kh, vh, attn_mask, bias=bias, gate=gate, return_scores=True
                )
                edge_out = self.linear_e_out(scores.permute(0, 2, 3, 1))
            else:
                out = self.attention(qh, kh, vh, attn_mask, bias=bias, gate=gate)
                edge_out = None
        b, lq = q.shape[:2]
        out = out.transpose(1, 2).reshape(b, lq, self.embed_dim)
        return self.linear_out(out), edge_out
