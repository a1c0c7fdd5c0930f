"""Pre-LN transformer encoder (GN1/GN2) over a dict of constituent types, with edges."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.attention import MultiheadAttention, ScaledDotProductAttention, get_activation
from saltx.models.masking import (
    build_attn_mask,
    compact_valid,
    concat_inputs,
    exact_mode,
    gather_seq,
)

__all__ = [
    "FeedForward",
    "TransformerCrossAttentionLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "make_readout",
]


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
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        if muP:
            for fc in (self.fc1, self.fc2):
                nn.init.normal_(fc.weight, std=fc.in_features**-0.5)
                nn.init.zeros_(fc.bias)

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
    ``hidden_dim_scale * embed_dim``.
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
    ) -> None:
        super().__init__()
        self.update_edges = update_edges
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiheadAttention(
            embed_dim,
            num_heads,
            attention=_attention_factory(attention, dropout),
            edge_embed_dim=edge_embed_dim,
            update_edges=update_edges,
            muP=muP,
        )
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(
            embed_dim, hidden_dim_scale * embed_dim, activation, dropout, context_dim, muP
        )
        if edge_embed_dim:
            self.norm_e = nn.LayerNorm(edge_embed_dim)
            if update_edges:
                self.norm_e_out = nn.LayerNorm(edge_embed_dim)

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
    ) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiheadAttention(
            embed_dim, num_heads, attention=_attention_factory(attention, dropout), muP=muP
        )
        self.norm2 = nn.LayerNorm(embed_dim)
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
        If > 0, a final Linear ``embed_dim -> out_dim`` after the final LayerNorm (a
        zero-initialised ``mup.MuReadout`` under muP, which requires it).
    edge_embed_dim : int
        Width De of edge features; 0 = no edges.
    update_edges : bool
        Update the edge features in every layer but the last.
    muP : bool
        muP parametrisation of the attention, FFNs and readout.
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
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.edge_embed_dim = edge_embed_dim
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
            )
            for i in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim)
        self.final_linear = make_readout(embed_dim, out_dim, muP)

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
            ``{name: (B, N_name, out_size)}``, same keys and order as ``x``.
        """
        h, mask, sizes = concat_inputs(x, masks)
        if edges is not None:
            edges = self._edges(edges, sizes)
        pos = None
        if mask is not None:
            # contiguous: a compiled block would otherwise specialise on the mask's
            # strides (a trimmed slice of a longer mask, or not)
            mask = mask.contiguous()
            h = h.masked_fill(mask.unsqueeze(-1), 0.0)
            if edges is not None:
                pairs = mask.unsqueeze(2) | mask.unsqueeze(1)
                edges = edges.masked_fill(pairs.unsqueeze(-1), 0.0)
            if len(sizes) > 1 and exact_mode(h):
                # valid constituents first, so that padding never splits them (bitwise
                # padding invariance of the tiled attention; see masking.compact_valid)
                order, pos = compact_valid(mask)
                h, mask = gather_seq(h, order), gather_seq(mask, order)
                if edges is not None:
                    edges = gather_seq(gather_seq(edges, order, 1), order, 2)
        attn_mask = build_attn_mask(None, mask)
        for layer in self.layers:
            h, edges = layer(h, mask, edges=edges, context=context, attn_mask=attn_mask)
        h = self.final_norm(h)
        if self.final_linear is not None:
            h = self.final_linear(h)
        if pos is not None:
            h = gather_seq(h, pos)
        if len(sizes) == 1:
            return {next(iter(x)): h}
        return dict(zip(x, torch.split(h, sizes, dim=1), strict=True))
