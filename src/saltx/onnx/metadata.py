"""The ``gnn_config`` metadata of an exported model (Athena reads it), and a CLI to print it.

``python -m saltx.onnx.metadata network.onnx [-k gnn_config]`` prints the stored JSON.

The ``gnn_config`` value is a JSON string with Salt's keys: ``ckpt_path``, ``layers: []``,
``nodes: []`` (legacy placeholders), ``config.yaml`` (the training config), ``metadata.yaml``
(the run metadata), ``inputs`` (``jet_var`` with the ``jet_features`` columns),
``input_sequences`` (one ``<type>_<track_selection>_sd0sort`` entry per constituent type),
``output_names``, ``model_name``, ``onnx_model_version: "v1"`` and
``salt_export_hash`` (saltx's git hash, or ``"unknown"``). Offsets and scales are
identities (0, 1): the normalisation is inside the graph.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from saltx.onnx.export import ExportLayout

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


def git_hash() -> str:
    """The saltx checkout's commit hash, or ``"unknown"`` (installed package, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_gnn_config(
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    layout: ExportLayout,
    ckpt_path: str,
    model_name: str,
    output_names: Sequence[str],
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
    model_name
        Name used in the output names.
    output_names
        The graph's output names.
    track_selection
        Athena track selection naming the input sequences (Salt's list).
    """
    if track_selection not in TRACK_SELECTIONS:
        raise ValueError(
            f"track_selection '{track_selection}' is not one of {list(TRACK_SELECTIONS)}"
        )
    sequences = [
        {
            "name": f"{c}_{track_selection}_sd0sort",
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
        "inputs": [
            {
                "name": "jet_var",
                "variables": _identity_vars(layout.jet_variables, "_btagJes"),
            }
        ],
        "input_sequences": sequences,
        "output_names": list(output_names),
        "model_name": model_name,
        "onnx_model_version": "v1",
        "salt_export_hash": git_hash(),
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
