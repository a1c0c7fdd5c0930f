"""The evaluation loop: thread counts around the forward pass, atomic predictions file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from saltx.config import TrainConfig
from saltx.data.batch import Batch
from saltx.eval.predictions import intra_op_threads, output_spec, write_predictions


class RecordingTask(nn.Module):
    """A jet classification task whose ``predict`` records the intra-op thread count."""

    kind = "classification"
    input_name = "jets"
    label = "flavour_label"
    class_names = ("bjets", "cjets", "ujets")

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.name = "jet_cls"
        self.fail = fail
        self.threads: list[int] = []

    def predict(self, preds, batch=None):
        self.threads.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("predict failed")
        return {"probs": torch.softmax(preds[self.name], dim=-1)}


class RecordingModel(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict({"jet_cls": RecordingTask(fail)})
        self.threads: list[int] = []

    def forward(self, inputs, masks):
        self.threads.append(torch.get_num_threads())
        x = inputs["jets"]
        return {"jet_cls": torch.stack([x[:, 0], -x[:, 0], 0 * x[:, 0]], dim=1)}, None


def _setup(tmp_path: Path, fail: bool = False):
    test_file = tmp_path / "test.h5"
    jets = np.zeros(4, dtype=[("pt", "f4"), ("eta", "f4")])
    jets["pt"] = [1, 2, 3, 4]
    with h5py.File(test_file, "w") as f:
        f.create_dataset("jets", data=jets)
    model = RecordingModel(fail)
    x = torch.tensor(jets["pt"])[:, None]
    loader = [Batch({"jets": x[i : i + 2]}, {}, {}) for i in (0, 2)]
    data = {"test_file": str(test_file), "batch_size": 2}
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"data": data})  # schema defaults
    ecfg = OmegaConf.create({"jet_fields": ["pt"], "write_tracks": False})
    spec = output_spec(model.tasks, "GN2", "jets")
    return model, loader, spec, cfg, ecfg


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_forward_on_all_threads_the_rest_on_one(tmp_path: Path, two_threads) -> None:
    model, loader, spec, cfg, ecfg = _setup(tmp_path)
    out = tmp_path / "pred" / "best__test_test.h5"
    write_predictions(model, loader, spec, cfg, ecfg, out, 4, torch.device("cpu"), None)
    assert model.threads == [2, 2]
    assert model.tasks["jet_cls"].threads == [1, 1]
    assert torch.get_num_threads() == 2
    with h5py.File(out) as f:
        assert f["jets"].dtype.names == ("pt", "GN2_pb", "GN2_pc", "GN2_pu")
        np.testing.assert_array_equal(f["jets"]["pt"], [1, 2, 3, 4])
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_error_restores_threads_and_leaves_no_file(tmp_path: Path, two_threads) -> None:
    model, loader, spec, cfg, ecfg = _setup(tmp_path, fail=True)
    out = tmp_path / "pred" / "best__test_test.h5"
    with pytest.raises(RuntimeError, match="predict failed"):
        write_predictions(model, loader, spec, cfg, ecfg, out, 4, torch.device("cpu"), None)
    assert torch.get_num_threads() == 2
    assert list(out.parent.iterdir()) == []


def test_intra_op_threads_restores_on_error(two_threads) -> None:
    with pytest.raises(ValueError), intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise ValueError
    assert torch.get_num_threads() == 2
    with intra_op_threads(2):
        assert torch.get_num_threads() == 2


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_evaluations_are_removed(tmp_path: Path) -> None:
    import os
    import socket

    model, loader, spec, cfg, ecfg = _setup(tmp_path)
    out = tmp_path / "pred" / "best__test_test.h5"
    out.parent.mkdir()
    host = socket.gethostname()
    dead = out.parent / f".{out.name}.{host}-{_dead_pid()}.tmp"
    live = out.parent / f".{out.name}.{host}-{os.getppid()}.tmp"  # a running process
    other_host = out.parent / f".{out.name}.elsewhere-1.tmp"
    for p in (dead, live, other_host):
        p.write_bytes(b"partial")
    write_predictions(model, loader, spec, cfg, ecfg, out, 4, torch.device("cpu"), None)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, live.name, other_host.name]
    )
