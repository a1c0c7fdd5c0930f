"""Run directories on S3 and resuming from them; download-first mode.

Every request goes over real HTTP to moto's S3 server on 127.0.0.1 (``tests/s3_server.py``).
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import pytest
import s3_server
import torch
import yaml
from s3_server import (
    QUICK_TRAIN,
    S3Endpoint,
    compose_evaluate,
    compose_train,
)

from saltx.data import config_s3

s3_endpoint = s3_server.s3_endpoint  # pytest fixture: moto's S3 server on 127.0.0.1

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALTX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _data(s3: S3Endpoint, tmp_path: Path) -> dict[str, str]:
    return s3_server.write_and_upload_synthetic(s3, tmp_path / "src")


def _load_remote_ckpt(s3: S3Endpoint, key: str) -> dict:
    return torch.load(io.BytesIO(s3.get(key)), weights_only=True)


def test_run_dir_on_s3_and_resume_from_it(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saltx.train import train

    _data(s3_endpoint, tmp_path)
    out = f"s3://{s3_endpoint.bucket}/runs/r1"
    common = (
        *QUICK_TRAIN,
        f"paths.data_dir={tmp_path / 'src'}",
        f"paths.output_dir={out}",
        "logger=tensorboard",
    )
    metrics = train(compose_train(*common))
    assert math.isfinite(metrics["val/loss"])
    keys = set(s3_endpoint.keys("runs/r1/"))
    for rel in ("config.yaml", "metadata.yaml", "norm_dict.yaml", "checkpoints/last.pt"):
        assert f"runs/r1/{rel}" in keys, sorted(keys)
    assert "runs/r1/metrics.jsonl" in keys
    assert any(k.startswith("runs/r1/tensorboard/events.out.tfevents") for k in keys), keys
    saved = yaml.safe_load(s3_endpoint.get("runs/r1/config.yaml"))
    assert saved["paths"]["output_dir"] == out
    assert _load_remote_ckpt(s3_endpoint, "runs/r1/checkpoints/last.pt")["state"]["step"] == 2

    # a second run with the same output dir resumes from s3://.../last.pt
    train(compose_train(*common, "trainer.max_steps=4"))
    meta = yaml.safe_load(s3_endpoint.get("runs/r1/metadata.yaml"))
    assert meta["resumed_from"] == f"{out}/checkpoints/last.pt"
    assert _load_remote_ckpt(s3_endpoint, "runs/r1/checkpoints/last.pt")["state"]["step"] == 4
    steps = [
        yaml.safe_load(line).get("step")
        for line in s3_endpoint.get("runs/r1/metrics.jsonl").decode().splitlines()
    ]
    assert max(s for s in steps if s is not None) == 4

    from saltx.evaluate import evaluate

    systmp = tmp_path / "systmp"  # the system's temporary folder, watched for leftovers
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    result = evaluate(
        compose_evaluate(f"run_dir={out}", f"data.test_file={tmp_path / 'src' / 'test.h5'}")
    )
    assert result["n_jets"] == 100
    assert f"runs/r1/predictions/{Path(result['predictions']).name}" in s3_endpoint.keys("runs/")
    assert list(systmp.iterdir()) == []  # the local copies of the outputs are gone


def test_download_first_then_rerun_skips(
    s3_endpoint: S3Endpoint, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from saltx.train import train

    _data(s3_endpoint, tmp_path)
    local = tmp_path / "downloads"
    block = {
        "use_S3": True,
        "download_S3": True,
        "bucket": s3_endpoint.bucket,
        "download_path": str(local),
        "download_files": ["train_file", "val_file", "norm_dict", "class_dict"],
    }
    cfg = compose_train(
        *QUICK_TRAIN,
        # Salt style: bare object keys in the config block's bucket
        "data.train_file=/data/train.h5",
        "data.val_file=/data/val.h5",
        "data.norm_dict=/data/norm_dict.yaml",
        "data.class_dict=/data/class_dict.yaml",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    cfg.data.config_S3 = block  # as a YAML file would set it
    local_cfg = config_s3.prepare_data_paths(cfg, show_progress=False)
    for key, name in [
        ("train_file", "train.h5"),
        ("val_file", "val.h5"),
        ("norm_dict", "norm_dict.yaml"),
    ]:
        assert local_cfg.data[key] == str(local / name)
        assert (local / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in local.iterdir()}
    metrics = train(local_cfg)
    assert math.isfinite(metrics["val/loss"])

    # the stand-alone command: a re-run skips every complete file and prints the overrides
    argv = [
        "download",
        "--no-progress",
        "+experiment=demo",
        "data.train_file=/data/train.h5",
        "data.val_file=/data/val.h5",
        "data.norm_dict=/data/norm_dict.yaml",
        "data.class_dict=/data/class_dict.yaml",
        # the command also takes the block key by key (the schema's default is null)
        *(f"+data.config_S3.{k}={v}" for k, v in block.items() if k != "download_files"),
        "data.config_S3.download_files=[train_file,val_file,norm_dict,class_dict]",
    ]
    assert config_s3.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"data.train_file={local / 'train.h5'}" in printed
    assert stamps == {p.name: p.stat().st_mtime_ns for p in local.iterdir()}
    assert not [p for p in local.iterdir() if ".part-" in p.name]
