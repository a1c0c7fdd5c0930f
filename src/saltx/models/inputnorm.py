"""Input normalisation from a norm_dict: the model's first module, so exports take raw inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from saltx.errors import DataError

UNNORMALISED = ("EDGE", "PARAMETERS")
"""``data.variables`` keys that are never normalised."""


def norm_dataset_name(
    input_name: str, global_object: str = "jets", input_map: Mapping[str, str] | None = None
) -> str:
    """The norm dict entry (h5 dataset) holding the statistics of ``input_name``.

    ``GLOBAL`` uses the global object's entries; then ``input_map`` (when it lists the
    input), else the input name itself.
    """
    if input_name == "GLOBAL":
        input_name = global_object
    if input_map and input_name in input_map:
        return str(input_map[input_name])
    return input_name


def _input_stats(
    norm: Mapping, dataset: str, variables: Sequence[str], input_name: str
) -> tuple[list[float], list[float]]:
    if dataset not in norm:
        raise DataError(
            f"norm_dict has no entry for dataset {dataset!r} (needed by input {input_name!r}); "
            f"it has: {sorted(norm)}"
        )
    entries = norm[dataset] or {}
    means, stds = [], []
    for var in variables:
        if var not in entries:
            raise DataError(
                f"norm_dict[{dataset!r}] has no entry for variable {var!r} "
                f"(input {input_name!r}); add it to the norm dict or remove it from "
                f"data.variables.{input_name}"
            )
        entry = entries[var]
        try:
            mean, std = float(entry["mean"]), float(entry["std"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"norm_dict[{dataset!r}][{var!r}] must be a mapping with 'mean' and 'std', "
                f"got {entry!r}"
            ) from err
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise DataError(
                f"norm_dict[{dataset!r}][{var!r}] has non-finite values (mean={mean}, std={std})"
            )
        if std == 0:
            raise DataError(f"norm_dict[{dataset!r}][{var!r}] has std == 0 (mean={mean})")
        means.append(mean)
        stds.append(std)
    return means, stds


def norm_stats(
    norm: Mapping[str, Mapping[str, Mapping[str, float]]],
    variables: Mapping[str, Sequence[str]],
    global_object: str = "jets",
    input_map: Mapping[str, str] | None = None,
) -> dict[str, tuple[list[float], list[float]]]:
    """Means and stds of every normalised input, checked (the one rule for norm dicts).

    Every ``variables`` key except :data:`UNNORMALISED` is normalised, with the entries of
    its dataset (:func:`norm_dataset_name`).

    Parameters
    ----------
    norm
        ``{dataset: {variable: {mean, std}}}`` (:func:`saltx.data.norm.load_norm_dict`).
    variables
        ``{input_name: [variable, ...]}`` (``data.variables``).
    global_object, input_map
        ``data.global_object`` and ``data.input_map``.

    Returns
    -------
    dict
        ``{input_name: (means, stds)}``, each a list in variable order (shape ``(F,)``).

    Raises
    ------
    DataError
        A missing dataset or variable, an entry without mean/std, a non-finite value or a
        zero std (naming the dataset, the variable and the input).
    """
    return {
        name: _input_stats(norm, norm_dataset_name(name, global_object, input_map), names, name)
        for name, names in variables.items()
        if name not in UNNORMALISED
    }


class InputNorm(nn.Module):
    """Standardise raw inputs ``(x - mean) / std`` with buffers from a norm dict.

    Buffers ``<input>_means`` and ``<input>_stds`` (shape ``(F,)``, in variable order) are
    registered for every ``variables`` key except ``EDGE`` and ``PARAMETERS``. ``GLOBAL``
    uses the global object's entries.

    Parameters
    ----------
    norm_dict
        ``{dataset: {variable: {mean, std}}}`` as written by UPP.
    variables
        ``{input_name: [variable, ...]}`` (``data.variables``).
    global_object
        Name of the global object (``jets``).
    input_map
        Optional ``{input_name: h5 dataset}``; selects the norm dict entry of an input.
    """

    def __init__(
        self,
        norm_dict: Mapping,
        variables: Mapping[str, list[str]],
        global_object: str = "jets",
        input_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.input_names: list[str] = []
        for name, (means, stds) in norm_stats(
            norm_dict, variables, global_object, input_map
        ).items():
            self.register_buffer(f"{name}_means", torch.tensor(means, dtype=torch.float32))
            self.register_buffer(f"{name}_stds", torch.tensor(stds, dtype=torch.float32))
            self.input_names.append(name)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Normalise every known input; others (EDGE, PARAMETERS) pass through unchanged.

        Parameters
        ----------
        inputs
            Raw inputs, ``(B, F)`` or ``(B, N, F)`` each.

        Returns
        -------
        dict[str, Tensor]
            A new dict (the caller's is not modified).
        """
        out = dict(inputs)
        for name in self.input_names:
            if name not in inputs:
                continue
            x = inputs[name]
            means = getattr(self, f"{name}_means")
            stds = getattr(self, f"{name}_stds")
            if x.shape[-1] != means.shape[0]:
                raise ValueError(
                    f"InputNorm: input {name!r} has {x.shape[-1]} features, "
                    f"expected {means.shape[0]} (data.variables.{name})"
                )
            out[name] = (x - means) / stds
        return out
