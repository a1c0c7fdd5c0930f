"""Pooling of the encoded constituents into one jet representation ``(B, D)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.attention import rowwise_linear
from saltx.models.masking import (
    build_attn_mask,
    concat_inputs,
    exact_sum,
    masked_softmax,
    zero_pad_valid_first,
)
from saltx.models.transformer import TransformerCrossAttentionLayer, make_norm

__all__ = ["CrossAttentionPooling", "GlobalAttentionPooling"]


def _as_dict(
    x: dict[str, Tensor] | Tensor, masks: dict[str, Tensor] | Tensor | None
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    if isinstance(x, Tensor):
        return {"x": x}, ({"x": masks} if isinstance(masks, Tensor) else None)
    return x, masks if not isinstance(masks, Tensor) else None


class GlobalAttentionPooling(nn.Module):
    """Attention-weighted sum over all constituents of all types.

    ``w = masked_softmax(gate(x))`` over the concatenated sequence, output ``sum_i w_i x_i``.
    A jet without valid constituents (or with zero-length inputs) gives 0.

    Parameters
    ----------
    input_size : int
        Constituent width D.
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.gate = nn.Linear(input_size, 1)

    @property
    def out_size(self) -> int:
        """Width of the pooled representation."""
        return self.input_size

    def forward(
        self,
        x: dict[str, Tensor] | Tensor,
        masks: dict[str, Tensor] | Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Pool.

        Parameters
        ----------
        x : dict[str, Tensor]
            ``{name: (B, N_name, D)}`` (or one ``(B, N, D)`` tensor).
        masks : dict[str, Tensor], optional
            ``{name: (B, N_name)}`` bool, True = padded (or one ``(B, N)`` tensor).
        context : Tensor, optional
            Ignored (accepted so that all poolings share one call signature).

        Returns
        -------
        Tensor
            ``(B, D)``.
        """
        x, masks = _as_dict(x, masks)
        h, mask, _ = concat_inputs(x, masks)
        if mask is None:
            mask = h.new_zeros(h.shape[:2], dtype=torch.bool)
        # One leading always-masked zero slot keeps zero-length inputs well defined
        # (also in ONNX) without changing any sum.
        mask = F.pad(mask, (1, 0), value=True)
        h = F.pad(h, (0, 0, 1, 0)).masked_fill(mask.unsqueeze(-1), 0.0)
        logits = rowwise_linear(self.gate, h).squeeze(-1)  # (B, 1+N)
        weights = masked_softmax(logits, mask, dim=1)
        return exact_sum(weights.unsqueeze(-1) * h, dim=1)


class CrossAttentionPooling(nn.Module):
    """A learnable class token attends to all constituents (pre-LN cross-attention).

    Each layer: ``t = t + MHA(LN1(t), LN0(x), mask)``; ``t = t + FFN(LN2(t), context)``;
    then a final LayerNorm. Salt's dict variant summed one attention per type; here the
    token attends to the concatenation of all types.

    Parameters
    ----------
    input_size : int
        Constituent width D.
    num_layers, num_heads : int
        Cross-attention layers and heads.
    attention : callable, optional
        Attention kernel factory (see :class:`~saltx.models.attention.MultiheadAttention`).
    hidden_dim_scale : int
        FFN hidden width = ``hidden_dim_scale * D``.
    activation : str
        FFN activation.
    dropout : float
        FFN dropout (and attention dropout of the default kernel).
    context_dim : int
        Width of a per-jet context for the FFNs.
    norm_affine : bool
        LayerNorms with (True) or without learned scale and shift.
    """

    def __init__(
        self,
        input_size: int,
        num_layers: int = 1,
        num_heads: int = 4,
        attention: Callable[..., nn.Module] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        dropout: float = 0.0,
        context_dim: int = 0,
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.class_token = nn.Parameter(torch.randn(1, 1, input_size))
        self.layers = nn.ModuleList(
            TransformerCrossAttentionLayer(
                input_size,
                num_heads,
                attention=attention,
                hidden_dim_scale=hidden_dim_scale,
                activation=activation,
                dropout=dropout,
                context_dim=context_dim,
                norm_affine=norm_affine,
            )
            for _ in range(num_layers)
        )
        self.final_norm = make_norm(input_size, norm_affine)

    @property
    def out_size(self) -> int:
        """Width of the pooled representation."""
        return self.input_size

    def forward(
        self,
        x: dict[str, Tensor] | Tensor,
        masks: dict[str, Tensor] | Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """x ``{name: (B, N_name, D)}``, masks ``{name: (B, N_name)}`` -> ``(B, D)``.

        A jet without valid constituents gets a zero attention output, so its result
        is finite and depends only on the parameters (and context).
        """
        x, masks = _as_dict(x, masks)
        h, mask, sizes = concat_inputs(x, masks)
        if mask is not None:
            h, mask, _, _ = zero_pad_valid_first(h, mask, len(sizes))
        attn_mask = build_attn_mask(None, mask)
        token = self.class_token.expand(h.shape[0], 1, self.input_size)
        for layer in self.layers:
            token = layer(token, h, kv_mask=mask, context=context, attn_mask=attn_mask)
        return self.final_norm(token).squeeze(1)
