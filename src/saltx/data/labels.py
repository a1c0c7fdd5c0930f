"""Class names of a label from the file attributes.

A task's ``label_map`` is applied by the task (:func:`saltx.models.tasks.remap_labels`).
"""

from __future__ import annotations

import numpy as np

from saltx.data.h5 import H5Source, describe_source, open_h5
from saltx.errors import DataError


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
