"""Encoder with one self-attention stack per constituent type and cross-attention
between types (Salt's ``TransformerCrossAttentionEncoder``, with its layers chained)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

from torch import Tensor, nn

from saltx.models.masking import build_attn_mask
from saltx.models.transformer import (
    TransformerCrossAttentionLayer,
    TransformerEncoderLayer,
    make_norm,
    make_readout,
)

__all__ = ["TransformerCrossAttentionEncoder"]


class TransformerCrossAttentionEncoder(nn.Module):
    """Per-type self-attention stacks, linked by cross-attention between type pairs.

    Layer ``i``: every type ``t`` runs its self-attention layer ``SA_t[i]``; then, on
    cross-attention layers, every unordered pair ``(a, b)`` runs its cross-attention
    layer in both directions (``a`` attends to ``b`` and ``b`` to ``a``, with shared
    weights, as in Salt), all reading the states after the self-attention step; each
    type adds the residual updates from all its partners. Then a final LayerNorm (shared
    by all types) and the optional output projection.

    Deliberate difference from Salt: layers are **sequential**, layer ``i`` reads the
    representations updated by layer ``i - 1`` (Salt's every layer read the original
    inputs and summed the results). Cross-attention runs on every layer with
    ``ca_every_layer``, else on the first and the last layer (one layer each; with a
    single layer, one).

    Parameters
    ----------
    input_names : sequence of str
        The constituent types, e.g. ``["tracks", "electrons"]``.
    embed_dim, num_layers, num_heads, attention, hidden_dim_scale, activation, dropout,
    context_dim, out_dim, muP
        As for :class:`~saltx.models.transformer.TransformerEncoder`.
    ca_every_layer : bool
        Cross-attention on every layer instead of the first and last only.
    norm_affine : bool
        LayerNorms with (True) or without learned scale and shift.
    """

    def __init__(
        self,
        input_names: Sequence[str],
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        attention: Callable[..., nn.Module] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        out_dim: int = 0,
        ca_every_layer: bool = False,
        muP: bool = False,
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        names = list(input_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"input_names must be non-empty and unique; got {names}.")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}.")
        self.input_names = names
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.num_layers = num_layers
        self.ca_every_layer = ca_every_layer
        common = {
            "attention": attention,
            "hidden_dim_scale": hidden_dim_scale,
            "activation": activation,
            "dropout": dropout,
            "context_dim": context_dim,
            "muP": muP,
            "norm_affine": norm_affine,
        }
        self.self_attention = nn.ModuleDict(
            {
                name: nn.ModuleList(
                    TransformerEncoderLayer(embed_dim, num_heads, **common)
                    for _ in range(num_layers)
                )
                for name in names
            }
        )
        self.pairs = list(combinations(names, 2))
        num_ca = num_layers if ca_every_layer else min(num_layers, 2)
        self.cross_attention = nn.ModuleDict(
            {
                self._pair_key(a, b): nn.ModuleList(
                    TransformerCrossAttentionLayer(embed_dim, num_heads, **common)
                    for _ in range(num_ca)
                )
                for a, b in self.pairs
            }
        )
        self.final_norm = make_norm(embed_dim, norm_affine)
        self.final_linear = make_readout(embed_dim, out_dim, muP)

    @staticmethod
    def _pair_key(a: str, b: str) -> str:
        return f"{a}__{b}"

    @property
    def out_size(self) -> int:
        """Width of the encoder output."""
        return self.out_dim or self.embed_dim

    def _ca_index(self, i: int) -> int | None:
        """Which cross-attention layer runs on encoder layer ``i`` (None: none)."""
        if self.ca_every_layer:
            return i
        if i == 0:
            return 0
        if i == self.num_layers - 1:
            return 1
        return None

    def forward(
        self,
        x: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        edges: Tensor | None = None,
        context: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """x ``{name: (B, N_name, D)}``, masks ``{name: (B, N_name)}`` (True = padded, a
        missing key = no padding), context ``(B, C)`` -> ``{name: (B, N_name, out_size)}``.
        """
        if edges is not None:
            raise NotImplementedError(
                "TransformerCrossAttentionEncoder does not support edge features; use "
                "TransformerEncoder for models with edges."
            )
        if set(x) != set(self.input_names):
            raise ValueError(
                f"TransformerCrossAttentionEncoder was built for inputs {self.input_names}; "
                f"got {list(x)}."
            )
        masks = masks or {}
        h: dict[str, Tensor] = {}
        attn_masks: dict[str, Tensor | None] = {}
        for name in self.input_names:
            mask = masks.get(name)
            h[name] = x[name] if mask is None else x[name].masked_fill(mask.unsqueeze(-1), 0.0)
            attn_masks[name] = build_attn_mask(None, mask)
        for i in range(self.num_layers):
            for name in self.input_names:
                h[name], _ = self.self_attention[name][i](
                    h[name], masks.get(name), context=context, attn_mask=attn_masks[name]
                )
            j = self._ca_index(i)
            if j is None or not self.pairs:
                continue
            state = dict(h)
            for a, b in self.pairs:
                layer = self.cross_attention[self._pair_key(a, b)][j]
                h[a] = h[a] + layer.update(
                    state[a], state[b], masks.get(b), context, attn_mask=attn_masks[b]
                )
                h[b] = h[b] + layer.update(
                    state[b], state[a], masks.get(a), context, attn_mask=attn_masks[a]
                )
        out = {}
        for name in x:
            rep = self.final_norm(h[name])
            out[name] = rep if self.final_linear is None else self.final_linear(rep)
        return out
