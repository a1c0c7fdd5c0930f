"""saltx.io and saltx.data.config_s3 against a real S3 endpoint (moto's server) on 127.0.0.1."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import s3_server
from omegaconf import OmegaConf
from s3_server import S3Endpoint, free_port

from saltx.data import config_s3
from saltx.data.config_s3 import S3Block
from saltx.errors import DataError, RemoteError
from saltx.io import download, fs, sync

s3_endpoint = s3_server.s3_endpoint  # pytest fixture: moto's S3 server on 127.0.0.1


def _write_h5(path: Path, n: int = 20_000) -> np.ndarray:
    dtype = np.dtype([("pt", "f4"), ("eta", "f4"), ("flavour_label", "i4")])
    rng = np.random.default_rng(0)
    jets = np.zeros(n, dtype=dtype)
    jets["pt"] = rng.exponential(50.0, n)
    jets["eta"] = rng.uniform(-2.5, 2.5, n)
    jets["flavour_label"] = rng.integers(0, 4, n)
    with h5py.File(path, "w") as f:
        f.create_dataset("jets", data=jets, chunks=(min(n, 1000),))
    return jets


# -- pure helpers ------------------------------------------------------------------------------
def test_is_remote() -> None:
    assert fs.is_remote("s3://b/k")
    assert not fs.is_remote("file:///tmp/x")
    assert not fs.is_remote(Path("/tmp/x"))
    assert not fs.is_remote(None)


def test_s3_block_accepts_salt_and_snake_case_names() -> None:
    salt = S3Block.from_mapping(
        {
            "use_S3": True,
            "download_S3": False,
            "url": "https://s3.cern.ch",
            "bucket": "b",
            "pubKey": "P",
            "secKey": "S",
            "download_files": "train_file",
        }
    )
    snake = S3Block.from_mapping(
        {
            "use_s3": True,
            "download_s3": False,
            "endpoint_url": "https://s3.cern.ch",
            "bucket": "b",
            "pub_key": "P",
            "sec_key": "S",
            "download_files": ["train_file"],
        }
    )
    assert salt == snake
    assert salt.active and salt.download_files == ["train_file"]
    assert "S" not in repr(salt).replace("S3Block", "").replace("s3", "")
    with pytest.raises(DataError, match=r"data.config_S3.buckett"):
        S3Block.from_mapping({"buckett": "b"})
    assert salt.url_of("/data/train.h5", "train_file") == "s3://b/data/train.h5"
    assert salt.url_of("s3://other/x.h5", "train_file") == "s3://other/x.h5"
    with pytest.raises(DataError, match=r"data.train_file"):
        S3Block().url_of("data/train.h5", "train_file")


def test_storage_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in fs.ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("S3_ENDPOINT_URL", "https://s3.cern.ch")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("SALTX_S3_BLOCK_SIZE", "1048576")
    opts = fs.s3_storage_options()
    assert opts["endpoint_url"] == "https://s3.cern.ch"
    assert (opts["key"], opts["secret"]) == ("id", "secret")
    assert opts["default_block_size"] == 2**20
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://other")
    assert fs.s3_storage_options()["endpoint_url"] == "https://other"
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "key" not in fs.s3_storage_options()  # botocore's own chain then
    monkeypatch.setenv("SALTX_S3_RETRIES", "many")
    with pytest.raises(RemoteError, match="SALTX_S3_RETRIES"):
        fs.s3_storage_options()


# -- reading -----------------------------------------------------------------------------------
def test_text_roundtrip_and_exists(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    url = f"s3://{s3_endpoint.bucket}/dicts/norm_dict.yaml"
    with fs.open_any(url, "w") as f:
        f.write("jets:\n  pt: {mean: 1.0, std: 2.0}\n")
    assert fs.exists(url)
    assert not fs.exists(url + ".missing")
    assert fs.read_text(url).startswith("jets:")
    assert s3_endpoint.get("dicts/norm_dict.yaml").startswith(b"jets:")
    local = tmp_path / "a.txt"
    local.write_text("local")
    assert fs.read_text(local) == "local"
    assert fs.read_text(f"file://{local}") == "local"


def test_errors_name_the_url(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    missing_key = f"s3://{s3_endpoint.bucket}/nope/train.h5"
    with pytest.raises(RemoteError, match="no such object") as err:
        fs.open_remote(missing_key)
    assert missing_key in str(err.value) and s3_endpoint.url in str(err.value)
    with pytest.raises(RemoteError, match="no such bucket") as err:
        fs.read_text("s3://no-such-bucket/norm_dict.yaml")
    assert "s3://no-such-bucket/norm_dict.yaml" in str(err.value)
    with pytest.raises(RemoteError, match=r"nope/train.h5"):
        fs.remote_info(missing_key)

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("SALTX_S3_RETRIES", "1")
    with pytest.raises(RemoteError, match="cannot reach the endpoint") as err:
        fs.read_text(f"s3://{s3_endpoint.bucket}/dicts/x.yaml")
    assert dead in str(err.value)


def test_h5_through_open_remote_matches_local(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    jets = _write_h5(tmp_path / "train.h5")
    url = s3_endpoint.upload(tmp_path / "train.h5", "data/train.h5")
    for cache_type in ("blockcache", "readahead"):
        handle = fs.open_remote(url, block_size=64 * 1024, cache_type=cache_type)
        with h5py.File(handle, "r") as f:
            np.testing.assert_array_equal(f["jets"][5000:5100], jets[5000:5100])
            np.testing.assert_array_equal(f["jets"]["pt"], jets["pt"])
        handle.close()
        assert handle.closed


def _read_in_child(handle: fs.RemoteFile, url: str, queue) -> None:
    try:
        handle.seek(0)
        handle.read(8)
        queue.put("shared handle worked")
    except RemoteError as err:
        queue.put(f"refused: {err}")
    own = fs.open_remote(url)
    queue.put(own.read(8))
    own.close()


def test_handles_are_not_shared_across_fork(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    _write_h5(tmp_path / "t.h5", n=100)
    url = s3_endpoint.upload(tmp_path / "t.h5", "t.h5")
    handle = fs.open_remote(url)
    assert handle.read(8) == b"\x89HDF\r\n\x1a\n"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(handle, url, queue))
    proc.start()
    first, second = queue.get(timeout=60), queue.get(timeout=60)
    proc.join(timeout=60)
    assert first.startswith("refused:") and "open it again after fork" in first
    assert second == b"\x89HDF\r\n\x1a\n"
    handle.close()


def test_lost_connection_mid_read_raises_clear_error(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    _write_h5(tmp_path / "big.h5", n=200_000)
    url = s3_endpoint.upload(tmp_path / "big.h5", "big.h5")
    handle = fs.open_remote(url, block_size=64 * 1024, cache_blocks=2)
    f = h5py.File(handle, "r")
    try:
        f["jets"][:1000]
        s3_endpoint.cut()
        with pytest.raises(RemoteError, match=r"reading 's3://saltx-test/big.h5'"):
            f["jets"][150_000:160_000]
    finally:
        f.close()
        handle.close()


# -- downloads ---------------------------------------------------------------------------------
def _upload_blobs(s3: S3Endpoint, tmp_path: Path, sizes: dict[str, int]) -> dict[str, str]:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name, size in sizes.items():
        (src / name).write_bytes(rng.bytes(size))
    return s3.upload_dir(src, "blobs")


def test_download_many_is_parallel_complete_and_skips(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    urls = _upload_blobs(s3_endpoint, tmp_path, {"a.h5": 300_000, "b.h5": 10, "c.yaml": 1})
    out = tmp_path / "dl"
    jobs = [(url, out / name) for name, url in urls.items()]
    first = download.download_many(jobs, max_workers=3, show_progress=False)
    assert [r.skipped for r in first] == [False, False, False]
    for name in urls:
        assert (out / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert not [p for p in out.iterdir() if ".part-" in p.name]
    stamps = {name: (out / name).stat().st_mtime_ns for name in urls}

    again = download.download_many(jobs, max_workers=3, show_progress=False)
    assert all(r.skipped for r in again)
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in urls}

    # same size, new content: the ETag differs, so only that file is fetched again
    new = bytes(reversed((tmp_path / "src" / "b.h5").read_bytes()))
    s3_endpoint.client.put_object(Bucket=s3_endpoint.bucket, Key="blobs/b.h5", Body=new)
    third = download.download_many(jobs, max_workers=3, show_progress=False)
    assert [r.skipped for r in third] == [True, False, True]
    assert (out / "b.h5").read_bytes() == new


def test_is_complete_without_record_checks_md5(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    urls = _upload_blobs(s3_endpoint, tmp_path, {"x.h5": 1000})
    info = fs.remote_info(urls["x.h5"])
    copy = tmp_path / "copy.h5"
    copy.write_bytes((tmp_path / "src" / "x.h5").read_bytes())
    assert download.is_complete(copy, info)
    copy.write_bytes(b"\0" * 1000)  # right size, wrong bytes
    assert not download.is_complete(copy, info)
    copy.write_bytes(b"\0" * 999)
    assert not download.is_complete(copy, info)


def test_lost_connection_mid_download_leaves_no_file(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    urls = _upload_blobs(s3_endpoint, tmp_path, {"big.h5": 2_000_000})
    target = tmp_path / "dl" / "big.h5"
    target.parent.mkdir()
    target.write_bytes(b"old good copy")
    calls = []

    def cut_after_first_chunk(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            s3_endpoint.cut()

    with pytest.raises(RemoteError, match=r"downloading 's3://saltx-test/blobs/big.h5'"):
        download.download(urls["big.h5"], target, progress=cut_after_first_chunk, chunk_size=2**16)
    assert calls == [2**16]
    assert target.read_bytes() == b"old good copy"
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.h5"]


# -- Salt's config_S3 block --------------------------------------------------------------------
def _cfg(s3: S3Endpoint, tmp_path: Path, **block) -> tuple:
    src = tmp_path / "src"
    src.mkdir()
    _write_h5(src / "train.h5", n=500)
    _write_h5(src / "val.h5", n=100)
    (src / "norm_dict.yaml").write_text("jets: {pt: {mean: 0.0, std: 1.0}}\n")
    urls = s3.upload_dir(src, "salt/data")
    data = {
        "train_file": urls["train.h5"],
        "val_file": "/salt/data/val.h5",  # Salt style: a bare key in config_S3.bucket
        "test_file": None,
        "norm_dict": urls["norm_dict.yaml"],
        "class_dict": None,
        "config_S3": {
            "use_S3": True,
            "download_S3": True,
            "url": s3.url,
            "bucket": s3.bucket,
            "download_path": str(tmp_path / "local"),
            "download_files": ["train_file", "val_file", "norm_dict", "test_file"],
            "pubKey": "planted-pub-KEY-1234",
            "secKey": "planted-SECRET-5678",
            **block,
        },
    }
    return OmegaConf.create({"data": data, "name": "GN2"}), src


def test_prepare_data_paths_downloads_and_rewrites(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the block's url must be enough
    cfg, src = _cfg(s3_endpoint, tmp_path)
    before = OmegaConf.to_yaml(cfg)
    out = config_s3.prepare_data_paths(cfg, show_progress=False)
    assert OmegaConf.to_yaml(cfg) == before  # the input config is untouched
    local = tmp_path / "local"
    assert out.data.train_file == str(local / "train.h5")
    assert out.data.val_file == str(local / "val.h5")
    assert out.data.norm_dict == str(local / "norm_dict.yaml")
    assert out.data.test_file is None
    for name in ("train.h5", "val.h5", "norm_dict.yaml"):
        assert (local / name).read_bytes() == (src / name).read_bytes()
    # credentials went to the environment and out of the returned config
    assert os.environ["AWS_ACCESS_KEY_ID"] == "planted-pub-KEY-1234"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "planted-SECRET-5678"
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint.url
    text = OmegaConf.to_yaml(out)
    assert "planted" not in text
    assert out.data.config_S3.bucket == s3_endpoint.bucket
    # the result is prepared: preparing it again changes nothing and downloads nothing
    assert out.data.config_S3.download_S3 is False
    again = config_s3.prepare_data_paths(out, show_progress=False)
    assert OmegaConf.to_yaml(again) == text


def test_prepare_data_paths_is_a_noop_without_an_active_block(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"data": {"train_file": "s3://b/t.h5", "config_S3": None}})
    assert config_s3.prepare_data_paths(cfg) is cfg
    cfg = OmegaConf.create({"data": {"train_file": "x", "config_S3": {"use_S3": False}}})
    assert config_s3.prepare_data_paths(cfg) is cfg
    with pytest.raises(DataError, match="not a data key"):
        config_s3.download_data_files(
            {"train_file": "s3://b/t.h5"}, S3Block(download_files=["trian_file"])
        )


def test_download_files_with_one_basename_clash_is_refused(tmp_path: Path) -> None:
    data = {"train_file": "s3://b/a/x.h5", "val_file": "s3://b/b/x.h5"}
    block = S3Block(download_s3=True, download_path=str(tmp_path), download_files=list(data))
    with pytest.raises(DataError, match="both download to"):
        config_s3.download_data_files(data, block, show_progress=False)


def test_dir_sync_uploads_new_and_changed_files_only(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    local = tmp_path / "tb"
    mirror = sync.DirSync(local, f"s3://{s3_endpoint.bucket}/runs/r/tensorboard")
    assert mirror.sync() == []  # nothing there yet
    (local / "sub").mkdir(parents=True)
    (local / "events.1").write_bytes(b"one")
    (local / "sub" / "events.2").write_bytes(b"two")
    assert len(mirror.sync()) == 2
    assert mirror.sync() == []
    with open(local / "events.1", "ab") as f:
        f.write(b" more")
    assert mirror.sync() == [f"s3://{s3_endpoint.bucket}/runs/r/tensorboard/events.1"]
    assert s3_endpoint.get("runs/r/tensorboard/events.1") == b"one more"
    assert s3_endpoint.get("runs/r/tensorboard/sub/events.2") == b"two"
