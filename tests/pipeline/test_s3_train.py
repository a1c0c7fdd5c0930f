"""Train and evaluate reading every input straight from S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest
import s3_server
from s3_server import QUICK_TRAIN, S3Endpoint, compose_evaluate, compose_train

from saltx.errors import RemoteError

s3_endpoint = s3_server.s3_endpoint  # pytest fixture: moto's S3 server on 127.0.0.1

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALTX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_train_then_evaluate_from_s3(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    from saltx.train import train

    urls = write_and_upload(s3_endpoint, tmp_path)
    run_dir = tmp_path / "run"
    cfg = compose_train(
        *QUICK_TRAIN,
        f"paths.data_dir=s3://{s3_endpoint.bucket}/data",
        f"paths.output_dir={run_dir}",
        "data.num_workers=1",  # a forked worker opens its own S3 handles
    )
    assert cfg.data.train_file == urls["train.h5"]
    assert cfg.data.norm_dict == urls["norm_dict.yaml"]
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    # the dicts were copied from S3 into the run directory
    assert (run_dir / "norm_dict.yaml").read_bytes() == (
        tmp_path / "src" / "norm_dict.yaml"
    ).read_bytes()

    from saltx.evaluate import evaluate

    result = evaluate(compose_evaluate(f"run_dir={run_dir}", "plots=false"))
    assert result["test_file"] == urls["test.h5"]
    assert result["n_jets"] == 100
    with h5py.File(result["predictions"], "r") as f:
        assert f["jets"].shape == (100,)
        assert "demo_pb" in f["jets"].dtype.names
    assert json.loads((run_dir / "predictions" / "metrics.json").read_text())["n_jets"] == 100


def test_lost_server_mid_training_is_a_clear_error(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saltx.assemble import build
    from saltx.train import train

    write_and_upload(s3_endpoint, tmp_path)
    # small blocks and a tiny cache, so that batches keep needing new requests
    monkeypatch.setenv("SALTX_S3_BLOCK_SIZE", str(16 * 1024))
    monkeypatch.setenv("SALTX_S3_CACHE_BLOCKS", "2")
    run_dir = tmp_path / "run"
    cfg = compose_train(
        *QUICK_TRAIN,
        f"paths.data_dir=s3://{s3_endpoint.bucket}/data",
        f"paths.output_dir={run_dir}",
    )

    def build_then_lose_the_server(cfg, info):
        parts = build(cfg, info)
        s3_endpoint.cut()
        return parts

    with pytest.raises(RemoteError) as err:
        train(cfg, build_then_lose_the_server)
    message = str(err.value)
    assert f"s3://{s3_endpoint.bucket}/data/" in message
    assert "cannot reach the endpoint" in message and s3_endpoint.url in message
    # nothing half-written is left behind in the run directory
    leftovers = [p for p in run_dir.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert leftovers == []


def write_and_upload(s3: S3Endpoint, tmp_path: Path) -> dict[str, str]:
    return s3_server.write_and_upload_synthetic(s3, tmp_path / "src")
