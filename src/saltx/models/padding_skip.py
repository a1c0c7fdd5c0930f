"""Padding skipping: the model's forward pass without the constituent slots that are padding.

Everything that makes :class:`~saltx.models.saltmodel.SaltModel` skip padded slots at the
batch level lives here; ``SaltModel.forward`` only decides whether to come here
(:func:`skip_padding`) and otherwise runs the plain math.

* :func:`trim_lengths` / :func:`trim_batch`: drop the trailing slots padded in *every* jet
  of the batch. ``L`` is rounded up to a multiple of :data:`TRIM_MULTIPLE` so that
  ``torch.compile`` sees only a handful of shapes.
* :func:`length_groups`: with one constituent input and no batch statistics, split the
  jets into groups of similar length, each cut to its own length, and run the network per
  group.
* :func:`skip_padding`: both of the above around the model's own
  :meth:`~saltx.models.saltmodel.SaltModel.representations` and
  :meth:`~saltx.models.saltmodel.SaltModel.run_tasks`, then the constituent predictions
  padded back to the caller's ``N`` slots (``task.pad_preds``).

The models give bit-identical outputs for the valid constituents whatever padding is
appended (see :mod:`saltx.models.masking`), so none of this changes a valid output (nor
any jet output) while the encoder, the attention and the constituent tasks work on fewer
slots. Padding skipping runs in eager mode only (:func:`saltx.models.eager.is_eager`):
while tracing, exporting or compiling it would bake a data-dependent length into the graph.
(The constituent heads' packed form and the vertexing head's sparse pairs skip padding
inside the tasks; see :mod:`saltx.models.tasks` and :mod:`saltx.models.vertexing`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from saltx.models.saltmodel import SaltModel

__all__ = [
    "GROUP_MIN_JETS",
    "GROUP_MULTIPLE",
    "TRIM_MULTIPLE",
    "length_groups",
    "model_length_groups",
    "skip_padding",
    "trim_batch",
    "trim_lengths",
]

TRIM_MULTIPLE = 8
"""Trimmed lengths are rounded up to a multiple of this (bounded by the original N)."""

GROUP_MULTIPLE = 2
"""Bucket width of :func:`length_groups` (GN2 on 1000-jet batches of ~9 valid tracks of
40: the encoder then runs on 1.07x the valid tokens, against 1.43x with buckets of 8)."""

GROUP_MIN_JETS = 32
"""Smallest group of jets :func:`length_groups` forms (short buckets are merged upwards)."""


def _trimmed_length(mask: Tensor, multiple: int) -> int:
    """Number of leading slots to keep: up to the last slot valid in any jet, rounded up."""
    n = mask.shape[1]
    if mask.shape[0] == 0 or n == 0:
        return n
    used = (~mask).any(0)  # (N,) slot valid in at least one jet
    last = int(torch.nonzero(used).max()) + 1 if bool(used.any()) else 0
    keep = -(-max(last, 1) // multiple) * multiple
    return min(n, keep)


def trim_lengths(masks: Mapping[str, Tensor], multiple: int = TRIM_MULTIPLE) -> dict[str, int]:
    """``{input: L}`` for the inputs whose ``(B, N)`` mask allows trimming to ``L < N``.

    Parameters
    ----------
    masks
        ``(B, N)`` bool per constituent input, True = padded.
    multiple
        Round ``L`` up to a multiple of this.

    Returns
    -------
    dict
        Only the inputs that get shorter; empty when nothing can be trimmed.
    """
    out = {}
    for name, mask in masks.items():
        if mask.dim() != 2:
            continue
        keep = _trimmed_length(mask, multiple)
        if keep < mask.shape[1]:
            out[name] = keep
    return out


def trim_batch(
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    labels: Mapping[str, Mapping[str, Tensor]] | None,
    lengths: Mapping[str, int],
    edge_input: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, dict[str, Tensor]] | None]:
    """Cut every per-constituent tensor of the trimmed inputs to its first ``L`` slots.

    Parameters
    ----------
    inputs
        Raw inputs; constituents ``(B, N, F)`` and ``EDGE`` ``(B, N, 4)`` (of
        ``edge_input``) are cut along dim 1.
    masks
        ``(B, N)`` bool per constituent input.
    labels
        ``labels[input][field]``; fields of a trimmed input with a constituent dimension
        ``(B, N, ...)`` are cut, per-jet fields ``(B,)`` kept.
    lengths
        ``{input: L}`` from :func:`trim_lengths`.
    edge_input
        Constituent input the ``EDGE`` raw fields belong to.

    Returns
    -------
    tuple
        New ``(inputs, masks, labels)`` dicts (views, no copies).
    """

    def cut(t: Tensor, name: str) -> Tensor:
        n = masks[name].shape[1]
        if t.dim() >= 2 and t.shape[1] == n:
            return t[:, : lengths[name]]
        return t

    new_inputs = dict(inputs)
    for name in lengths:
        if name in new_inputs:
            new_inputs[name] = cut(new_inputs[name], name)
    if edge_input in lengths and "EDGE" in new_inputs:
        new_inputs["EDGE"] = cut(new_inputs["EDGE"], edge_input)
    new_masks = {k: (m[:, : lengths[k]] if k in lengths else m) for k, m in masks.items()}
    new_labels = None
    if labels is not None:
        new_labels = {
            k: ({f: cut(t, k) for f, t in fields.items()} if k in lengths else dict(fields))
            for k, fields in labels.items()
        }
    return new_inputs, new_masks, new_labels


def length_groups(
    mask: Tensor, multiple: int | None = None, min_jets: int | None = None
) -> list[tuple[Tensor, int]]:
    """Split the jets into groups of similar length, each with its own trimmed length.

    Jets are bucketed by their used length (last valid slot + 1) rounded up to
    ``multiple``; a bucket with fewer than ``min_jets`` jets is merged into the next
    longer one (few large groups keep the GEMMs efficient). The last, longest group may
    stay smaller, but a single jet joins the group before it: ``torch.compile``
    specialises a batch of one, so one-jet groups would cost a graph of their own.

    Parameters
    ----------
    mask
        ``(B, N)`` bool, True = padded.
    multiple
        Bucket width; default :data:`GROUP_MULTIPLE`.
    min_jets
        Smallest group (the last, longest group may be smaller); default
        :data:`GROUP_MIN_JETS`.

    Returns
    -------
    list
        ``(jet_index, L)`` per group: ``(G,)`` long indices into the batch (ascending) and
        the group's length ``L <= N``. The groups partition the batch; with
        ``min_jets > 1`` only a batch of one jet gives a one-jet group.
    """
    multiple = GROUP_MULTIPLE if multiple is None else multiple
    min_jets = GROUP_MIN_JETS if min_jets is None else min_jets
    n = mask.shape[1]
    pos = torch.arange(1, n + 1, device=mask.device)
    used = ((~mask) * pos).amax(1) if n else mask.new_zeros(mask.shape[0], dtype=torch.long)
    bucket = ((used.clamp_min(1) + multiple - 1) // multiple * multiple).clamp_max(n)
    values, counts = torch.unique(bucket, return_counts=True)
    groups: list[tuple[Tensor, int]] = []
    pending: list[int] = []
    size = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        pending.append(value)
        size += count
        if size >= min_jets:
            groups.append((torch.isin(bucket, torch.tensor(pending, device=mask.device)), value))
            pending, size = [], 0
    if pending:  # the longest jets; a single one joins the group before it
        sel = torch.isin(bucket, torch.tensor(pending, device=mask.device))
        if groups and size == 1:
            sel = sel | groups.pop()[0]
        groups.append((sel, pending[-1]))
    return [(torch.nonzero(sel).squeeze(1), length) for sel, length in groups]


def model_length_groups(model: SaltModel, masks: Mapping[str, Tensor]) -> list[tuple[Tensor, int]]:
    """:func:`length_groups` of ``model``'s batch, or ``[]`` where grouping does not apply.

    Grouping needs ``model.group_by_length``, a single constituent input (``masks`` with
    one entry) and no batch-norm layer (batch norm couples the jets of a batch).

    Parameters
    ----------
    model
        The :class:`~saltx.models.saltmodel.SaltModel`.
    masks
        ``(B, N)`` bool per constituent input, True = padded.

    Returns
    -------
    list
        ``(jet_index, L)`` per group as from :func:`length_groups`; ``[]`` without grouping.
    """
    if not model.group_by_length or len(masks) != 1:
        return []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    return length_groups(next(iter(masks.values())))


def skip_padding(
    model: SaltModel,
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    labels: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``model.forward`` without the padded slots: same outputs for valid constituents.

    Cuts the slots padded in every jet (:func:`trim_lengths`, :func:`trim_batch`), runs
    :meth:`~saltx.models.saltmodel.SaltModel.representations` once or per length group
    (:func:`model_length_groups`), then
    :meth:`~saltx.models.saltmodel.SaltModel.run_tasks` on the trimmed batch, and pads the
    predictions of trimmed inputs back to the caller's ``N`` slots (``task.pad_preds``).

    Parameters
    ----------
    model
        The :class:`~saltx.models.saltmodel.SaltModel` (with an encoder).
    inputs, masks, labels
        As for :meth:`~saltx.models.saltmodel.SaltModel.forward`.

    Returns
    -------
    tuple
        ``(preds, losses)`` as :meth:`~saltx.models.saltmodel.SaltModel.forward` returns
        them: constituent predictions ``(B, N, ...)`` in the caller's ``N`` (padded slots
        zero, or the invalid pair logit for vertexing); bit-identical for every valid
        constituent and every jet prediction, losses equal up to the order of their sums.
    """
    full_n: dict[str, int] = {}
    lengths = trim_lengths(masks)
    if lengths:
        full_n = {name: masks[name].shape[1] for name in lengths}
        inputs, masks, labels = trim_batch(
            inputs, masks, labels, lengths, edge_input=model.edge_input
        )
    groups = model_length_groups(model, masks) if full_n else []
    if len(groups) > 1:
        encoded, global_rep = _grouped_representations(model, inputs, masks, groups)
    else:
        encoded, global_rep = model.representations(inputs, masks)
    preds, losses = model.run_tasks(encoded, global_rep, masks, labels)
    for name, task in model.tasks.items():
        if task.input_name in full_n:  # back to the caller's N slots
            preds[name] = task.pad_preds(preds[name], full_n[task.input_name])
    return preds, losses


def _grouped_representations(
    model: SaltModel,
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    groups: list[tuple[Tensor, int]],
) -> tuple[dict[str, Tensor], Tensor]:
    """``model.representations`` run per group of jets, each trimmed to its own length.

    Every jet is computed independently of the others (no batch statistics), so the
    outputs of the valid constituents are those of one call on the whole batch; the
    slots beyond a group's length get zero encodings.
    """
    name = next(iter(masks))
    n = masks[name].shape[1]
    enc_parts: dict[str, list[Tensor]] = {}
    glob_parts, order = [], []
    for idx, length in groups:
        sub_in = {k: v.index_select(0, idx) for k, v in inputs.items()}
        sub_masks = {k: m.index_select(0, idx) for k, m in masks.items()}
        if length < n:
            sub_in, sub_masks, _ = trim_batch(
                sub_in, sub_masks, None, {name: length}, edge_input=model.edge_input
            )
        enc, glob = model.representations(sub_in, sub_masks)
        for key, t in enc.items():
            if key == name and length < n:  # the trimmed input (not e.g. registers)
                t = F.pad(t, [0, 0] * (t.dim() - 2) + [0, n - length])
            enc_parts.setdefault(key, []).append(t)
        glob_parts.append(glob)
        order.append(idx)
    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    encoded = {k: torch.cat(parts).index_select(0, inverse) for k, parts in enc_parts.items()}
    return encoded, torch.cat(glob_parts).index_select(0, inverse)
