"""ONNX export of a trained model in Athena's conventions.

Graph inputs (raw features; the normalisation is inside the graph):

* ``jet_features`` ``(1, F_jet)``: ``data.variables.jets`` then the ``GLOBAL`` and
  ``PARAMETERS`` variables that are not already listed, each name once (see
  :attr:`ExportLayout.jet_variables`). The model's jets, GLOBAL and PARAMETERS inputs are
  gathered from it by name;
* one ``<type>_features`` ``(n_<type>, F_type)`` per constituent input, named after the
  input without its trailing ``s`` (``track_features`` with axis ``n_tracks``,
  ``electron_features`` with ``n_electrons``). Athena passes only real constituents, so the
  graph has no padding and no masks;
* ``edge_features`` ``(n_tracks, 4)`` raw ``[pt, eta, phi, subjetIndex]`` of the edge
  input's constituents, only for models with edge features (a saltx extension).

Outputs: see :mod:`saltx.onnx.outputs` (per-jet scalars, as Salt writes them).

Two graphs compute the same outputs: ``single`` (:mod:`saltx.onnx.singlejet`, a short
graph of 2-D matrices for the model structures it knows) and ``generic`` (the model's own
forward with a batch of one and all-valid masks, for every model). ``auto`` takes
``single`` where the model supports it.

ONNX opset 17 and IR version 8 (see :data:`OPSET`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saltx.models.pair_components import pair_adjacency
from saltx.mup.fold import fold_mureadout
from saltx.onnx.outputs import OutputPlan
from saltx.onnx.singlejet import (
    SingleJetRepresentation,
    aux_unsupported_reason,
    dense_rows,
    pair_logits_rows,
    unsupported_reason,
)

OPSET = 17
"""ONNX opset: the lowest with every operator the graphs use (``LayerNormalization`` is
native from 17). The file declares the lowest IR version valid for it (8), so any
onnxruntime from 1.13 on loads it; Salt 0.13 writes opset 20 and IR 9 (onnxruntime 1.17
or later), so the files load wherever Salt's do."""

EXAMPLE_TRACKS = 40
"""Constituents in the example inputs used for tracing."""

CLOSURE_SQUARINGS = 7
"""Boolean matrix squarings of the vertex finder: exact for vertices of up to 128 tracks
(paths of up to 2**7 edges), the range of the int8 vertex ids."""

GRAPHS = ("auto", "single", "generic")
"""Values of the export's ``graph`` option."""


def feature_input_name(input_name: str) -> str:
    """``tracks`` -> ``track_features``, ``electrons`` -> ``electron_features``."""
    base = input_name[:-1] if input_name.endswith("s") else input_name
    return f"{base}_features"


@dataclass
class ExportLayout:
    """Where each model input comes from in the ONNX inputs.

    Attributes
    ----------
    global_object
        Name of the global input (``jets``).
    jet_variables
        Names of the ``jet_features`` columns, in order.
    gather
        Model input (``jets``, ``GLOBAL``, ``PARAMETERS``) -> column indices into
        ``jet_features``.
    constituents
        Constituent input names (``tracks``, ``electrons``), in ``data.variables`` order.
    constituent_variables
        Constituent input -> its feature names.
    masked
        Constituent inputs the model takes a mask for.
    edge_input
        Constituent input whose raw ``[pt, eta, phi, subjetIndex]`` feed the edge features,
        or None.
    """

    global_object: str
    jet_variables: list[str]
    gather: dict[str, list[int]]
    constituents: list[str]
    constituent_variables: dict[str, list[str]]
    masked: list[str] = field(default_factory=list)
    edge_input: str | None = None

    @property
    def input_names(self) -> list[str]:
        """ONNX input names, in the order of the wrapper's ``forward`` arguments."""
        names = ["jet_features", *(feature_input_name(c) for c in self.constituents)]
        return [*names, "edge_features"] if self.edge_input else names

    def axis_name(self, constituent: str) -> str:
        """Dynamic axis name of a constituent input: ``n_tracks``."""
        return f"n_{constituent}"

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{onnx input: {0: "n_<type>"}}`` for the constituent (and edge) inputs."""
        axes = {feature_input_name(c): {0: self.axis_name(c)} for c in self.constituents}
        if self.edge_input:
            axes["edge_features"] = {0: self.axis_name(self.edge_input)}
        return axes


def export_layout(
    variables: Mapping[str, Sequence[str]], global_object: str = "jets", edge_input: str = "tracks"
) -> ExportLayout:
    """Derive the ONNX input layout from ``data.variables``.

    Parameters
    ----------
    variables
        ``{input: [variable, ...]}`` of the training config.
    global_object
        The global input name.
    edge_input
        Constituent input the edges belong to (``SaltModel.edge_input``).
    """
    variables = {k: list(v) for k, v in variables.items()}
    if global_object not in variables:
        raise KeyError(f"data.variables has no global object '{global_object}'")
    jet_vars: list[str] = []
    gather: dict[str, list[int]] = {}
    for name in (global_object, "GLOBAL", "PARAMETERS"):
        if not variables.get(name):
            continue
        idx = []
        for var in variables[name]:
            if var not in jet_vars:
                jet_vars.append(var)
            idx.append(jet_vars.index(var))
        gather[name] = idx
    constituents = [
        k for k in variables if k != global_object and k not in ("GLOBAL", "PARAMETERS", "EDGE")
    ]
    return ExportLayout(
        global_object=global_object,
        jet_variables=jet_vars,
        gather=gather,
        constituents=constituents,
        constituent_variables={c: variables[c] for c in constituents},
        masked=list(constituents),
        edge_input=edge_input if variables.get("EDGE") else None,
    )


def vertex_index(adjacency: Tensor) -> Tensor:
    """Smallest node index of each node's connected component, with static ops only.

    Transitive closure by repeated boolean matrix squaring (no data-dependent loop, so the
    graph works for any number of tracks up to ``2 ** CLOSURE_SQUARINGS``).

    Parameters
    ----------
    adjacency
        ``(..., N, N)`` bool symmetric adjacency without padded nodes (the diagonal is
        ignored).

    Returns
    -------
    Tensor
        ``(..., N)`` long component ids (the smallest index in the component).
    """
    n = adjacency.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=adjacency.device)
    reach = (adjacency | eye).float()
    for _ in range(CLOSURE_SQUARINGS):
        reach = (reach @ reach).clamp(max=1.0)
    index = torch.arange(n, device=adjacency.device).to(torch.float32)
    big = torch.full_like(reach, 1e9)
    return torch.where(reach > 0, index, big).amin(dim=-1).long()


class ONNXWrapper(nn.Module):
    """Athena-facing forward: flat per-jet inputs in, one tensor per output out.

    Parameters
    ----------
    model
        A :class:`saltx.models.saltmodel.SaltModel` in eval mode.
    layout
        From :func:`export_layout`.
    plan
        From :func:`saltx.onnx.outputs.plan_outputs`.
    single
        Compute the representations with :class:`SingleJetRepresentation` (else with the
        model's forward on a batch of one).
    """

    def __init__(
        self, model: nn.Module, layout: ExportLayout, plan: OutputPlan, single: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.plan = plan
        self.single = (
            SingleJetRepresentation(model, layout.gather, layout.constituents) if single else None
        )
        self.combinations = plan.combination_indices()
        for name, idx in layout.gather.items():
            self.register_buffer(f"_gather_{name}", torch.tensor(idx, dtype=torch.long))

    def model_inputs(self, jet_features: Tensor, *rest: Tensor) -> tuple[dict, dict]:
        """Model inputs ``(B=1, ...)`` and all-valid masks from the ONNX inputs."""
        inputs: dict[str, Tensor] = {}
        for name in self.layout.gather:
            inputs[name] = jet_features.index_select(1, getattr(self, f"_gather_{name}"))
        masks: dict[str, Tensor] = {}
        for name, x in zip(self.layout.constituents, rest, strict=False):
            inputs[name] = x.unsqueeze(0)
            masks[name] = torch.zeros_like(x[:, 0], dtype=torch.bool).unsqueeze(0)
        if self.layout.edge_input:
            inputs["EDGE"] = rest[len(self.layout.constituents)].unsqueeze(0)
        return inputs, masks

    def forward(self, jet_features: Tensor, *constituents: Tensor) -> tuple[Tensor, ...]:
        """``jet_features`` ``(1, F)``, then ``(n_<type>, F_type)`` per constituent input."""
        plan, tasks = self.plan, self.model.tasks
        if self.single is None:
            inputs, masks = self.model_inputs(jet_features, *constituents)
            preds, _ = self.model(inputs, masks)
        else:
            encoded, global_rep = self.single(jet_features, *constituents)
            preds = {t: tasks[t](global_rep)[0] for t, _ in plan.tasks}
        outputs: list[Tensor] = []
        for t, suffixes in plan.tasks:
            values = task_values(tasks[t], preds[t]).reshape(-1)
            outputs += [values[i] for i in range(len(suffixes))]  # rank 0 each
        for terms in self.combinations:
            parts = [outputs[i] if scale == 1.0 else scale * outputs[i] for scale, i in terms]
            outputs.append(sum(parts[1:], parts[0]))
        if plan.origin_task is not None:
            task = tasks[plan.origin_task]
            if self.single is None:
                logits = preds[plan.origin_task][0]
            else:
                logits = dense_rows(task.net, encoded[task.input_name], global_rep)
            outputs.append(logits.argmax(-1).to(torch.int8))
        if plan.vertex_task is not None:
            task = tasks[plan.vertex_task]
            if self.single is None:
                adj = pair_adjacency(preds[plan.vertex_task], masks[task.input_name])[0]
            else:
                logits = pair_logits_rows(task, encoded[task.input_name], global_rep)
                adj = torch.sigmoid(0.5 * (logits + logits.t())) >= 0.5
            outputs.append(vertex_index(adj).to(torch.int8))
        return tuple(outputs)


def task_values(task: nn.Module, preds: Tensor) -> Tensor:
    """Per-jet outputs of a global task: probabilities ``(1, C)`` or values ``(1, T)``."""
    if getattr(task, "kind", "") == "classification":
        return torch.softmax(preds.float(), dim=-1)
    return task.predict(preds)["values"]


def example_inputs(layout: ExportLayout, n: int = EXAMPLE_TRACKS, seed: int = 0) -> tuple:
    """Random raw inputs in ``[0, 1)``: ``(1, F_jet)`` and ``(n, F_type)`` per type."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.rand(1, len(layout.jet_variables), generator=g)]
    for c in layout.constituents:
        out.append(torch.rand(n, len(layout.constituent_variables[c]), generator=g))
    if layout.edge_input:
        out.append(torch.rand(n, 4, generator=g))
    return tuple(out)


def patch_bool_eyelike(path: str | os.PathLike) -> int:
    """Make ``EyeLike`` nodes with a bool output runnable by onnxruntime, in place.

    ``torch.eye(n, dtype=torch.bool)`` traces to an ``EyeLike`` on a bool tensor, which
    onnxruntime does not implement; each such node gets its input cast to float32,
    produces float32, and is followed by a ``Cast`` to bool. Returns the number of nodes
    rewritten.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    graph = model.graph
    nodes = list(graph.node)
    count = 0
    del graph.node[:]
    for node in nodes:
        if node.op_type != "EyeLike":
            graph.node.append(node)
            continue
        dtype = next((a for a in node.attribute if a.name == "dtype"), None)
        out_type = dtype.i if dtype is not None else types.get(node.input[0])
        if out_type != TensorProto.BOOL:
            graph.node.append(node)
            continue
        count += 1
        if dtype is None:
            node.attribute.append(helper.make_attribute("dtype", TensorProto.FLOAT))
        else:
            dtype.i = TensorProto.FLOAT
        src = node.input[0]
        node.input[0] = f"{src}__float_in"
        graph.node.append(
            helper.make_node(
                "Cast", [src], [node.input[0]], to=TensorProto.FLOAT, name=f"{node.name}_in"
            )
        )
        out = node.output[0]
        node.output[0] = f"{out}__float"
        graph.node.append(node)
        cast = helper.make_node(
            "Cast", [node.output[0]], [out], to=TensorProto.BOOL, name=f"{node.name}_cast"
        )
        graph.node.append(cast)
    if count:
        onnx.save(model, str(path))
    return count


def set_min_ir_version(path: str | os.PathLike) -> int:
    """Declare the lowest IR version valid for the file's opsets (torch may write a newer
    one than the opset needs); returns it."""
    import onnx

    model = onnx.load(str(path))
    ir = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    if model.ir_version != ir:
        model.ir_version = ir
        onnx.save(model, str(path))
    return ir


def choose_graph(model: nn.Module, graph: str, plan: OutputPlan) -> tuple[bool, str | None]:
    """``(single, reason)``: whether to build the single-jet graph, and why not.

    Raises
    ------
    ValueError
        For an unknown ``graph``, or ``graph=single`` on a model it does not support.
    """
    if graph not in GRAPHS:
        raise ValueError(f"export graph={graph!r}: expected one of {list(GRAPHS)}")
    if graph == "generic":
        return False, "graph=generic"
    reason = unsupported_reason(model) or aux_unsupported_reason(
        model, [plan.origin_task, plan.vertex_task]
    )
    if reason and graph == "single":
        raise ValueError(
            f"graph=single: the single-jet graph does not support this model: {reason}"
        )
    return reason is None, reason


def export_onnx(
    model: nn.Module,
    layout: ExportLayout,
    path: str | os.PathLike,
    plan: OutputPlan,
    single: bool = True,
) -> list[str]:
    """Trace ``model`` into an ONNX file at ``path`` (no metadata yet).

    Parameters
    ----------
    model
        The SaltModel; put in eval mode, MuReadout layers folded.
    layout
        From :func:`export_layout`.
    path
        Output file (overwritten).
    plan
        The outputs, from :func:`saltx.onnx.outputs.plan_outputs`.
    single
        Export the single-jet graph (see :func:`choose_graph`), else the generic one.

    Returns
    -------
    list[str]
        The output names.
    """
    model = fold_mureadout(model.eval(), inplace=True)
    wrapper = ONNXWrapper(model, layout, plan, single=single).eval()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation/tracer warnings
        torch.onnx.export(
            wrapper,
            example_inputs(layout),
            str(path),
            dynamo=False,
            input_names=layout.input_names,
            output_names=plan.names,
            dynamic_axes={**layout.dynamic_axes, **plan.aux_axes},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    patch_bool_eyelike(path)
    set_min_ir_version(path)
    return plan.names


def torch_reference(
    model: nn.Module, layout: ExportLayout, inputs: Sequence[Tensor], plan: OutputPlan
) -> dict[str, Any]:
    """What the exported graph must give, from the model's own forward and predict path.

    Returns ``{output name: numpy value}`` (scalars for the per-jet outputs, ``(n,)`` int64
    for the aux outputs).
    """
    wrapper = ONNXWrapper(model, layout, plan)
    model_inputs, masks = wrapper.model_inputs(*inputs)
    batch = {"masks": masks, "labels": {}}
    out: dict[str, Any] = {}
    with torch.no_grad():
        preds, _ = model(model_inputs, masks)
        values = []
        for t, _ in plan.tasks:
            task = model.tasks[t]
            pred = task.predict(preds, batch)
            values += list((pred["probs"] if "probs" in pred else pred["values"])[0].double())
        for value, name in zip(values, plan.task_outputs, strict=True):
            out[name] = value.numpy()
        for name, terms in zip(plan.combined_outputs, plan.combination_indices(), strict=True):
            out[name] = sum(s * values[i] for s, i in terms).numpy()
        if plan.origin_task is not None:
            task = model.tasks[plan.origin_task]
            probs = task.predict(preds, batch)["probs"][0]
            out[plan.aux_outputs[0]] = probs.argmax(-1).numpy()
        if plan.vertex_task is not None:
            vertex = model.tasks[plan.vertex_task].predict(preds, batch)["vertex_index"][0]
            out[plan.aux_outputs[-1]] = vertex.numpy()
    return out
