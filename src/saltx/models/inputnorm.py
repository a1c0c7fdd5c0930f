"""Input normalisation from a norm_dict: the model's first module, so exports take raw inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

# variables keys that are never normalised
UNNORMALISED = ("EDGE", "PARAMETERS")


def norm_dataset_name(
    input_name: str, global_object: str, input_map: Mapping[str, str] | None = None
) -> str:
    """The norm_dict (h5 dataset) name holding the statistics of ``input_name``.

    ``GLOBAL`` uses the global object's entries; otherwise ``input_map`` (if given and
    listing the input) and finally the input name itself.
    """
    if input_name == "GLOBAL":
        input_name = global_object
    if input_map and input_name in input_map:
        return str(input_map[input_name])
    return input_name


def norm_stats(
    norm_dict: Mapping, dataset: str, variables: list[str], input_name: str
) -> tuple[list[float], list[float]]:
    """Means and stds of ``variables`` from ``norm_dict[dataset]``, validated.

    Raises
    ------
    KeyError
        If the dataset or a variable is missing from the norm dict.
    ValueError
        If a mean or std is not finite, or a std is zero.
    """
    if dataset not in norm_dict:
        raise KeyError(
            f"norm_dict has no entry for dataset {dataset!r} (needed by input {input_name!r}); "
            f"it has: {sorted(norm_dict)}"
        )
    entries = norm_dict[dataset]
    means, stds = [], []
    for var in variables:
        if var not in entries:
            raise KeyError(
                f"norm_dict[{dataset!r}] has no entry for variable {var!r} "
                f"(input {input_name!r}); add it to the norm dict or remove it from "
                f"data.variables.{input_name}"
            )
        entry = entries[var]
        try:
            mean, std = float(entry["mean"]), float(entry["std"])
        except (KeyError, TypeError) as err:
            raise KeyError(
                f"norm_dict[{dataset!r}][{var!r}] must be a mapping with 'mean' and 'std', "
                f"got {entry!r}"
            ) from err
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise ValueError(
                f"norm_dict[{dataset!r}][{var!r}] has non-finite values (mean={mean}, std={std})"
            )
        if std == 0:
            raise ValueError(f"norm_dict[{dataset!r}][{var!r}] has std == 0 (mean={mean})")
        means.append(mean)
        stds.append(std)
    return means, stds


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
        for name, names in variables.items():
            if name in UNNORMALISED:
                continue
            dataset = norm_dataset_name(name, global_object, input_map)
            means, stds = norm_stats(norm_dict, dataset, list(names), name)
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
