"""A real S3 endpoint on loopback for tests: moto's server behind a TCP proxy.

Use it from a test module (``tests/conftest.py`` puts ``tests/`` on ``sys.path``)::

    import s3_server

    s3_endpoint = s3_server.s3_endpoint  # pytest fixture

or ask for it everywhere with ``pytest_plugins = ["s3_server"]`` in ``tests/conftest.py``.

``s3_endpoint`` starts ``moto.server.ThreadedMotoServer`` on ``127.0.0.1`` and a free port,
puts a small TCP proxy in front of it (so that a test can cut every connection at once, like
a network failure, with :meth:`S3Endpoint.cut`), sets fake credentials and the endpoint in the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), and creates
the bucket ``saltx-test``. Every request is real HTTP on 127.0.0.1; nothing is patched inside
the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUCKET = "saltx-test"
FAKE_KEY_ID = "saltx-test-key-id"
FAKE_SECRET = "saltx-test-secret"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """Forward TCP connections from a loopback port to ``target``; :meth:`cut` drops them all.

    Parameters
    ----------
    target : tuple[str, int]
        Host and port to forward to (the moto server).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._open = True
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)

    def cut(self) -> None:
        """Stop accepting and reset every open connection (a lost network)."""
        with self._lock:
            self._open = False
            sockets = list(self._sockets)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Cut everything and wait for the accept thread."""
        self.cut()
        self._thread.join(timeout=5)


@dataclass
class S3Endpoint:
    """A running S3 endpoint on loopback.

    Attributes
    ----------
    url : str
        The endpoint URL clients use (through the proxy), ``http://127.0.0.1:PORT``.
    direct_url : str
        The moto server itself (not affected by :meth:`cut`).
    bucket : str
        A bucket created for the test.
    """

    url: str
    direct_url: str
    bucket: str
    proxy: TcpProxy
    _client: object = field(repr=False, default=None)

    @property
    def client(self):
        """A boto3 S3 client talking to the moto server directly."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.direct_url,
                aws_access_key_id=FAKE_KEY_ID,
                aws_secret_access_key=FAKE_SECRET,
                region_name="us-east-1",
            )
        return self._client

    def upload(self, local: str | Path, key: str) -> str:
        """Upload a local file to ``key`` and return its ``s3://`` URL."""
        self.client.upload_file(str(local), self.bucket, key)
        return f"s3://{self.bucket}/{key}"

    def upload_dir(self, local_dir: str | Path, prefix: str) -> dict[str, str]:
        """Upload every file directly in ``local_dir``; return ``{file name: s3 URL}``."""
        return {
            p.name: self.upload(p, f"{prefix.rstrip('/')}/{p.name}")
            for p in sorted(Path(local_dir).iterdir())
            if p.is_file()
        }

    def keys(self, prefix: str = "") -> list[str]:
        """All object keys under ``prefix``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def cut(self) -> None:
        """Drop every client connection and refuse new ones (the server is gone)."""
        self.proxy.cut()


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """Start moto's S3 server on loopback, point the AWS environment at it, yield it."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = TcpProxy((host, port))
    endpoint = S3Endpoint(
        url=f"http://127.0.0.1:{proxy.port}",
        direct_url=f"http://{host}:{port}",
        bucket=BUCKET,
        proxy=proxy,
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    # keep retries short so failure tests end quickly
    monkeypatch.setenv("SALTX_S3_RETRIES", "2")
    monkeypatch.setenv("SALTX_S3_TIMEOUT_S", "5")
    endpoint.client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        proxy.close()
        server.stop()


# -- helpers for pipeline tests -----------------------------------------------------------------
CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "saltx" / "conf"

#: a few optimizer steps of the demo model on tiny batches
QUICK_TRAIN = (
    "+experiment=demo",
    "data.batch_size=50",
    "trainer.max_epochs=1",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
)


def write_and_upload_synthetic(
    endpoint: S3Endpoint, local_dir: Path, prefix: str = "data"
) -> dict[str, str]:
    """Write a tiny synthetic dataset (200/100/100 jets) and upload it under ``prefix``.

    Returns ``{file name: s3 URL}`` (``train.h5``, ``val.h5``, ``test.h5``,
    ``norm_dict.yaml``, ``class_dict.yaml``).
    """
    from saltx.data.synthetic import write_dataset

    write_dataset(local_dir, {"train": 200, "val": 100, "test": 100}, seed=0)
    return endpoint.upload_dir(local_dir, prefix)


def compose_train(*overrides: str):
    """The composed ``train`` config with ``overrides`` (resolved)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import saltx.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def compose_evaluate(*overrides: str):
    """The composed ``evaluate`` config with ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("evaluate", overrides=list(overrides))
