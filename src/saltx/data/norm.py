"""Normalisation dicts (UPP's ``norm_dict.yaml``): load, validate and compute.

Format: ``{dataset: {variable: {mean: float, std: float}}}``. Computing (the CLI) pools
nan-aware per-batch statistics over valid constituents, as UPP does::

    python -m saltx.data.norm --file train.h5 --out norm_dict.yaml \
        [--num N] [--variables jets=pt_btagJes,eta_btagJes tracks=d0,z0SinTheta]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import yaml

from saltx.data.h5 import H5Source, describe_source, open_h5
from saltx.errors import DataError


def _read_yaml(path: str, what: str) -> Any:
    from saltx.io.fs import open_any  # local paths and s3:// URLs

    try:
        with open_any(str(path), "r") as f:
            return yaml.safe_load(f)
    except FileNotFoundError as err:
        raise DataError(f"{what} not found: '{path}'") from err
    except yaml.YAMLError as err:
        raise DataError(f"{what} '{path}' is not valid YAML: {err}") from err


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (or a numeric string such as ``1e-3``, which
    YAML 1.1 reads as a string); None otherwise (``abc``, ``true``, lists, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def load_norm_dict(path: str) -> dict[str, dict[str, dict[str, float]]]:
    """Read and check a norm dict YAML (local path or URL).

    Every entry must be ``{mean: number, std: number}`` with ``std >= 0`` (numeric strings
    become floats); entries with a zero or non-finite std or mean get one warning (they are
    an error only for the variables a model uses, see :class:`saltx.models.InputNorm`).

    Returns
    -------
    dict
        ``{dataset: {variable: {"mean": float, "std": float}}}``.

    Raises
    ------
    DataError
        An empty file, an entry that is not ``{mean, std}``, a value that is not a number,
        or a negative std (naming the file, dataset, variable and key).
    """
    norm = _read_yaml(path, "norm dict")
    if not isinstance(norm, dict) or not norm:
        raise DataError(
            f"norm dict '{path}' must map dataset -> variable -> {{mean, std}}, got "
            + ("an empty file" if norm is None else f"{type(norm).__name__} {norm!r:.80}")
        )
    odd = []
    for ds, entries in norm.items():
        if not isinstance(entries, dict):
            raise DataError(f"norm dict '{path}': '{ds}' must map variable -> {{mean, std}}")
        for var, stats in entries.items():
            if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
                raise DataError(
                    f"norm dict '{path}': '{ds}.{var}' must be {{mean: ..., std: ...}}, got "
                    f"{stats!r:.80}"
                )
            for key in ("mean", "std"):
                number = as_number(stats[key])
                if number is None:
                    raise DataError(
                        f"norm dict '{path}': '{ds}.{var}.{key}' = {stats[key]!r} is not a number"
                    )
                stats[key] = number
            if stats["std"] < 0:
                raise DataError(
                    f"norm dict '{path}': '{ds}.{var}.std' = {stats['std']} is negative; a "
                    "standard deviation is >= 0 (inputs would be mirrored)"
                )
            if stats["std"] == 0 or not (
                math.isfinite(stats["mean"]) and math.isfinite(stats["std"])
            ):
                odd.append(f"{ds}.{var}")
    if odd:
        warnings.warn(
            f"norm dict '{path}' has a zero or non-finite mean/std for {odd[:10]}"
            + (f" and {len(odd) - 10} more" if len(odd) > 10 else "")
            + "; a model that uses them will refuse to build",
            stacklevel=2,
        )
    return norm


class RunningStats:
    """Pooled NaN-ignoring mean/variance over batches, per column, in float64.

    Each batch's moments are taken per column over its non-NaN values (``mean`` and the
    sum of squared deviations), then pooled with the running ones (Chan et al.). The one
    copy of this rule: the norm dict CLI (:func:`compute_norm_dict`) and the synthetic
    generator's ``norm_dict.yaml`` both use it.

    Parameters
    ----------
    num
        Number of columns.
    """

    def __init__(self, num: int) -> None:
        self.n = np.zeros(num)
        self.mean = np.zeros(num)
        self.m2 = np.zeros(num)

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x: (R, num)``; NaNs are ignored."""
        x = np.asarray(x, dtype=np.float64)
        for j in range(x.shape[1]):
            col = x[:, j]
            col = col[~np.isnan(col)]
            if col.size:
                mean = col.mean()
                self._pool(j, col.size, mean, ((col - mean) ** 2).sum())

    def _pool(self, j: int, n: int, mean: np.float64, m2: np.float64) -> None:
        """Pool ``n`` values with ``mean`` and squared deviations ``m2`` into column ``j``."""
        na = self.n[j]
        if na == 0:
            self.n[j], self.mean[j], self.m2[j] = n, mean, m2
            return
        total = na + n
        delta = mean - self.mean[j]
        self.mean[j] = self.mean[j] + delta * n / total
        self.m2[j] = self.m2[j] + m2 + delta**2 * na * n / total
        self.n[j] = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``, as ``np.nanstd``); NaN without values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.n > 0, self.m2 / self.n, np.nan))


def selected_fields(
    f: h5py.File,
    source: H5Source,
    selection: Mapping[str, Sequence[str]] | None,
    default: Callable[[np.dtype], list[str]],
    what: str,
    keep: Callable[[str], bool] = lambda name: True,
) -> Iterator[tuple[str, h5py.Dataset, list[str]]]:
    """``(dataset name, dataset, fields)`` to compute a dict over, checked.

    ``selection`` is ``{dataset: [field, ...]}``; by default every structured dataset
    with the fields ``default(dtype)`` picks. Fields failing ``keep`` are left out, and a
    dataset left without fields is skipped. ``what`` names the fields in errors
    (``variables``, ``labels``).

    Raises
    ------
    DataError
        A selected dataset or field that the file lacks (naming what it has).
    """
    names = selection or {
        k: default(f[k].dtype) for k in f if hasattr(f[k], "dtype") and f[k].dtype.names
    }
    for ds_name, wanted in names.items():
        fields = [n for n in wanted if keep(n)]
        if not fields:
            continue
        if ds_name not in f:
            raise DataError(f"no dataset '{ds_name}' in '{describe_source(source)}'")
        ds = f[ds_name]
        missing = [v for v in fields if v not in ds.dtype.names]
        if missing:
            raise DataError(
                f"{what} {missing} not in dataset '{ds_name}' of "
                f"'{describe_source(source)}'; available: {list(ds.dtype.names)}"
            )
        yield ds_name, ds, fields


def valid_rows(ds: h5py.Dataset, num: int, batch_size: int) -> Iterator[np.ndarray]:
    """The first ``num`` jets (-1: all) of ``ds``, ``batch_size`` at a time, valid rows
    only (constituents with ``valid`` false are dropped)."""
    total = ds.shape[0] if num < 0 else min(num, ds.shape[0])
    for start in range(0, total, batch_size):
        rows = ds[start : min(start + batch_size, total)]
        yield rows[rows["valid"]] if "valid" in ds.dtype.names else rows


def _numeric_fields(dtype: np.dtype) -> list[str]:
    return [n for n in dtype.names if n != "valid" and dtype[n].kind in "fiub"]


def compute_norm_dict(
    source: H5Source,
    variables: Mapping[str, Sequence[str]] | None = None,
    num: int = -1,
    batch_size: int = 100_000,
) -> dict[str, dict[str, dict[str, float]]]:
    """Compute ``{dataset: {var: {mean, std}}}`` over valid constituents.

    Parameters
    ----------
    source
        The h5 file (usually the training file).
    variables
        ``{dataset: [field, ...]}``; default: every numeric field of every dataset.
        Requested variables with non-finite or zero std raise; with the default, such
        fields are left out with a warning.
    num
        Jets to use from the start (-1 = all).
    batch_size
        Jets read at a time.
    """
    explicit = variables is not None
    out: dict[str, dict[str, dict[str, float]]] = {}
    with open_h5(source) as f:
        fields_of = selected_fields(f, source, variables, _numeric_fields, "variables")
        for ds_name, ds, fields in fields_of:
            stats = RunningStats(len(fields))
            for rows in valid_rows(ds, num, batch_size):
                x = np.stack([rows[v].astype(np.float64).ravel() for v in fields], axis=-1)
                stats.update(x)
            out[ds_name] = {}
            for var, mean, std in zip(fields, stats.mean, stats.std, strict=True):
                if not (np.isfinite(mean) and np.isfinite(std)) or std == 0:
                    msg = f"'{ds_name}.{var}' has mean={mean}, std={std}"
                    if explicit:
                        raise DataError(f"cannot normalise {msg}: need finite values, std != 0")
                    print(f"warning: skipping {msg}", file=sys.stderr)
                    continue
                out[ds_name][var] = {"mean": float(mean), "std": float(std)}
    return out


def parse_variables(items: Sequence[str] | None) -> dict[str, list[str]] | None:
    """Parse ``["jets=a,b", "tracks=c"]`` into ``{"jets": ["a", "b"], "tracks": ["c"]}``."""
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise DataError(f"expected DATASET=var1,var2 in --variables, got '{item}'")
        ds, names = item.split("=", 1)
        out[ds] = [n for n in names.split(",") if n]
    return out


def write_yaml(data: Mapping[str, Any], path: str) -> None:
    """Write a dict as block-style YAML, keeping key order (atomically: temp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            yaml.safe_dump(dict(data), f, sort_keys=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def dict_cli(
    argv: Sequence[str] | None,
    description: str,
    compute: Callable[..., dict[str, dict[str, Any]]],
    select: str,
    describe: Callable[[dict[str, Any]], str],
) -> None:
    """The command line of a dict computed from an h5 file (norm dict, class dict).

    ``--file``, ``--out``, ``--num`` and ``--<select> DATASET=a,b ...`` (default: all);
    calls ``compute(file, selection, num=num)``, writes the YAML and prints a summary with
    ``describe`` of each dataset's entry.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--file", required=True, help="h5 file (usually the training file)")
    parser.add_argument("--out", required=True, help="output YAML path")
    parser.add_argument("--num", type=int, default=-1, help="jets to use (-1 = all)")
    parser.add_argument(f"--{select}", nargs="*", help="DATASET=name1,name2 ... (default: all)")
    args = parser.parse_args(argv)
    result = compute(args.file, parse_variables(getattr(args, select)), num=args.num)
    write_yaml(result, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {describe(v)}" for k, v in result.items()))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: compute a norm dict from an h5 file."""
    dict_cli(
        argv, __doc__.split("\n")[0], compute_norm_dict, "variables", lambda v: f"({len(v)} vars)"
    )


if __name__ == "__main__":
    main()
