"""The probabilities ``python -m saltx.evaluate`` writes equal the model's own forward pass.

For the demo model and a narrow GN2: train a few steps, evaluate through the command line
(``ckpt=last``), then rebuild the model from the run directory, load ``last.pt``, run the
test jets through ``model(inputs, masks)`` in other batch sizes and take the softmax of
the jet-classification logits. Every jet of the predictions file must carry those
probabilities under ``<name>_p<flavour>``, in the test file's order (its copied jet
fields equal the test file's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx
from saltx.data.loader import build_dataloader, build_datasets
from saltx.models.build import build_model
from saltx.train import train

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
N_TEST = 300  # conftest.SYNTHETIC_COUNTS["test"]
TINY = (
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.out_dim=16",
    "data.batch_size=50",
    "data.num_train=100",
    "data.num_val=50",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "trainer.performance_writer.std_out=false",
)
MODELS = {
    "demo": ("+experiment=demo",),
    "gn2": (
        "+experiment=gn2",
        "model.encoder.num_layers=1",
        "model.init_nets.tracks.hidden_layers=[16]",
    ),
}


def _train_run(data_dir: Path, out: Path, *overrides: str) -> Path:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*overrides, *TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out}"],
        )
    OmegaConf.resolve(cfg)
    train(cfg)
    return out


def _forward_probs(run: Path, batch_size: int) -> tuple[np.ndarray, list[str], str]:
    """Softmax of the jet logits of ``last.pt`` over the test file: ``(J, C)``, class
    names, model name."""
    cfg = OmegaConf.create(yaml.safe_load((run / "config.yaml").read_text()))
    meta = yaml.safe_load((run / "metadata.yaml").read_text())
    classes = [meta["jet_classes"][i] for i in range(len(meta["jet_classes"]))]
    norm = yaml.safe_load((run / "norm_dict.yaml").read_text())
    class_dict = yaml.safe_load((run / "class_dict.yaml").read_text())
    torch.manual_seed(123)  # weights come from the checkpoint, not from this seed
    model = build_model(cfg, norm, class_dict, classes)
    ckpt = torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    model.eval()
    dataset = build_datasets(cfg.data, None, "test")["test"]
    loader = build_dataloader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    probs = []
    with torch.no_grad():
        for batch in loader:
            preds, _ = model(batch.inputs, batch.masks)
            probs.append(torch.softmax(preds["jet_classification"].double(), dim=-1))
    return torch.cat(probs).numpy(), classes, str(cfg.name)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_predictions_equal_the_forward_pass(synthetic_dir: Path, tmp_path: Path, model: str):
    run = _train_run(synthetic_dir, tmp_path / "run", *MODELS[model])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "saltx.evaluate", f"run_dir={run}", "ckpt=last", "plots=false"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (pred_file,) = sorted((run / "predictions").glob("*.h5"))

    expected, classes, name = _forward_probs(run, batch_size=37)
    assert expected.shape == (N_TEST, len(classes))
    with h5py.File(pred_file, "r") as f, h5py.File(synthetic_dir / "test.h5", "r") as t:
        jets = f["jets"][:]
        truth = t["jets"][:]
    assert len(jets) == N_TEST
    for field in ("pt", "eta", "flavour_label"):  # the same jets, in the same order
        np.testing.assert_array_equal(jets[field], truth[field])
    written = np.stack([jets[f"{name}_p{c.removesuffix('jets')}"] for c in classes], axis=1)
    np.testing.assert_allclose(written, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(written.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(written, written[:1])  # the jets differ: not a constant output
