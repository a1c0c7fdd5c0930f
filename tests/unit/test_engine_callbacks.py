"""Katib performance writer, secret redaction, RNG state round trip, precision."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from saltx.engine.callbacks import PerformanceWriter, katib_name
from saltx.engine.precision import Precision, normalise_precision
from saltx.engine.runfiles import REDACTED, redact
from saltx.engine.state import capture_rng, preserve_rng, restore_rng
from saltx.io.rundir import RunDir

KATIB_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def test_katib_names() -> None:
    assert katib_name("val/loss") == "val_loss"
    assert katib_name("val/jets_classification_loss") == "val_jets_classification_loss"
    assert katib_name("a b.c-d") == "a_b_c-d"


def test_performance_writer(tmp_path: Path, capsys) -> None:
    writer = PerformanceWriter(RunDir(tmp_path), add_metrics=["train/lr", "absent"])
    logged = {
        "train/loss": 1.25,
        "train/lr": 3e-4,
        "val/loss": 0.5,
        "val/jets_classification_loss": 0.375,
        "train/jets_per_s": 1000.0,
    }
    writer.on_validation_end(3, logged)
    out = capsys.readouterr().out
    parsed = {m[0]: float(m[1]) for m in re.findall(KATIB_REGEX, out)}
    assert parsed == {
        "train_loss": 1.25,
        "val_loss": 0.5,
        "val_jets_classification_loss": 0.375,
        "train_lr": 0.0003,
    }
    record = json.loads((tmp_path / "performance_metric.json").read_text().splitlines()[0])
    assert record["epoch"] == 3 and record["val_loss"] == "0.50000" and "timestamp" in record


def test_performance_writer_dir_path_and_truncation(tmp_path: Path) -> None:
    other = tmp_path / "katib"
    (other).mkdir()
    (other / "performance_metric.json").write_text("old run\n")
    writer = PerformanceWriter(RunDir(tmp_path / "run"), dir_path=str(other), std_out=False)
    writer.on_validation_end(0, {"val/loss": 1.0})
    lines = (other / "performance_metric.json").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_loss"] == "1.00000"


def test_redact() -> None:
    cfg = {
        "data": {"config_S3": {"pubKey": "p", "secKey": "s", "url": "u"}},
        "x": [{"api_key": "k", "AWS_SESSION_TOKEN": "t"}],
        "password": None,
        "wandb_token": "w",
    }
    out = redact(cfg)
    assert out["data"]["config_S3"] == {"pubKey": REDACTED, "secKey": REDACTED, "url": "u"}
    assert out["x"] == [{"api_key": REDACTED, "AWS_SESSION_TOKEN": REDACTED}]
    assert out["password"] is None and out["wandb_token"] == REDACTED
    assert cfg["data"]["config_S3"]["secKey"] == "s"  # input untouched


def test_rng_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng()
    torch.save({"rng": [state]}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"][0])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_preserve_rng() -> None:
    torch.manual_seed(0)
    with preserve_rng():
        torch.rand(5)
        np.random.rand(2)
    a = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand(1))


def test_precision_names_and_bf16_autocast() -> None:
    assert normalise_precision(32) == "32"
    assert normalise_precision("16-mixed") == "fp16"
    with pytest.raises(ValueError, match=r"trainer\.precision"):
        normalise_precision("fp8")
    prec = Precision("bf16", torch.device("cpu"))
    lin = torch.nn.Linear(4, 4)
    with prec.autocast():
        y = lin(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert not prec.scaler.is_enabled() and prec.state_dict() == {}


def test_clipping_limits_gradient_norm() -> None:
    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    prec = Precision("32", torch.device("cpu"))
    (lin(torch.full((8, 4), 100.0)).sum() * 100).backward()
    norm = prec.step(opt, lin.parameters(), clip_val=0.5)
    assert norm is not None and float(norm) > 0.5
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in lin.parameters()]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)
