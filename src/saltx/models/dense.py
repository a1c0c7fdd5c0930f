"""A configurable multi-layer perceptron with an optional prepended context (Salt's ``Dense``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from saltx.models.activations import get_activation


def mup_init_(layer: nn.Linear, fan: int | None = None) -> None:
    """muP initialisation of a Linear layer in place: weights from N(0, 1/fan), zero bias.

    Parameters
    ----------
    layer
        The layer; its weight is ``(out, in)``.
    fan
        The fan-in that sets the variance; default ``layer.in_features``.
    """
    nn.init.normal_(layer.weight, std=(layer.in_features if fan is None else fan) ** -0.5)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def attach_context(x: Tensor, context: Tensor) -> Tensor:
    """Prepend a per-jet context to every element of ``x`` (Salt's feature order).

    Parameters
    ----------
    x
        ``(B, F)``, ``(B, N, F)`` or ``(B, N, M, F)`` features.
    context
        ``(B, C)`` per-jet context.

    Returns
    -------
    Tensor
        ``(..., C + F)``: ``cat([context, x], -1)`` with the context broadcast over the
        middle dimensions of ``x``.
    """
    if context.dim() != 2 or context.shape[0] != x.shape[0]:
        raise ValueError(
            f"attach_context: expected a (B, C) context with B={x.shape[0]}, "
            f"got shape {tuple(context.shape)}"
        )
    shape = (context.shape[0],) + (1,) * (x.dim() - 2) + (context.shape[1],)
    ctx = context.view(shape).expand(*x.shape[:-1], context.shape[1])
    return torch.cat([ctx.to(x.dtype), x], dim=-1)


def run_layers(layers: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Apply ``layers`` in order; a single-output Linear is computed as a row-wise dot product.

    BLAS matrix-vector kernels (``out_features == 1``) round differently depending on the
    number of rows, so a per-constituent score (vertexing, constituent regression) would
    change in its last bit when padded constituents are appended. ``(x * w).sum(-1) + b``
    is the same map and gives every row the same bits whatever the batch shape.
    """
    for layer in layers:
        if isinstance(layer, nn.Linear) and layer.out_features == 1:
            w = layer.weight[0].to(x.dtype)
            x = (x * w).sum(-1, keepdim=True)
            if layer.bias is not None:
                x = x + layer.bias.to(x.dtype)
        else:
            x = layer(x)
    return x


class Dense(nn.Module):
    """Feed-forward network ``[input_size + context_size] -> hidden_layers -> output_size``.

    Each linear layer is preceded by an optional ``norm_layer`` and ``Dropout`` and
    followed by ``activation``, except the last, which is followed by
    ``final_activation`` if given (logits otherwise). With ``context_size > 0`` the
    context is **prepended** to the input features, as in Salt.

    Parameters
    ----------
    input_size
        Number of input features (without the context).
    output_size
        Number of outputs; defaults to ``input_size``.
    hidden_layers
        Widths of the hidden layers; ``None`` gives ``[input_size * hidden_dim_scale]``.
    hidden_dim_scale
        Hidden width multiplier used when ``hidden_layers`` is None.
    activation
        Name of a ``torch.nn`` activation class (:data:`saltx.models.activations.ACTIVATIONS`).
    final_activation
        Name of a ``torch.nn`` activation applied to the output, or None.
    norm_layer
        Name of a ``torch.nn`` normalisation class (e.g. ``"LayerNorm"``) applied before
        every linear layer, or None.
    dropout
        Dropout probability before every linear layer.
    context_size
        Size of the context prepended to the input (0 = no context).
    muP
        Use the muP initialisation (weights from N(0, 1/sqrt(fan_in)), zero biases).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        hidden_layers: list[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        final_activation: str | None = None,
        norm_layer: str | None = None,
        dropout: float = 0.0,
        context_size: int = 0,
        muP: bool = False,
    ) -> None:
        super().__init__()
        if output_size is None:
            output_size = input_size
        if hidden_layers is None:
            hidden_layers = [input_size * hidden_dim_scale]
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.context_size = int(context_size)
        self.hidden_layers = [int(h) for h in hidden_layers]
        self.norm_layer = norm_layer
        self.dropout = float(dropout)
        self.muP = muP

        nodes = [self.input_size + self.context_size, *self.hidden_layers, self.output_size]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(nodes)):
            if norm_layer is not None:
                norm_cls = getattr(nn, norm_layer, None)
                if norm_cls is None:
                    raise ValueError(f"Unknown norm_layer {norm_layer!r}: not a torch.nn class")
                layers.append(norm_cls(n_in))
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            layers.append(nn.Linear(n_in, n_out))
            last = i == len(nodes) - 2
            act = final_activation if last else activation
            if act is not None:
                layers.append(get_activation(act, position_independent=False))
        self.net = nn.Sequential(*layers)
        if muP:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """muP initialisation: Linear weights from N(0, 1/sqrt(fan_in)), biases zero."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                mup_init_(module)

    @property
    def first_linear_index(self) -> int:
        """Index in ``self.net`` of the first ``nn.Linear``."""
        for i, module in enumerate(self.net):
            if isinstance(module, nn.Linear):
                return i
        raise RuntimeError("Dense has no linear layer")  # pragma: no cover

    def forward_packed(self, x: Tensor, mask: Tensor, context: Tensor | None = None) -> Tensor:
        """:meth:`forward` on the valid constituents only; padded slots get zeros.

        The valid rows of ``x`` are packed into ``(T, F)`` (the per-jet context gathered per
        row), the network runs on those ``T`` rows and the outputs are scattered back.
        Every layer works row by row (linear, activation, dropout, layer norm), so each
        valid row gets the value :meth:`forward` would give it, while the padded slots cost
        nothing.

        Parameters
        ----------
        x
            ``(B, N, input_size)`` constituent features.
        mask
            ``(B, N)`` bool, True = padded.
        context
            ``(B, context_size)``; required when ``context_size > 0``.

        Returns
        -------
        Tensor
            ``(B, N, output_size)``, zero in the padded slots.
        """
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"forward_packed needs (B, N, F) features and a (B, N) mask; got "
                f"{tuple(x.shape)} and {tuple(mask.shape)}"
            )
        b, n = mask.shape
        tok = (~mask).reshape(-1).nonzero().squeeze(1)  # flat slots of the valid rows
        xv = x.reshape(b * n, x.shape[-1]).index_select(0, tok)
        if self.context_size and context is not None:  # the per-jet context of each row
            context = context.index_select(0, torch.div(tok, n, rounding_mode="floor"))
        out = self.forward(xv, context)
        full = out.new_zeros(b * n, out.shape[-1])
        return full.index_copy(0, tok, out).view(b, n, out.shape[-1])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Apply the network.

        Parameters
        ----------
        x
            ``(..., input_size)`` features; leading dimensions start with the batch.
        context
            ``(B, context_size)``; required when ``context_size > 0``.

        Returns
        -------
        Tensor
            ``(..., output_size)``.
        """
        if self.context_size:
            if context is None:
                raise ValueError(
                    f"Dense was built with context_size={self.context_size} but got no context"
                )
            x = attach_context(x, context)
        return run_layers(self.net, x)
