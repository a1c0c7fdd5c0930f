"""The ``gnn_config`` metadata of an exported model (Athena reads it), and a CLI to print it.

``python -m saltx.onnx.metadata network.onnx [-k gnn_config]`` prints the stored JSON.

The ``gnn_config`` value is a JSON string with the keys salt-ml 0.13 writes: ``ckpt_path``,
``layers: []``, ``nodes: []`` (legacy placeholders), ``config.yaml`` (the training config),
``metadata.yaml`` (the run metadata), ``salt_export_hash`` (saltx's git hash, or
``"unknown"``), ``onnx_model_version: "v1"``, ``output_names``, ``model_name``, ``inputs``
(``jet_var`` with the ``jet_features`` columns), ``input_sequences`` (one entry per
constituent type, named as Athena's loaders expect, see :func:`sequence_name`),
``combine_outputs`` and ``rename_outputs``. Offsets and scales are identities (0, 1): the
normalisation is inside the graph.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from saltx.engine.run_setup import git_hash
from saltx.onnx.export import ExportLayout
from saltx.onnx.outputs import OutputPlan

METADATA_KEY = "gnn_config"
TRACK_SELECTIONS = (
    "all",
    "ip3d",
    "dipsLoose202102",
    "r22default",
    "r22loose",
    "dipsTightUpgrade",
    "dipsLooseUpgrade",
)


def _identity_vars(names: Sequence[str], strip_suffix: str = "") -> list[dict[str, Any]]:
    out = []
    for n in names:
        if strip_suffix and n.endswith(strip_suffix):
            n = n[: -len(strip_suffix)]
        out.append({"name": n, "offset": 0.0, "scale": 1.0})
    return out


def sequence_name(input_name: str, track_selection: str) -> str:
    """Athena's name of a constituent input sequence, by Salt's rule.

    Tracks and flows: ``<type>_<track_selection>_sd0sort`` (``tracks_r22default_sd0sort``);
    electrons: ``<type>_r22default``; any other type: ``<type>_var``.
    """
    if "tracks" in input_name or "flows" in input_name:
        return f"{input_name.split('_')[0]}_{track_selection}_sd0sort"
    if "electrons" in input_name:
        return f"{input_name}_r22default"
    return f"{input_name}_var"


def build_gnn_config(
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    layout: ExportLayout,
    ckpt_path: str,
    plan: OutputPlan,
    track_selection: str = "r22default",
) -> dict[str, Any]:
    """The ``gnn_config`` dictionary.

    Parameters
    ----------
    config
        The resolved training config (plain dict).
    metadata
        The run's ``metadata.yaml`` (plain dict).
    layout
        The export layout (input variable lists).
    ckpt_path
        The exported checkpoint.
    plan
        The graph's outputs (model name, output names, renames and combinations).
    track_selection
        Athena track selection naming the input sequences (Salt's list).
    """
    if track_selection not in TRACK_SELECTIONS:
        raise ValueError(
            f"track_selection '{track_selection}' is not one of {list(TRACK_SELECTIONS)}"
        )
    sequences = [
        {
            "name": sequence_name(c, track_selection),
            "variables": _identity_vars(layout.constituent_variables[c]),
        }
        for c in layout.constituents
    ]
    return {
        "ckpt_path": str(ckpt_path),
        "layers": [],
        "nodes": [],
        "config.yaml": dict(config),
        "metadata.yaml": dict(metadata),
        "salt_export_hash": git_hash() or "unknown",
        "onnx_model_version": "v1",
        "output_names": plan.names,
        "model_name": plan.model_name,
        "inputs": [
            {
                "name": "jet_var",
                "variables": _identity_vars(layout.jet_variables, "_btagJes"),
            }
        ],
        "input_sequences": sequences,
        **plan.metadata(),
    }


def add_metadata(path: str | os.PathLike, gnn_config: Mapping[str, Any], doc: str) -> None:
    """Store ``gnn_config`` as the ``gnn_config`` metadata entry; check the model.

    Parameters
    ----------
    path
        The ONNX file (rewritten in place).
    gnn_config
        From :func:`build_gnn_config`.
    doc
        ``model.doc_string`` (the model name).
    """
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    model.doc_string = doc
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(gnn_config, default=str)
    onnx.save(model, str(path))


def read_metadata(path: str | os.PathLike, key: str = METADATA_KEY) -> dict[str, Any]:
    """The JSON stored under ``key`` in the ONNX file at ``path``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    KeyError
        If the file has no such metadata key.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: '{path}'")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if key not in props:
        raise KeyError(f"'{path}' has no metadata key '{key}'; it has {sorted(props)}")
    return json.loads(props[key])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI: print the metadata stored in an ONNX file."""
    parser = argparse.ArgumentParser(description="Print the metadata of a saltx ONNX model.")
    parser.add_argument("file", help="path to the .onnx file")
    parser.add_argument("-k", "--key", default=METADATA_KEY, help="metadata key")
    args = parser.parse_args(argv)
    meta = read_metadata(args.file, args.key)
    doc = onnx.load(args.file, load_external_data=False).doc_string
    print(f"Printing config for model: '{doc}' and key: '{args.key}'")
    print(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    main()
