"""Class weights (UPP's ``class_dict.yaml``): load and compute.

Format: ``{dataset: {label: [w_0, w_1, ...]}}``, weights ordered by sorted label value,
``w = total / count`` normalised so the smallest is 1, rounded to 2 decimals, counted over
valid constituents. Labels containing ``VertexIndex`` or ``barcode`` are skipped::

    python -m saltx.data.class_weights --file train.h5 --out class_dict.yaml [--num N]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saltx.data.h5 import H5Source, open_h5
from saltx.data.norm import _read_yaml, as_number, dict_cli, selected_fields, valid_rows
from saltx.errors import DataError

SKIPPED_SUBSTRINGS = ("VertexIndex", "barcode")


def check_class_weights(weights: Any, where: str) -> list[float]:
    """Class weights as floats: a non-empty list of finite numbers >= 0.

    A zero weight (the class is ignored by the loss) is allowed with a warning; a negative,
    NaN, infinite or non-numeric weight is an error.

    Raises
    ------
    DataError
        Naming ``where`` (the file and key, or the config key) and the bad values.
    """
    values = list(weights) if isinstance(weights, list | tuple) else None
    numbers = [as_number(w) for w in values or []]
    if not values or any(w is None or not math.isfinite(w) or w < 0 for w in numbers):
        raise DataError(
            f"{where} = {weights!r} must be a non-empty list of finite numbers >= 0 (one "
            "weight per class)"
        )
    if 0.0 in numbers:
        warnings.warn(
            f"{where} = {weights!r} has a zero weight: that class does not enter the loss",
            stacklevel=2,
        )
    return [float(w) for w in numbers]


def load_class_dict(path: str) -> dict[str, dict[str, list[float]]]:
    """Read and check a class dict YAML: ``{dataset: {label: [weights]}}``.

    Raises
    ------
    DataError
        An empty file, or weights that are not finite numbers >= 0 (see
        :func:`check_class_weights`).
    """
    data = _read_yaml(path, "class dict")
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"class dict '{path}' must map dataset -> label -> [weights], got "
            + ("an empty file" if data is None else f"{type(data).__name__} {data!r:.80}")
        )
    for ds, labels in data.items():
        if not isinstance(labels, dict):
            raise DataError(f"class dict '{path}': '{ds}' must map label -> [weights]")
        for label, weights in labels.items():
            labels[label] = check_class_weights(weights, f"class dict '{path}': '{ds}.{label}'")
    return data


def class_weights(counts: Mapping[int, int], classes: Sequence[int] | None = None) -> list[float]:
    """UPP-style class weights ``total / count``, normalised to a minimum of 1, rounded to
    2 decimals (the one rule; the synthetic generator's class dicts use it too).

    Parameters
    ----------
    counts
        ``{label value: entries}``.
    classes
        The label values to weight, in order; default: the values of ``counts``, sorted.
        A class without entries gets the largest weight of the present classes (1.0 when
        no class is present).

    Returns
    -------
    list[float]
        One weight per class.
    """
    values = sorted(counts) if classes is None else list(classes)
    n = np.array([counts.get(v, 0) for v in values], dtype=np.float64)
    present = n > 0
    if not present.any():
        return [1.0] * len(values)
    w = np.zeros_like(n)
    w[present] = n.sum() / n[present]
    w[present] /= w[present].min()
    w[~present] = w[present].max()
    return [round(float(x), 2) for x in w]


def _integer_labels(dtype: np.dtype) -> list[str]:
    return [n for n in dtype.names if dtype[n].kind in "iu"]


def _counted(name: str) -> bool:
    """Label fields whose values are classes (not vertex indices or barcodes)."""
    return not any(s in name for s in SKIPPED_SUBSTRINGS)


def compute_class_dict(
    source: H5Source,
    labels: Mapping[str, Sequence[str]] | None = None,
    num: int = -1,
    batch_size: int = 100_000,
) -> dict[str, dict[str, list[float]]]:
    """Count label values over valid constituents and turn counts into weights.

    Parameters
    ----------
    source
        The h5 file.
    labels
        ``{dataset: [label, ...]}``; default: every integer field of every dataset,
        except those containing VertexIndex or barcode.
    num
        Jets to use from the start (-1 = all).
    batch_size
        Jets read at a time.
    """
    out: dict[str, dict[str, list[float]]] = {}
    with open_h5(source) as f:
        fields_of = selected_fields(f, source, labels, _integer_labels, "labels", _counted)
        for ds_name, ds, fields in fields_of:
            counts: dict[str, dict[int, int]] = {v: {} for v in fields}
            for rows in valid_rows(ds, num, batch_size):
                for v in fields:
                    values, n = np.unique(rows[v], return_counts=True)
                    for value, c in zip(values.tolist(), n.tolist(), strict=True):
                        counts[v][value] = counts[v].get(value, 0) + c
            out[ds_name] = {v: class_weights(c) for v, c in counts.items() if c}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: compute a class dict from an h5 file."""
    dict_cli(argv, __doc__.split("\n")[0], compute_class_dict, "labels", lambda v: str(list(v)))


if __name__ == "__main__":
    main()
