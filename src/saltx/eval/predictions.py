"""Streaming a model's test-set predictions into an h5 file with Salt's field names.

The output (``<run dir>/predictions/<ckpt stem>__test_<sample>[_<suffix>].h5``, or beside
the checkpoint as Salt writes it) holds one dataset per input, named after its h5 dataset:

* ``jets`` ``(J,)``: the test file's jet fields (all, or a chosen list) joined with the jet
  classification probabilities ``<name>_pb``, ``<name>_pc``, ``<name>_pu``,
  ``<name>_ptau`` (``<px>`` from ftag's flavours, else ``p`` + the class name without a
  trailing ``jets``), further global classification tasks as ``<task>_<px>``, and
  regression outputs ``<task>_<target>`` in physical units;
* with ``write_tracks``, one dataset per constituent input that has a task (e.g.
  ``tracks`` ``(J, T)``, T = the file's width): the copied constituent fields joined with
  origin probabilities ``<name>_p<Class>`` (e.g. ``GN2_pPileup``, Salt HEAD's names; 0 in
  padded slots), ``VertexIndex`` (int64, the int32 minimum in padded slots) and ``mask``
  (bool, True = padded), all as salt-ml 0.13 writes them.

Rows are appended batch by batch into resizable, lzf-compressed datasets (memory stays
bounded by one batch). The file is written under a temporary name in the same folder and
renamed at the very end, so an interrupted evaluation never leaves a partial file under
the final name; the temporary file of a killed evaluation is removed by the next one.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from saltx.data.h5 import open_h5
from saltx.eval.metrics import prob_suffix
from saltx.eval.report import MetricState
from saltx.eval.testset import dataset_name
from saltx.io.rundir import RunDir, remove_orphaned, temp_tag

VERTEX_INDEX_DTYPE = np.dtype(np.int64)
PAD_VERTEX_INDEX = int(np.iinfo(np.int32).min)
"""``VertexIndex`` of padded constituent slots: Salt casts its -inf fill to int32."""


def sample_name(test_file: str | os.PathLike) -> str:
    """Sample part of a prediction file name, by Salt's rule.

    The fourth ``_``-separated token of the file stem when the stem has exactly four
    (``pp_output_test_ttbar.h5`` -> ``ttbar``), else the whole stem
    (``test_zprime.h5`` -> ``test_zprime``, ``pp_output_test_ttbar_lowpt.h5`` ->
    ``pp_output_test_ttbar_lowpt``).
    """
    stem = Path(str(test_file).rstrip("/")).stem
    tokens = stem.split("_")
    return tokens[3] if len(tokens) == 4 else stem


def prediction_file_name(
    ckpt_stem: str, test_file: str | os.PathLike, suffix: str | None = None
) -> str:
    """``<ckpt stem>__test_<sample>.h5``, or ``..._<suffix>.h5`` (Salt's ``test_suff``)."""
    tail = f"_{suffix}" if suffix not in (None, "") else ""
    return f"{ckpt_stem}__test_{sample_name(test_file)}{tail}.h5"


def prediction_target(run: Any, test_file: str, ecfg: Any) -> tuple[RunDir, str, str]:
    """Where an evaluation writes: the predictions file's directory and path in it, and
    the run-relative folder of ``metrics.json`` and the plots.

    The predictions go to ``RUN/predictions/<name>``, or, with ``ecfg.beside_ckpt``, to
    ``<checkpoint dir>/<name>`` as Salt writes them (``<name>`` from
    :func:`prediction_file_name` with ``ecfg.test_suff``). Metrics and plots go to
    ``predictions/``, or ``predictions/<test_suff>/`` so that evaluations at several
    PARAMETERS values sit side by side.
    """
    suffix = ecfg.get("test_suff")
    name = prediction_file_name(run.ckpt_stem, test_file, suffix)
    report = f"predictions/{suffix}" if suffix not in (None, "") else "predictions"
    if ecfg.beside_ckpt:
        return RunDir(posixpath.dirname(str(run.ckpt_path).rstrip("/"))), name, report
    return run.rundir, f"predictions/{name}", report


@dataclass
class OutputSpec:
    """Where each task's predictions go in the output file.

    Attributes
    ----------
    jet_fields
        Output field -> ``(task name, predict key, column index)`` for the jets dataset.
    constituent_fields
        Input name -> output field -> ``(task name, predict key, column index or None)``.
    """

    jet_fields: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    constituent_fields: dict[str, dict[str, tuple[str, str, int | None]]] = field(
        default_factory=dict
    )

    @property
    def jet_classification_task(self) -> str | None:
        """Name of the task that gives ``<name>_p*`` (the first global classification)."""
        for task, key, _ in self.jet_fields.values():
            if key == "probs":
                return task
        return None


def output_spec(
    tasks: Mapping[str, nn.Module], model_name: str, global_object: str = "jets"
) -> OutputSpec:
    """Name every prediction output after Salt.

    Parameters
    ----------
    tasks
        ``model.tasks``.
    model_name
        ``cfg.name`` (e.g. ``GN2``).
    global_object
        Name of the global input (``jets``).

    Returns
    -------
    OutputSpec
        Output field names and their sources.
    """
    spec = OutputSpec()
    first_jet_cls = True
    for task in tasks.values():
        kind = getattr(task, "kind", "")
        if task.input_name == global_object:
            if kind == "classification":
                prefix = model_name if first_jet_cls else task.name
                first_jet_cls = False
                for i, c in enumerate(task.class_names):
                    _add(spec.jet_fields, f"{prefix}_{prob_suffix(c)}", (task.name, "probs", i))
            elif kind == "regression":
                for i, t in enumerate(task.targets):
                    _add(spec.jet_fields, f"{task.name}_{t}", (task.name, "values", i))
                    if getattr(task, "gaussian", False):
                        _add(spec.jet_fields, f"{task.name}_{t}_stddev", (task.name, "stddev", i))
            continue
        out = spec.constituent_fields.setdefault(task.input_name, {})
        if kind == "classification":
            for i, c in enumerate(task.class_names):
                name = f"{model_name}_p{c}"
                if name in out:
                    name = f"{task.name}_p{c}"
                _add(out, name, (task.name, "probs", i))
        elif kind == "regression":
            for i, t in enumerate(task.targets):
                _add(out, f"{task.name}_{t}", (task.name, "values", i))
        elif kind == "vertexing":
            name = "VertexIndex" if "VertexIndex" not in out else f"{task.name}_VertexIndex"
            _add(out, name, (task.name, "vertex_index", None))
    return spec


def _add(fields: dict[str, Any], name: str, source: Any) -> None:
    if name in fields:
        raise ValueError(f"two predictions would both be written as output field '{name}'")
    fields[name] = source


def task_outputs(
    tasks: Mapping[str, nn.Module], preds: Mapping[str, Tensor], batch: Any
) -> dict[str, dict[str, np.ndarray]]:
    """``task.predict`` of every task, as float32/int numpy arrays on the CPU."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, task in tasks.items():
        result = task.predict(preds, batch)
        out[name] = {
            k: (v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy())
            if isinstance(v, Tensor)
            else np.asarray(v)
            for k, v in result.items()
        }
    return out


class H5Appender:
    """Append rows to structured h5 datasets; rename the file into place on :meth:`commit`.

    Parameters
    ----------
    path
        Final local path of the file.
    chunk_rows
        Chunk length (rows) of the datasets.
    """

    def __init__(self, path: str | os.PathLike, chunk_rows: int = 1000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned(self.path.parent, f".{self.path.name}.*.tmp")  # of killed evaluations
        self.tmp_path = self.path.with_name(f".{self.path.name}.{temp_tag()}.tmp")
        self.file = h5py.File(self.tmp_path, "w")
        self.chunk_rows = max(1, int(chunk_rows))
        self.rows: dict[str, int] = {}

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (structured, ``(B,)`` or ``(B, T)``) to dataset ``name``."""
        if name not in self.file:
            self.file.create_dataset(
                name,
                shape=(0, *rows.shape[1:]),
                maxshape=(None, *rows.shape[1:]),
                dtype=rows.dtype,
                chunks=(min(self.chunk_rows, max(1, len(rows))), *rows.shape[1:]),
                compression="lzf",
            )
            self.rows[name] = 0
        ds = self.file[name]
        start = self.rows[name]
        ds.resize(start + len(rows), axis=0)
        ds[start:] = rows
        self.rows[name] = start + len(rows)

    def set_attr(self, name: str, key: str, value: Any) -> None:
        """Set an attribute on dataset ``name`` (it must exist)."""
        self.file[name].attrs[key] = value

    def commit(self) -> Path:
        """Close the file and rename it to its final name."""
        self.file.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)


def join_fields(copied: np.ndarray | None, new: Mapping[str, np.ndarray]) -> np.ndarray:
    """Structured array of ``copied``'s fields followed by the ``new`` columns.

    Parameters
    ----------
    copied
        ``(B,)`` or ``(B, T)`` structured array, or None.
    new
        Field -> array of the same leading shape.
    """
    shape = copied.shape if copied is not None else next(iter(new.values())).shape
    names = list(copied.dtype.names) if copied is not None else []
    clash = sorted(set(names) & set(new))
    if clash:
        raise ValueError(
            f"prediction fields {clash} already exist in the copied input fields; rename the "
            "model (name=...) or drop those fields from the copied list"
        )
    dtype = [(n, copied.dtype[n]) for n in names] + [(n, v.dtype) for n, v in new.items()]
    out = np.empty(shape, dtype=dtype)
    for n in names:
        out[n] = copied[n]
    for n, v in new.items():
        out[n] = v
    return out


def select_fields(dataset: h5py.Dataset, fields: Sequence[str] | None, where: str) -> list[str]:
    """The fields to copy from ``dataset``: all, or ``fields`` after checking they exist."""
    names = list(dataset.dtype.names or [])
    if fields is None:
        return names
    missing = [f for f in fields if f not in names]
    if missing:
        raise KeyError(f"{where}: fields {missing} are not in the file; available: {names}")
    return list(fields)


def read_rows(dataset: h5py.Dataset, fields: Sequence[str], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``fields`` (a structured array, possibly with no fields)."""
    if not fields:
        return np.empty((stop - start, *dataset.shape[1:]), dtype=[])
    return dataset.fields(list(fields))[start:stop]


def pad_to(array: np.ndarray, width: int, fill: Any) -> np.ndarray:
    """Pad or keep axis 1 of ``array`` ``(B, N, ...)`` to ``width``."""
    if array.shape[1] >= width:
        return array[:, :width]
    pad = np.full((array.shape[0], width - array.shape[1], *array.shape[2:]), fill, array.dtype)
    return np.concatenate([array, pad], axis=1)


def jet_columns(spec: OutputSpec, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """Prediction columns ``(B,)`` of the jets dataset (float32)."""
    return {
        name: outputs[task][key][:, i].astype(np.float32)
        for name, (task, key, i) in spec.jet_fields.items()
    }


def constituent_columns(
    spec: OutputSpec,
    input_name: str,
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    mask: np.ndarray,
    width: int,
) -> dict[str, np.ndarray]:
    """Prediction columns ``(B, width)`` of one constituent dataset, plus ``mask``.

    Parameters
    ----------
    mask
        ``(B, N)`` bool, True = padded (N ≤ width; slots beyond N are padded).
    width
        Number of constituent slots in the test file.
    """
    cols: dict[str, np.ndarray] = {}
    for name, (task, key, i) in spec.constituent_fields[input_name].items():
        value = outputs[task][key]
        if key == "vertex_index":
            v = np.where(mask, PAD_VERTEX_INDEX, value).astype(VERTEX_INDEX_DTYPE)
            cols[name] = pad_to(v, width, PAD_VERTEX_INDEX)
        else:
            v = np.where(mask, 0.0, value[..., i]).astype(np.float32)
            cols[name] = pad_to(v, width, 0.0)
    cols["mask"] = pad_to(mask.astype(bool), width, True)
    return cols


def field_list(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_predictions(
    model: nn.Module,
    loader: Any,
    spec: Any,
    cfg: DictConfig,
    ecfg: DictConfig,
    out_path: Path,
    n_jets: int,
    device: torch.device,
    class_names: list[str] | None,
) -> MetricState:
    """Run the model over ``loader`` and stream the predictions h5 to ``out_path``.

    The file appears under its final name only when every batch was written; on any
    error the temporary file is removed.

    Returns
    -------
    MetricState
        The running metric sums over the test set.
    """
    test_file = str(cfg.data.test_file)
    g = str(cfg.data.global_object)
    writer = H5Appender(out_path, chunk_rows=min(int(cfg.data.batch_size), 10_000))
    state = MetricState()
    try:
        with open_h5(test_file) as f, torch.inference_mode():
            jet_out = dataset_name(cfg, g)  # outputs are named after the h5 datasets (Salt)
            jets_ds = f[jet_out]
            jet_fields = select_fields(
                jets_ds,
                field_list(ecfg.get("jet_fields")),
                f"jet_fields ({test_file}:{jets_ds.name})",
            )
            const_ds = {}
            if ecfg.write_tracks:
                for inp in spec.constituent_fields:
                    ds = f[dataset_name(cfg, inp)]
                    fields = select_fields(
                        ds,
                        field_list(ecfg.get("track_fields")),
                        f"track_fields ({test_file}:{ds.name})",
                    )
                    const_ds[inp] = (ds, fields)
            start = 0
            threads = torch.get_num_threads()
            # only the forward pass runs on all intra-op threads: loading, task outputs,
            # metrics and h5 rows are small ops whose thread barriers cost more than
            # they gain (and much more when the CPUs are shared)
            with intra_op_threads(1):
                for batch in loader:
                    on_device = batch.to(device)
                    with intra_op_threads(threads):
                        preds, _ = model(on_device.inputs, on_device.masks)
                    outputs = task_outputs(model.tasks, preds, on_device)
                    stop = start + batch.num_jets
                    rows = read_rows(jets_ds, jet_fields, start, stop)
                    writer.append(jet_out, join_fields(rows, jet_columns(spec, outputs)))
                    for inp, (ds, fields) in const_ds.items():
                        mask = batch.masks[inp].numpy()
                        cols = constituent_columns(spec, inp, outputs, mask, ds.shape[1])
                        rows = join_fields(read_rows(ds, fields, start, stop), cols)
                        writer.append(dataset_name(cfg, inp), rows)
                    state.update(model, outputs, batch, spec.jet_classification_task)
                    start = stop
            if start != n_jets:
                raise RuntimeError(f"evaluated {start} jets but the test set has {n_jets}")
        if class_names:
            writer.set_attr(jet_out, "flavour_label", class_names)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return state
