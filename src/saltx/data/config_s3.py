"""Salt's ``data.config_S3`` block: S3 credentials, and download-first data files.

With ``use_S3``/``download_S3`` set, the block's credentials and endpoint go into this
process's environment (and so its workers'); with ``download_S3``, :func:`prepare_data_paths`
copies the listed files to ``download_path`` in parallel, skips files that are already
complete, and rewrites the config paths to the local copies. The block's secrets are
removed from the returned config.

Command line: ``saltx-s3-download +experiment=gn2 data.config_S3.bucket=...`` or
``python -m saltx.data.config_s3 download +experiment=...`` downloads the files of a composed
train config and prints the overrides that point a run at the local copies.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saltx.errors import DataError
from saltx.io.download import download_many
from saltx.io.fs import ENDPOINT_VARS, is_remote

SECRET_FIELDS = ("pub_key", "sec_key")


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


def main(argv: Sequence[str] | None = None) -> int:
    """``saltx-s3-download [download] [options] [hydra overrides]``.

    Composes the train config with the overrides, downloads the files listed in
    ``data.config_S3.download_files`` (all data files when empty) and prints the overrides
    that point a run at the local copies. Secrets never reach the console
    (:func:`saltx.secrets.console_redaction`).
    """
    from saltx.secrets import console_redaction

    with console_redaction(sys.argv[1:] if argv is None else argv):
        return _download(argv)


def _download(argv: Sequence[str] | None) -> int:
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
    cfg = _compose(args.config_name, overrides)  # data.config_S3.KEY=VALUE needs no '+'
    data = cfg.data
    block = S3Block.from_mapping(dict(data.get("config_S3") or {}))
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
