"""The whole network: InputNorm → init nets → (edges) → encoder → pooling → GLOBAL → tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from saltx.models.eager import is_eager
from saltx.models.inputnorm import InputNorm
from saltx.models.padding_skip import skip_padding


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
        are unchanged; see :mod:`saltx.models.padding_skip`). Off while tracing/exporting.
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

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Run the network and, with labels, the task losses.

        The math is :meth:`representations` (input norm, init nets, edges, encoder,
        pooling, GLOBAL) followed by :meth:`run_tasks` (every task on its input).

        Padding skipping lives in :mod:`saltx.models.padding_skip`: in eager mode with
        ``trim_padding``, :func:`~saltx.models.padding_skip.skip_padding` runs the same two
        methods on the batch without the slots padded in every jet (in groups of jets of
        similar length) and pads the predictions back. Every prediction of a valid
        constituent and every jet prediction is bit-identical to the plain path below (CPU,
        float32); padded slots get zeros (the invalid pair logit for vertexing), and the
        losses agree up to the order of their sums.

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
        if self.trim_padding and self.encoder is not None and is_eager():
            return skip_padding(self, inputs, masks, labels)
        encoded, global_rep = self.representations(inputs, masks)
        return self.run_tasks(encoded, global_rep, masks, labels)

    def run_tasks(
        self,
        encoded: Mapping[str, Tensor],
        global_rep: Tensor,
        masks: Mapping[str, Tensor],
        labels: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every task on its input: predictions and, with labels, the weighted losses.

        Parameters
        ----------
        encoded
            ``{input: (B, N, D)}`` encoder outputs from :meth:`representations`.
        global_rep
            ``(B, P)`` global representation from :meth:`representations`.
        masks
            ``(B, N)`` bool per constituent input, True = padded (same ``N`` as
            ``encoded``).
        labels
            ``labels[input_name][field]``, or None.

        Returns
        -------
        tuple
            ``preds[task]`` and ``losses[task]`` as for :meth:`forward`, at the ``N`` of
            ``encoded``.
        """
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
