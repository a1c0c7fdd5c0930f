"""A small GN2 learns every task of a fixed synthetic file within a fixed budget.

``saltx.train.train`` (the real loop: loader, schedule, optimizer, checkpoints) trains a
small GN2 (salt-ml 0.13's architecture, embed 32, 2 layers) for 180 steps on 6,000
synthetic jets; the best checkpoint is then scored on 2,000 test jets it never saw, per
task:

* jet flavour: area under the ROC curve of ``D_b`` (f_c = 0.2), b against light jets;
* track origin: balanced accuracy (mean recall over the origin classes) of the arg-max
  class over valid tracks;
* vertexing: area under the ROC curve of the pair logits, same vertex against not, over
  valid track pairs.

Each must reach a stated minimum. The minima sit between what the working model reaches
and what it reaches when it cannot learn; measured when the test was written (saltx
c2575a3, one thread) by breaking ``SaltModel`` once for each case:

=========================  =======  ===========  ==========
case                       jet AUC  origin bal.  vertex AUC
                                    accuracy
=========================  =======  ===========  ==========
working                    0.961    0.526        0.925
track inputs zeroed        0.602    0.236        0.579
jet loss left out          0.762    0.520        0.932
track-origin loss left out 0.960    0.079        0.924
vertexing loss left out    0.934    0.511        0.552
minimum asserted           0.92     0.40         0.80
=========================  =======  ===========  ==========

The training runs on one thread (tiny matrices; ~15 s on a busy 2-core machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx
from saltx.data.class_weights import load_class_dict
from saltx.data.loader import build_datasets
from saltx.data.norm import load_norm_dict
from saltx.data.synthetic import write_dataset
from saltx.eval.metrics import discriminant, fractions_for
from saltx.models.build import build_model, required_labels
from saltx.train import train

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
CLASSES = ["bjets", "cjets", "ujets", "taujets"]
COUNTS = {"train": 6000, "val": 1000, "test": 2000}
TRAINING = (
    "+experiment=gn2_salt013",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.out_dim=32",
    "model.encoder.num_layers=2",
    "model.init_nets.tracks.hidden_layers=[32]",
    "model.tasks.jet_classification.hidden_layers=[32,16]",
    "model.tasks.track_origin.hidden_layers=[32,16]",
    "model.tasks.track_vertexing.hidden_layers=[32,16]",
    "data.batch_size=100",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "trainer.checkpoint_every_n_steps=0",
    "trainer.performance_writer.enabled=false",
    "trainer.num_threads=1",  # tiny matrices: one thread is fastest, above all on a busy machine
    "lrs.max=2e-3",
    "lrs.pct_start=0.1",
    "lrs.end=1e-5",
    "seed=7",
)

# the minima (see the table in the module docstring)
MIN_JET_AUC = 0.92
MIN_ORIGIN_ACCURACY = 0.40
MIN_VERTEX_AUC = 0.80


def auc(scores_signal: np.ndarray, scores_background: np.ndarray) -> float:
    """Area under the ROC curve: P(signal score > background score), ties count half."""
    scores = np.concatenate([scores_signal, scores_background])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    n_s, n_b = len(scores_signal), len(scores_background)
    return float((ranks[:n_s].sum() - n_s * (n_s + 1) / 2) / (n_s * n_b))


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Train once; the three figures on the test file."""
    root = tmp_path_factory.mktemp("learning")
    data = root / "data"
    write_dataset(data, COUNTS, seed=11)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TRAINING, f"paths.data_dir={data}", f"paths.output_dir={root / 'run'}"],
        )
    OmegaConf.resolve(cfg)
    threads = torch.get_num_threads()
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)  # trainer.num_threads is process-wide

    model = build_model(
        cfg, load_norm_dict(cfg.data.norm_dict), load_class_dict(cfg.data.class_dict), CLASSES
    )
    ckpt = torch.load(root / "run" / "checkpoints" / "best.pt", weights_only=True)
    model.load_state_dict(ckpt["model"])
    model.eval()
    test = build_datasets(
        OmegaConf.merge(cfg.data, {"val_file": cfg.data.test_file}), required_labels(cfg), "fit"
    )["val"]
    batch = test[0 : len(test)]
    with torch.no_grad():
        preds, _ = model(batch.inputs, batch.masks)
    flavour = batch.labels["jets"]["flavour_label"].numpy()

    probs = torch.softmax(preds["jet_classification"], -1).numpy()
    disc = discriminant(
        {c: probs[:, i] for i, c in enumerate(CLASSES)},
        "bjets",
        fractions_for("bjets", CLASSES, 0.2),
    )
    jet_auc = auc(disc[flavour == 0], disc[flavour == 2])

    valid = ~batch.masks["tracks"]
    origin = batch.labels["tracks"]["ftagTruthOriginLabel"][valid]
    origin_pred = preds["track_origin"].argmax(-1)[valid]
    # balanced accuracy (mean recall of the classes with >= 20 tracks): the loss is
    # class-weighted, so plain accuracy would reward always predicting "Primary"
    recalls = [
        (origin_pred[origin == c] == c).float().mean().item()
        for c in range(8)
        if (origin == c).sum() >= 20
    ]
    balanced = float(np.mean(recalls))

    valid = ~batch.masks["tracks"]
    vertex = batch.labels["tracks"]["ftagTruthVertexIndex"]
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(valid.shape[1], dtype=torch.bool)
    same = (vertex[:, :, None] == vertex[:, None, :]) & (vertex[:, :, None] >= 0)
    logits = preds["track_vertexing"][pairs].numpy()
    truth = same[pairs].numpy()
    vertex_auc = auc(logits[truth], logits[~truth])
    out = {"jet_auc": jet_auc, "origin_balanced_accuracy": balanced, "vertex_auc": vertex_auc}
    print("learning test figures:", out)
    return out


def test_jet_flavour_is_learned(scores):
    assert scores["jet_auc"] >= MIN_JET_AUC, scores


def test_track_origin_is_learned(scores):
    assert scores["origin_balanced_accuracy"] >= MIN_ORIGIN_ACCURACY, scores


def test_vertexing_is_learned(scores):
    assert scores["vertex_auc"] >= MIN_VERTEX_AUC, scores


def test_auc_helper():
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([0.0]), np.array([1.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
