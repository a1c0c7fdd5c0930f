"""JetDataset: read contiguous batches of jets from a Salt/UPP h5 file into a :class:`Batch`.

Reading strategy (measured in ``scripts/bench_dataloader.py``): for each h5 dataset the
whole records ``[start, stop)`` in the file's own dtype (no per-field conversion, which is
several times faster than asking HDF5 for a subset of fields): the compressed chunks that
hold them are decoded in place, side by side in one reused buffer, by ``read_threads``
threads (:class:`saltx.data.h5.RowReader`; HDF5 reads them where that is not possible).
Then a view-based gather: runs of requested fields that sit next to each other in the
record with one dtype are copied to float32 in one numpy call. A file written by
``python -m saltx.data.pack`` reads the same way: its constituents are stored packed and
uncompressed, and :class:`saltx.data.h5.PackedReader` rebuilds the padded records (no
decoding), so batches are bit-identical to those of the original file.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch.utils.data import Dataset

from saltx.data.batch import Batch
from saltx.data.h5 import H5Source, LazyH5, PackedReader, check_links, check_storage
from saltx.data.sampler import BatchIndex, BufferIndex
from saltx.errors import DataError

GLOBAL = "GLOBAL"
PARAMETERS = "PARAMETERS"
EDGE = "EDGE"
SPECIAL_INPUTS = (GLOBAL, PARAMETERS, EDGE)

EDGE_RAW_FIELDS = ("pt", "eta", "phi", "subjetIndex")
"""Layout of the last axis of ``inputs["EDGE"]``."""

EDGE_FEATURE_FIELDS: dict[str, tuple[str, ...]] = {
    "dR": ("eta", "phi"),
    "kt": ("pt", "eta", "phi"),
    "z": ("pt",),
    "isSelfLoop": (),
    "subjetIndex": ("subjetIndex",),
}
"""Raw constituent fields each edge feature needs (salt-semantics §2.8)."""

STAGES = ("fit", "test")

SAMPLE_JETS = 4096
"""Jets whose ``valid`` flags and unsigned labels are checked when a dataset is opened (the
first ones: a few chunk decodes, never a pass over the file)."""

DEFAULT_READ_THREADS = 1
"""Chunk-decoding threads per process (see :class:`saltx.data.h5.RowReader`). 2 lets a
loader worker also decode on the core its parent, mostly waiting for batches, leaves
free; on a machine whose cores are all busy that gains nothing (measured on a shared
2-core VM: 1 thread was as fast or faster), so it is off by default."""

Arrays = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]


@dataclass
class _Run:
    """``count`` requested fields stored back to back with one dtype, gathered in one copy."""

    out: int  # first output column
    count: int
    dtype: np.dtype
    offset: int  # byte offset in the record


@dataclass
class _Input:
    name: str
    dataset: str
    columns: list[str | None]  # gathered fields; None = a zero column (EDGE only)
    runs: list[_Run] = field(default_factory=list)
    num: int | None = None  # keep the first `num` constituents
    constituent: bool = False  # (B, N, F) with a `valid` field -> mask and zeroed padding


def _field_runs(dtype: np.dtype, columns: Sequence[str | None]) -> list[_Run]:
    """Group output columns into runs of adjacent same-dtype record fields."""
    runs: list[_Run] = []
    for i, name in enumerate(columns):
        if name is None:
            continue
        ftype, offset = dtype.fields[name][:2]
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.out + last.count == i
            and last.dtype == ftype
            and last.offset + last.count * ftype.itemsize == offset
        ):
            last.count += 1
        else:
            runs.append(_Run(i, 1, ftype, offset))
    return runs


def gather_fields(
    buf: np.ndarray,
    runs: Sequence[_Run],
    num_columns: int,
    out: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Copy fields of a structured array into a float32 array in one pass per run.

    Parameters
    ----------
    buf
        Structured array ``(B,)`` or ``(B, N)``.
    runs
        Field runs from :func:`_field_runs`.
    num_columns
        Width F of the output; columns not covered by a run are zero.
    out
        Optional float32 ``(*buf.shape, F)`` array to fill (e.g. in shared memory).
    valid
        Optional bool ``buf.shape``: rows where it is False are written as zeros (padding),
        in the same pass (faster than zeroing afterwards).

    Returns
    -------
    np.ndarray
        ``(*buf.shape, F)`` float32.
    """
    if out is None:
        out = np.empty((*buf.shape, num_columns), dtype=np.float32)
    if valid is not None or sum(r.count for r in runs) < num_columns:
        out.fill(0)
    where = True if valid is None else valid[..., None]
    for run in runs:
        first = buf.getfield(run.dtype, run.offset)  # works on truncated (strided) buffers
        view = as_strided(
            first, (*buf.shape, run.count), (*first.strides, run.dtype.itemsize), writeable=False
        )
        np.copyto(out[..., run.out : run.out + run.count], view, casting="unsafe", where=where)
    return out


def _label_dtype(dtype: np.dtype) -> np.dtype:
    """Labels: integers (and bools) become int64 (``torch.long``), the rest float32."""
    return np.dtype(np.int64 if dtype.kind in "iub" else np.float32)


def resolve_input_map(
    variables: Mapping[str, Sequence[str]],
    input_map: Mapping[str, str] | None,
    global_object: str,
) -> dict[str, str]:
    """Internal input name -> h5 dataset name.

    An input reads the dataset ``input_map`` names for it, else the dataset of its own
    name (Salt requires a given map to list every input; saltx fills in the rest).
    ``GLOBAL`` and ``PARAMETERS`` read the global object, and ``EDGE`` the dataset of the
    first constituent input (``tracks``), unless the map states otherwise.
    """
    given = {str(k): str(v) for k, v in (input_map or {}).items()}
    resolved = {name: given.get(name, name) for name in variables if name not in SPECIAL_INPUTS}
    constituents = [n for n in resolved if n != global_object]
    defaults = {
        GLOBAL: global_object,
        PARAMETERS: global_object,
        EDGE: resolved[constituents[0]] if constituents else "tracks",
    }
    for name in SPECIAL_INPUTS:
        if name in variables:
            resolved[name] = given.get(name, defaults[name])
    return {name: resolved[name] for name in variables}


def _check_parameters(
    variables: Mapping[str, Sequence[str]], parameters: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    names = list(variables.get(PARAMETERS, []))
    params = dict(parameters or {})
    if not names:
        return {}
    if list(params) != names:
        raise DataError(
            f"data.variables.PARAMETERS {names} must equal the keys of data.parameters "
            f"{list(params)}, in the same order"
        )
    checked = {}
    for name, spec in params.items():
        spec = dict(spec or {})
        train = [float(v) for v in spec.get("train") or []]
        if not train:
            raise DataError(f"data.parameters.{name}.train must be a non-empty list of values")
        prob = spec.get("prob")
        if prob is not None:
            prob = np.asarray(list(prob), dtype=np.float64)
            if len(prob) != len(train) or (prob < 0).any() or not np.isclose(prob.sum(), 1):
                raise DataError(
                    f"data.parameters.{name}.prob {prob.tolist()} must have one non-negative "
                    f"entry per train value ({len(train)}) and sum to 1"
                )
        checked[name] = {"train": train, "test": spec.get("test"), "prob": prob}
    return checked


def _check_test_values(parameters: Mapping[str, Mapping[str, Any]]) -> None:
    missing = [name for name, spec in parameters.items() if spec["test"] is None]
    if missing:
        raise DataError(f"data.parameters.{missing[0]}.test is needed for stage 'test'")


class JetDataset(Dataset):
    """Batches of jets read from one h5 file (Salt/UPP layout).

    Parameters
    ----------
    source
        Local path, URL or file object of the h5 file (opened lazily, once per process).
    variables
        ``{input_name: [field, ...]}``; input names are the global object, constituent
        types (``tracks``, ``electrons``...), ``GLOBAL``, ``PARAMETERS`` and ``EDGE``
        (edge feature names among dR, kt, z, isSelfLoop, subjetIndex).
    stage
        ``"fit"`` (train and validation: PARAMETERS drawn from their train values) or
        ``"test"`` (PARAMETERS set to their test value).
    num
        Jets to use from the start of the file (-1 = all).
    labels
        ``{input_name: [field, ...]}`` label fields to return (any dtype; integers become
        ``torch.long``, the rest ``torch.float32``).
    input_map
        ``{input_name: h5_dataset}``; replaces the identity default (see
        :func:`resolve_input_map`).
    num_inputs
        ``{input_name: n}`` keep the first n constituents (inputs, masks, labels and EDGE of
        the same dataset).
    non_finite_to_num
        Map NaN/±inf inputs to 0 instead of raising.
    global_object
        The per-jet dataset (``jets``).
    parameters
        ``{name: {train: [...], test: x, prob: [...]}}`` for PARAMETERS inputs.
    seed
        Base seed of the PARAMETERS draws and the shuffle-buffer mixing.
    read_threads
        Threads that decode the compressed chunks of one read, in each process (see
        :class:`saltx.data.h5.RowReader`); more than 1 lets a loader worker use idle cores.
        Batches do not depend on it.
    """

    def __init__(
        self,
        source: H5Source,
        variables: Mapping[str, Sequence[str]],
        *,
        stage: str = "fit",
        num: int = -1,
        labels: Mapping[str, Sequence[str]] | None = None,
        input_map: Mapping[str, str] | None = None,
        num_inputs: Mapping[str, int] | None = None,
        non_finite_to_num: bool = False,
        global_object: str = "jets",
        parameters: Mapping[str, Any] | None = None,
        seed: int = 0,
        read_threads: int = DEFAULT_READ_THREADS,
    ) -> None:
        if stage not in STAGES:
            raise DataError(f"stage must be one of {STAGES}, got '{stage}'")
        if not variables:
            raise DataError("data.variables is empty: give {input_name: [field, ...]}")
        if int(read_threads) < 1:
            raise DataError(f"data.read_threads must be an integer >= 1, got {read_threads}")
        self.file = LazyH5(source, int(read_threads))
        self.variables = {k: [str(v) for v in vs] for k, vs in variables.items()}
        self.stage = stage
        self.labels = {k: [str(v) for v in vs] for k, vs in (labels or {}).items() if vs}
        self.non_finite_to_num = non_finite_to_num
        self.global_object = global_object
        self.seed = int(seed)
        self.input_map = resolve_input_map(self.variables, input_map, global_object)
        self.parameters = _check_parameters(self.variables, parameters)
        if stage == "test":
            _check_test_values(self.parameters)
        self.num_inputs = dict(num_inputs or {})
        unknown = sorted(set(self.num_inputs) - set(self.variables))
        if unknown:
            raise DataError(
                f"data.num_inputs has unknown inputs {unknown}; known: {list(self.variables)}"
            )
        for name in self.labels:
            self.input_map.setdefault(name, name)
        self._buffers: dict[str, np.ndarray] = {}
        self._checked: set[str] = set()  # datasets whose links and storage were checked
        self._unsigned: set[tuple[str, str]] = set()  # unsigned label fields, checked per batch
        f = self.file.file
        try:
            self._plan(f)
            self.num_jets = self._check_length(f, num)
        except DataError:
            raise
        except (OSError, KeyError, RuntimeError, UnicodeDecodeError, ValueError) as err:
            raise DataError(
                f"cannot read the layout of '{self.file.name}': the file is damaged or "
                f"truncated ({type(err).__name__}: {err})"
            ) from err
        finally:
            self.file.close()

    # ------------------------------------------------------------------ setup
    def _dataset(self, f: h5py.File, name: str, needed_by: str) -> h5py.Dataset | PackedReader:
        """The dataset ``name`` (checked once): an h5py dataset, or for a dataset of a packed
        file (``saltx.data.pack``) its :class:`PackedReader`, which has the padded shape."""
        if name in f and name not in self._checked:
            check_links(f, name, self.file.source)
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise DataError(
                f"no dataset '{name}' (needed by input '{needed_by}') in '{self.file.name}'; "
                f"available datasets: {sorted(k for k in f if isinstance(f[k], h5py.Dataset))}"
            )
        ds = self.file.reader(name) if name.lstrip("/") in self.file.packed else f[name]
        if ds.dtype.names is None:
            raise DataError(f"dataset '{name}' in '{self.file.name}' is not a structured array")
        if name not in self._checked:
            if isinstance(ds, PackedReader):
                ds.check()
            else:
                check_storage(ds, self.file.source, name == self.global_object)
            self._checked.add(name)
        return ds

    def _check_fields(self, ds: h5py.Dataset, fields: Sequence[str], what: str) -> None:
        missing = [v for v in fields if v not in ds.dtype.names]
        if missing:
            hint = ""
            if self.file.packed:
                hint = (
                    " (a file written by saltx.data.pack holds only the variables it was "
                    "packed with: pack the original file again with these)"
                )
            raise DataError(
                f"{what} {missing} not found in dataset '{ds.name.lstrip('/')}' of "
                f"'{self.file.name}'; available fields: {list(ds.dtype.names)}{hint}"
            )
        odd = {v: str(ds.dtype[v]) for v in fields if ds.dtype[v].kind not in "biuf"}
        if odd:
            raise DataError(
                f"{what} {odd} in dataset '{ds.name.lstrip('/')}' of '{self.file.name}' "
                "are not numeric; expected integer, float or bool fields"
            )

    def _sample(self, ds: h5py.Dataset, field: str) -> np.ndarray:
        """``field`` of the first :data:`SAMPLE_JETS` rows (a few chunk decodes)."""
        rows = min(ds.shape[0], SAMPLE_JETS)
        try:
            if isinstance(ds, PackedReader):
                return ds.read_rows(0, rows)[field].copy()
            return ds.fields(field)[:rows]
        except (OSError, RuntimeError, ValueError) as err:
            raise DataError(
                f"cannot read jets [0, {rows}) of dataset '{ds.name.lstrip('/')}' in "
                f"'{self.file.name}': the file is damaged or truncated ({err})"
            ) from err

    def _check_valid(self, ds: h5py.Dataset, name: str, num: int | None) -> None:
        """``valid`` must be bool, and some constituent in the sample must be valid."""
        where = f"dataset '{ds.name.lstrip('/')}' of '{self.file.name}'"
        kind = ds.dtype["valid"]
        if kind.kind != "b":
            raise DataError(
                f"field 'valid' of {where} is stored as {kind}, not bool: saltx would not "
                "know which constituents are real; store it as bool (True = a real "
                "constituent), e.g. rewrite it with valid.astype(bool)"
            )
        if ds.shape[0] == 0:
            return  # no jets at all: reported by _check_length
        valid = self._sample(ds, "valid")
        if num is not None:
            valid = valid[:, :num]
        if valid.any():
            return
        sampled = len(valid)
        if sampled == ds.shape[0]:
            raise DataError(
                f"no jet in {where} has a valid constituent ('valid' is False everywhere"
                + (f" in the first {num} slots" if num is not None else "")
                + f"): input '{name}' would be all padding; check the file and data.num_inputs"
            )
        warnings.warn(
            f"none of the first {sampled} jets of {where} has a valid constituent: input "
            f"'{name}' may be all padding",
            stacklevel=4,
        )

    def _check_unsigned_labels(self, ds: h5py.Dataset, fields: Sequence[str]) -> None:
        """Unsigned labels cannot hold the padding value -1 (it wraps to the type's maximum)."""
        for name in fields:
            kind = ds.dtype[name]
            if kind.kind != "u":
                continue
            values = self._sample(ds, name)
            if "valid" in ds.dtype.names and ds.ndim == 2:
                values = values[self._sample(ds, "valid")]
            if (values == np.iinfo(kind).max).any():
                raise DataError(self._wrapped_label(ds.name.lstrip("/"), name, kind))
            self._unsigned.add((ds.name.lstrip("/"), name))

    def _wrapped_label(self, ds_name: str, field: str, dtype: np.dtype) -> str:
        return (
            f"label '{field}' of dataset '{ds_name}' in '{self.file.name}' is stored as {dtype} "
            f"and holds {np.iinfo(dtype).max}: that is -1 (padding / no vertex) wrapped around "
            "by an unsigned type; store labels as signed integers"
        )

    def _truncation(self, name: str, ds: h5py.Dataset) -> int | None:
        num = self.num_inputs.get(name)
        if num is None and name == EDGE:  # EDGE follows the input reading the same dataset
            for other, n in self.num_inputs.items():
                if self.input_map.get(other) == self.input_map[EDGE]:
                    num = n
        if num is None:
            return None
        if ds.ndim != 2:
            raise DataError(f"data.num_inputs.{name}: dataset '{ds.name}' has no constituents")
        if not 1 <= int(num) <= ds.shape[1]:
            raise DataError(
                f"data.num_inputs.{name}={num} must be between 1 and the stored length "
                f"{ds.shape[1]} of dataset '{ds.name.lstrip('/')}' in '{self.file.name}'"
            )
        return int(num)

    def _plan(self, f: h5py.File) -> None:
        self._inputs: list[_Input] = []
        self._datasets: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._label_plan: dict[str, tuple[str, int | None]] = {}
        self._masked: dict[str, tuple[str, int | None]] = {}
        for name, fields in self.variables.items():
            ds_name = self.input_map[name]
            ds = self._dataset(f, ds_name, name)
            self._datasets[ds_name] = (ds.shape, ds.dtype)
            has_valid = "valid" in ds.dtype.names
            if name == EDGE:
                unknown = [e for e in fields if e not in EDGE_FEATURE_FIELDS]
                if unknown:
                    raise DataError(
                        f"unknown edge features {unknown} in data.variables.EDGE; "
                        f"known: {list(EDGE_FEATURE_FIELDS)}"
                    )
                needed = {r for e in fields for r in EDGE_FEATURE_FIELDS[e]}
                self._check_fields(ds, sorted(needed), f"raw fields for edge features {fields}")
                columns = [r if r in needed else None for r in EDGE_RAW_FIELDS]
            else:
                self._check_fields(ds, fields, f"variables of input '{name}'")
                columns = list(fields)
            if name in (GLOBAL, PARAMETERS) and ds.ndim != 1:
                raise DataError(f"{name} must map to the 1D global object, not '{ds_name}'")
            glob = name in (GLOBAL, PARAMETERS, self.global_object)
            if ds.ndim != (1 if glob else 2) or not (glob or has_valid or name == EDGE):
                raise DataError(
                    f"input '{name}' reads dataset '{ds_name}' of '{self.file.name}' with "
                    f"shape {ds.shape}; expected "
                    + ("(jets,)" if glob else "(jets, constituents) with a bool 'valid' field")
                )
            inp = _Input(name, ds_name, columns, _field_runs(ds.dtype, columns))
            inp.num = self._truncation(name, ds)
            inp.constituent = ds.ndim == 2 and has_valid
            if inp.constituent and name != EDGE:
                self._check_valid(ds, name, inp.num)
            self._inputs.append(inp)
            if inp.constituent and name != EDGE:
                self._masked[name] = (ds_name, inp.num)
        for name, fields in self.labels.items():
            ds_name = self.input_map[name]
            ds = self._dataset(f, ds_name, name)
            self._datasets[ds_name] = (ds.shape, ds.dtype)
            self._check_fields(ds, fields, f"label fields of input '{name}'")
            if isinstance(ds, PackedReader):
                ds.check_exact(fields, f"label fields of input '{name}'")
            self._check_unsigned_labels(ds, fields)
            num = self.num_inputs.get(name)
            self._label_plan[name] = (ds_name, None if num is None else self._truncation(name, ds))
        # read only the leading constituents when every use of a dataset is truncated
        uses: dict[str, list[int | None]] = {}
        for inp in self._inputs:
            uses.setdefault(inp.dataset, []).append(inp.num)
        for ds_name, num in self._label_plan.values():
            uses.setdefault(ds_name, []).append(num)
        self._read_cols = {
            ds_name: None if None in nums else max(nums) for ds_name, nums in uses.items()
        }

    def _check_length(self, f: h5py.File, num: int) -> int:
        glob = self._dataset(f, self.global_object, "global object")
        total = glob.shape[0]
        if total == 0:
            raise DataError(f"dataset '{self.global_object}' in '{self.file.name}' has no jets")
        for ds_name, (shape, _) in self._datasets.items():
            if shape[0] != total:
                raise DataError(
                    f"dataset '{ds_name}' has {shape[0]} rows but '{self.global_object}' has "
                    f"{total} in '{self.file.name}'"
                )
        if num is None or num < 0:
            return total
        if num == 0 or num > total:
            raise DataError(
                f"requested {num} jets but '{self.file.name}' holds {total} (use -1 for all jets)"
            )
        return int(num)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self.num_jets

    def _read(self, ds_name: str, start: int, stop: int) -> np.ndarray:
        shape, dtype = self._datasets[ds_name]
        cols = self._read_cols.get(ds_name)
        try:
            reader = self.file.reader(ds_name)
            if reader.returns_views and stop > start:  # decoded or unpacked in place: a view
                return reader.read_rows(start, stop, cols)
            want = (stop - start, *shape[1:]) if cols is None else (stop - start, cols)
            buf = self._buffers.get(ds_name)
            if buf is None or buf.shape != want:
                buf = np.empty(want, dtype=dtype)
                self._buffers[ds_name] = buf
            if stop > start:
                reader.read(buf, start)
        except (OSError, KeyError, RuntimeError, ValueError, UnicodeDecodeError, zlib.error) as err:
            raise DataError(
                f"cannot read jets [{start}, {stop}) of dataset '{ds_name}' in "
                f"'{self.file.name}': the file is damaged or truncated ({err})"
            ) from err
        return buf

    def _check_finite(self, name: str, x: np.ndarray, start: int, columns: list) -> np.ndarray:
        if np.isfinite(x).all():
            return x
        if self.non_finite_to_num:
            return np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        where = np.argwhere(~np.isfinite(x))[0]
        slot = f", constituent {where[1]}" if x.ndim == 3 else ""
        raise DataError(
            f"non-finite value {x[tuple(where)]} in input '{name}' variable "
            f"'{columns[where[-1]]}' at jet index {start + where[0]}{slot} "
            f"(dataset '{self.input_map.get(name)}', file '{self.file.name}'); fix the file or "
            "set data.non_finite_to_num=true to map NaN/inf to 0"
        )

    def _draw_parameters(self, x: np.ndarray, start: int, epoch: int) -> np.ndarray:
        if self.stage == "test":
            for i, spec in enumerate(self.parameters.values()):
                x[:, i] = float(spec["test"])
            return x
        rng = np.random.default_rng([self.seed, epoch, start])
        for i, spec in enumerate(self.parameters.values()):
            train = np.asarray(spec["train"], dtype=np.float32)
            redraw = ~np.isin(x[:, i], train)
            x[redraw, i] = rng.choice(train, size=int(redraw.sum()), p=spec["prob"])
        return x

    def _shapes(self, num_jets: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the arrays :meth:`read_arrays` allocates for ``num_jets``."""
        out = []
        for inp in self._inputs:
            shape, _ = self._datasets[inp.dataset]
            tail = (inp.num or shape[1],) if len(shape) == 2 else ()
            out.append(((num_jets, *tail, len(inp.columns)), np.dtype(np.float32)))
            if inp.constituent:
                out.append(((num_jets, *tail), np.dtype(bool)))
        for name, fields in self.labels.items():
            ds_name, num = self._label_plan[name]
            shape, dtype = self._datasets[ds_name]
            tail = (num or shape[1],) if len(shape) == 2 else ()
            out += [((num_jets, *tail), _label_dtype(dtype[f])) for f in fields]
        return out

    def batch_nbytes(self, num_jets: int, align: int = 64) -> int:
        """Upper bound of the bytes of one batch of ``num_jets`` (arrays aligned to ``align``)."""
        return sum(
            -(-int(np.prod(shape)) * dtype.itemsize // align) * align
            for shape, dtype in self._shapes(num_jets)
        )

    def read_arrays(
        self, start: int, stop: int, epoch: int = 0, alloc: Callable[..., np.ndarray] = np.empty
    ) -> Arrays:
        """Read jets ``[start, stop)`` as numpy arrays ``(inputs, masks, labels)``.

        ``alloc(shape, dtype)`` provides the output arrays (default ``np.empty``; the
        DataLoader's workers pass one that carves them from shared memory).
        """
        if not 0 <= start <= stop <= self.num_jets:
            raise IndexError(f"jets [{start}, {stop}) outside [0, {self.num_jets})")
        bufs = {name: self._read(name, start, stop) for name in self._datasets}
        inputs: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for inp in self._inputs:
            buf = bufs[inp.dataset]
            if inp.num is not None:
                buf = buf[:, : inp.num]
            x = alloc((*buf.shape, len(inp.columns)), np.float32)
            valid = buf["valid"] if inp.constituent else None
            x = gather_fields(buf, inp.runs, len(inp.columns), out=x, valid=valid)
            if inp.name in self._masked:
                masks[inp.name] = np.logical_not(valid, out=alloc(buf.shape, bool))
            if inp.name == PARAMETERS:
                x = self._draw_parameters(x, start, epoch)
            inputs[inp.name] = self._check_finite(inp.name, x, start, inp.columns)
        labels: dict[str, dict[str, np.ndarray]] = {}
        for name, fields in self.labels.items():
            ds_name, num = self._label_plan[name]
            buf = bufs[ds_name] if num is None else bufs[ds_name][:, :num]
            labels[name] = {}
            for f in fields:
                if (ds_name, f) in self._unsigned:
                    self._check_wrapped(buf, ds_name, f, start)
                out = alloc(buf.shape, _label_dtype(buf.dtype[f]))
                np.copyto(out, buf[f], casting="unsafe")
                labels[name][f] = out
        return inputs, masks, labels

    def _check_wrapped(self, buf: np.ndarray, ds_name: str, field: str, start: int) -> None:
        """An unsigned label holding its type's maximum on a valid entry is a wrapped -1."""
        values = buf[field]
        wrapped = values == np.iinfo(values.dtype).max
        if "valid" in buf.dtype.names and buf.ndim == 2:
            wrapped &= buf["valid"]
        if wrapped.any():
            row = start + int(np.argwhere(wrapped)[0][0])
            message = self._wrapped_label(ds_name, field, values.dtype)
            raise DataError(f"{message} (jet index {row})")

    @staticmethod
    def to_batch(arrays: Arrays) -> Batch:
        """Wrap numpy arrays as a :class:`Batch` of tensors (no copy)."""
        inputs, masks, labels = arrays
        return Batch(
            {k: torch.from_numpy(v) for k, v in inputs.items()},
            {k: torch.from_numpy(v) for k, v in masks.items()},
            {n: {f: torch.from_numpy(v) for f, v in fs.items()} for n, fs in labels.items()},
        )

    def _read_mixed(self, index: BufferIndex) -> list[Batch]:
        parts = [self.read_arrays(a, b, index.epoch) for a, b in index.slices]
        sizes = [b - a for a, b in index.slices]
        perm = np.random.default_rng([index.seed, index.epoch, index.slices[0][0]]).permutation(
            sum(sizes)
        )
        cuts = np.cumsum(sizes)[:-1]

        def mix(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return np.split(np.concatenate(arrays)[perm], cuts)

        inputs = {k: mix([p[0][k] for p in parts]) for k in parts[0][0]}
        masks = {k: mix([p[1][k] for p in parts]) for k in parts[0][1]}
        labels = {
            n: {f: mix([p[2][n][f] for p in parts]) for f in fs} for n, fs in parts[0][2].items()
        }
        batches = []
        for i in range(index.skip, len(sizes)):
            arrays = (
                {k: v[i] for k, v in inputs.items()},
                {k: v[i] for k, v in masks.items()},
                {n: {f: v[i] for f, v in fs.items()} for n, fs in labels.items()},
            )
            batches.append(self.to_batch(arrays))
        return batches

    def __getitem__(self, index: slice | tuple | BatchIndex | BufferIndex) -> Batch | list[Batch]:
        """Read one batch.

        ``index`` is a ``slice(start, stop)``, a ``(start, stop)`` tuple, a
        :class:`BatchIndex` (carrying the epoch of the PARAMETERS draws) or a
        :class:`BufferIndex` (returns a list of mixed batches).
        """
        if isinstance(index, BufferIndex):
            return self._read_mixed(index)
        if isinstance(index, slice):
            if index.step not in (None, 1):
                raise IndexError("JetDataset reads contiguous slices only (step 1)")
            start, stop, _ = index.indices(self.num_jets)
            epoch = 0
        elif isinstance(index, tuple) and len(index) in (2, 3):
            start, stop, epoch = (*index, 0)[:3]
        else:
            raise IndexError(
                f"JetDataset takes a slice or (start, stop[, epoch]), got {type(index).__name__}"
            )
        return self.to_batch(self.read_arrays(int(start), int(stop), int(epoch)))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_buffers"] = {}
        return state

    def close(self) -> None:
        """Close this process's file handle."""
        self.file.close()
