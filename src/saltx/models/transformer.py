"""Pre-LN transformer encoder (GN1/GN2) over a dict of constituent types, with edges."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.activations import get_activation
from saltx.models.attention import MultiheadAttention, ScaledDotProductAttention
from saltx.models.dense import mup_init_
from saltx.models.masking import (
    build_attn_mask,
    concat_inputs,
    gather_seq,
    zero_pad_valid_first,
)

__all__ = [
    "FINAL_NORMS",
    "REGISTERS",
    "FeedForward",
    "TransformerCrossAttentionLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "make_norm",
    "make_readout",
]

REGISTERS = "REGISTERS"
"""Key of the register tokens in the encoder's output dict (pooled, never a task input)."""

FINAL_NORMS = ("before_out_proj", "after_out_proj", "none")
"""Placements of the encoder's final LayerNorm relative to the output projection."""


def make_norm(dim: int, affine: bool = True) -> nn.LayerNorm:
    """A LayerNorm over the last ``dim`` features, with or without learned scale and shift.

    ``affine=False`` is salt-ml 0.13's ``salt.models.layernorm.LayerNorm`` (no parameters).
    """
    return nn.LayerNorm(dim, elementwise_affine=affine)


class FeedForward(nn.Module):
    """Per-token MLP ``Linear -> activation -> dropout -> Linear`` with optional context.

    Parameters
    ----------
    dim : int
        Input and output width D.
    hidden_dim : int
        Hidden width.
    activation : str
        ``torch.nn`` activation name.
    dropout : float
        Dropout after the activation.
    context_dim : int
        Width C of a per-jet context; ``fc1`` then takes ``[context, x]`` (context first,
        as Salt's ``attach_context``), computed without materialising the concatenation.
    muP : bool
        Weights from N(0, 1/fan_in), zero biases.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        muP: bool = False,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.fc1 = nn.Linear(context_dim + dim, hidden_dim)
        self.act = get_activation(activation, position_independent=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        if muP:
            for fc in (self.fc1, self.fc2):
                mup_init_(fc)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x ``(B, L, D)``, context ``(B, C)`` or ``(B, L, C)`` -> ``(B, L, D)``."""
        if self.context_dim:
            if context is None:
                raise ValueError(
                    f"This feed-forward block was built with context_dim={self.context_dim} "
                    "but no context was given."
                )
            if context.shape[-1] != self.context_dim:
                raise ValueError(
                    f"Context has width {context.shape[-1]}; expected {self.context_dim}."
                )
            w = self.fc1.weight
            h = F.linear(x, w[:, self.context_dim :], self.fc1.bias)
            ctx = F.linear(context, w[:, : self.context_dim])
            h = h + (ctx.unsqueeze(1) if ctx.dim() == 2 else ctx)
        else:
            h = self.fc1(x)
        return self.fc2(self.dropout(self.act(h)))


def _attention_factory(
    attention: Callable[..., nn.Module] | None, dropout: float
) -> Callable[..., nn.Module]:
    """The given kernel factory, or SDPA carrying the encoder's dropout."""
    if attention is not None:
        return attention
    return partial(ScaledDotProductAttention, dropout=dropout)


def make_readout(embed_dim: int, out_dim: int, muP: bool) -> nn.Module | None:
    """The optional final projection: Linear, or a zero-initialised MuReadout under muP."""
    if muP and not out_dim:
        raise ValueError(
            "muP needs out_dim > 0: the encoder's final projection is the MuReadout that "
            "closes the muP-scaled part of the network."
        )
    if not out_dim:
        return None
    if muP:
        from mup import MuReadout

        return MuReadout(embed_dim, out_dim, readout_zero_init=True)
    return nn.Linear(embed_dim, out_dim)


class TransformerEncoderLayer(nn.Module):
    """Pre-LN self-attention layer.

    ``x = x + MHA(LN1(x), mask, edges=LNe(edge_x))``; ``x = x + FFN(LN2(x), context)``;
    with ``update_edges``: ``edge_x = edge_x + LNe_out(edge update)``.

    Parameters are those of :class:`TransformerEncoder`; the FFN hidden width is
    ``hidden_dim_scale * embed_dim``; ``norm_affine=False`` gives LayerNorms without
    learned scale and shift.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attention: Callable[..., nn.Module] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        edge_embed_dim: int = 0,
        update_edges: bool = False,
        muP: bool = False,
        norm_affine: bool = True,
        qkv_init: str = "linear_default",
    ) -> None:
        super().__init__()
        self.update_edges = update_edges
        self.norm1 = make_norm(embed_dim, norm_affine)
        self.attn = MultiheadAttention(
            embed_dim,
            num_heads,
            attention=_attention_factory(attention, dropout),
            edge_embed_dim=edge_embed_dim,
            update_edges=update_edges,
            muP=muP,
            qkv_init=qkv_init,
        )
        self.norm2 = make_norm(embed_dim, norm_affine)
        self.ffn = FeedForward(
            embed_dim, hidden_dim_scale * embed_dim, activation, dropout, context_dim, muP
        )
        if edge_embed_dim:
            self.norm_e = make_norm(edge_embed_dim, norm_affine)
            if update_edges:
                self.norm_e_out = make_norm(edge_embed_dim, norm_affine)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        edges: Tensor | None = None,
        context: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x ``(B, L, D)``, mask ``(B, L)``, edges ``(B, L, L, De)`` -> ``(x, edges)``."""
        e = self.norm_e(edges) if edges is not None else None
        a, edge_update = self.attn(self.norm1(x), q_mask=mask, edges=e, attn_mask=attn_mask)
        x = x + a
        if edge_update is not None:
            edges = edges + self.norm_e_out(edge_update)
        x = x + self.ffn(self.norm2(x), context)
        return x, edges


class TransformerCrossAttentionLayer(nn.Module):
    """Pre-LN cross-attention layer: ``q`` attends to ``kv``.

    ``q = q + MHA(LN1(q), LN0(kv), kv_mask)``; ``q = q + FFN(LN2(q), context)``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attention: Callable[..., nn.Module] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        muP: bool = False,
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        self.norm0 = make_norm(embed_dim, norm_affine)
        self.norm1 = make_norm(embed_dim, norm_affine)
        self.attn = MultiheadAttention(
            embed_dim, num_heads, attention=_attention_factory(attention, dropout), muP=muP
        )
        self.norm2 = make_norm(embed_dim, norm_affine)
        self.ffn = FeedForward(
            embed_dim, hidden_dim_scale * embed_dim, activation, dropout, context_dim, muP
        )

    def update(
        self,
        q: Tensor,
        kv: Tensor,
        kv_mask: Tensor | None = None,
        context: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """The residual update ``forward(q, ...) - q``, ``(B, Lq, D)``."""
        a, _ = self.attn(self.norm1(q), self.norm0(kv), kv_mask=kv_mask, attn_mask=attn_mask)
        return a + self.ffn(self.norm2(q + a), context)

    def forward(
        self,
        q: Tensor,
        kv: Tensor,
        kv_mask: Tensor | None = None,
        context: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """q ``(B, Lq, D)``, kv ``(B, Lk, D)``, kv_mask ``(B, Lk)`` -> ``(B, Lq, D)``."""
        a, _ = self.attn(self.norm1(q), self.norm0(kv), kv_mask=kv_mask, attn_mask=attn_mask)
        q = q + a
        return q + self.ffn(self.norm2(q), context)


class TransformerEncoder(nn.Module):
    """Stack of pre-LN self-attention layers over all constituent types together.

    Parameters
    ----------
    embed_dim : int
        Width D of the (already embedded) constituents.
    num_layers : int
        Number of :class:`TransformerEncoderLayer`.
    num_heads : int
        Attention heads.
    attention : callable, optional
        Kernel factory (see :class:`~saltx.models.attention.MultiheadAttention`); None
        = scaled dot-product attention with ``dropout``.
    hidden_dim_scale : int
        FFN hidden width = ``hidden_dim_scale * embed_dim``.
    activation : str
        FFN activation (``torch.nn`` name).
    dropout : float
        FFN dropout, and attention dropout of the default kernel.
    context_dim : int
        Width of a per-jet context given to every FFN (prepended to its input).
    out_dim : int
        If > 0, a final Linear ``embed_dim -> out_dim`` (a zero-initialised
        ``mup.MuReadout`` under muP, which requires it).
    edge_embed_dim : int
        Width De of edge features; 0 = no edges.
    update_edges : bool
        Update the edge features in every layer but the last.
    muP : bool
        muP parametrisation of the attention, FFNs and readout.
    num_registers : int
        Learned register tokens (salt-ml 0.13's ``num_registers``; 0 = none). They join
        the sequence of every jet (attending and attended to like a valid constituent),
        so a jet without valid constituents still has a key to attend to. Their outputs
        are returned under :data:`REGISTERS` (``(B, R, out_size)``): the pooling sums
        them with the constituents, constituent tasks never see them.
    norm_affine : bool
        LayerNorms with learned scale and shift (True) or without (salt-ml 0.13's
        non-affine ``LayerNorm``).
    final_norm : str
        Where the final LayerNorm sits (:data:`FINAL_NORMS`): ``before_out_proj``
        (LayerNorm on ``embed_dim``, then the projection; the seed-era GN2),
        ``after_out_proj`` (projection, then LayerNorm on ``out_size``; salt-ml 0.13) or
        ``none``.
    qkv_init : str
        Initialisation of the attention's q/k/v projections: ``linear_default`` or
        ``xavier_packed`` (salt-ml 0.13); see
        :class:`~saltx.models.attention.MultiheadAttention`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        attention: Callable[..., nn.Module] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        out_dim: int = 0,
        edge_embed_dim: int = 0,
        update_edges: bool = False,
        muP: bool = False,
        num_registers: int = 0,
        norm_affine: bool = True,
        final_norm: str = "before_out_proj",
        qkv_init: str = "linear_default",
    ) -> None:
        super().__init__()
        if final_norm not in FINAL_NORMS:
            raise ValueError(
                f"model.encoder.final_norm={final_norm!r}; expected one of {list(FINAL_NORMS)}"
            )
        if int(num_registers) < 0:
            raise ValueError(f"model.encoder.num_registers={num_registers} must be >= 0")
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.edge_embed_dim = edge_embed_dim
        self.num_registers = int(num_registers)
        self.final_norm_position = final_norm
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                embed_dim,
                num_heads,
                attention=attention,
                hidden_dim_scale=hidden_dim_scale,
                activation=activation,
                dropout=dropout,
                context_dim=context_dim,
                edge_embed_dim=edge_embed_dim,
                update_edges=update_edges and i < num_layers - 1,
                muP=muP,
                norm_affine=norm_affine,
                qkv_init=qkv_init,
            )
            for i in range(num_layers)
        )
        norm_dim = embed_dim if final_norm == "before_out_proj" else self.out_size
        self.final_norm = None if final_norm == "none" else make_norm(norm_dim, norm_affine)
        self.final_linear = make_readout(embed_dim, out_dim, muP)
        self.register_parameter("registers", None)
        if self.num_registers:
            # small random start, as salt-ml 0.13 (normal, std 1e-4)
            self.registers = nn.Parameter(torch.randn(self.num_registers, embed_dim) * 1e-4)

    @property
    def out_size(self) -> int:
        """Width of the encoder output."""
        return self.out_dim or self.embed_dim

    def _edges(self, edges: Tensor, sizes: list[int]) -> Tensor:
        """Edges over the concatenated sequence ``(B, L, L, De)``.

        Edges may cover the whole concatenated sequence, or only the first input type
        (the usual case: EDGE belongs to the tracks); then pairs involving the other
        types get zero edge features.
        """
        if not self.edge_embed_dim:
            raise ValueError("Edges were given to a TransformerEncoder with edge_embed_dim=0.")
        total = sum(sizes)
        n = edges.shape[1]
        if edges.dim() != 4 or edges.shape[2] != n or edges.shape[3] != self.edge_embed_dim:
            raise ValueError(
                f"Edges must have shape (B, N, N, {self.edge_embed_dim}); got {tuple(edges.shape)}."
            )
        if n == total:
            return edges
        if n == sizes[0]:
            return F.pad(edges, (0, 0, 0, total - n, 0, total - n))
        raise ValueError(
            f"Edges cover {n} constituents; expected {total} (all inputs, sizes {sizes}) "
            f"or {sizes[0]} (the first input)."
        )

    def _add_registers(
        self, h: Tensor, mask: Tensor | None, edges: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Put the register tokens in front of the sequence (never padded; zero edges).

        In front rather than at the end (salt-ml 0.13): attention does not depend on the
        order of the keys, and padded slots then stay at the end of the sequence, which
        keeps the outputs bit-identical whatever padding is appended.
        """
        r = self.num_registers
        reg = self.registers.to(h.dtype).unsqueeze(0).expand(h.shape[0], r, -1)
        h = torch.cat([reg, h], dim=1)
        if mask is not None:
            mask = F.pad(mask, (r, 0), value=False)
        if edges is not None:
            edges = F.pad(edges, (0, 0, r, 0, r, 0))
        return h, mask, edges

    def _output(self, h: Tensor) -> Tensor:
        """Final LayerNorm and output projection, in the configured order."""
        if self.final_norm_position == "before_out_proj" and self.final_norm is not None:
            h = self.final_norm(h)
        if self.final_linear is not None:
            h = self.final_linear(h)
        if self.final_norm_position == "after_out_proj":
            h = self.final_norm(h)
        return h

    def forward(
        self,
        x: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        edges: Tensor | None = None,
        context: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Encode.

        Parameters
        ----------
        x : dict[str, Tensor]
            ``{name: (B, N_name, embed_dim)}``, concatenated along the sequence in dict
            order.
        masks : dict[str, Tensor], optional
            ``{name: (B, N_name)}`` bool, True = padded; a missing key = no padding.
            Padded slots (and edges of pairs with a padded constituent) are zeroed on
            entry, so their content never matters.
        edges : Tensor, optional
            ``(B, N, N, edge_embed_dim)`` embedded edge features (see :meth:`_edges`).
        context : Tensor, optional
            ``(B, context_dim)``.

        Returns
        -------
        dict[str, Tensor]
            ``{name: (B, N_name, out_size)}``, same keys and order as ``x``; with
            registers also ``REGISTERS: (B, num_registers, out_size)`` (last).
        """
        h, mask, sizes = concat_inputs(x, masks)
        if edges is not None:
            edges = self._edges(edges, sizes)
        if self.num_registers:
            h, mask, edges = self._add_registers(h, mask, edges)
        pos = None
        if mask is not None:
            # contiguous: a compiled block would otherwise specialise on the mask's
            # strides (a trimmed slice of a longer mask, or not)
            mask = mask.contiguous()
            if edges is not None:
                pairs = mask.unsqueeze(2) | mask.unsqueeze(1)
                edges = edges.masked_fill(pairs.unsqueeze(-1), 0.0)
            h, mask, order, pos = zero_pad_valid_first(h, mask, len(sizes))
            if order is not None and edges is not None:
                edges = gather_seq(gather_seq(edges, order, 1), order, 2)
        attn_mask = build_attn_mask(None, mask)
        for layer in self.layers:
            h, edges = layer(h, mask, edges=edges, context=context, attn_mask=attn_mask)
        h = self._output(h)
        if pos is not None:
            h = gather_seq(h, pos)
        out: dict[str, Tensor] = {}
        if self.num_registers:
            registers, h = h[:, : self.num_registers], h[:, self.num_registers :]
        if len(sizes) == 1:
            out[next(iter(x))] = h
        else:
            out.update(zip(x, torch.split(h, sizes, dim=1), strict=True))
        if self.num_registers:
            out[REGISTERS] = registers
        return out
