"""Secrets in everything saltx prints and writes (issue 14, part 3).

* The failure path: Hydra's ``Error executing job with overrides: [...]`` (and the
  traceback, with ``HYDRA_FULL_ERROR=1`` or without) echoes the command line; secrets given
  there, or held in the environment, must not appear in stdout/stderr of
  ``python -m saltx.train``, ``saltx.evaluate``, ``saltx.export``, a sweep and
  ``saltx-s3-download`` (value-aware: a known secret is masked wherever it shows up).
* Value shapes: credentials inside URLs (``https://KEY:SECRET@host``) never reach
  ``config.yaml``, ``metadata.yaml``, checkpoints, ``RemoteError`` messages or local cache
  folder names.
"""

from __future__ import annotations

import logging
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relhelp import child_env, run_child, train_overrides, write_tiny_data
from test_rel_hostile_h5 import _record

from saltx.secrets import (
    REDACTED,
    console_redaction,
    redact,
    redact_text,
    remember_argv,
)

SEC = "PLANTED/sec+KEY/51d2e8b0"  # config_S3.secKey on the command line
PUB = "AKIAPLANTEDPUB0051D2"  # config_S3.pubKey
ENV = "planted-env-secret-51d2e8b0"  # AWS_SECRET_ACCESS_KEY in the environment
URL_KEY, URL_SEC = "URLKEYPLANTED51", "urlsecretPLANTED51d2"  # inside a URL
SECRETS = (SEC, PUB, ENV, URL_KEY, URL_SEC)
BLOCK = (f"+data.config_S3.secKey='{SEC}'", f"+data.config_S3.pubKey={PUB}")
SHORT = ("trainer.max_epochs=1", "trainer.max_steps=2", "data.batch_size=16")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(
        tmp_path_factory.mktemp("secretdata"), {"train": 64, "val": 32, "test": 32}
    )


def leaks(*texts: str) -> list[str]:
    return [s for s in SECRETS if any(s in t for t in texts)]


def run_entry(args: list[str], full_error: bool = True, **env: str):
    """Run ``args`` in a child with the planted environment secret; returns the process."""
    extra = {"AWS_SECRET_ACCESS_KEY": ENV, "SALTX_S3_RETRIES": "1", "SALTX_S3_TIMEOUT_S": "2"}
    child = child_env(**extra, **env)
    if not full_error:
        child.pop("HYDRA_FULL_ERROR", None)
    return run_child([sys.executable, *args], child, timeout=600)


def record(case: str, proc) -> None:
    found = leaks(proc.stdout, proc.stderr)
    message = f"exit {proc.returncode}; " + (
        "leaked " + ", ".join(found) if found else "nothing leaked"
    )
    _record(f"secrets: {case}", ("ok" if not found else "LEAK", message))


# -- the failure path, every entry point ----------------------------------------------------
@pytest.mark.parametrize("full_error", [True, False], ids=["HYDRA_FULL_ERROR=1", "hydra-report"])
def test_train_failure_prints_no_secret(data: Path, tmp_path: Path, full_error: bool) -> None:
    # the missing file's path contains the environment secret: masked by value
    args = train_overrides(
        data, tmp_path / "run", *SHORT, *BLOCK, f"data.train_file=/nonexistent/{ENV}/train.h5"
    )
    proc = run_entry(["-m", "saltx.train", *args], full_error=full_error)
    record(f"train fails (HYDRA_FULL_ERROR={int(full_error)})", proc)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    if not full_error:
        assert "Error executing job with overrides" in out, out[-2000:]
    assert "h5 file not found" in out and f"/nonexistent/{REDACTED}/train.h5" in out, out[-2000:]
    assert leaks(out) == [], out[-3000:]


@pytest.mark.parametrize("name", ["evaluate", "export"])
def test_evaluate_and_export_failures_print_no_secret(tmp_path: Path, name: str) -> None:
    args = [f"run_dir={tmp_path}/{ENV}/run", f"+extra.secKey={SEC}", f"+extra.token={PUB}"]
    proc = run_entry(["-m", f"saltx.{name}", *args], full_error=False)
    record(f"{name} fails", proc)
    out = proc.stdout + proc.stderr
    # the unknown keys are refused first, and the refusal echoes the overrides
    assert proc.returncode == 1 and "extra: not a key" in out, out[-2000:]
    assert "Error executing job with overrides" in out
    assert leaks(out) == [], out[-3000:]


def test_sweep_failure_prints_no_secret(data: Path, tmp_path: Path) -> None:
    args = train_overrides(
        data,
        tmp_path / "run",
        *SHORT,
        *BLOCK,
        "hparams_search=demo_optuna",
        "hydra.sweeper.n_trials=1",
        f"paths.log_dir={tmp_path}/logs",
        "data.train_file=/nonexistent/train.h5",
    )
    proc = run_entry(
        ["-m", "saltx.train", "-m", *[a for a in args if not a.startswith("paths.output_dir")]]
    )
    record("sweep with a failing trial", proc)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "h5 file not found" in out, out[-2000:]
    assert leaks(out) == [], out[-3000:]
    sweep_files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert not [p for p in sweep_files if leaks(p.read_bytes().decode("utf-8", "replace"))]


def test_s3_download_failure_prints_no_secret(tmp_path: Path) -> None:
    # an endpoint that refuses connections; the object key contains the secret's value
    args = [
        "+experiment=demo",
        *BLOCK,
        "+data.config_S3.url=http://127.0.0.1:9",
        f"data.train_file=s3://bucket/{SEC}/train.h5",
        "data.val_file=s3://bucket/val.h5",
        f"paths.data_dir={tmp_path}",
        "+data.config_S3.download_files=[train_file]",
        f"+data.config_S3.download_path={tmp_path}/dl",
    ]
    proc = run_entry(
        ["-c", "from saltx.data.config_s3 import main; raise SystemExit(main())", *args]
    )
    record("saltx-s3-download fails", proc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "127.0.0.1:9" in out, out[-2000:]
    assert leaks(out) == [], out[-3000:]


# -- credentials inside URLs ----------------------------------------------------------------
def _bytes_of(root: Path) -> dict[str, bytes]:
    out = {}
    for path in (p for p in root.rglob("*") if p.is_file()):
        out[str(path)] = path.read_bytes()
        if zipfile.is_zipfile(path):  # checkpoints: every member too
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    out[f"{path}:{member}"] = z.read(member)
    return out


def test_url_credentials_never_reach_run_files_or_console(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    url = f"https://{URL_KEY}:{URL_SEC}@data.example.org/test.h5"
    args = train_overrides(
        data,
        run,
        *SHORT,
        f"data.test_file={url}",
        f"data.config_S3.url=s3://{URL_KEY}:{URL_SEC}@bucket/x",  # not active: kept in config
    )
    proc = run_entry(["-m", "saltx.train", *args])
    record("train with credentials inside URLs", proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert leaks(proc.stdout, proc.stderr) == []
    files = _bytes_of(run)
    assert any(name.endswith("last.pt") for name in files), sorted(files)
    hits = [n for n, b in files.items() if URL_KEY.encode() in b or URL_SEC.encode() in b]
    assert hits == [], hits
    config = (run / "config.yaml").read_text()
    assert f"https://{REDACTED}@data.example.org/test.h5" in config  # the rest of the URL stays


def test_remote_errors_and_cache_folders_hold_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from saltx.io.fs import local_dir, remote_error

    url = f"s3://{URL_KEY}:{URL_SEC}@bucket/data/train.h5"
    err = remote_error(url, "reading", OSError(f"connection to {url} reset"))
    assert URL_SEC not in str(err) and URL_KEY not in str(err), err
    assert "bucket/data/train.h5" in str(err)
    local = local_dir(f"s3://{URL_KEY}:{URL_SEC}@bucket/runs/r1")
    assert URL_SEC not in local and URL_KEY not in local and local.endswith("s3/bucket/runs/r1")


@pytest.mark.parametrize(
    ("text", "hidden", "kept"),
    [
        ("https://KEY123456:SECRET987654@host/p", ["KEY123456", "SECRET987654"], ["host/p"]),
        ("s3://AKIAXXXXXXXX:abc/def+ghi@bucket/k", ["AKIAXXXXXXXX", "abc/def+ghi"], ["bucket/k"]),
        ("https://h/o?X-Amz-Signature=deadbeef1234&a=1", ["deadbeef1234"], ["a=1"]),
        ("+data.config_S3.secKey=hunter2hunter2 x=1", ["hunter2hunter2"], ["x=1"]),
        ("{'pubKey': 'AKIA1234567890'}", ["AKIA1234567890"], ["pubKey"]),
        ("token: abcdef012345", ["abcdef012345"], ["token"]),
        ("epoch=3 val/loss=0.5 s3://bucket/run", [], ["s3://bucket/run", "epoch=3"]),
        ("NoCredentialsError: Unable to locate credentials", [], ["Unable to locate"]),
    ],
    # ids without the secrets: pytest puts the id into PYTEST_CURRENT_TEST, whose URL
    # credentials the environment rule would then mask by value, hiding the shape rule
    ids=[
        "url-user-password",
        "s3-url-raw-slash",
        "signed-url",
        "override",
        "dict-repr",
        "yaml",
        "no-secret",
        "exception-name",
    ],
)
def test_redaction_by_value_shape(text: str, hidden: list[str], kept: list[str]) -> None:
    out = redact_text(text)
    assert not [h for h in hidden if h in out], out
    assert all(k in out for k in kept), out


def test_redaction_by_known_value_in_logs_and_streams(capsys: pytest.CaptureFixture) -> None:
    """A secret seen on the command line is masked in prints, log records and tracebacks."""
    value = "known-secret-value-8a7b6c"
    with pytest.raises(SystemExit) as stop, console_redaction([f"+x.password={value}"]):
        print(f"plain {value}")
        logging.getLogger("saltx.test").warning("logged %s", value)
        raise RuntimeError(f"failed with {value}")
    assert stop.value.code == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert value not in text and "plain <redacted>" in text and "failed with <redacted>" in text
    assert redact({"a": [f"x {value}"], "password": None}) == {
        "a": ["x <redacted>"],
        "password": None,
    }


def test_remember_argv_dict_form() -> None:
    remember_argv(["+data.config_S3={use_S3:true,secKey:dictformSECRET99,url:'http://h'}"])
    assert redact_text("echo dictformSECRET99") == "echo <redacted>"
