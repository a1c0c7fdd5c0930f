"""Secrets (config_S3 keys, AWS environment) never reach any file a run produces.

Plants known secret strings, trains to an S3 run directory with TensorBoard, evaluates, then
reads back every object in the bucket and every local file the test produced, as bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import s3_server
import yaml
from s3_server import QUICK_TRAIN, S3Endpoint, compose_evaluate, compose_train

s3_endpoint = s3_server.s3_endpoint  # pytest fixture: moto's S3 server on 127.0.0.1

pytestmark = pytest.mark.slow

PLANTED_PUB = "AKIAPLANTEDPUB7Q2X9Z"
PLANTED_SEC = "planted-secret-3f9a1c77e2b54d08"
PLANTED_ENV = "planted-env-secret-b61d0e5a"


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALTX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _every_file_byte(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_secrets_are_never_written(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saltx.train import train

    s3_server.write_and_upload_synthetic(s3_endpoint, tmp_path / "src")
    monkeypatch.setenv("AWS_SESSION_TOKEN", PLANTED_ENV)  # the env chain's secrets too
    out = f"s3://{s3_endpoint.bucket}/runs/secret"
    cfg = compose_train(
        *QUICK_TRAIN,
        f"paths.data_dir=s3://{s3_endpoint.bucket}/data",
        f"paths.output_dir={out}",
        "logger=tensorboard",
    )
    cfg.data.config_S3 = {
        "use_S3": True,
        "url": s3_endpoint.url,
        "bucket": s3_endpoint.bucket,
        "pubKey": PLANTED_PUB,
        "secKey": PLANTED_SEC,
    }
    train(cfg)
    from saltx.evaluate import evaluate

    evaluate(compose_evaluate(f"run_dir={out}", "plots=false"))

    saved = yaml.safe_load(s3_endpoint.get("runs/secret/config.yaml"))
    assert saved["data"]["config_S3"]["bucket"] == s3_endpoint.bucket  # the block was saved

    files = _every_file_byte(tmp_path)  # local caches, data, anything written locally
    dump = tmp_path / "s3-dump"
    for key in s3_endpoint.keys(""):
        target = dump / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3_endpoint.get(key))
    files.update(_every_file_byte(dump))
    assert any("runs/secret/checkpoints/last.pt" in name for name in files)
    assert any("runs/secret/tensorboard" in name for name in files)
    for secret in (PLANTED_PUB, PLANTED_SEC, PLANTED_ENV):
        needle = secret.encode()
        leaks = [name for name, data in files.items() if needle in data]
        assert leaks == [], f"{secret} written to {leaks}"
    assert os.environ.get("AWS_SESSION_TOKEN") == PLANTED_ENV  # the test really planted it
