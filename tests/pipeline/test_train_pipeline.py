"""Train the real demo model on tiny synthetic files: run dir, resume, compile, CLI + Katib."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saltx
from saltx.train import train

CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
KATIB_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
TINY = (
    "+experiment=demo",
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.out_dim=16",
    "data.batch_size=50",
    "data.num_train=200",
    "data.num_val=100",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=2",
    "trainer.progress_bar=false",
    "trainer.deterministic=true",
    "trainer.performance_writer.std_out=false",
)


def compose_train(data_dir: Path, out: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *overrides],
        )
    OmegaConf.resolve(cfg)
    return cfg


def test_train_writes_a_complete_run_dir(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(compose_train(synthetic_dir, out, "trainer.save_every_epoch=true"))
    assert math.isfinite(metrics["val/loss"])
    assert {"val/jet_classification_loss", "val/track_origin_loss"} <= set(metrics)
    for name in ("last.pt", "best.pt", "epoch=000.pt", "epoch=001.pt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["state"]["epoch"] >= 1
    for name in ("config.yaml", "metadata.yaml", "norm_dict.yaml", "class_dict.yaml"):
        assert (out / name).is_file(), name
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["jet_classes"] == {0: "bjets", 1: "cjets", 2: "ujets", 3: "taujets"}
    assert meta["num_train"] == 200 and meta["num_val"] == 100
    assert meta["trainable_params"] > 0 and "jet_counts_train" in meta
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("val/loss" in r for r in records) == 2
    assert (out / "performance_metric.json").read_text().count("\n") == 2


def test_resume_mid_epoch_is_bit_identical(synthetic_dir: Path, tmp_path: Path) -> None:
    # 200 jets / 50 = 4 shuffled batches per epoch; 2 epochs = 8 steps; stop after 5
    common = ("trainer.val_check_interval=3", "lrs.total_steps=8")
    train(compose_train(synthetic_dir, tmp_path / "a", *common))
    train(compose_train(synthetic_dir, tmp_path / "b", *common, "trainer.max_steps=5"))
    stopped = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert stopped["state"]["step"] == 5 and stopped["state"]["batch_in_epoch"] == 1
    train(compose_train(synthetic_dir, tmp_path / "b", *common))
    # the second run did resume, from step 5 (a deterministic fresh run gives the same weights)
    meta = yaml.safe_load((tmp_path / "b/metadata.yaml").read_text())
    assert meta["resumed_from"] == str(tmp_path / "b/checkpoints/last.pt")
    assert meta["start_step"] == 5
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert a["state"] == b["state"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k]))


@pytest.mark.slow
def test_compile_with_vertexing(synthetic_dir: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        synthetic_dir,
        tmp_path / "run",
        "trainer.compile=true",
        "trainer.compile_backend=aot_eager",  # graph capture; no C++ build on CI
        "trainer.max_steps=3",
    )
    assert "track_vertexing" in cfg.model.tasks
    metrics = train(cfg)
    assert math.isfinite(metrics["val/track_vertexing_loss"])
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model"])
    assert ckpt["state"]["step"] == 3


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real inductor backend (C++ kernels built with gcc on CPU), one encoder layer of
    the demo model: it trains, its checkpoint keys are plain, and the weights after three
    steps match an eager run to float rounding."""
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))  # fresh: a real compilation
    common = ("model.encoder.num_layers=1", "trainer.max_steps=3", "trainer.max_epochs=1")
    eager = train(compose_train(synthetic_dir, tmp_path / "eager", *common))
    compiled = train(
        compose_train(
            synthetic_dir,
            tmp_path / "compiled",
            *common,
            "trainer.compile=true",
            "trainer.compile_backend=inductor",
        )
    )
    kernels = [p for p in cache.rglob("*") if p.suffix in (".so", ".cpp", ".py")]
    assert kernels, f"inductor generated no code in {cache}"
    a = torch.load(tmp_path / "eager/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled/checkpoints/last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()  # no _orig_mod. prefixes
    assert b["state"]["step"] == 3
    for k, v in a["model"].items():
        # biases that a softmax cancels (attention keys, pooling gate) get gradients of pure
        # rounding noise, which Adam scales up to a step of ~lr: compare those loosely
        invariant = k.endswith(("linear_k.bias", "gate.bias"))
        atol = 1e-3 if invariant else 1e-5
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=atol, msg=k)
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-5)
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_cli_prints_katib_metrics(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [a for a in TINY if "std_out" not in a]
    cmd = [
        sys.executable,
        "-m",
        "saltx.train",
        *args,
        "trainer.max_epochs=1",
        f"paths.data_dir={synthetic_dir}",
        f"paths.output_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = {m[0]: m[1] for m in re.findall(KATIB_REGEX, proc.stdout)}
    assert {"train_loss", "val_loss", "val_jet_classification_loss"} <= set(found)
    last_val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert float(found["val_loss"]) == pytest.approx(last_val["val/loss"], abs=1e-5)


@pytest.mark.slow
def test_multirun_jobs_get_their_own_run_dirs(synthetic_dir: Path, tmp_path: Path) -> None:
    args = [a for a in TINY if "max_epochs" not in a]
    cmd = [
        sys.executable,
        "-m",
        "saltx.train",
        "-m",
        *args,
        "trainer.max_epochs=1",
        "trainer.max_steps=1,2",
        f"paths.data_dir={synthetic_dir}",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for job, steps in (("0", 1), ("1", 2)):
        ckpt = torch.load(tmp_path / "sweep" / job / "checkpoints/last.pt", weights_only=True)
        assert ckpt["state"]["step"] == steps
        config = yaml.safe_load((tmp_path / "sweep" / job / "config.yaml").read_text())
        assert config["paths"]["output_dir"] == str(tmp_path / "sweep" / job)
