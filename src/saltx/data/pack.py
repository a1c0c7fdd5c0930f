"""Pack a Salt/UPP h5 file for fast loading: ``python -m saltx.data.pack IN.h5 OUT [...]``.

UPP writes every constituent slot (``tracks (N, 40)``, most of them padding) into
LZF-compressed chunks, so reading a batch is mostly decompression (docs/performance.md).
A one-time conversion writes a file that reads without any decoding:

* only the selected fields: the variables of a training config (or ``--variables``), the
  labels its tasks need, ``valid`` and the raw fields of EDGE features;
* constituents packed: the valid entries only, back to back, with per-jet offsets (the
  layout is described in :class:`saltx.data.h5.PackedReader`);
* every dataset uncompressed and contiguous, so a batch is one byte copy per dataset.

saltx reads the packed file like the original (same config, ``input_map``,
``num_inputs``, ``num_train``, shuffling, s3:// URLs) and gives bit-identical batches:
padded slots are rebuilt with the value every padded slot held in the original, which
packing checks for each label field.

Examples
--------
    python -m saltx.data.pack train.h5 packed/ +experiment=gn2        # config's variables
    python -m saltx.data.pack train.h5 train_packed.h5 --config RUN/config.yaml
    python -m saltx.data.pack train.h5 out.h5 --variables vars.yaml \\
        --labels jets:flavour_label tracks:ftagTruthOriginLabel
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from saltx.data.dataset import EDGE, EDGE_FEATURE_FIELDS, resolve_input_map
from saltx.data.h5 import (
    PACK_ATTR,
    PACK_GROUP,
    PACK_VERSION,
    H5Source,
    RowReader,
    describe_source,
    open_h5,
    packed_datasets,
)
from saltx.errors import DataError

#: ``required_labels(cfg, stage) -> {input: [label field, ...]}`` (the model's rule)
LabelRule = Callable[[Any, str], dict[str, list[str]]]

BLOCK_JETS = 16384
"""Jets read and written at a time (rounded to whole chunks of the source)."""


@dataclass
class Selection:
    """What a packed file keeps: ``{dataset: [field, ...]}`` and the label fields among them
    (``{dataset: [field, ...]}``), whose padding must be reproduced exactly."""

    fields: dict[str, list[str]]
    labels: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PackStats:
    """What :func:`pack_file` wrote."""

    jets: int
    seconds: float
    bytes_in: int
    bytes_out: int
    slots: dict[str, int] = field(default_factory=dict)  # slots of the original, per dataset
    records: dict[str, int] = field(default_factory=dict)  # valid constituents kept


def select(
    variables: Mapping[str, Sequence[str]],
    labels: Mapping[str, Sequence[str]] | None = None,
    input_map: Mapping[str, str] | None = None,
    global_object: str = "jets",
) -> Selection:
    """The fields of each h5 dataset that a configuration reads.

    Parameters
    ----------
    variables
        ``data.variables``: ``{input: [field, ...]}`` (GLOBAL, PARAMETERS and EDGE too).
    labels
        ``{input: [field, ...]}`` label fields (``saltx.models.build.required_labels``).
    input_map
        ``data.input_map`` (inputs read datasets of other names).
    global_object
        ``data.global_object``.

    Returns
    -------
    Selection
        Fields per dataset (``valid`` added by :func:`pack_file` where present).
    """
    resolved = resolve_input_map(variables, input_map, global_object)
    out: dict[str, list[str]] = {global_object: []}
    for name, fields in variables.items():
        wanted = list(fields)
        if name == EDGE:
            wanted = sorted({r for e in fields for r in EDGE_FEATURE_FIELDS.get(str(e), ())})
        bucket = out.setdefault(resolved[name], [])
        bucket += [str(f) for f in wanted if str(f) not in bucket]
    label_fields: dict[str, list[str]] = {}
    for name, fields in (labels or {}).items():
        ds = resolved.get(name, name)  # as JetDataset: labels read their input's dataset
        for bucket in (out.setdefault(ds, []), label_fields.setdefault(ds, [])):
            bucket += [str(f) for f in fields if str(f) not in bucket]
    return Selection(out, label_fields)


# -- writing --------------------------------------------------------------------------------
def _bits(a: np.ndarray) -> np.ndarray:
    """The bytes of each element as one unsigned integer (NaN payloads compare exactly)."""
    a = np.ascontiguousarray(a)
    if a.dtype.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.dtype.itemsize}")
    return a.view(np.uint8).reshape(len(a), -1)


def _blocks(ds: h5py.Dataset, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over the whole dataset, ``block`` rows at a time (in-place decoding
    where possible, see :class:`~saltx.data.h5.RowReader`)."""
    reader = RowReader(ds)
    if ds.chunks:
        block = max(1, block // ds.chunks[0]) * ds.chunks[0]
    for start in range(0, ds.shape[0], block):
        stop = min(start + block, ds.shape[0])
        if reader.returns_views:
            yield start, reader.read_rows(start, stop)
        else:
            buf = np.empty((stop - start, *ds.shape[1:]), ds.dtype)
            reader.read(buf, start)
            yield start, buf


def _subset(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.empty(rows.shape, dtype)
    for name in dtype.names:
        out[name] = rows[name]
    return out


class _PackedWriter:
    """Pass 1 (offsets, slot pattern, padding) and pass 2 (records) of one constituent dataset."""

    def __init__(self, src: h5py.Dataset, dtype: np.dtype, labels: Sequence[str], where: str):
        self.src, self.dtype, self.labels, self.where = src, dtype, list(labels), where
        self.slots = src.shape[1]
        self.padding: np.ndarray | None = None  # (1,) the first padded record
        self.varying: set[str] = set()  # fields whose padded slots differ
        self.prefix = True  # valid entries are the first slots of every jet
        self.total = 0

    def scan(self, out: h5py.File, block: int) -> None:
        """Write the offsets; learn the record count, the slot pattern and the padding."""
        n = self.src.shape[0]
        offsets = out.create_dataset(
            f"{PACK_GROUP}/{self.src.name.lstrip('/')}/offsets", (n + 1,), np.int64
        )
        offsets[0] = 0
        for start, rows in _blocks(self.src, block):
            valid = rows["valid"]
            counts = valid.sum(axis=1, dtype=np.int64)
            offsets[start + 1 : start + 1 + len(rows)] = self.total + np.cumsum(counts)
            self.total += int(counts.sum())
            self.prefix &= not (valid[:, 1:] & ~valid[:, :-1]).any()
            pad = rows[~valid]
            if not len(pad):
                continue
            if self.padding is None:
                self.padding = _subset(pad[:1], self.dtype)
            for name in set(self.dtype.names) - self.varying:
                if (_bits(pad[name]) != _bits(self.padding[name])).any():
                    self.varying.add(name)
        bad = [x for x in self.labels if x in self.varying]
        if bad:
            raise DataError(
                f"{self.where}: the padded slots of label fields {bad} do not all hold one value, "
                "so a packed file could not give the same padded labels; train on the original file"
            )

    def write(self, out: h5py.File, block: int) -> None:
        """Write the valid records (and their slots when they are not the first ones)."""
        name = self.src.name.lstrip("/")
        records = out.create_dataset(name, (self.total,), self.dtype)
        group = out[f"{PACK_GROUP}/{name}"]
        slots = None
        if not self.prefix:
            kind = np.uint8 if self.slots <= 256 else np.uint16
            slots = group.create_dataset("slots", (self.total,), kind)
        padding = self.padding
        if padding is None:  # no padded slot anywhere: any record will do
            padding = np.zeros(1, self.dtype)
        padding = padding.copy()
        padding["valid"] = False
        group.create_dataset("padding", data=padding)
        group.attrs["slots"] = self.slots
        group.attrs["exact_padding"] = [x for x in self.dtype.names if x not in self.varying]
        at = 0
        for _, rows in _blocks(self.src, block):
            valid = rows["valid"]
            kept = _subset(rows[valid], self.dtype)
            records[at : at + len(kept)] = kept
            if slots is not None:
                slots[at : at + len(kept)] = np.nonzero(valid)[1]
            at += len(kept)
        if at != self.total:
            raise DataError(f"{self.where} changed while it was packed ({at} != {self.total})")


def _copy_attrs(src: h5py.AttributeManager, dst: h5py.AttributeManager) -> None:
    for key, value in src.items():
        with contextlib.suppress(TypeError, ValueError, OSError):  # exotic types: informative only
            dst[key] = value


def pack_file(
    source: H5Source, dest: str | os.PathLike, selection: Selection, block: int = BLOCK_JETS
) -> PackStats:
    """Write the packed copy of ``source`` to ``dest`` (atomically: temp file, then rename).

    Parameters
    ----------
    source
        The original file (local path or URL).
    dest
        The packed file (local path); must not exist.
    selection
        Fields per dataset (:func:`select`); ``valid`` is added to constituent datasets.
    block
        Jets per read (memory: about ``block`` × the record size × slots).

    Returns
    -------
    PackStats

    Raises
    ------
    DataError
        A missing dataset or field (named with the file), a packed source, label padding
        that varies, or an existing ``dest``.
    """
    t0 = time.perf_counter()
    dest = Path(dest)
    name = describe_source(source)
    if dest.exists():
        raise DataError(f"'{dest}' exists; remove it or choose another output")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    stats = PackStats(jets=0, seconds=0.0, bytes_in=0, bytes_out=0)
    with open_h5(source) as f:
        if packed_datasets(f, name):
            raise DataError(f"'{name}' is already packed (saltx.data.pack)")
        plan: list[tuple[h5py.Dataset, np.dtype, list[str]]] = []
        for ds_name, fields in selection.fields.items():
            ds = f.get(ds_name)
            if not isinstance(ds, h5py.Dataset) or ds.dtype.names is None:
                available = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
                raise DataError(
                    f"no structured dataset '{ds_name}' in '{name}' to pack; available: {available}"
                )
            keep = set(fields) | ({"valid"} if "valid" in ds.dtype.names else set())
            missing = sorted(keep - set(ds.dtype.names))
            if missing:
                raise DataError(
                    f"fields {missing} not found in dataset '{ds_name}' of '{name}'; available "
                    f"fields: {list(ds.dtype.names)}"
                )
            dtype = np.dtype([(x, ds.dtype[x]) for x in ds.dtype.names if x in keep])
            plan.append((ds, dtype, selection.labels.get(ds_name, [])))
            stats.bytes_in += ds.id.get_storage_size()
        lengths = {ds.shape[0] for ds, _, _ in plan}
        if len(lengths) > 1:
            raise DataError(f"the datasets of '{name}' to pack have different lengths {lengths}")
        stats.jets = lengths.pop() if lengths else 0
        try:
            with h5py.File(tmp, "w") as out:
                _copy_attrs(f.attrs, out.attrs)
                out.attrs[PACK_ATTR] = PACK_VERSION
                out.attrs["saltx_pack_source"] = name
                for ds, dtype, labels in plan:
                    where = f"dataset '{ds.name.lstrip('/')}' of '{name}'"
                    if ds.ndim == 2 and "valid" in dtype.names:
                        writer = _PackedWriter(ds, dtype, labels, where)
                        writer.scan(out, block)
                        writer.write(out, block)
                        stats.slots[ds.name.lstrip("/")] = writer.slots
                        stats.records[ds.name.lstrip("/")] = writer.total
                    else:
                        copy = out.create_dataset(ds.name, ds.shape, dtype)
                        for start, rows in _blocks(ds, block):
                            copy[start : start + len(rows)] = _subset(rows, dtype)
                    _copy_attrs(ds.attrs, out[ds.name].attrs)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    stats.bytes_out = dest.stat().st_size
    stats.seconds = time.perf_counter() - t0
    return stats


# -- command line ---------------------------------------------------------------------------
def _selection_from_config(args: argparse.Namespace, required_labels: LabelRule) -> Selection:
    """Variables, input map and labels (fit and test) of a saltx training config;
    ``required_labels(cfg, stage)`` reads the tasks' label fields from the model config."""
    from omegaconf import OmegaConf

    if args.config:
        cfg = OmegaConf.load(args.config)
        if args.overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(args.overrides)))
    else:
        from saltx.data.config_s3 import _compose

        cfg = _compose("train", list(args.overrides))
    data = cfg.data
    labels: dict[str, list[str]] = {}
    for stage in ("fit", "test"):
        for name, fields in required_labels(cfg, stage).items():
            bucket = labels.setdefault(name, [])
            bucket += [x for x in fields if x not in bucket]
    plain = OmegaConf.to_container(data, resolve=False)
    return select(
        plain["variables"],
        labels,
        plain.get("input_map") or {},
        str(plain.get("global_object") or "jets"),
    )


def _selection_from_args(args: argparse.Namespace) -> Selection:
    import yaml

    variables = yaml.safe_load(Path(args.variables).read_text()) or {}
    if not isinstance(variables, dict) or not all(isinstance(v, list) for v in variables.values()):
        raise DataError(f"--variables {args.variables}: expected {{input: [field, ...]}}")
    labels: dict[str, list[str]] = {}
    for item in args.labels or []:
        if ":" not in item:
            raise DataError(f"--labels {item!r}: expected INPUT:FIELD, e.g. jets:flavour_label")
        name, fld = item.split(":", 1)
        labels.setdefault(name, []).append(fld)
    input_map = {}
    for item in args.input_map or []:
        if "=" not in item:
            raise DataError(f"--input-map {item!r}: expected INPUT=DATASET")
        key, value = item.split("=", 1)
        input_map[key] = value
    return select(variables, labels, input_map, args.global_object)


def output_path(source: str, out: str) -> Path:
    """``out`` itself when it names an ``.h5`` file, else ``out/<name of source>``."""
    if out.endswith((".h5", ".hdf5")):
        return Path(out)
    return Path(out) / Path(source.rstrip("/")).name


def main(argv: Sequence[str] | None = None, required_labels: LabelRule | None = None) -> int:
    """Command line: see the module docstring.

    ``required_labels`` is ``saltx.models.build.required_labels`` (the tasks' label
    fields), passed in by ``python -m saltx.data.pack``: data never imports models; only
    ``--config``/overrides need it.
    """
    p = argparse.ArgumentParser(
        prog="python -m saltx.data.pack",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --config or --variables the saltx train config is composed from the "
        "overrides (e.g. +experiment=gn2).",
    )
    p.add_argument("source", help="the original h5 file (local path or s3:// URL)")
    p.add_argument("out", help="output .h5 file, or a folder (same file name as the source)")
    p.add_argument("--config", help="a saltx train config (e.g. a run's config.yaml)")
    p.add_argument("--variables", help="YAML {input: [field, ...]} instead of a config")
    p.add_argument("--labels", nargs="*", help="with --variables: INPUT:FIELD label fields")
    p.add_argument("--input-map", nargs="*", help="with --variables: INPUT=DATASET")
    p.add_argument("--global-object", default="jets", help="with --variables (default jets)")
    p.add_argument("--block", type=int, default=BLOCK_JETS, help="jets per read")
    p.add_argument("--json", help="also write what was done (PackStats) to this JSON file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = p.parse_intermixed_args(argv)
    if args.variables and args.config:
        p.error("give --config or --variables, not both")
    if not args.variables and (args.labels or args.input_map):
        p.error("--labels and --input-map go with --variables (a config has its own)")
    dest = output_path(args.source, args.out)
    try:
        if args.variables:
            selection = _selection_from_args(args)
        elif required_labels is None:
            raise ValueError("saltx.data.pack.main: a config selection needs required_labels")
        else:
            selection = _selection_from_config(args, required_labels)
        dest.parent.mkdir(parents=True, exist_ok=True)
        stats = pack_file(args.source, dest, selection, args.block)
    except DataError as err:
        print(f"saltx.data.pack: {err}", file=sys.stderr)
        return 1
    kept = ", ".join(f"{k}: {len(v)} fields" for k, v in selection.fields.items())
    print(
        f"packed {stats.jets:,} jets of {args.source} into {dest} in {stats.seconds:.1f} s ({kept})"
    )
    for ds_name, n in stats.records.items():
        slots = stats.jets * stats.slots[ds_name]
        print(f"  {ds_name}: {n:,} valid of {slots:,} slots ({n / max(slots, 1):.1%}) kept")
    print(f"  {stats.bytes_in / 2**20:,.1f} MiB stored -> {stats.bytes_out / 2**20:,.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"out": str(dest), **asdict(stats)}, indent=1))
    return 0


if __name__ == "__main__":
    from saltx.models.build import required_labels as _required_labels

    raise SystemExit(main(required_labels=_required_labels))
