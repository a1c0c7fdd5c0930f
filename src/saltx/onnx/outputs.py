"""The outputs of an exported model: which tasks, their names, renames and combinations.

As Salt's ``to_onnx`` writes them (and Athena reads them):

* every task on the global object gives per-jet **scalars** (rank-0 tensors; Athena makes
  a float decoration of a rank-0 output and a vector decoration of a rank-1 output), in
  task order: a classification task one probability per class, ``<name>_p<flavour>``; a
  regression task one value per target, ``<name>_<target>``;
* ``rename_outputs`` ``{old: new}`` renames ``<name>_<old>`` to ``<name>_<new>`` (Salt's
  ``-r old:new``);
* ``combine_outputs`` appends linear combinations of those outputs (after renaming), in
  Salt's syntax ``"NEW,TERM,TERM,..."`` with ``TERM = [SCALE*]OUTPUT`` (``"plight,pu,0.5*pc"``
  is ``<name>_plight = <name>_pu + 0.5 <name>_pc``);
* with ``include_aux``, per-constituent int8 vectors ``(n_tracks,)``: ``<name>_TrackOrigin``
  (argmax of the constituent classification task) and ``<name>_VertexIndex`` (vertex of
  each track: the smallest index of its group).

The model name may contain neither ``_`` nor ``-`` (Athena takes the model name from the
output names up to the first ``_``; auxiliary variable names cannot contain ``-``): a
run name such as ``GN2_v01`` gives ``GN2v01``, as in Salt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from saltx.eval.metrics import class_label


def onnx_model_name(name: str, explicit: bool = False) -> str:
    """The model name of the output names.

    A name from the run's config loses its ``_`` and ``-`` (Salt's rule); an ``explicit``
    name (``name=`` of the export) must not contain them.

    Raises
    ------
    ValueError
        For an explicit name with ``_`` or ``-``, or an empty name.
    """
    name = str(name)
    if explicit and ("_" in name or "-" in name):
        raise ValueError(
            f"export name={name!r}: the model name may contain neither '_' nor '-' (Athena "
            f"reads the model name up to the first '_' of the output names); e.g. "
            f"{name.replace('_', '').replace('-', '')!r}"
        )
    name = name.replace("_", "").replace("-", "")
    if not name:
        raise ValueError("the model name of the ONNX outputs is empty")
    return name


def onnx_class_suffix(class_name: str) -> str:
    """``p`` + the class name without a trailing ``jets``: ``bjets`` -> ``pb``.

    Known ftag flavours use ftag's ``px`` (identical for b, c, u, tau); Salt's
    character-wise ``rstrip('jets')`` (``taus`` -> ``ptau``) is not reproduced: unknown
    names keep everything but a literal ``jets`` suffix, as in the predictions h5.
    """
    return class_label(class_name).px


def parse_combination(spec: str) -> tuple[str, list[tuple[float, str]]]:
    """Salt's ``--combine_outputs`` item: ``"NEW,[SCALE*]OUT,..."`` -> ``(NEW, [(scale, OUT)])``.

    Raises
    ------
    ValueError
        On an item without terms or a scale that is not a number.
    """
    items = [s.strip() for s in str(spec).split(",")]
    if len(items) < 2 or not all(items):
        raise ValueError(
            f"combine_outputs item {spec!r}: expected 'NEW,TERM[,TERM...]' with TERM = "
            "[SCALE*]OUTPUT, e.g. 'plight,pu,0.5*pc'"
        )
    terms: list[tuple[float, str]] = []
    for term in items[1:]:
        scale, _, out = term.rpartition("*")
        try:  # an unscaled term weighs int 1, as Salt writes it into gnn_config
            terms.append((float(scale) if scale else 1, out))
        except ValueError as err:
            raise ValueError(f"combine_outputs item {spec!r}: bad scale in {term!r}") from err
    return items[0], terms


@dataclass
class OutputPlan:
    """What the exported graph returns.

    Attributes
    ----------
    model_name
        Prefix of the output names (no ``_`` or ``-``).
    tasks
        Global tasks exported, in order, with the output suffixes of each (before renames).
    rename
        ``{old suffix: new suffix}``.
    combine
        ``[(new suffix, [(scale, suffix), ...])]`` (suffixes after renames).
    origin_task, vertex_task
        Constituent tasks behind ``TrackOrigin`` / ``VertexIndex`` (None = not exported).
    aux_axes
        ``{aux output: {0: "n_<input>"}}``.
    """

    model_name: str
    tasks: list[tuple[str, list[str]]]
    rename: dict[str, str] = field(default_factory=dict)
    combine: list[tuple[str, list[tuple[float, str]]]] = field(default_factory=list)
    origin_task: str | None = None
    vertex_task: str | None = None
    aux_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    def _full(self, suffix: str) -> str:
        return f"{self.model_name}_{self.rename.get(suffix, suffix)}"

    @property
    def task_outputs(self) -> list[str]:
        """Names of the global-task outputs, in graph order (renamed)."""
        return [self._full(s) for _, suffixes in self.tasks for s in suffixes]

    @property
    def combined_outputs(self) -> list[str]:
        """Names of the combined outputs."""
        return [f"{self.model_name}_{new}" for new, _ in self.combine]

    @property
    def aux_outputs(self) -> list[str]:
        """Names of the per-constituent outputs."""
        names = []
        if self.origin_task:
            names.append(f"{self.model_name}_TrackOrigin")
        if self.vertex_task:
            names.append(f"{self.model_name}_VertexIndex")
        return names

    @property
    def names(self) -> list[str]:
        """All output names, in graph order."""
        return [*self.task_outputs, *self.combined_outputs, *self.aux_outputs]

    def combination_indices(self) -> list[list[tuple[float, int]]]:
        """Per combined output, ``(scale, index into task_outputs)`` of its terms."""
        outs = self.task_outputs
        return [
            [(scale, outs.index(f"{self.model_name}_{term}")) for scale, term in terms]
            for _, terms in self.combine
        ]

    def metadata(self) -> dict:
        """``combine_outputs`` and ``rename_outputs`` as Salt writes them into gnn_config."""
        return {
            "combine_outputs": [[new, [[s, t] for s, t in terms]] for new, terms in self.combine],
            "rename_outputs": dict(self.rename),
        }


def task_suffixes(task: nn.Module) -> list[str]:
    """Output suffixes of a global task: ``p<flavour>`` per class, or the targets.

    Raises
    ------
    ValueError
        For a task kind that has no ONNX outputs.
    """
    kind = getattr(task, "kind", "")
    if kind == "classification":
        return [onnx_class_suffix(c) for c in task.class_names]
    if kind == "regression":
        return [str(t) for t in task.targets]
    raise ValueError(f"task {task.name!r} of kind {kind!r} has no ONNX outputs")


def aux_tasks(model: nn.Module, global_object: str) -> tuple[str | None, str | None]:
    """The first constituent classification task (track origin) and vertexing task."""
    origin = vertex = None
    for name, task in model.tasks.items():
        kind = getattr(task, "kind", "")
        if task.input_name != global_object and kind == "classification" and origin is None:
            origin = name
        elif kind == "vertexing" and vertex is None:
            vertex = name
    return origin, vertex


def plan_outputs(
    model: nn.Module,
    name: str,
    global_object: str,
    include_aux: bool = False,
    tasks: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    combine: Sequence[str] | None = None,
    explicit_name: bool = False,
) -> OutputPlan:
    """Validate the export options against the model and name every output.

    Parameters
    ----------
    model
        The SaltModel.
    name
        Model name (the run's ``name``, or the export's ``name=`` with ``explicit_name``).
    global_object
        The global input (``jets``).
    include_aux
        Add ``TrackOrigin`` / ``VertexIndex``.
    tasks
        Global tasks to export (None or empty: all, as Salt).
    rename
        ``{old suffix: new suffix}``.
    combine
        Salt-syntax combinations (see :func:`parse_combination`).
    explicit_name
        ``name`` was given by the user (must not contain ``_``/``-``).

    Raises
    ------
    ValueError
        Naming the option and what the model offers.
    """
    model_name = onnx_model_name(name, explicit=explicit_name)
    global_tasks = [n for n, t in model.tasks.items() if t.input_name == global_object]
    chosen = list(tasks) if tasks else global_tasks
    unknown = [t for t in chosen if t not in global_tasks]
    if unknown:
        raise ValueError(
            f"export tasks={list(chosen)}: {unknown} are not tasks on '{global_object}'; "
            f"the model has {global_tasks}"
        )
    if not chosen:
        raise ValueError(
            f"the model has no task on '{global_object}' (tasks: {list(model.tasks)}); the "
            "ONNX export needs per-jet outputs"
        )
    for t in chosen:
        task = model.tasks[t]
        if getattr(task, "target_denominators", None):
            raise ValueError(
                f"task {t!r} predicts its targets as ratios to {task.target_denominators}, "
                "which the graph cannot undo; leave it out with export tasks=[...] "
                f"(global tasks: {global_tasks})"
            )
    plan = OutputPlan(model_name, [(t, task_suffixes(model.tasks[t])) for t in chosen])
    plan.rename = {str(k): str(v) for k, v in (rename or {}).items()}
    suffixes = [s for _, ss in plan.tasks for s in ss]
    for old in plan.rename:
        if old not in suffixes:
            raise ValueError(f"rename_outputs: no output '{old}' to rename; outputs: {suffixes}")
    plan.combine = [parse_combination(c) for c in (combine or [])]
    outs = plan.task_outputs
    for new, terms in plan.combine:
        for _, term in terms:
            if f"{model_name}_{term}" not in outs:
                raise ValueError(
                    f"combine_outputs '{new}': no output '{term}'; outputs (after renames): "
                    f"{[o.split('_', 1)[1] for o in outs]}"
                )
    if include_aux:
        origin, vertex = aux_tasks(model, global_object)
        if origin is None and vertex is None:
            raise ValueError(
                "include_aux=true but the model has neither a constituent classification "
                f"(track origin) nor a vertexing task (tasks: {list(model.tasks)})"
            )
        plan.origin_task, plan.vertex_task = origin, vertex
        for task, out in zip((origin, vertex), ("TrackOrigin", "VertexIndex"), strict=True):
            if task is not None:
                axis = f"n_{model.tasks[task].input_name}"
                plan.aux_axes[f"{model_name}_{out}"] = {0: axis}
    names = plan.names
    if len(set(names)) != len(names):
        raise ValueError(f"the ONNX outputs have duplicate names: {names}")
    return plan
