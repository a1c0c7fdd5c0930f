"""ONNX export of a trained model in Athena's conventions.

Graph inputs (raw features; the normalisation is inside the graph):

* ``jet_features`` ``(1, F_jet)``: ``data.variables.jets`` then the ``GLOBAL`` and
  ``PARAMETERS`` variables that are not already listed, each name once (see
  :attr:`ExportLayout.jet_variables`). The model's jets, GLOBAL and PARAMETERS inputs are
  gathered from it by name;
* one ``<type>_features`` ``(n_<type>, F_type)`` per constituent input, named after the
  input without its trailing ``s`` (``track_features`` with axis ``n_tracks``,
  ``electron_features`` with ``n_electrons``). Athena passes only real constituents, so the
  graph uses an all-valid mask;
* ``edge_features`` ``(n_tracks, 4)`` raw ``[pt, eta, phi, subjetIndex]`` of the edge
  input's constituents, only for models with edge features (a saltx extension).

Outputs: ``<name>_p<flavour>`` ``(1,)`` float32 per jet class (``bjets`` -> ``pb``,
``taujets`` -> ``ptau``); with ``include_aux``, ``<name>_TrackOrigin`` ``(n_tracks,)`` int8
(argmax of the track-origin task) and ``<name>_VertexIndex`` ``(n_tracks,)`` int8 (smallest
track index of the track's vertex), as Salt and Athena use them.
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

from saltx.eval.metrics import class_label
from saltx.mup.fold import fold_mureadout

OPSET = 17
"""ONNX opset (LayerNormalization is a native op from 17)."""

EXAMPLE_TRACKS = 40
"""Constituents in the example inputs used for tracing."""

CLOSURE_SQUARINGS = 10
"""Boolean matrix squarings of the vertex finder: exact for vertices of up to 1024 tracks."""


def onnx_model_name(name: str) -> str:
    """The model name used in ONNX output names: ``-`` becomes ``_`` (Athena auxvar names)."""
    return str(name).replace("-", "_")


def onnx_class_suffix(class_name: str) -> str:
    """``p`` + the class name without a trailing ``jets``: ``bjets`` -> ``pb``.

    Known ftag flavours use ftag's ``px`` (identical for b, c, u, tau); Salt's
    character-wise ``rstrip('jets')`` (``taus`` -> ``ptau``) is not reproduced: unknown
    names keep everything but a literal ``jets`` suffix, as in the predictions h5.
    """
    return class_label(class_name).px


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
        Constituent input of the edges (``data.input_map.EDGE``, default ``tracks``).
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
        ``(B, N, N)`` bool symmetric adjacency without padded nodes.

    Returns
    -------
    Tensor
        ``(B, N)`` long component ids (the smallest index in the component).
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
    jet_task
        Name of the jet classification task giving the flavour probabilities.
    origin_task, vertex_task
        Names of the aux tasks (track origin, vertexing) or None; only used with aux.
    include_aux
        Add ``TrackOrigin`` and ``VertexIndex`` outputs.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ExportLayout,
        jet_task: str,
        origin_task: str | None = None,
        vertex_task: str | None = None,
        include_aux: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.jet_task = jet_task
        self.include_aux = include_aux
        self.origin_task = origin_task if include_aux else None
        self.vertex_task = vertex_task if include_aux else None
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
        inputs, masks = self.model_inputs(jet_features, *constituents)
        preds, _ = self.model(inputs, masks)
        probs = torch.softmax(preds[self.jet_task].float(), dim=-1)
        outputs = [probs[:, i] for i in range(probs.shape[-1])]
        if self.origin_task is not None:
            origin = preds[self.origin_task][0].argmax(-1)
            outputs.append(origin.to(torch.int8))
        if self.vertex_task is not None:
            from saltx.models.union_find import pair_adjacency

            task = self.model.tasks[self.vertex_task]
            adj = pair_adjacency(preds[self.vertex_task], masks[task.input_name])
            outputs.append(vertex_index(adj)[0].to(torch.int8))
        return tuple(outputs)


def find_tasks(model: nn.Module, global_object: str) -> tuple[str, str | None, str | None]:
    """Names of the jet classification, track-origin and vertexing tasks.

    Raises
    ------
    ValueError
        When the model has no classification task on the global object.
    """
    jet = origin = vertex = None
    for name, task in model.tasks.items():
        kind = getattr(task, "kind", "")
        if task.input_name == global_object and kind == "classification" and jet is None:
            jet = name
        elif task.input_name != global_object and kind == "classification" and origin is None:
            origin = name
        elif kind == "vertexing" and vertex is None:
            vertex = name
    if jet is None:
        raise ValueError(
            f"the model has no classification task on '{global_object}' "
            f"(tasks: {list(model.tasks)}); ONNX export needs the jet flavour probabilities"
        )
    return jet, origin, vertex


def output_names(
    model: nn.Module, name: str, layout: ExportLayout, include_aux: bool
) -> tuple[list[str], dict[str, dict[int, str]]]:
    """ONNX output names and their dynamic axes."""
    jet, origin, vertex = find_tasks(model, layout.global_object)
    name = onnx_model_name(name)
    names = [f"{name}_{onnx_class_suffix(c)}" for c in model.tasks[jet].class_names]
    axes: dict[str, dict[int, str]] = {}
    if include_aux:
        for task, suffix in ((origin, "TrackOrigin"), (vertex, "VertexIndex")):
            if task is not None:
                names.append(f"{name}_{suffix}")
                axes[names[-1]] = {0: layout.axis_name(model.tasks[task].input_name)}
    return names, axes


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


def export_onnx(
    model: nn.Module,
    layout: ExportLayout,
    path: str | os.PathLike,
    name: str,
    include_aux: bool = False,
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
    name
        Model name for the output names.
    include_aux
        Add the track-origin and vertex-index outputs (when the model has those tasks).

    Returns
    -------
    list[str]
        The output names.
    """
    model = fold_mureadout(model.eval(), inplace=True)
    jet, origin, vertex = find_tasks(model, layout.global_object)
    if include_aux and origin is None and vertex is None:
        raise ValueError(
            "include_aux=true but the model has neither a constituent classification "
            f"(track origin) nor a vertexing task (tasks: {list(model.tasks)})"
        )
    wrapper = ONNXWrapper(model, layout, jet, origin, vertex, include_aux).eval()
    names, out_axes = output_names(model, name, layout, include_aux)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation/tracer warnings
        torch.onnx.export(
            wrapper,
            example_inputs(layout),
            str(path),
            dynamo=False,
            input_names=layout.input_names,
            output_names=names,
            dynamic_axes={**layout.dynamic_axes, **out_axes},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    patch_bool_eyelike(path)
    return names


def torch_reference(
    model: nn.Module, layout: ExportLayout, inputs: Sequence[Tensor], include_aux: bool
) -> dict[str, Any]:
    """What the exported graph must give, computed with the model's own predict path.

    Returns ``{"probs": (C,), "origin": (n,) or None, "vertex": (n,) or None}`` as numpy.
    """
    jet, origin, vertex = find_tasks(model, layout.global_object)
    wrapper = ONNXWrapper(model, layout, jet)
    model_inputs, masks = wrapper.model_inputs(*inputs)
    batch = {"masks": masks, "labels": {}}
    with torch.no_grad():
        preds, _ = model(model_inputs, masks)
        out: dict[str, Any] = {
            "probs": model.tasks[jet].predict(preds, batch)["probs"][0].numpy(),
            "origin": None,
            "vertex": None,
        }
        if include_aux and origin is not None:
            out["origin"] = model.tasks[origin].predict(preds, batch)["probs"][0].argmax(-1)
            out["origin"] = out["origin"].numpy()
        if include_aux and vertex is not None:
            out["vertex"] = model.tasks[vertex].predict(preds, batch)["vertex_index"][0].numpy()
    return out
