"""muP through the training engine (the composition step applies the base shapes): MuAdamW groups in
the checkpoint, bit-identical resume."""

from __future__ import annotations

import pytest
import torch
import yaml

from saltx.assemble import shape_model
from saltx.mup.shapes import compose_train, make_shapes

BASE, WIDTH = 16, 64


def overrides(data_dir, shape_dir, *extra: str) -> list[str]:
    return [
        "+experiment=gn2_mup",
        f"paths.data_dir={data_dir}",
        f"mup.shape_path={shape_dir}",
        f"model.embed_dim={WIDTH}",
        "model.num_heads=2",
        "model.out_dim=8",
        "model.encoder.num_layers=1",
        f"mup.embed_dim.parameter_base={BASE}",
        "mup.embed_dim.parameter_delta=32",
        "+data.num_inputs.tracks=8",
        *extra,
    ]


def test_training_with_mup_resumes_bit_identically(synthetic_dir, tmp_path):
    from saltx.engine.checkpoint import load_checkpoint
    from saltx.train import train

    make_shapes(overrides(synthetic_dir, tmp_path / "shapes"), shape_model)

    def cfg_for(run: str, *extra: str):
        return compose_train(
            overrides(
                synthetic_dir,
                tmp_path / "shapes",
                f"paths.output_dir={tmp_path / run}",
                "data.batch_size=16",
                "data.num_train=64",
                "data.num_val=16",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "trainer.progress_bar=false",
                "trainer.performance_writer.std_out=false",
                "lrs.total_steps=4",
                *extra,
            )
        )

    train(cfg_for("straight"))
    train(cfg_for("resumed", "trainer.max_steps=2"))
    train(cfg_for("resumed"))
    # the second run did resume, from step 2 (a deterministic fresh run gives the same weights)
    meta = yaml.safe_load((tmp_path / "resumed/metadata.yaml").read_text())
    assert meta["resumed_from"] == str(tmp_path / "resumed/checkpoints/last.pt")
    assert meta["start_step"] == 2
    a = load_checkpoint(str(tmp_path / "straight/checkpoints/last.pt"))
    b = load_checkpoint(str(tmp_path / "resumed/checkpoints/last.pt"))
    assert a["state"]["step"] == b["state"]["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # MuAdamW's groups, with their 1/width_mult learning-rate ratios, are in the checkpoint
    lrs = sorted({round(g["lr"], 15) for g in a["optimizer"]["param_groups"]})
    assert len(lrs) == 2 and lrs[1] / lrs[0] == pytest.approx(WIDTH / BASE)
