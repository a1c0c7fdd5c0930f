"""A throwaway PostgreSQL server on loopback for tests of shared Optuna studies.

``postgres_url`` (session fixture) runs Debian's PostgreSQL server binaries
(``/usr/lib/postgresql/<v>/bin``, e.g. from ``apt-get install -y postgresql``) with
``initdb``/``pg_ctl`` in a temporary data directory on a free port of 127.0.0.1, and
yields an SQLAlchemy URL. As root (CI), the server runs as the unprivileged ``postgres``
user through ``runuser -u postgres``. The test is skipped only when no server binaries
exist. Import the fixture into a test module: ``from pg_fixture import postgres_url``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "saltx"


def find_pg_bindir() -> Path | None:
    """The newest directory holding ``initdb`` and ``pg_ctl`` (None when there is none)."""

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(Path(bindir) / "initdb", os.X_OK) and os.access(
            Path(bindir) / "pg_ctl", os.X_OK
        ):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner() -> list[str]:
    """Command prefix that runs the server binaries as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and 'runuser' is missing (util-linux)")
    return [runuser, "-u", "postgres", "--"]


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://saltx@127.0.0.1:<port>/postgres`` of a fresh server."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary (dev extra) is not installed")
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
            "or on PATH; install them with: apt-get install -y postgresql"
        )
    prefix = _runner()
    root = Path(tempfile.mkdtemp(prefix="saltx-pg-"))
    if prefix:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
    data = root / "data"
    _run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        "initdb",
    )  # fmt: skip
    started = False
    port = 0
    try:
        for _attempt in range(3):  # another process may take the port between pick and bind
            port = _free_port()
            options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            cmd = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                   "-o", options, "-w", "-t", "60", "start"]  # fmt: skip
            if subprocess.run(cmd, capture_output=True, timeout=120, check=False).returncode == 0:
                started = True
                break
        if not started:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            raise RuntimeError(f"could not start PostgreSQL from {bindir}:\n{log[-2000:]}")
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
