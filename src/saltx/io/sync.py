"""Mirror a local folder to a run directory's remote prefix (loggers that write locally)."""

from __future__ import annotations

import os
from pathlib import Path

from saltx.io.fs import remote_error, url_to_fs


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
                raise remote_error(target, "uploading", err) from err
            self._uploaded[rel] = stamp
            written.append(target)
        return written
