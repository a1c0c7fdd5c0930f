"""Atomic, resumable downloads of remote objects to local files (in parallel)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saltx.errors import RemoteError
from saltx.io.fs import remote_error, remote_info, url_to_fs, where

DOWNLOAD_CHUNK = 8 * 2**20


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
            raise RemoteError(f"downloading {where(url)}: got {written} of {info['size']} bytes")
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
            raise remote_error(url, "downloading", err) from err
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
