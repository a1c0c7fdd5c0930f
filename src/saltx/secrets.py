"""Secrets: what counts as one, and keeping them out of everything saltx writes or prints.

One module, used everywhere (run files, checkpoints, loggers, storage errors, the console):

* **by key name**: a config key or environment variable whose name contains ``secKey``,
  ``pubKey``, ``secret``, ``password``, ``token``, ``api_key``, ``access_key``,
  ``credential`` or ``signature`` holds a secret (:func:`is_secret_key`);
* **by value shape**: credentials inside URLs (``https://KEY:SECRET@host``,
  ``s3://KEY:SECRET@bucket``), signed-URL query parameters (``X-Amz-Signature=...``,
  ``token=...``) and ``key=value`` / ``key: value`` text whose key is secret-looking;
* **by value**: the secret values seen on the command line, in the environment and in the
  composed config (:func:`remember`, :func:`remember_argv`, :func:`remember_config`) are
  masked wherever they would appear, even without a tell-tale key or shape.

:func:`redact` cleans a plain container (configs, metadata), :func:`redact_text` a string
(messages, files), and :func:`redacted_console` wraps an entry point so that everything it
prints (stdout, stderr, log records, tracebacks, Hydra's ``Error executing job with
overrides: [...]``) goes through :func:`redact_text`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

REDACTED = "<redacted>"
"""What a secret is replaced with (a plain YAML scalar, safe inside JSON strings too)."""

MIN_SECRET_LENGTH = 6
"""Shorter values are never masked by value (they would mask ordinary words and numbers);
key-name and URL rules still apply to them."""

_KEYWORDS = (
    r"sec_?key|pub_?key|secret|password|passwd|token|api_?key|access_?key|credential|signature"
)
_SECRET_KEY = re.compile(_KEYWORDS, re.I)
# key=value / key: value / "key": "value" where the key looks secret (one line only)
_KEY_VALUE = re.compile(
    rf"(?P<key>[\w.\-]*(?:{_KEYWORDS})[\w.\-]*)(?P<sep>['\"]?[ \t]*[=:][ \t]*)(?P<q>['\"]?)"
    r"(?P<value>[^\s'\",;&}\]\)]+)",
    re.I,
)
# scheme://userinfo@host: the userinfo (user, user:password, or a token) is the secret; a
# raw '/' is allowed in it (AWS secrets have them), at the price of masking the rare path
# with an '@' in it
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)(?P<userinfo>[^\s@'\"<>]+)@", re.I)
# query parameters of signed URLs (S3 presigned URLs, SAS tokens)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|"
    r"token|access_token|api_?key|password|secret)=)(?P<value>[^&\s'\"]+)",
    re.I,
)
_NOT_SECRET = {"", "null", "none", "true", "false", "~", REDACTED.lower()}

_KNOWN: set[str] = set()  # registry of secret values seen in argv and configs

T = TypeVar("T")


def is_secret_key(key: Any) -> bool:
    """Whether a config key or environment variable name holds a secret.

    ``secKey``/``sec_key``, ``pubKey``/``pub_key``, ``*secret*``, ``*password*``,
    ``*token*``, ``*api_key*``, ``*access_key*`` (``AWS_ACCESS_KEY_ID``), ``*credential*``,
    ``*signature*``.
    """
    return bool(_SECRET_KEY.search(str(key)))


def _worth_masking(value: str) -> bool:
    return len(value) >= MIN_SECRET_LENGTH and value.strip().lower() not in _NOT_SECRET


def url_credentials(text: str) -> list[str]:
    """The userinfo parts (``KEY``, ``SECRET``) of every URL in ``text``."""
    out = []
    for match in _URL_USERINFO.finditer(text):
        info = match.group("userinfo")
        out += [info, *info.split(":", 1)]
    return out


def remember(values: Iterable[Any]) -> None:
    """Add secret values to the registry: they are masked wherever saltx prints them."""
    for value in values:
        if value is None or isinstance(value, bool | int | float):
            continue
        text = str(value).strip().strip("'\"")
        if _worth_masking(text):
            _KNOWN.add(text)


def remember_argv(argv: Iterable[str]) -> None:
    """Remember the secrets of command-line overrides (``+data.config_S3.secKey=...``,
    ``{pubKey: ..., secKey: ...}``, URLs with credentials)."""
    for arg in argv:
        arg = str(arg)
        remember(m.group("value") for m in _KEY_VALUE.finditer(arg))
        remember(m.group("value") for m in _QUERY_SECRET.finditer(arg))
        remember(url_credentials(arg))


def remember_config(cfg: Any) -> None:
    """Remember the values of secret-looking keys and URL credentials of a config.

    Interpolations are not resolved (a config with ``${oc.env:...}`` is read as written).
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    stack: list[Any] = [cfg]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if is_secret_key(key) and isinstance(value, str):
                    remember([value])
                stack.append(value)
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, str):
            remember(url_credentials(node))


def known_secrets() -> list[str]:
    """Secret values to mask: the registry plus the environment's secret variables
    (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``WANDB_API_KEY``, ...), longest
    first."""
    values = set(_KNOWN)
    for name, value in os.environ.items():
        if is_secret_key(name) and _worth_masking(value):
            values.add(value)
        elif "://" in value and "@" in value:
            values.update(v for v in url_credentials(value) if _worth_masking(v))
    return sorted(values, key=len, reverse=True)


def _mask_key_value(match: re.Match) -> str:
    if match.group("value").lower() in _NOT_SECRET:
        return match.group(0)
    if match.group("key").endswith(("Error", "Exception", "Warning")):
        return match.group(0)  # "NoCredentialsError: Unable to ...": a message, not a value
    return f"{match.group('key')}{match.group('sep')}{match.group('q')}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with every secret masked: known values, URL credentials, signed-URL
    parameters and ``key=value`` pairs of secret-looking keys."""
    if not text:
        return text
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
        encoded = quote(secret, safe="")
        if encoded != secret and encoded in text:
            text = text.replace(encoded, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{REDACTED}", text)
    return _KEY_VALUE.sub(_mask_key_value, text)


def redact_url(url: str) -> str:
    """A URL without its credentials (for messages and local cache folder names)."""
    return redact_text(str(url))


def strip_url_credentials(url: str) -> str:
    """``scheme://host/path`` from ``scheme://user:password@host/path`` (nothing masked in)."""
    return _URL_USERINFO.sub(lambda m: m.group("scheme"), str(url))


def redact(value: T) -> T:
    """A copy of a plain container with secrets masked.

    Values of secret-looking keys become :data:`REDACTED` (``None`` stays ``None``); every
    string anywhere goes through :func:`redact_text` (URL credentials, known values).
    """
    if isinstance(value, Mapping):
        return {  # type: ignore[return-value]
            k: (REDACTED if is_secret_key(k) and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, str):
        return redact_text(value)  # type: ignore[return-value]
    return value


# -- the console ------------------------------------------------------------------------------
class RedactingStream:
    """A text stream that masks secrets in everything written to it (see :func:`redact_text`).

    Everything else (``isatty``, ``fileno``, ``encoding``, ``flush`` ...) is the wrapped
    stream's, so progress bars and loggers behave as before.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _redacting_records(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log-record factory whose records carry the redacted, formatted message."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return record
        record.msg, record.args = redact_text(message), None
        return record

    factory.saltx_redacting = True  # type: ignore[attr-defined]
    return factory


@contextlib.contextmanager
def console_redaction(argv: Iterable[str] | None = None) -> Iterator[None]:
    """Mask secrets in everything printed inside the block; errors exit with code 1.

    Remembers the secrets of ``argv`` (default ``sys.argv``), wraps ``sys.stdout`` and
    ``sys.stderr`` in :class:`RedactingStream` and redacts every log record. An exception
    that escapes the block is printed (redacted, with its traceback) and becomes
    ``SystemExit(1)`` (``KeyboardInterrupt``: 130), so Python's own handler never prints
    it unredacted. Nested use is a no-op.
    """
    remember_argv(sys.argv[1:] if argv is None else argv)
    if isinstance(sys.stderr, RedactingStream):
        yield
        return
    streams = sys.stdout, sys.stderr
    make_record = logging.getLogRecordFactory()
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    logging.setLogRecordFactory(_redacting_records(make_record))
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(130 if isinstance(err, KeyboardInterrupt) else 1) from None
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        logging.setLogRecordFactory(make_record)


def redacted_console(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate an entry point (above ``@hydra.main``) with :func:`console_redaction`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with console_redaction():
            return fn(*args, **kwargs)

    return wrapper
