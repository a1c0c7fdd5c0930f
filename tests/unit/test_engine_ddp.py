"""DDP on CPU (gloo): two ranks match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saltx.engine.distributed import free_port
from saltx.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine_loop import make_cfg, read_jsonl, toy_build

HERE = Path(__file__).resolve().parent
COMMON = [
    "toy={dropout: 0.0, shuffle: false}",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=2",
    "trainer.performance_writer.std_out=false",
]


def _curve(run_dir: Path, key: str) -> list[float]:
    return [r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if key in r]


@pytest.mark.slow
def test_spawned_ranks_match_single_process(tmp_path: Path) -> None:
    single = train(make_cfg(tmp_path / "one", *COMMON), toy_build)
    double = train(make_cfg(tmp_path / "two", *COMMON, "trainer.devices=2"), toy_build)

    # exactly one run dir, written by rank 0
    assert (tmp_path / "two/checkpoints/last.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    meta = (tmp_path / "two/metadata.yaml").read_text()
    assert "world_size: 2" in meta

    for key in ("train/loss", "val/loss", "val/reg_loss"):
        a, b = _curve(tmp_path / "one", key), _curve(tmp_path / "two", key)
        assert len(a) == len(b) > 1
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), key
    assert single["val/loss"] == pytest.approx(double["val/loss"], rel=1e-4)
    w1 = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=True)["model"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    ckpt = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2  # one RNG state per rank


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = tmp_path / "job.py"
    overrides = [*COMMON, "trainer.max_epochs=1"]
    script.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from pathlib import Path\n"
        "from test_engine_loop import make_cfg, toy_build\n"
        "from saltx.train import train\n"
        f"metrics = train(make_cfg(Path({str(out)!r}), *{overrides!r}), toy_build)\n"
        f"out = Path({str(tmp_path / 'metrics')!r} + os.environ['RANK'])\n"
        "out.write_text(json.dumps(metrics))\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(script),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # each rank writes its own file: both must report the same all-reduced metrics
    metrics = json.loads((tmp_path / "metrics0").read_text())
    assert json.loads((tmp_path / "metrics1").read_text())["val/loss"] == metrics["val/loss"]
    single = train(make_cfg(tmp_path / "one", *overrides), toy_build)
    assert metrics["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
    assert (out / "checkpoints/last.pt").exists()
