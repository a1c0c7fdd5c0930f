"""salt-ml 0.13's GN2 (register token, non-affine norms) exports to ONNX and agrees with torch."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx
from saltx.data.labels import read_class_names
from saltx.export import export
from saltx.models.build import build_model

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")


def test_gn2_salt013_exports_and_matches_torch(synthetic_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=gn2_salt013",
                "model.embed_dim=16",
                "model.num_heads=2",
                "model.out_dim=16",
                "model.encoder.num_registers=2",
                f"paths.data_dir={synthetic_dir}",
                f"paths.output_dir={run}",
            ],
        )
    OmegaConf.resolve(cfg)
    norm = yaml.safe_load((synthetic_dir / "norm_dict.yaml").read_text())
    class_dict = yaml.safe_load((synthetic_dir / "class_dict.yaml").read_text())
    torch.manual_seed(0)
    model = build_model(cfg, norm, class_dict, read_class_names(str(synthetic_dir / "train.h5")))
    with torch.no_grad():  # registers far from their tiny initial values
        model.encoder.registers.normal_()
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict()}, run / "checkpoints" / "last.pt")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "norm_dict.yaml").write_text(yaml.safe_dump(norm))

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        export_cfg = compose(
            "export",
            overrides=[
                f"run_dir={run}",
                "include_aux=true",
                "validate.trials=2",
                "validate.max_constituents=6",
            ],
        )
    # onnxruntime must agree with the torch model (whose registers were set to values that
    # matter) on 0..6 tracks, or export raises ONNXValidationError
    result = export(export_cfg)
    assert (run / "network.onnx").exists()
    assert result["max_abs_diff"] <= 1e-4
