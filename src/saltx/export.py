"""Export a trained run to ONNX for Athena: ``RUN/network.onnx``.

``python -m saltx.export run_dir=RUN [ckpt=best|last|PATH] [name=GN2] [include_aux=true]
[tasks=[...]] [rename_outputs={old: new}] [combine_outputs=[...]] [graph=auto|single|generic]
[overwrite=true]``

The graph takes raw features (normalisation inside), follows Athena's and Salt's input and
output names (see :mod:`saltx.onnx.export`, :mod:`saltx.onnx.outputs`), carries the
``gnn_config`` metadata, and is checked against the torch model with onnxruntime before it
is put in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from saltx.config import check_keys, validate_export
from saltx.io.rundir import remove_orphaned, temp_tag
from saltx.onnx.check import export_checked, export_summary
from saltx.onnx.export import export_layout
from saltx.onnx.metadata import add_metadata, build_gnn_config
from saltx.onnx.outputs import plan_outputs
from saltx.run import exit_on_termination, load_run
from saltx.secrets import redacted_console

ONNX_NAME = "network.onnx"


def export(ecfg: DictConfig) -> dict[str, Any]:
    """Export, annotate and validate; returns ``{"path", "outputs", "max_abs_diff", ...}``.

    Raises
    ------
    FileExistsError
        When ``RUN/network.onnx`` exists and ``overwrite`` is false.
    """
    check_keys(ecfg, OmegaConf.load(Path(__file__).parent / "conf" / "export.yaml"))
    validate_export(ecfg)
    run = load_run(str(ecfg.run_dir), ecfg.get("ckpt"), ecfg.get("allowed_targets"))
    if run.rundir.exists(ONNX_NAME) and not ecfg.overwrite:
        raise FileExistsError(
            f"{run.rundir.path(ONNX_NAME)} already exists; pass overwrite=true to replace it"
        )
    cfg = run.cfg
    plan = plan_outputs(
        run.model,
        ecfg.name or cfg.name,
        str(cfg.data.global_object),
        include_aux=bool(ecfg.include_aux),
        tasks=list(ecfg.tasks) if ecfg.get("tasks") else None,
        rename=OmegaConf.to_container(ecfg.rename_outputs) if ecfg.get("rename_outputs") else {},
        combine=list(ecfg.get("combine_outputs") or []),
        explicit_name=bool(ecfg.name),
    )
    layout = export_layout(
        OmegaConf.to_container(cfg.data.variables, resolve=True),
        str(cfg.data.global_object),
        run.model.edge_input,
    )
    local_root = None if run.rundir.remote else run.rundir.root
    if local_root:
        remove_orphaned(local_root, ".saltx-onnx-*")  # of killed exports
    tmpdir = tempfile.mkdtemp(prefix=f".saltx-onnx-{temp_tag()}-", dir=local_root)
    tmp = Path(tmpdir) / ONNX_NAME
    try:
        report = export_checked(
            run.model,
            layout,
            tmp,
            plan,
            graph=str(ecfg.graph),
            max_constituents=int(ecfg.validate.max_constituents),
            trials=int(ecfg.validate.trials),
        )
        gnn_config = build_gnn_config(
            OmegaConf.to_container(cfg, resolve=True),
            run.metadata,
            layout,
            run.ckpt_path,
            plan,
            str(ecfg.track_selection),
        )
        add_metadata(tmp, gnn_config, doc=plan.model_name)
        if run.rundir.remote:
            path = run.rundir.copy_in(str(tmp), ONNX_NAME)
        else:
            path = run.rundir.path(ONNX_NAME)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return export_summary(str(path), layout, plan, report)


@redacted_console
@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``python -m saltx.export``."""
    exit_on_termination()
    export(cfg)


if __name__ == "__main__":
    main()
