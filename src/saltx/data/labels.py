"""Label helpers: vectorised ``label_map`` and class names from the file attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import torch

from saltx.data.h5 import H5Source, describe_source, open_h5
from saltx.errors import DataError

PAD_VALUES = (-1, -2)
"""Label values used for padding/invalid entries; unmapped, they pass through as -1."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def apply_label_map(labels: ArrayT, mapping: Mapping[int, int], name: str = "label") -> ArrayT:
    """Map raw label values to class indices in one vectorised lookup.

    Unlike Salt's sequential in-place replacement, swaps such as ``{0: 1, 1: 0}`` work and
    the input is never modified.

    Parameters
    ----------
    labels
        Integer labels, any shape (e.g. ``(B,)`` or ``(B, N)``); numpy array or tensor.
    mapping
        ``{raw_value: class_index}``.
    name
        Label name used in error messages.

    Returns
    -------
    Same type, shape and (for tensors) device as ``labels``; values are ``mapping[v]``,
    and -1 for the padding values -1 and -2 when the map does not list them.

    Raises
    ------
    DataError
        If a value is neither in ``mapping`` nor a padding value.
    """
    if not mapping:
        raise DataError(f"label_map for '{name}' is empty")
    is_tensor = isinstance(labels, torch.Tensor)
    values = labels.detach().cpu().numpy() if is_tensor else np.asarray(labels)
    if values.dtype.kind not in "iu":
        raise DataError(f"label_map for '{name}' needs integer labels, got dtype {values.dtype}")
    keys = np.array([int(k) for k in mapping], dtype=np.int64)
    targets = np.array([int(v) for v in mapping.values()], dtype=np.int64)
    order = np.argsort(keys)
    keys, targets = keys[order], targets[order]
    pos = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
    found = keys[pos] == values
    out = np.where(found, targets[pos], -1)
    missing = ~found & ~np.isin(values, PAD_VALUES)
    if missing.any():
        bad = np.unique(values[missing]).tolist()
        raise DataError(
            f"label '{name}' has values {bad} that are not in label_map {dict(mapping)} "
            f"(padding values {list(PAD_VALUES)} pass through as -1)"
        )
    if is_tensor:
        return torch.from_numpy(out).to(device=labels.device, dtype=torch.long)
    return out.astype(values.dtype if values.dtype.kind == "i" else np.int64, copy=False)


class MissingClassNames(DataError):
    """The file has no class-name attribute (the task config may give the names)."""


def _to_names(value: object, where: str = "class names") -> list[str]:
    if isinstance(value, bytes | str):
        value = [value]
    items = list(np.asarray(value).ravel())
    if not items or not all(isinstance(v, bytes | str) for v in items):
        raise DataError(
            f"{where} must be a non-empty list of class-name strings, got "
            f"{type(value).__name__} {np.asarray(value).tolist()!r:.100}"
        )
    try:
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
    except UnicodeDecodeError as err:
        raise DataError(f"{where} are not valid UTF-8 ({err})") from err
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(
            f"{where} lists {duplicates} more than once in {names}: two label values would "
            "share a name"
        )
    if len(names) < 2:
        raise DataError(
            f"{where} has a single class {names}: a classifier needs at least two classes"
        )
    return names


def read_class_names(
    source: H5Source, dataset: str = "jets", label: str = "flavour_label"
) -> list[str]:
    """Read the class names of ``label`` from the file attribute ``f[dataset].attrs[label]``.

    Parameters
    ----------
    source
        The h5 file (path, URL or file object).
    dataset
        The dataset holding the attribute (the global object, usually ``jets``).
    label
        The label whose names are stored, usually ``flavour_label``.

    Returns
    -------
    list[str]
        Names indexed by label value, e.g. ``["bjets", "cjets", "ujets", "taujets"]``.

    Raises
    ------
    DataError
        If the dataset or the attribute is missing.
    """
    try:
        return _read_class_names(source, dataset, label)
    except (OSError, KeyError, RuntimeError) as err:
        raise DataError(
            f"cannot read class names from '{describe_source(source)}': the file is damaged "
            f"or truncated ({type(err).__name__}: {err})"
        ) from err


def _read_class_names(source: H5Source, dataset: str, label: str) -> list[str]:
    with open_h5(source) as f:
        if dataset not in f:
            raise DataError(
                f"cannot read class names: no dataset '{dataset}' in '{describe_source(source)}' "
                f"(available: {sorted(f.keys())})"
            )
        attrs = f[dataset].attrs
        if label not in attrs:
            raise MissingClassNames(
                f"no attribute '{label}' on dataset '{dataset}' in '{describe_source(source)}' "
                f"(available attributes: {sorted(attrs.keys())}); give class_names explicitly"
            )
        where = f"attribute '{label}' of dataset '{dataset}' in '{describe_source(source)}'"
        return _to_names(attrs[label], where)


def fit_class_names(
    train_file: H5Source, val_file: H5Source, dataset: str = "jets", label: str = "flavour_label"
) -> list[str]:
    """The class names of the training file, which the validation file must share.

    Two attribute reads, no data. A validation file without the attribute is accepted (its
    labels are then read as the training file's classes).

    Raises
    ------
    MissingClassNames
        When the training file has no attribute (the task config may give the names).
    DataError
        When the two files name their classes differently (a different order included:
        label 0 would mean another class in validation).
    """
    names = read_class_names(train_file, dataset, label)
    try:
        other = read_class_names(val_file, dataset, label)
    except MissingClassNames:
        return names
    if other != names:
        raise DataError(
            f"the class names of '{describe_source(val_file)}' ({dataset}.attrs['{label}'] = "
            f"{other}) differ from those of the training file '{describe_source(train_file)}' "
            f"({names}): the same label value would mean different classes"
        )
    return names
