"""File systems for local paths and ``s3://`` URLs (fsspec/s3fs), used by every layer.

Any ``data.*_file``, ``data.norm_dict``/``data.class_dict`` or run directory may be an
``s3://bucket/key`` URL. h5 files are opened with :func:`open_remote` (a seekable file
object with a block cache tuned for contiguous batch reads) and h5py reads through it;
small files are read with :func:`read_text`; anything else with :func:`open_any`.

Credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``~/.aws``), the endpoint from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT_URL`` (e.g. ``https://s3.cern.ch``), or from Salt's
``data.config_S3`` block (:mod:`saltx.data.config_s3` exports it to the environment).

Tuning (environment variables, read when a file system is created):

``SALTX_S3_BLOCK_SIZE``
    bytes per ranged GET for h5 reads (default 8 MiB);
``SALTX_S3_CACHE_TYPE`` / ``SALTX_S3_CACHE_BLOCKS``
    fsspec cache of h5 reads (default ``blockcache`` keeping 8 blocks: 64 MiB per file
    and process);
``SALTX_S3_RETRIES`` / ``SALTX_S3_TIMEOUT_S``
    attempts per request and connect/read timeout in seconds (defaults 5 and 60).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

from saltx.errors import RemoteError
from saltx.secrets import redact_text, strip_url_credentials

DEFAULT_BLOCK_SIZE = 8 * 2**20
DEFAULT_CACHE_TYPE = "blockcache"
DEFAULT_CACHE_BLOCKS = 8
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT_S = 60.0
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")


def is_remote(path: str | os.PathLike | None) -> bool:
    """True when ``path`` is a URL with a scheme other than ``file://``."""
    if path is None:
        return False
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return "://" in text and not text.startswith("file://")


def local_dir(path: str) -> str:
    """A local folder for a run directory: itself, or for a URL a local cache folder
    (``$SALTX_CACHE_DIR`` or ``~/.cache``, then ``saltx/runs/<scheme>/<bucket/key>``), where
    Hydra and the loggers may write.

    Credentials inside the URL (``s3://KEY:SECRET@bucket/...``) never become folder names.
    """
    if "://" in str(path):
        scheme, rest = strip_url_credentials(str(path)).split("://", 1)
        cache = os.environ.get("SALTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache"))
        return os.path.join(cache, "saltx", "runs", scheme, rest)
    return str(path)


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (``None`` = AWS)."""
    for var in ENDPOINT_VARS:
        value = os.environ.get(var)
        if value:
            return value
    return None


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError as err:
        raise RemoteError(
            redact_text(f"environment variable {name}={value!r} is not a number")
        ) from err


def s3_storage_options() -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem`` built from the environment.

    Explicit keys are passed only when ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
    are both set; otherwise botocore's own chain (profiles, instance roles) applies.
    """
    retries = max(1, int(_env_number("SALTX_S3_RETRIES", DEFAULT_RETRIES)))
    timeout = _env_number("SALTX_S3_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    options: dict[str, Any] = {
        "config_kwargs": {
            "retries": {"max_attempts": retries, "mode": "standard"},
            "connect_timeout": timeout,
            "read_timeout": timeout,
        },
        "default_block_size": int(_env_number("SALTX_S3_BLOCK_SIZE", DEFAULT_BLOCK_SIZE)),
    }
    endpoint = endpoint_url()
    if endpoint:
        options["endpoint_url"] = endpoint
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options["key"], options["secret"] = key, secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["token"] = os.environ["AWS_SESSION_TOKEN"]
    return options


def url_to_fs(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of ``url`` and the path inside it (like ``fsspec.core.url_to_fs``).

    ``s3://`` gets the options of :func:`s3_storage_options`. fsspec caches instances per
    process and per options, so each forked worker builds its own client.
    """
    text = str(url)
    if text.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_storage_options())
        fs.retries = max(1, int(_env_number("SALTX_S3_RETRIES", DEFAULT_RETRIES)))
        return fs, fs._strip_protocol(text)
    return fsspec.core.url_to_fs(text)


def filesystem(url: str | os.PathLike) -> fsspec.AbstractFileSystem:
    """The file system of ``url`` (see :func:`url_to_fs`)."""
    return url_to_fs(url)[0]


def where(url: str) -> str:
    """``'URL' (endpoint E)`` for messages, credentials in either masked."""
    endpoint = endpoint_url() if url.startswith("s3://") else None
    return redact_text(f"'{url}'" + (f" (endpoint {endpoint})" if endpoint else ""))


def remote_error(url: str, action: str, err: BaseException) -> RemoteError:
    """Translate a file-system/botocore error into a :class:`RemoteError` naming the URL."""
    if isinstance(err, RemoteError):
        return err
    text = f"{type(err).__name__}: {err}"
    hint = ""
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        hint = " - no such bucket"
    elif isinstance(err, FileNotFoundError) or "NoSuchKey" in text or "Not Found" in text:
        hint = " - no such object; check the bucket and key"
    elif "NoCredentials" in text:
        hint = " - no credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or config_S3 keys"
    elif isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        hint = " - access denied; check the credentials (AWS_ACCESS_KEY_ID/...)"
    elif "Could not connect" in text or "Connect" in type(err).__name__ or "Timeout" in text:
        tries = int(_env_number("SALTX_S3_RETRIES", DEFAULT_RETRIES))
        hint = f" - cannot reach the endpoint ({tries} attempts); check the URL and the network"
    # the error text of botocore/aiohttp may repeat the URL: credentials are masked in all of it
    return RemoteError(redact_text(f"{action} {where(url)} failed{hint} ({text})"))


def remote_info(url: str) -> dict[str, Any]:
    """``{"size": int, "etag": str | None}`` of a remote object.

    Raises
    ------
    RemoteError
        If the object does not exist or the endpoint cannot be reached.
    """
    fs, path = url_to_fs(url)
    try:
        info = fs.info(path)
    except Exception as err:
        raise remote_error(url, "looking up", err) from err
    if info.get("type") == "directory":
        raise RemoteError(f"{where(url)} is a folder, not an object")
    etag = info.get("ETag") or info.get("etag")
    return {"size": int(info["size"]), "etag": etag.strip('"') if etag else None}


def exists(path: str | os.PathLike) -> bool:
    """Whether a local path or URL exists."""
    if not is_remote(path):
        return Path(str(path).removeprefix("file://")).exists()
    fs, p = url_to_fs(path)
    try:
        return bool(fs.exists(p))
    except Exception as err:
        raise remote_error(str(path), "checking", err) from err


class RemoteFile(io.RawIOBase):
    """A read-only, seekable file object over a remote object, for h5py.

    Errors are re-raised as :class:`RemoteError` naming the URL (after s3fs/botocore have
    retried). A handle belongs to the process that opened it: using it after a ``fork``
    raises, because the HTTP connections and the event loop do not survive a fork.
    """

    def __init__(self, url: str, raw: Any) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self._raw = raw
        self._pid = os.getpid()
        self.size = int(getattr(raw, "size", 0) or 0)

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"I/O on closed remote file {where(self.url)}")
        if os.getpid() != self._pid:
            raise RemoteError(
                f"remote file {where(self.url)} was opened in process {self._pid} and used in "
                f"process {os.getpid()}; open it again after fork (one handle per process)"
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check()
        return int(self._raw.tell())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        return int(self._raw.seek(offset, whence))

    def readinto(self, buffer: Any) -> int:
        self._check()
        view = memoryview(buffer).cast("B")
        try:
            data = self._raw.read(len(view))
        except Exception as err:
            raise remote_error(self.url, "reading", err) from err
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        self._check()
        try:
            return self._raw.read(size)
        except Exception as err:
            raise remote_error(self.url, "reading", err) from err

    def close(self) -> None:
        if not self.closed and os.getpid() == self._pid:
            with contextlib.suppress(Exception):
                self._raw.close()
        super().close()


_OPEN_REMOTE_FILES: weakref.WeakSet[RemoteFile] = weakref.WeakSet()  # registry for atexit


def open_remote(
    url: str,
    block_size: int | None = None,
    cache_type: str | None = None,
    cache_blocks: int | None = None,
) -> RemoteFile:
    """Open a remote object for random-access binary reads (h5py opens the result).

    Parameters
    ----------
    url
        ``s3://bucket/key`` (or another fsspec URL).
    block_size
        Bytes fetched per request; default ``SALTX_S3_BLOCK_SIZE`` or 8 MiB, so that one
        request serves many contiguous batch rows.
    cache_type
        fsspec cache: ``blockcache`` (LRU of blocks, default; keeps HDF5 metadata blocks
        while data blocks stream) or ``readahead`` (one growing window).
    cache_blocks
        Blocks kept by ``blockcache`` (memory = ``cache_blocks * block_size`` per file and
        process).

    Raises
    ------
    RemoteError
        If the object cannot be found or reached; the message names the URL and endpoint.
    """
    block_size = block_size or int(_env_number("SALTX_S3_BLOCK_SIZE", DEFAULT_BLOCK_SIZE))
    cache_type = cache_type or os.environ.get("SALTX_S3_CACHE_TYPE") or DEFAULT_CACHE_TYPE
    cache_blocks = cache_blocks or int(_env_number("SALTX_S3_CACHE_BLOCKS", DEFAULT_CACHE_BLOCKS))
    fs, path = url_to_fs(url)
    options = {"maxblocks": cache_blocks} if cache_type == "blockcache" else {}
    try:
        raw = fs.open(
            path, "rb", block_size=block_size, cache_type=cache_type, cache_options=options
        )
    except Exception as err:
        raise remote_error(url, "opening", err) from err
    handle = RemoteFile(url, raw)
    _OPEN_REMOTE_FILES.add(handle)
    return handle


def _close_remote_h5_files() -> None:
    """Close h5py files that read through a :class:`RemoteFile`, before interpreter teardown.

    HDF5 closes files that are still open at exit after Python has torn down the objects
    the fileobj driver calls into, which can crash the interpreter. Closing them here,
    while everything is alive, avoids that.
    """
    if not _OPEN_REMOTE_FILES:
        return
    h5py = sys.modules.get("h5py")
    if h5py is not None:
        with contextlib.suppress(Exception):
            for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
                with contextlib.suppress(Exception):
                    f = h5py.File(fid)
                    if f.driver == "fileobj":
                        f.close()
    for handle in list(_OPEN_REMOTE_FILES):
        with contextlib.suppress(Exception):
            handle.close()


atexit.register(_close_remote_h5_files)


@contextlib.contextmanager
def open_any(path: str | os.PathLike, mode: str = "rb") -> Iterator[IO[Any]]:
    """Open a local path or a URL like the built-in ``open`` (``r``, ``rb``, ``w``, ``wb``).

    Remote writes become visible only when the file is closed (one complete object).

    Raises
    ------
    RemoteError
        For a URL that cannot be found, reached or written (the message names it).
    FileNotFoundError
        For a missing local file.
    """
    text = str(path)
    if not is_remote(text):
        with open(text.removeprefix("file://"), mode) as f:
            yield f
        return
    fs, p = url_to_fs(text)
    action = "reading" if "r" in mode else "writing"
    try:
        f = fs.open(p, mode)
    except Exception as err:
        raise remote_error(text, "opening", err) from err
    try:
        yield f
    except Exception as err:
        with contextlib.suppress(Exception):
            f.close()
        if isinstance(err, OSError | RuntimeError) and not isinstance(err, RemoteError):
            raise remote_error(text, action, err) from err
        raise
    else:
        try:
            f.close()
        except Exception as err:
            raise remote_error(text, action, err) from err


def read_bytes(path: str | os.PathLike) -> bytes:
    """All bytes of a local file or URL."""
    with open_any(path, "rb") as f:
        try:
            return f.read()
        except Exception as err:
            raise remote_error(str(path), "reading", err) from err


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a local file or URL (``norm_dict.yaml``, ``class_dict.yaml``)."""
    return read_bytes(path).decode(encoding)
