"""A short ONNX graph for one jet: the model's representations without batch or padding.

Athena calls the network once per jet with only the real constituents, so the exported
graph needs neither a batch axis nor masks. :class:`SingleJetRepresentation` computes
what :meth:`saltx.models.saltmodel.SaltModel.representations` computes for such a jet,
from the model's own parameters, with 2-D ``(n, D)`` token matrices:

* the input normalisation is folded into the first linear layer of each init net
  (``W (x - m) / s + b = (W / s) x + (b - W m / s)``), and the jet-level part of that layer
  (global object and PARAMETERS columns) is one row computed once per jet, added as the
  ``C`` input of the constituents' ``Gemm``;
* every linear layer acts on a 2-D matrix, so it exports as one ``Gemm`` (bias included),
  which onnxruntime fuses with a following ReLU;
* self-attention uses one ``Gemm`` for q, k and v (the ``1/sqrt(d)`` scale folded into
  the q rows), ``Reshape``/``Transpose``/``Split`` into heads, ``MatMul`` with a transposed
  key (fused by onnxruntime into ``FusedMatMul``), ``Softmax``, ``MatMul``; reshapes use
  constant shapes (``-1``), so no ``Shape``/``Gather``/``Concat`` chains are exported;
* global attention pooling is ``Gemm`` → ``Softmax`` over the tokens → ``MatMul``;
* the aux heads (with ``include_aux``) run on the ``(n, D)`` rows too: the per-jet
  context enters their first layer as one row (:func:`dense_rows`), and the vertexing
  pair network forms its ``(n, n, H)`` first-layer sums from per-track terms
  (:func:`pair_logits_rows`).

Only standard ONNX operators are written (onnxruntime's own fusions at session creation,
which Athena runs too, turn them into its fused kernels).

The class accepts only the module types and structures it knows (checked strictly by
their children and parameters, see :func:`unsupported_reason`); any other model is
exported through the model's own forward (:class:`saltx.onnx.export.ONNXWrapper`'s
generic path). Either way the export compares the graph with the torch model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.attention import MultiheadAttention, ScaledDotProductAttention
from saltx.models.dense import Dense, run_layers
from saltx.models.initnet import InitNet
from saltx.models.pooling import GlobalAttentionPooling
from saltx.models.transformer import FeedForward, TransformerEncoder, TransformerEncoderLayer

# the children (and own parameters) each supported module must have, exactly
_CHILDREN: dict[type, set[str]] = {
    TransformerEncoderLayer: {"norm1", "attn", "norm2", "ffn"},
    MultiheadAttention: {"linear_q", "linear_k", "linear_v", "linear_out", "attention"},
    FeedForward: {"fc1", "act", "dropout", "fc2"},
    ScaledDotProductAttention: {"dropout"},
    GlobalAttentionPooling: {"gate"},
    InitNet: {"net"},
    Dense: {"net"},
}


def _structure_problem(module: nn.Module, where: str) -> str | None:
    """Why ``module`` is not exactly a known structure (None when it is)."""
    kind = type(module)
    if kind not in _CHILDREN:
        return f"{where} is a {kind.__name__}"
    children = {name for name, _ in module.named_children()}
    if children != _CHILDREN[kind]:
        return f"{where} ({kind.__name__}) has children {sorted(children)}"
    own = [name for name, _ in module.named_parameters(recurse=False)]
    if own:
        return f"{where} ({kind.__name__}) has own parameters {own}"
    return None


def _layer_problem(layer: nn.Module, where: str) -> str | None:
    problem = _structure_problem(layer, where)
    if problem:
        return problem
    attn, ffn = layer.attn, layer.ffn
    for sub, name in ((attn, "attn"), (attn.attention, "attn.attention"), (ffn, "ffn")):
        problem = _structure_problem(sub, f"{where}.{name}")
        if problem:
            return problem
    if attn.edge_embed_dim or layer.update_edges:
        return f"{where} uses edge features"
    if ffn.context_dim:
        return f"{where}.ffn takes a context"
    return None


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the single-jet graph cannot represent ``model``, or None if it can.

    Supported: init nets (``Dense`` whose first module is its first ``Linear``) on each
    constituent input, optionally with the global object and PARAMETERS attached;
    :class:`TransformerEncoder` of :class:`TransformerEncoderLayer` with scaled
    dot-product self-attention, no edges and no FFN context, learned register tokens
    (``registers``), LayerNorms with or without affine parameters, an optional final norm
    (before or after, ``final_norm_position``) and final linear;
    :class:`GlobalAttentionPooling` (over the constituents and the registers); GLOBAL
    concatenated after pooling.
    """
    if model.encoder is None:
        return "the model has no encoder (jets-only)"
    if model.edge_net is not None:
        return "the model uses edge features"
    for name, net in model.init_nets.items():
        problem = _structure_problem(net, f"init_nets.{name}") or _structure_problem(
            net.net, f"init_nets.{name}.net"
        )
        if problem:
            return problem
        if net.net.first_linear_index != 0 or net.net.context_size:
            return f"init_nets.{name} has a layer before its first Linear, or a context"
    encoder = model.encoder
    if type(encoder) is not TransformerEncoder:
        return f"the encoder is a {type(encoder).__name__}"
    children = {name for name, _ in encoder.named_children()}
    if not children <= {"layers", "final_norm", "final_linear"} or "layers" not in children:
        return f"the encoder has children {sorted(children)}"
    own = [name for name, _ in encoder.named_parameters(recurse=False)]
    if [name for name in own if name != "registers"] or encoder.edge_embed_dim:
        return f"the encoder has own parameters {own} or edges"
    position = getattr(encoder, "final_norm_position", "before_out_proj")
    if position not in ("before_out_proj", "after_out_proj", "none"):
        return f"the encoder's final norm sits at {position!r}"
    if encoder.final_linear is not None and type(encoder.final_linear) is not nn.Linear:
        return f"the encoder's final linear is a {type(encoder.final_linear).__name__}"
    for i, layer in enumerate(encoder.layers):
        problem = _layer_problem(layer, f"encoder.layers.{i}")
        if problem:
            return problem
    return _structure_problem(model.pooling, "pooling")


def _head_problem(task: nn.Module, name: str) -> str | None:
    dense = task.net
    problem = _structure_problem(dense, f"tasks.{name}.net")
    if problem:
        return problem
    if dense.first_linear_index != 0:
        return f"tasks.{name} has a layer before its first Linear"
    return None


def aux_unsupported_reason(model: nn.Module, tasks: list[str | None]) -> str | None:
    """Why the aux heads ``tasks`` (track origin, vertexing) cannot run on rows, or None."""
    for name in tasks:
        if name is not None:
            problem = _head_problem(model.tasks[name], name)
            if problem:
                return problem
    return None


def _linear_parts(linear: nn.Linear) -> tuple[Tensor, Tensor]:
    bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
    return linear.weight.detach(), bias.detach()


def _encoder_output(encoder: nn.Module, h: Tensor) -> Tensor:
    """The encoder's final LayerNorm and output projection, in its configured order
    (``final_norm_position``: before or after the projection, or no norm)."""
    position = getattr(encoder, "final_norm_position", "before_out_proj")
    norm = getattr(encoder, "final_norm", None) if position != "none" else None
    if position == "before_out_proj" and norm is not None:
        h = norm(h)
    if encoder.final_linear is not None:
        h = encoder.final_linear(h)
    if position == "after_out_proj" and norm is not None:
        h = norm(h)
    return h


def _rows(layers: nn.Module, h: Tensor) -> Tensor:
    """``layers`` on ``(rows, F)``: every Linear as one ``Gemm`` (bias included)."""
    for layer in layers:
        h = F.linear(h, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(h)
    return h


def _first_layer_row(dense: Dense, context: Tensor | None, skip: int = 0) -> tuple[Tensor, Tensor]:
    """The first Linear's per-jet part ``(1, H)`` (context columns and bias) and the weight
    of the remaining columns ``(H, F)``, from column ``context_size + skip`` on."""
    weight, bias = dense.net[0].weight, dense.net[0].bias
    c = dense.context_size
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    row = bias.unsqueeze(0) if not c else F.linear(context, weight[:, :c], bias)
    return row, weight[:, c + skip :]


def dense_rows(dense: Dense, x: Tensor, context: Tensor | None) -> Tensor:
    """A :class:`Dense` head on ``(n, F)`` rows with a ``(1, C)`` per-jet context.

    ``Dense`` prepends the context to every row; here its columns of the first Linear act
    on the one context row, added as the ``C`` input of the rows' ``Gemm``.
    """
    row, w = _first_layer_row(dense, context)
    return _rows(dense.net[1:], torch.addmm(row, x, w.t()))


def pair_logits_rows(task: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    """Vertexing pair logits ``(n, n)`` of ``net([context, x_i, x_j])`` for one jet.

    The first Linear is ``W_c c + W_i x_i + W_j x_j + b``: per-track terms ``(n, H)``
    broadcast-added to ``(n, n, H)``, the remaining layers on its ``n*n`` rows.
    """
    dense, d = task.net, task.node_size
    row, w = _first_layer_row(dense, context)
    h_i = torch.addmm(row, x, w[:, :d].t())  # receiver term, with context and bias
    h_j = torch.matmul(x, w[:, d:].t())  # sender term
    h = (h_i.unsqueeze(1) + h_j.unsqueeze(0)).reshape(-1, h_i.shape[-1])
    return _rows(dense.net[1:], h).reshape(x.shape[0], x.shape[0])


class SingleJetRepresentation(nn.Module):
    """``representations`` of a :class:`~saltx.models.saltmodel.SaltModel` for one jet.

    Parameters
    ----------
    model
        The model, in eval mode, with MuReadouts folded; see :func:`unsupported_reason`.
    gather
        ``{model input: column indices into jet_features}`` (``ExportLayout.gather``).
    constituents
        Constituent input names in the order of the ONNX inputs.
    """

    def __init__(
        self, model: nn.Module, gather: Mapping[str, list[int]], constituents: list[str]
    ) -> None:
        super().__init__()
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the single-jet ONNX graph does not support this model: {reason}")
        self.model = model
        self.constituents = list(constituents)
        self.order = [name for name in model.init_nets if name in self.constituents]
        if sorted(self.order) != sorted(self.constituents):
            raise ValueError(
                f"init nets {list(model.init_nets)} do not match the constituent inputs "
                f"{self.constituents}"
            )
        n_jet = 1 + max((i for idx in gather.values() for i in idx), default=-1)
        self.gather = {k: list(v) for k, v in gather.items()}
        for name in self.order:
            w_own, w_jet, bias = self._fold_first_layer(model.init_nets[name], n_jet)
            self.register_buffer(f"_w_own_{name}", w_own)
            self.register_buffer(f"_w_jet_{name}", w_jet)
            self.register_buffer(f"_b_{name}", bias)
        for i, layer in enumerate(model.encoder.layers):
            w, b = self._fold_qkv(layer.attn)
            self.register_buffer(f"_w_qkv_{i}", w)
            self.register_buffer(f"_b_qkv_{i}", b)
        if model.use_global:
            self.register_buffer("_gather_global", torch.tensor(self.gather["GLOBAL"]))

    def _norm(self, name: str, width: int) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` of an input, identity for unnormalised inputs (PARAMETERS)."""
        norm = self.model.input_norm
        if name in norm.input_names:
            return getattr(norm, f"{name}_means"), getattr(norm, f"{name}_stds")
        return torch.zeros(width), torch.ones(width)

    def _fold_first_layer(self, net: InitNet, n_jet: int) -> tuple[Tensor, Tensor, Tensor]:
        """Normalisation folded into the first Linear, split into own and jet columns.

        Returns ``W_own (out, F)``, ``W_jet (out, n_jet)`` acting on ``jet_features`` and
        the bias ``(out,)``. Columns of the Linear's input: ``[PARAMETERS?, global?, own]``
        (Salt's order: the last attached context comes first).
        """
        weight, bias = _linear_parts(net.net.net[0])
        weight, bias = weight.double(), bias.double()
        groups = []
        if net.attach_parameters:
            groups.append("PARAMETERS")
        if net.attach_global:
            groups.append(net.global_object)
        groups.append(net.input_name)
        w_jet = weight.new_zeros(weight.shape[0], n_jet)
        start, w_own = 0, None
        for name in groups:
            width = len(self.gather[name]) if name != net.input_name else weight.shape[1] - start
            mean, std = (t.double() for t in self._norm(name, width))
            w = weight[:, start : start + width] / std
            bias = bias - w @ mean
            if name == net.input_name:
                w_own = w
            else:
                w_jet.index_add_(1, torch.tensor(self.gather[name]), w)
            start += width
        return w_own.float(), w_jet.float(), bias.float()

    @staticmethod
    def _fold_qkv(attn: MultiheadAttention) -> tuple[Tensor, Tensor]:
        """One ``(3D, D)`` weight and ``(3D,)`` bias for q (scaled), k and v."""
        scale = float(attn.attention.scale)
        (wq, bq), (wk, bk), (wv, bv) = (
            _linear_parts(layer) for layer in (attn.linear_q, attn.linear_k, attn.linear_v)
        )
        return torch.cat([wq * scale, wk, wv]), torch.cat([bq * scale, bk, bv])

    def _embed(self, name: str, jet_features: Tensor, x: Tensor) -> Tensor:
        """Init net of constituent input ``name``: ``(n, F)`` raw features -> ``(n, D)``."""
        w_own = getattr(self, f"_w_own_{name}")
        bias = getattr(self, f"_b_{name}")
        net = self.model.init_nets[name]
        if net.attach_global or net.attach_parameters:
            row = F.linear(jet_features, getattr(self, f"_w_jet_{name}"), bias)  # (1, out)
            h = torch.addmm(row, x, w_own.t())
        else:
            h = F.linear(x, w_own, bias)
        return run_layers(net.net.net[1:], h)

    def _attention(self, i: int, attn: MultiheadAttention, x: Tensor) -> Tensor:
        """Self-attention of ``(n, D)`` tokens (all valid) -> ``(n, D)``."""
        heads, dh = attn.num_heads, attn.head_dim
        qkv = F.linear(x, getattr(self, f"_w_qkv_{i}"), getattr(self, f"_b_qkv_{i}"))
        qkv = qkv.reshape(-1, 3, heads, dh).permute(1, 2, 0, 3)  # (3, H, n, Dh)
        q, k, v = torch.split(qkv, 1, dim=0)  # (1, H, n, Dh) each
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
        out = torch.matmul(weights, v).permute(2, 0, 1, 3).reshape(-1, heads * dh)
        return attn.linear_out(out)

    def _layer(self, i: int, layer: TransformerEncoderLayer, x: Tensor) -> Tensor:
        x = x + self._attention(i, layer.attn, layer.norm1(x))
        ffn = layer.ffn
        return x + ffn.fc2(ffn.act(ffn.fc1(layer.norm2(x))))

    def forward(self, jet_features: Tensor, *constituents: Tensor) -> tuple[dict, Tensor]:
        """Per-type encodings ``{name: (n_name, D_out)}`` and the jet representation ``(1, P)``.

        Parameters
        ----------
        jet_features
            ``(1, F_jet)`` raw jet-level features (see ``ExportLayout``).
        constituents
            ``(n_<type>, F_type)`` raw features of the valid constituents, one per type in
            the order of ``constituents``.
        """
        raw = dict(zip(self.constituents, constituents, strict=True))
        parts = [self._embed(name, jet_features, raw[name]) for name in self.order]
        encoder = self.model.encoder
        registers = getattr(encoder, "registers", None)  # (R, D) learned tokens, in front
        if registers is not None:
            parts = [registers.to(parts[0].dtype), *parts]
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        for i, layer in enumerate(encoder.layers):
            h = self._layer(i, layer, h)
        h = _encoder_output(encoder, h)
        n_reg = 0 if registers is None else registers.shape[0]
        gate = self.model.pooling.gate
        weights = torch.softmax(F.linear(h, gate.weight, gate.bias), dim=0)  # (n, 1)
        global_rep = torch.matmul(weights.t(), h)  # (1, D); zeros without constituents
        if self.model.use_global:
            glob = jet_features.index_select(1, self._gather_global)
            glob = self.model.input_norm({"GLOBAL": glob})["GLOBAL"]
            global_rep = torch.cat([global_rep, glob], dim=-1)
        encoded, start = {}, n_reg
        for name, part in zip(self.order, parts[1:] if n_reg else parts, strict=True):
            n = part.shape[0]
            encoded[name] = h if len(parts) == 1 else h[start : start + n]
            start = start + n
        return encoded, global_rep
