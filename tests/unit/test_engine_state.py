"""Secret redaction, RNG state round trip, precision, clipping."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from saltx.engine.precision import Precision, normalise_precision
from saltx.engine.run_setup import REDACTED, redact
from saltx.engine.state import capture_rng, preserve_rng, restore_rng


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
