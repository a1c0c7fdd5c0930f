"""Remote data and outputs: ``s3://`` URLs read and written through fsspec/s3fs.

Two ways to train on files that live in an object store:

* **direct reads**: any ``data.*_file``, ``data.norm_dict`` or ``data.class_dict`` may be an
  ``s3://bucket/key`` URL. h5 files are opened with :func:`open_remote` (a seekable file
  object with a block cache tuned for contiguous batch reads) and h5py reads through it;
  YAML files are read with :func:`read_text`;
* **download first** (Salt's ``data.config_S3`` block): :func:`prepare_data_paths` copies
  the listed files to ``download_path`` in parallel, skips files that are already complete,
  and rewrites the config paths to the local copies.

Credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``~/.aws``), the endpoint from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT_URL`` (e.g. ``https://s3.cern.ch``), or, for Salt
compatibility, from the ``config_S3`` block (``pubKey``, ``secKey``, ``url``), which exports
them to the environment of this process (and so of its workers) and removes them from the
returned config.

Tuning (environment variables, read when a file system is created):

``SALTX_S3_BLOCK_SIZE``
    bytes per ranged GET for h5 reads (default 8 MiB);
``SALTX_S3_CACHE_TYPE`` / ``SALTX_S3_CACHE_BLOCKS``
    fsspec cache of h5 reads (default ``blockcache`` keeping 8 blocks: 64 MiB per file
    and process);
``SALTX_S3_RETRIES`` / ``SALTX_S3_TIMEOUT_S``
    attempts per request and connect/read timeout in seconds (defaults 5 and 60).

Command line: ``saltx-s3-download +experiment=gn2 data.config_S3.bucket=...`` or
``python -m saltx.data.remote download +experiment=...`` downloads the files of a composed
train config and prints the overrides that point a run at the local copies.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import hashlib
import io
import json
import os
import re
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fsspec

from saltx.data.errors import DataError

DEFAULT_BLOCK_SIZE = 8 * 2**20
DEFAULT_CACHE_TYPE = "blockcache"
DEFAULT_CACHE_BLOCKS = 8
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK = 8 * 2**20
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
SECRET_FIELDS = ("pub_key", "sec_key")


class RemoteError(DataError):
    """A remote object could not be found, reached or read; the message names the URL."""


# ------------------------------------------------------------------------------------------
# URLs and file systems
# ------------------------------------------------------------------------------------------
def is_remote(path: str | os.PathLike | None) -> bool:
    """True when ``path`` is a URL with a scheme other than ``file://``."""
    if path is None:
        return False
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return "://" in text and not text.startswith("file://")


def split_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises
    ------
    RemoteError
        If ``url`` is not an ``s3://`` URL with both a bucket and a key.
    """
    if not url.startswith("s3://"):
        raise RemoteError(f"not an s3 URL: '{url}' (expected s3://bucket/key)")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise RemoteError(f"s3 URL '{url}' needs a bucket and a key: s3://bucket/key")
    return bucket, key


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
        raise RemoteError(f"environment variable {name}={value!r} is not a number") from err


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


def _where(url: str) -> str:
    endpoint = endpoint_url() if url.startswith("s3://") else None
    return f"'{url}'" + (f" (endpoint {endpoint})" if endpoint else "")


def _remote_error(url: str, action: str, err: BaseException) -> RemoteError:
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
    return RemoteError(f"{action} {_where(url)} failed{hint} ({text})")


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
        raise _remote_error(url, "looking up", err) from err
    if info.get("type") == "directory":
        raise RemoteError(f"{_where(url)} is a folder, not an object")
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
        raise _remote_error(str(path), "checking", err) from err


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
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
            raise ValueError(f"I/O on closed remote file '{self.url}'")
        if os.getpid() != self._pid:
            raise RemoteError(
                f"remote file '{self.url}' was opened in process {self._pid} and used in "
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
            raise _remote_error(self.url, "reading", err) from err
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        self._check()
        try:
            return self._raw.read(size)
        except Exception as err:
            raise _remote_error(self.url, "reading", err) from err

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
        raise _remote_error(url, "opening", err) from err
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
        raise _remote_error(text, "opening", err) from err
    try:
        yield f
    except Exception as err:
        with contextlib.suppress(Exception):
            f.close()
        if isinstance(err, OSError | RuntimeError) and not isinstance(err, RemoteError):
            raise _remote_error(text, action, err) from err
        raise
    else:
        try:
            f.close()
        except Exception as err:
            raise _remote_error(text, action, err) from err


def read_bytes(path: str | os.PathLike) -> bytes:
    """All bytes of a local file or URL."""
    with open_any(path, "rb") as f:
        try:
            return f.read()
        except Exception as err:
            raise _remote_error(str(path), "reading", err) from err


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a local file or URL (``norm_dict.yaml``, ``class_dict.yaml``)."""
    return read_bytes(path).decode(encoding)


class DirSync:
    """Mirror a local folder to a remote prefix, uploading only new or changed files.

    For tools that must write local files (TensorBoard event files): call :meth:`sync` at
    each validation and at the end. Each upload is one complete object.

    Parameters
    ----------
    local_dir
        The local folder (may not exist yet).
    url
        The remote prefix, e.g. ``s3://bucket/runs/GN2_.../tensorboard``.
    """

    def __init__(self, local_dir: str | os.PathLike, url: str) -> None:
        self.local_dir = Path(local_dir)
        self.url = url.rstrip("/")
        self._uploaded: dict[str, tuple[int, int]] = {}

    def sync(self) -> list[str]:
        """Upload what changed since the last call; return the URLs written.

        Raises
        ------
        RemoteError
            If an upload fails (the message names the URL).
        """
        if not self.local_dir.is_dir():
            return []
        fs, root = url_to_fs(self.url)
        written = []
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local_dir).as_posix()
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._uploaded.get(rel) == stamp:
                continue
            target = f"{self.url}/{rel}"
            try:
                fs.put_file(str(path), f"{root}/{rel}")
            except Exception as err:
                raise _remote_error(target, "uploading", err) from err
            self._uploaded[rel] = stamp
            written.append(target)
        return written


# ------------------------------------------------------------------------------------------
# Downloads
# ------------------------------------------------------------------------------------------
def _etag_sidecar(local: Path) -> Path:
    return local.with_name(f".{local.name}.s3etag")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(DOWNLOAD_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(local: str | os.PathLike, info: Mapping[str, Any]) -> bool:
    """Whether ``local`` already holds the remote object described by ``info``.

    The size must match; then the ETag recorded by the download that wrote the file, or
    (without that record) the file's MD5 when the ETag is a plain MD5 (single-part upload).
    A multipart ETag without a record is accepted on size alone.
    """
    path = Path(local)
    if not path.is_file() or path.stat().st_size != info["size"]:
        return False
    etag = info.get("etag")
    if not etag:
        return True
    sidecar = _etag_sidecar(path)
    if sidecar.is_file():
        return sidecar.read_text().strip() == etag
    if "-" in etag:
        return True
    return _md5(path) == etag


def download(
    url: str,
    local: str | os.PathLike,
    info: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = DOWNLOAD_CHUNK,
) -> Path:
    """Copy one remote object to ``local`` atomically.

    The bytes go to a temporary name in the same folder, which is renamed to ``local`` only
    after the whole object arrived with the expected size; on any error the temporary file
    is removed and ``local`` is left as it was.

    Parameters
    ----------
    url
        The remote object.
    local
        Target path.
    info
        ``remote_info(url)`` if already known.
    progress
        Called with the number of bytes of each chunk written.
    chunk_size
        Bytes per request.

    Raises
    ------
    RemoteError
        If the object cannot be found, reached or read completely.
    """
    info = info or remote_info(url)
    target = Path(local)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fs, path = url_to_fs(url)
    written = 0
    try:
        with (
            fs.open(path, "rb", block_size=chunk_size, cache_type="none") as src,
            open(tmp, "wb") as dst,
        ):
            while written < info["size"]:
                data = src.read(min(chunk_size, info["size"] - written))
                if not data:
                    break
                dst.write(data)
                written += len(data)
                if progress is not None:
                    progress(len(data))
            dst.flush()
            os.fsync(dst.fileno())
        if written != info["size"]:
            raise RemoteError(f"downloading {_where(url)}: got {written} of {info['size']} bytes")
        os.replace(tmp, target)
        sidecar = _etag_sidecar(target)
        if info.get("etag"):  # recorded after the rename: a stale record only re-downloads
            sidecar.write_text(info["etag"] + "\n")
        else:
            sidecar.unlink(missing_ok=True)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, Exception):
            raise _remote_error(url, "downloading", err) from err
        raise
    return target


@dataclass
class DownloadResult:
    """What :func:`download_many` did for one file."""

    url: str
    local: Path
    size: int
    skipped: bool


def download_many(
    jobs: Sequence[tuple[str, str | os.PathLike]],
    max_workers: int = 4,
    show_progress: bool = True,
) -> list[DownloadResult]:
    """Download ``[(url, local path), ...]`` in parallel threads with a progress bar.

    Files that are already complete locally (see :func:`is_complete`) are skipped.

    Raises
    ------
    RemoteError
        The first failure (downloads not yet started are cancelled; none leaves a partial
        file under its final name).
    """
    infos = [(url, Path(local), remote_info(url)) for url, local in jobs]
    results = [
        DownloadResult(url, local, info["size"], skipped=is_complete(local, info))
        for url, local, info in infos
    ]
    todo = [(res, info) for res, (_, _, info) in zip(results, infos) if not res.skipped]
    if show_progress:
        for res in results:
            if res.skipped:
                print(f"{res.local}: complete, not downloaded again", file=sys.stderr)
    if not todo:
        return results
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    lock = threading.Lock()
    with Progress(*columns, disable=not show_progress, transient=False) as bar:
        tasks = {
            res.url: bar.add_task(f"{res.local.name}", total=info["size"]) for res, info in todo
        }

        def run(res: DownloadResult, info: Mapping[str, Any]) -> None:
            def advance(n: int) -> None:
                with lock:
                    bar.advance(tasks[res.url], n)

            download(res.url, res.local, info=info, progress=advance)

        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            futures = [pool.submit(run, res, info) for res, info in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()  # not started yet: skip; running ones finish or fail
                raise
    return results


# ------------------------------------------------------------------------------------------
# Salt's config_S3 block
# ------------------------------------------------------------------------------------------
_ALIASES = {
    "use_S3": "use_s3",
    "use_s3": "use_s3",
    "download_S3": "download_s3",
    "download_s3": "download_s3",
    "url": "endpoint_url",
    "endpoint_url": "endpoint_url",
    "endpoint": "endpoint_url",
    "bucket": "bucket",
    "download_path": "download_path",
    "download_files": "download_files",
    "pubKey": "pub_key",
    "pub_key": "pub_key",
    "secKey": "sec_key",
    "sec_key": "sec_key",
    "max_workers": "max_workers",
}


@dataclass
class S3Block:
    """Salt's ``data.config_S3`` block, with snake_case aliases accepted.

    Attributes
    ----------
    use_s3
        Export the block's credentials and endpoint to the environment (direct ``s3://``
        reads and S3 outputs then use them).
    download_s3
        Download ``download_files`` to ``download_path`` before training.
    endpoint_url
        ``url`` in Salt, e.g. ``https://s3.cern.ch``.
    bucket
        Bucket of data values given as bare keys (Salt style); ``s3://`` values keep theirs.
    download_path
        Local folder for the copies.
    download_files
        Data keys to download, e.g. ``[train_file, val_file, norm_dict, class_dict]``.
    pub_key, sec_key
        ``pubKey``/``secKey`` in Salt: access key id and secret.
    max_workers
        Parallel downloads.
    """

    use_s3: bool = False
    download_s3: bool = False
    endpoint_url: str | None = None
    bucket: str | None = None
    download_path: str | None = None
    download_files: list[str] = field(default_factory=list)
    pub_key: str | None = field(default=None, repr=False)
    sec_key: str | None = field(default=None, repr=False)
    max_workers: int = 4

    @classmethod
    def from_mapping(cls, block: Mapping[str, Any] | None) -> S3Block:
        """Parse the block; unknown keys raise :class:`DataError` naming them."""
        values: dict[str, Any] = {}
        for key, value in dict(block or {}).items():
            if key not in _ALIASES:
                raise DataError(
                    f"unknown key 'data.config_S3.{key}'; expected one of {sorted(_ALIASES)}"
                )
            values[_ALIASES[key]] = value
        if isinstance(values.get("download_files"), str):
            values["download_files"] = [values["download_files"]]
        values["download_files"] = list(values.get("download_files") or [])
        for flag in ("use_s3", "download_s3"):
            values[flag] = bool(values.get(flag) or False)
        return cls(**values)

    @property
    def active(self) -> bool:
        """Salt's ``require_S3_CLI``: true if ``use_S3`` or ``download_S3``."""
        return self.use_s3 or self.download_s3

    def export_credentials(self) -> None:
        """Put the block's keys and endpoint into this process's environment (Salt does too)."""
        if self.pub_key:
            os.environ["AWS_ACCESS_KEY_ID"] = str(self.pub_key)
        if self.sec_key:
            os.environ["AWS_SECRET_ACCESS_KEY"] = str(self.sec_key)
        if self.endpoint_url:
            for var in ENDPOINT_VARS:
                os.environ.pop(var, None)
            os.environ["AWS_ENDPOINT_URL"] = str(self.endpoint_url)

    def url_of(self, value: str, key: str) -> str:
        """The ``s3://`` URL of a data value: itself, or ``s3://<bucket>/<value>``."""
        if is_remote(value):
            return value
        if not self.bucket:
            raise DataError(
                f"data.{key}='{value}' is not an s3:// URL and data.config_S3.bucket is not set"
            )
        return f"s3://{self.bucket}/{value.lstrip('/')}"


def default_download_path() -> Path:
    """Where downloads go when ``download_path`` is not set."""
    cache = os.environ.get("SALTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(cache) / "saltx" / "downloads"


def download_data_files(
    data: Mapping[str, Any], block: S3Block, show_progress: bool = True
) -> dict[str, str]:
    """Download the block's ``download_files`` of ``data``; return ``{data key: local path}``.

    Each file goes to ``<download_path>/<basename of its key>`` (as in Salt).

    Raises
    ------
    DataError
        For a key not in ``data``, or two keys whose files share a basename.
    RemoteError
        If a download fails.
    """
    folder = Path(block.download_path) if block.download_path else default_download_path()
    jobs: dict[str, tuple[str, Path]] = {}
    for key in block.download_files:
        if key not in data:
            raise DataError(
                f"data.config_S3.download_files names '{key}', which is not a data key "
                f"(available: {sorted(k for k in data if k.endswith(('_file', '_dict')))})"
            )
        value = data[key]
        if value in (None, ""):
            continue
        url = block.url_of(str(value), key)
        local = folder / url.rsplit("/", 1)[-1]
        for other, (other_url, other_local) in jobs.items():
            if other_local == local and other_url != url:
                raise DataError(
                    f"data.{key} ('{url}') and data.{other} ('{other_url}') would both "
                    f"download to '{local}'; give them different file names"
                )
        jobs[key] = (url, local)
    unique = list(dict.fromkeys(jobs.values()))
    download_many(unique, max_workers=block.max_workers, show_progress=show_progress)
    return {key: str(local) for key, (_, local) in jobs.items()}


def prepare_data_paths(cfg: Any, show_progress: bool = True) -> Any:
    """Apply ``data.config_S3`` to a composed config; the train entry calls this first.

    With ``use_S3``/``download_S3`` set, the block's credentials and endpoint go into the
    environment; with ``download_S3``, the listed files are downloaded (in parallel, skipping
    complete ones) and ``data.<key>`` points at the local copies. The block's keys are
    removed from the returned config, so they cannot reach a saved config, and its
    ``download_S3`` is false there (calling this again on the result downloads nothing).

    Parameters
    ----------
    cfg
        The root config (``DictConfig`` or dict) with a ``data`` node.

    Returns
    -------
    A copy of ``cfg`` with rewritten paths (``cfg`` itself when there is nothing to do).
    """
    data = cfg.get("data")
    raw = data.get("config_S3") if data is not None else None
    if raw is None and data is not None:
        raw = data.get("config_s3")
    if not raw:
        return cfg
    block = S3Block.from_mapping(raw)
    if not block.active:
        return cfg
    block.export_credentials()
    out = copy.deepcopy(cfg)
    if block.download_s3:
        for key, local in download_data_files(data, block, show_progress).items():
            out["data"][key] = local
    node_name = "config_S3" if data.get("config_S3") is not None else "config_s3"
    node = out["data"][node_name]
    for name in list(node.keys()):
        if _ALIASES.get(name) in SECRET_FIELDS:
            node[name] = None
        elif _ALIASES.get(name) == "download_s3":
            node[name] = False  # done: the paths are local now (a second call is a no-op)
    return out


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _compose(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    import saltx.config  # registers the schemas

    conf_dir = Path(saltx.config.__file__).resolve().parent / "conf"
    with initialize_config_dir(str(conf_dir), version_base=None):
        return compose(config_name, overrides=overrides)


_BLOCK_OVERRIDE = re.compile(r"^[+~]{0,2}data\.config_[sS]3(?:\.(\w+))?=(.*)$", re.S)


def _split_block_overrides(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take ``data.config_S3.KEY=VALUE`` / ``data.config_S3={...}`` out of Hydra's overrides.

    The schema's ``config_S3`` defaults to ``null``, which Hydra cannot override key by key,
    so the command applies these itself (values parsed with Hydra's override grammar).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    rest: list[str] = []
    values: dict[str, Any] = {}
    for item in overrides:
        match = _BLOCK_OVERRIDE.match(item)
        if match is None:
            rest.append(item)
            continue
        key, text = match.groups()
        value = parser.parse_override(f"x={text}").value()
        if key:
            values[key] = value
        elif isinstance(value, Mapping):
            values.update(value)
        else:
            raise DataError(f"{item!r}: data.config_S3 must be a mapping")
    return rest, values


def main(argv: Sequence[str] | None = None) -> int:
    """``saltx-s3-download [download] [options] [hydra overrides]``.

    Composes the train config with the overrides, downloads the files listed in
    ``data.config_S3.download_files`` (all data files when empty) and prints the overrides
    that point a run at the local copies.
    """
    parser = argparse.ArgumentParser(
        prog="saltx-s3-download",
        description="Download a train config's S3 data files (Salt's config_S3 block).",
    )
    parser.add_argument("--config-name", default="train", help="config to compose")
    parser.add_argument("--max-workers", type=int, default=None, help="parallel downloads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--write-paths", default=None, help="also write {data key: local path} as JSON here"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=gn2")
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    overrides = list(args.overrides)
    if overrides and overrides[0] == "download":
        overrides = overrides[1:]
    overrides, block_values = _split_block_overrides(overrides)
    cfg = _compose(args.config_name, overrides)
    data = cfg.data
    raw = dict(data.get("config_S3") or data.get("config_s3") or {})
    block = S3Block.from_mapping({**raw, **block_values})
    block.download_s3 = True
    if not block.download_files:
        block.download_files = [
            k
            for k in ("train_file", "val_file", "test_file", "norm_dict", "class_dict")
            if data.get(k)
        ]
    if args.max_workers:
        block.max_workers = args.max_workers
    block.export_credentials()
    try:
        paths = download_data_files(data, block, show_progress=not args.no_progress)
    except DataError as err:
        print(f"saltx-s3-download: {err}", file=sys.stderr)
        return 1
    if args.write_paths:
        Path(args.write_paths).write_text(json.dumps(paths, indent=2) + "\n")
    print(" ".join(f"data.{key}={local}" for key, local in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
