"""Track-pair vertexing: which constituent pairs share a truth vertex (Salt §2.12, §2.13).

Predictions are dense ``(B, N, N)`` pair logits (static shape, so torch.compile and ONNX
work). The head is Salt's ``Dense`` on ``[context, x_i, x_j]``; its first linear layer is
evaluated as ``W_c·c + W_i·x_i + W_j·x_j + b`` (exactly the same map), computed per node
and broadcast-added, so the ``(B, N, N, C + 2D)`` input is never built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from saltx.models.dense import run_layers
from saltx.models.eager import is_eager
from saltx.models.pair_components import get_node_assignment
from saltx.models.tasks import TaskBase, _batch_part, _field, _task_preds, stage_has_labels

# ftagTruthOriginLabel values: 1 Fake; 3 FromB, 4 FromBC, 5 FromC (heavy flavour)
FAKE_ORIGIN = 1
HF_ORIGINS = (3, 4, 5)
# logit written into invalid pairs (padded tracks, diagonal); sigmoid ~ 0, finite in fp16
INVALID_PAIR_LOGIT = -1.0e4


def valid_pairs(mask: Tensor) -> Tensor:
    """``(B, N, N)`` bool: both tracks valid and ``i != j``.

    Parameters
    ----------
    mask
        ``(B, N)`` bool, True = padded.
    """
    valid = ~mask
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return valid[:, :, None] & valid[:, None, :] & ~eye


def pair_targets(vertex_index: Tensor) -> Tensor:
    """``(B, N, N)`` bool: ``v_i == v_j`` and both ``>= 0`` (negative = no vertex)."""
    v = vertex_index
    return (v[:, :, None] == v[:, None, :]) & (v[:, :, None] >= 0) & (v[:, None, :] >= 0)


def pair_weights(origin: Tensor) -> Tensor:
    """Salt's origin-based pair weights ``1 + (w_i & w_j)`` (bitwise AND on integers).

    Per track ``w = 1`` for heavy-flavour origins (FromB, FromBC, FromC), ``-1`` for Fake,
    else 0. So HF-HF and HF-Fake pairs weigh 2, Fake-Fake 0, any pair with a 0 weighs 1.

    Parameters
    ----------
    origin
        ``(B, N)`` integer origin labels.

    Returns
    -------
    Tensor
        ``(B, N, N)`` float pair weights.
    """
    origin = origin.long()
    hf = torch.zeros_like(origin, dtype=torch.bool)
    for value in HF_ORIGINS:
        hf = hf | (origin == value)
    w = torch.where(hf, 1, 0) - torch.where(origin == FAKE_ORIGIN, 1, 0)
    return (1 + torch.bitwise_and(w[:, :, None], w[:, None, :])).float()


def vertexing_loss(
    logits: Tensor,
    vertex_index: Tensor,
    origin: Tensor,
    mask: Tensor,
) -> Tensor:
    """Pairwise BCE over valid ordered off-diagonal pairs, origin-weighted (Salt §2.12).

    ``Σ_pairs BCE(s_ij, match_ij) · (1 + (w_i & w_j)) / max(#positive pairs, 1)``.
    Salt divides by the number of positive pairs without the clamp, so a batch without
    any positive pair gives inf/NaN; here it gives the (finite) weighted sum.

    Parameters
    ----------
    logits
        ``(B, N, N)`` pair logits.
    vertex_index
        ``(B, N)`` truth vertex index per track.
    origin
        ``(B, N)`` truth origin label per track.
    mask
        ``(B, N)`` bool, True = padded.

    Returns
    -------
    Tensor
        Scalar loss (unweighted by the task weight).
    """
    adj = valid_pairs(mask)
    match = pair_targets(vertex_index) & adj
    per = F.binary_cross_entropy_with_logits(logits.float(), match.float(), reduction="none")
    weights = pair_weights(origin) * adj
    return (per * weights).sum() / match.sum().clamp_min(1)


VERTEX_INDEX = "ftagTruthVertexIndex"


class VertexingTask(TaskBase):
    """Pair classification "same truth vertex" for the tracks of one constituent input.

    Parameters
    ----------
    label
        Truth vertex index field (``ftagTruthVertexIndex``).
    origin_label
        Truth origin field used for the pair weights; defaults to ``label`` with
        ``VertexIndex`` replaced by ``OriginLabel`` (Salt's rule).
    input_size
        ``2 × D`` where D is the per-track embedding size (derived by the builder).
    context_size
        Pooled representation size (derived).
    """

    kind: ClassVar[str] = "vertexing"

    def __init__(
        self,
        name: str,
        input_name: str,
        input_size: int,
        label: str = VERTEX_INDEX,
        origin_label: str | None = None,
        output_size: int | None = None,
        context_size: int = 0,
        weight: float = 1.0,
        hidden_layers: Sequence[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        norm_layer: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        if output_size not in (None, 1):
            raise ValueError(f"task {name!r}: vertexing has one output per pair, not {output_size}")
        if input_size % 2:
            raise ValueError(f"task {name!r}: input_size must be 2 × embed size, got {input_size}")
        super().__init__(
            name,
            input_name,
            input_size,
            1,
            context_size=context_size,
            weight=weight,
            hidden_layers=hidden_layers,
            hidden_dim_scale=hidden_dim_scale,
            activation=activation,
            norm_layer=norm_layer,
            dropout=dropout,
        )
        self.label, self.origin_label = self.fit_labels(label, origin_label)
        self.node_size = input_size // 2

    @staticmethod
    def fit_labels(label: str | None = None, origin_label: str | None = None) -> list[str]:
        """The vertex index field and the origin label field of a task's config.

        ``label`` defaults to ``ftagTruthVertexIndex``; ``origin_label`` to ``label`` with
        ``VertexIndex`` replaced by ``OriginLabel`` (Salt's rule).
        """
        label = label or VERTEX_INDEX
        return [label, origin_label or label.replace("VertexIndex", "OriginLabel")]

    def labels_needed(self, stage: str = "fit") -> list[str]:
        """The vertex index and the origin label (pair weights), at fit."""
        return [self.label, self.origin_label] if stage_has_labels(stage) else []

    def pad_preds(self, preds: Tensor, length: int) -> Tensor:
        """Pad ``(B, L, L)`` pair logits to ``(B, length, length)`` with the invalid logit."""
        extra = length - preds.shape[1]
        if extra <= 0:
            return preds
        return F.pad(preds, [0, extra, 0, extra], value=INVALID_PAIR_LOGIT)

    def _decomposed_first_layer(
        self, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """Per-node parts of the first linear layer, or None when it cannot be split.

        ``x`` is ``(..., D)`` (``(B, N, D)`` or packed ``(T, D)``). Returns
        ``(h_i, h_j, h_c)``: ``(..., H)`` receiver and sender terms and the ``(B, H)``
        context term (None without context); the bias is added by the caller.
        """
        dense = self.net
        first = dense.first_linear_index
        if not (first == 0 or (first == 1 and not self.training)):
            return None  # input norm layer, or input dropout while training
        linear = dense.net[first]
        c, d = dense.context_size, self.node_size
        w = linear.weight
        h_i = x @ w[:, c : c + d].T  # row (receiver) node
        h_j = x @ w[:, c + d :].T  # column (sender) node
        h_c = None
        if c:
            if context is None:
                raise ValueError(f"task {self.name!r} was built with a context but got none")
            h_c = context.to(w.dtype) @ w[:, :c].T
        return h_i, h_j, h_c

    def sparse_pair_logits(self, x: Tensor, mask: Tensor, context: Tensor | None = None) -> Tensor:
        """Pair logits computed on the valid pairs only, scattered into ``(B, N, N)``.

        Same map as :meth:`pair_logits` (equal to float rounding) with the invalid pairs set
        to ``INVALID_PAIR_LOGIT``; the pair MLP runs on the ~``B·n²`` valid pairs instead of
        all ``B·N²``. The number of pairs is data dependent, so this is for eager mode.

        Parameters
        ----------
        x
            ``(B, N, D)`` track embeddings.
        mask
            ``(B, N)`` bool, True = padded.
        context
            ``(B, C)`` pooled representation (when ``context_size > 0``).
        """
        b, n = mask.shape
        # the valid tracks, packed: row r of xv is flat slot tok[r] = jet * n + track
        valid = ~mask.reshape(-1)
        tok = valid.nonzero().squeeze(1)
        xv = x.reshape(-1, x.shape[-1]).index_select(0, tok)
        parts = self._decomposed_first_layer(xv, context)
        if parts is None:
            logits = self.pair_logits(x, context)
            return logits.masked_fill(~valid_pairs(mask), INVALID_PAIR_LOGIT)
        h_i, h_j, h_c = parts  # (T, H) receiver and sender terms
        dense = self.net
        first = dense.first_linear_index
        jet = dense.net[first].bias.to(h_i.dtype).expand(b, -1)  # (B, H): bias + context
        if h_c is not None:
            jet = jet + h_c
        h_i = h_i + jet.index_select(0, torch.div(tok, n, rounding_mode="floor"))
        # valid pairs (b, i, j), i != j, in row-major order; rows of i and j in the packing
        pair = valid_pairs(mask).reshape(-1).nonzero().squeeze(1)
        row = valid.long().cumsum(0) - 1  # flat slot -> packed row (valid slots)
        jet_of_pair = torch.div(pair, n * n, rounding_mode="floor")
        slot_i = torch.div(pair, n, rounding_mode="floor")  # = jet * n + i
        slot_j = jet_of_pair * n + pair % n
        h = h_i.index_select(0, row.index_select(0, slot_i)) + h_j.index_select(
            0, row.index_select(0, slot_j)
        )
        out = run_layers(dense.net[first + 1 :], h).squeeze(-1)
        logits = out.new_full((b * n * n,), INVALID_PAIR_LOGIT)
        return logits.index_copy(0, pair, out).view(b, n, n)

    def pair_logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Dense pair logits ``(B, N, N)`` of ``net([context, x_i, x_j])``.

        Parameters
        ----------
        x
            ``(B, N, D)`` track embeddings.
        context
            ``(B, C)`` pooled representation (when ``context_size > 0``).
        """
        dense = self.net
        parts = self._decomposed_first_layer(x, context)
        if parts is None:
            n = x.shape[1]
            pairs = torch.cat(
                [x[:, :, None, :].expand(-1, -1, n, -1), x[:, None, :, :].expand(-1, n, -1, -1)],
                dim=-1,
            )
            return dense(pairs, context).squeeze(-1)
        h_i, h_j, h_c = parts
        first = dense.first_linear_index
        h = h_i[:, :, None, :] + h_j[:, None, :, :] + dense.net[first].bias
        if h_c is not None:
            h = h + h_c[:, None, None, :]
        return run_layers(dense.net[first + 1 :], h).squeeze(-1)

    def forward(
        self,
        x: Tensor,
        labels: Mapping[str, Tensor] | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Pair logits and (with labels) the weighted loss.

        Parameters
        ----------
        x
            ``(B, N, D)`` track embeddings.
        labels
            Label fields of ``input_name`` (vertex index and origin label), or None.
        mask
            ``(B, N)`` bool, True = padded.
        context
            ``(B, C)`` pooled representation.

        Returns
        -------
        tuple
            ``(B, N, N)`` logits (``-1e4`` on the diagonal and padded pairs) and the loss.
        """
        if mask is None:
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if is_eager():  # eager: the pair MLP on the valid pairs only
            logits = self.sparse_pair_logits(x, mask, context)
        else:  # static shapes for torch.compile / tracing / ONNX
            logits = self.pair_logits(x, context)
            logits = logits.masked_fill(~valid_pairs(mask), INVALID_PAIR_LOGIT)
        loss = None
        if labels is not None:
            vertex = _field(labels, self.label, self.name, self.input_name)
            origin = _field(labels, self.origin_label, self.name, self.input_name)
            loss = vertexing_loss(logits, vertex, origin, mask) * self.weight
        return logits, loss

    def predict(self, preds: Tensor | Mapping[str, Tensor], batch: Any = None) -> dict[str, Tensor]:
        """Vertex assignment (as Salt's union-find): ``{"vertex_index": (B, N) long}``, -1 = pad."""
        logits = _task_preds(preds, self.name)
        mask = _batch_part(batch, "masks").get(self.input_name)
        if mask is None:
            mask = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        return {"vertex_index": get_node_assignment(logits, mask)}
