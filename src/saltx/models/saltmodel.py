"""The whole network: InputNorm → init nets → (edges) → encoder → pooling → GLOBAL → tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.eager import is_eager
from saltx.models.inputnorm import InputNorm
from saltx.models.trimming import length_groups, trim_batch, trim_lengths


class SaltModel(nn.Module):
    """Multi-modal, multi-task jet tagger taking **raw** inputs.

    Parameters
    ----------
    input_norm
        Normalises the raw inputs (first module, so exports take raw features).
    init_nets
        ``{input_name: InitNet}`` for each constituent input, in ``data.variables`` order;
        for a jets-only (DL1-style) model, one init net on the global object.
    tasks
        ``{task_name: task}``.
    encoder
        Encoder over the constituent embeddings (``forward(x, masks, edges=...)`` returning
        a dict), or None for a jets-only model.
    pooling
        ``forward(x, masks) -> (B, D)``; None for a jets-only model.
    global_object
        Name of the global object (``jets``).
    edge_features
        Module computing ``(B, N, N, E)`` edge features from ``inputs["EDGE"]`` and a mask.
    edge_net
        Init net embedding the edge features (pointwise) to ``(B, N, N, De)``.
    edge_input
        Constituent input the edges belong to (whose mask they share).
    use_global
        Concatenate ``inputs["GLOBAL"]`` (normalised) to the pooled representation.
    trim_padding
        In eager mode, drop the trailing constituent slots padded in every jet before
        running the network and pad the predictions back (outputs of valid constituents
        are unchanged; see :mod:`saltx.models.trimming`). Off while tracing/exporting.
    group_by_length
        With ``trim_padding`` and a single constituent input: run the encoder on groups of
        jets of similar length, each trimmed to its own length (same outputs; skipped
        when the model has batch-norm layers).
    """

    def __init__(
        self,
        input_norm: InputNorm,
        init_nets: Mapping[str, nn.Module],
        tasks: Mapping[str, nn.Module],
        encoder: nn.Module | None = None,
        pooling: nn.Module | None = None,
        global_object: str = "jets",
        edge_features: nn.Module | None = None,
        edge_net: nn.Module | None = None,
        edge_input: str = "tracks",
        use_global: bool = False,
        trim_padding: bool = True,
        group_by_length: bool = True,
    ) -> None:
        super().__init__()
        if (encoder is None) != (pooling is None):
            raise ValueError("SaltModel needs both an encoder and a pooling, or neither")
        if encoder is None and list(init_nets) != [global_object]:
            raise ValueError(
                "a model without encoder (jets-only, DL1-style) needs exactly one init net, on "
                f"the global object {global_object!r}; got {list(init_nets)}"
            )
        if (edge_features is None) != (edge_net is None):
            raise ValueError("edges need both edge_features and edge_net")
        self.input_norm = input_norm
        self.init_nets = nn.ModuleDict(dict(init_nets))
        self.edge_features = edge_features
        self.edge_net = edge_net
        self.edge_input = edge_input
        self.encoder = encoder
        self.pooling = pooling
        self.tasks = nn.ModuleDict(dict(tasks))
        self.global_object = global_object
        self.use_global = use_global
        self.trim_padding = trim_padding
        self.group_by_length = group_by_length

    @property
    def trainable_params(self) -> int:
        """Number of trainable parameters."""
        return trainable_params(self)

    def representations(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per-constituent encodings and the global representation.

        Parameters
        ----------
        inputs
            Raw inputs (see :class:`saltx.data.batch.Batch`).
        masks
            ``(B, N)`` bool per constituent input, True = padded.

        Returns
        -------
        tuple
            ``{input: (B, N, D)}`` encoder outputs (empty for a jets-only model; with
            register tokens also ``REGISTERS: (B, R, D)``) and the global representation
            ``(B, P)`` (pooled over constituents and registers, plus GLOBAL when used).
        """
        x = self.input_norm(inputs)
        if self.encoder is None:
            encoded: dict[str, Tensor] = {}
            global_rep = self.init_nets[self.global_object](x)
        else:
            embeds = {name: net(x) for name, net in self.init_nets.items()}
            enc_masks = {name: _mask(masks, name) for name in embeds}
            kwargs = {}
            if self.edge_net is not None:
                raw = _input(x, "EDGE")
                edges = self.edge_features(raw, enc_masks[self.edge_input])
                kwargs["edges"] = self.edge_net({"EDGE": edges})
            encoded = self.encoder(embeds, enc_masks, **kwargs)
            global_rep = self.pooling(encoded, enc_masks)
        if self.use_global:
            global_rep = torch.cat([global_rep, _input(x, "GLOBAL").to(global_rep.dtype)], -1)
        return encoded, global_rep

    def _length_groups(self, masks: Mapping[str, Tensor]) -> list[tuple[Tensor, int]]:
        """Jet groups of similar length (one constituent input, no batch statistics)."""
        if not self.group_by_length or len(masks) != 1:
            return []
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules()):
            return []  # batch norm couples the jets of a batch
        return length_groups(next(iter(masks.values())))

    def _grouped_representations(
        self,
        inputs: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        groups: list[tuple[Tensor, int]],
    ) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`representations` run per group of jets, each trimmed to its own length.

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
                    sub_in, sub_masks, None, {name: length}, edge_input=self.edge_input
                )
            enc, glob = self.representations(sub_in, sub_masks)
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

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Run the network and, with labels, the task losses.

        Parameters
        ----------
        inputs
            Raw inputs: global object ``(B, F)``, constituents ``(B, N, F)``,
            ``GLOBAL`` ``(B, G)``, ``PARAMETERS`` ``(B, P)``, ``EDGE`` ``(B, N, 4)``.
        masks
            ``(B, N)`` bool per constituent input, True = padded.
        labels
            ``labels[input_name][field]``, or None.

        Returns
        -------
        tuple
            ``preds[task]`` (logits / scaled values / pair logits) and ``losses[task]``
            (scalars already multiplied by the task weight; empty without labels).
        """
        full_n = {}
        if self.trim_padding and self.encoder is not None and is_eager():
            lengths = trim_lengths(masks)
            if lengths:
                full_n = {name: masks[name].shape[1] for name in lengths}
                inputs, masks, labels = trim_batch(
                    inputs, masks, labels, lengths, edge_input=self.edge_input
                )
        groups = self._length_groups(masks) if full_n else []
        if len(groups) > 1:
            encoded, global_rep = self._grouped_representations(inputs, masks, groups)
        else:
            encoded, global_rep = self.representations(inputs, masks)
        preds: dict[str, Tensor] = {}
        losses: dict[str, Tensor] = {}
        for name, task in self.tasks.items():
            task_labels = None
            if labels is not None:
                if task.input_name not in labels:
                    raise KeyError(
                        f"task {name!r} needs labels of input {task.input_name!r}; the batch "
                        f"has labels for {list(labels)}"
                    )
                task_labels = labels[task.input_name]
            if task.input_name == self.global_object:
                pred, loss = task(global_rep, task_labels)
            else:
                if task.input_name not in encoded:
                    raise KeyError(
                        f"task {name!r} runs on input {task.input_name!r}, which the encoder "
                        f"does not produce (it has {list(encoded)})"
                    )
                pred, loss = task(
                    encoded[task.input_name],
                    task_labels,
                    mask=_mask(masks, task.input_name),
                    context=global_rep,
                )
            if task.input_name in full_n:  # back to the caller's N slots
                pred = task.pad_preds(pred, full_n[task.input_name])
            preds[name] = pred
            if loss is not None:
                losses[name] = loss
        return preds, losses


def trainable_params(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mask(masks: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in masks:
        raise KeyError(f"no mask for input {name!r}; masks has {list(masks)}")
    return masks[name]


def _input(inputs: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in inputs:
        raise KeyError(f"the model needs input {name!r}; inputs has {list(inputs)}")
    return inputs[name]
