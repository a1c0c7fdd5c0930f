"""Two torchrun "nodes" on loopback (one rank each) train like one process with the same
global batch; a checkpoint does not resume with another world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saltx.engine.distributed import check_resume_world_size, free_port
from saltx.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine_loop import make_cfg, read_jsonl, toy_build

HERE = Path(__file__).resolve().parent
COMMON = [
    "toy={dropout: 0.0, shuffle: false}",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=2",
    "trainer.performance_writer.std_out=false",
    "trainer.ddp_timeout_s=300",
]
TIMEOUT = 600  # generous: the test must pass on a loaded machine


def node_command(script: Path, node_rank: int, port: int) -> list[str]:
    """What each node of a two-node job runs (docs/training.md, "Multi-node")."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node_rank={node_rank}",
        "--nproc_per_node=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
    ]


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "two_nodes"
    script = tmp_path / "job.py"
    script.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from pathlib import Path\n"
        "from test_engine_loop import make_cfg, toy_build\n"
        "from saltx.train import train\n"
        f"metrics = train(make_cfg(Path({str(out)!r}), *{COMMON!r}), toy_build)\n"
        "env = {k: os.environ[k] for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', "
        "'LOCAL_WORLD_SIZE', 'GROUP_RANK')}\n"
        f"Path({str(tmp_path)!r} + '/rank' + os.environ['RANK']).write_text("
        "json.dumps({'metrics': metrics, 'env': env}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": ""}
    port = free_port()
    nodes = [
        subprocess.Popen(
            node_command(script, rank, port),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=TIMEOUT)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(x[-3000:] for x in logs)

    ranks = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    for r, got in enumerate(ranks):  # one rank per node: global rank = node rank
        assert got["env"] == {
            "RANK": str(r),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(r),
        }
    assert ranks[0]["metrics"]["val/loss"] == ranks[1]["metrics"]["val/loss"]  # all-reduced
    assert "world_size: 2" in (out / "metadata.yaml").read_text()
    assert len(torch.load(out / "checkpoints/last.pt", weights_only=True)["rng"]) == 2

    # one process, the same global batch (the toy build splits data.batch_size over ranks)
    single = train(make_cfg(tmp_path / "one", *COMMON), toy_build)
    assert ranks[0]["metrics"]["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
    for key in ("train/loss", "val/loss"):
        a = [r[key] for r in read_jsonl(tmp_path / "one/metrics.jsonl") if key in r]
        b = [r[key] for r in read_jsonl(out / "metrics.jsonl") if key in r]
        assert len(a) == len(b) > 1
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), key
    w1 = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)["model"]
    w2 = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)

    # the two-node checkpoint does not resume in one process: a clear error, both sizes
    more = [*COMMON, "trainer.max_epochs=2"]
    with pytest.raises(RuntimeError, match=r"world size 2 \(2 ranks\).*world size 1"):
        train(make_cfg(out, *more), toy_build)
    # ... and its weights start a new run, as the error says
    weights = tmp_path / "weights.pt"
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    torch.save({"model": ckpt["model"]}, weights)
    metrics = train(make_cfg(tmp_path / "new", *more, f"ckpt_path={weights}"), toy_build)
    assert "val/loss" in metrics


def test_resume_world_size_check() -> None:
    full = {"optimizer": {}, "rng": [{}, {}, {}, {}]}
    check_resume_world_size(full, "last.pt", 4)
    with pytest.raises(RuntimeError, match=r"world size 4 \(4 ranks\).*has world size 8"):
        check_resume_world_size(full, "last.pt", 8)
    check_resume_world_size({"model": {}}, "w.pt", 8)  # weights only: a new run
    check_resume_world_size({"optimizer": {}}, "old.pt", 8)  # no RNG list: nothing to compare
