"""Every file of a run directory goes through :class:`RunDir`.

A run directory is a local folder or a remote URL (``s3://bucket/runs/GN2_...``). Writes
are atomic in both cases:

* local: the bytes go to a temporary file in the same folder, are ``fsync``-ed, and the
  temporary file is renamed over the target with ``os.replace``. A write that dies half
  way never replaces the previous good file;
* remote: the complete object is written to a local temporary file first and then
  uploaded in one ``put`` (object stores publish an object only once it is complete).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from saltx.io.fs import is_remote, open_any, url_to_fs
from saltx.secrets import redact_text

_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def require_regular_file(path: str | os.PathLike) -> None:
    """Refuse a local ``path`` that exists but is not a regular file (links are followed).

    Reading a FIFO blocks until someone writes to it, a character device such as
    ``/dev/zero`` never ends, and appending to a FIFO blocks until someone reads: a run
    would hang without a word. Remote URLs and missing paths pass (the caller reports
    those).

    Raises
    ------
    ValueError
        Naming the path and what it is (FIFO, directory, socket, device).
    """
    text = str(path)
    if is_remote(text):
        return
    local = text.removeprefix("file://")
    try:
        mode = os.stat(local).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
    why = "" if stat.S_ISDIR(mode) else " (reading or writing it could block forever)"
    raise ValueError(
        f"{text} is a {kind}, not a regular file; saltx refuses to use it{why}. Remove it "
        "or replace it with the real file."
    )


class RunDir:
    """A run directory, local or remote, with atomic writes.

    Parameters
    ----------
    root
        Local path or URL (``s3://...``) of the run directory.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self._root_path = url_to_fs(self.root)
        self.remote = is_remote(self.root)

    def __repr__(self) -> str:
        return f"RunDir({redact_text(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Full path or URL of ``rel`` inside the run directory."""
        return f"{self.root}/{rel}" if rel else self.root

    def _fs_path(self, rel: str) -> str:
        return f"{self._root_path}/{rel}" if rel else self._root_path

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists in the run directory."""
        return self.fs.exists(self._fs_path(rel))

    def makedirs(self, rel: str = "") -> None:
        """Create ``rel`` (and the run directory) when local; remote stores need no folders."""
        if not self.remote:
            os.makedirs(self._fs_path(rel), exist_ok=True)

    # -- writing ---------------------------------------------------------------------------
    def write_with(self, rel: str, writer: Callable[[IO[bytes]], None]) -> str:
        """Atomically write ``rel`` by calling ``writer(binary_file)``.

        Returns the full path of the written file.
        """
        if self.remote:
            with tempfile.TemporaryDirectory(prefix="saltx-upload-") as tmpdir:
                local = os.path.join(tmpdir, os.path.basename(rel))
                with open(local, "wb") as f:
                    writer(f)
                self.fs.put_file(local, self._fs_path(rel))
            return self.path(rel)
        target = Path(self._fs_path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)
        return str(target)

    def remove_stale_temporaries(self, rel: str) -> list[str]:
        """Delete the temporary files that dead writers left in the local folder ``rel``.

        :meth:`write_with` writes ``.<name>.<random>.tmp`` next to its target; a process
        killed before the rename leaves that file behind. Call this only when no other
        process writes to the folder (rank 0 at the start of a run). Remote run
        directories never hold such files. Returns the removed paths.
        """
        folder = Path(self._fs_path(rel))
        if self.remote or not folder.is_dir():
            return []
        removed = []
        for tmp in sorted(folder.glob(".*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(str(tmp))
        return removed

    def glob(self, pattern: str) -> list[str]:
        """Paths relative to the run directory that match ``pattern`` (``checkpoints/*.pt``)."""
        if self.remote:
            prefix = self._root_path.rstrip("/") + "/"
            return sorted(str(p).removeprefix(prefix) for p in self.fs.glob(self._fs_path(pattern)))
        root = Path(self._root_path)
        return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))

    def remove(self, rel: str) -> None:
        """Delete the file ``rel`` (no error when it is missing)."""
        if self.remote:
            if self.exists(rel):
                self.fs.rm(self._fs_path(rel))
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._fs_path(rel))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write ``data`` to ``rel``."""
        return self.write_with(rel, lambda f: f.write(data))

    def write_text(self, rel: str, text: str) -> str:
        """Atomically write UTF-8 ``text`` to ``rel``, secrets masked (:mod:`saltx.secrets`)."""
        return self.write_bytes(rel, redact_text(text).encode("utf-8"))

    def append_text(self, rel: str, text: str) -> None:
        """Append ``text`` to ``rel`` (``metrics.jsonl``, ``performance_metric.json``).

        Local files are appended to and flushed; a remote object is rewritten whole with
        the new text at its end (object stores cannot append). Secrets are masked.
        """
        text = redact_text(text)
        if self.remote:
            old = self.read_bytes(rel) if self.exists(rel) else b""
            self.write_bytes(rel, old + text.encode("utf-8"))
            return
        target = Path(self._fs_path(rel))
        require_regular_file(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    def copy_in(self, src: str | os.PathLike, rel: str) -> str:
        """Copy the file at ``src`` (local path or URL) to ``rel``."""
        require_regular_file(src)
        with open_any(str(src), "rb") as f:
            data = f.read()
        return self.write_bytes(rel, data)

    # -- reading ---------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """Bytes of ``rel``."""
        require_regular_file(self.path(rel))
        with self.fs.open(self._fs_path(rel), "rb") as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        """UTF-8 text of ``rel``."""
        return self.read_bytes(rel).decode("utf-8")


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` for a local path or URL (regular files only)."""
    require_regular_file(path)
    if not is_remote(path):
        return torch.load(str(path), map_location=map_location, weights_only=True)
    with open_any(str(path), "rb") as f:
        data = io.BytesIO(f.read())
    return torch.load(data, map_location=map_location, weights_only=True)


def load_checkpoint_dict(
    path: str | os.PathLike,
    key: str,
    kind: str,
    map_location: str | torch.device = "cpu",
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`load_torch` of a checkpoint file that must hold a dict with ``key``.

    ``hints`` ``{other key: advice}`` add advice when the dict has another known key.

    Raises
    ------
    ValueError
        When ``torch.load(weights_only=True)`` fails, or the object is not a dict with
        ``key`` (the message names the file, ``kind`` and the keys found).
    """
    try:
        obj = load_torch(path, map_location=map_location)
    except Exception as err:
        raise ValueError(
            f"could not load checkpoint {path} with torch.load(weights_only=True): {err}"
        ) from err
    if not isinstance(obj, dict) or key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        advice = [h for k, h in (hints or {}).items() if isinstance(obj, dict) and k in obj]
        raise ValueError(
            f"{path} is not a {kind}: expected a dict with {key!r}, got {keys}"
            + "".join(f": {a}" for a in advice)
        )
    return obj


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort; not all platforms can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_tag() -> str:
    """``<host>-<pid>`` of this process, put into the names of its temporary files.

    :func:`remove_orphaned` uses it to tell a dead writer's leftovers from the files of a
    writer that is still running (on this host or on another one sharing the folder).
    """
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphaned(folder: str | os.PathLike, pattern: str) -> list[str]:
    """Delete the temporaries in ``folder`` that killed writers on this host left behind.

    Parameters
    ----------
    folder
        A local folder (nothing is done if it does not exist).
    pattern
        Glob of the temporaries (files or folders), whose names contain the writer's
        :func:`temp_tag`. Entries of live processes, and of other hosts, are kept.

    Returns
    -------
    list[str]
        The removed paths.
    """
    base = Path(folder)
    if not base.is_dir():
        return []
    tag = re.compile(re.escape(socket.gethostname()) + r"-(\d+)")
    removed = []
    for entry in sorted(base.glob(pattern)):
        match = tag.search(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(str(entry))
    return removed
