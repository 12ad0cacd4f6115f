"""Settings from ``PREDICTION_*`` environment variables: typed, validated once at start-up.

This module is the single source of the variable names (docs/CONTRACTS.md lists them). A wrong or
missing value raises :class:`ConfigError` whose message is one line naming the variable and what
to do; ``python -m prediction_service`` prints exactly that line and exits with status 2.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

PREFIX = "PREDICTION_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_JWT_SECRET_BYTES = 32
MIN_API_KEY_CHARS = 16
# Bounds of the adaptive-batching settings: the service-wide defaults here, and each model version's
# max_batch_size / max_batch_delay_us in its metadata.json (models.py).
MAX_BATCH_SIZE_LIMIT = 10_000
MAX_BATCH_DELAY_US_LIMIT = 1_000_000


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``str(err)`` is one line for the operator."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated service settings (field ``x`` comes from ``PREDICTION_X``)."""

    timescale_url: str
    redis_url: str
    model_path: Path
    api_key: str
    jwt_secret: str
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = 8001  # the Open Inference Protocol over gRPC (oip_grpc/); 0 = off
    instance: str = ""
    cache_ttl_seconds: int = 300
    local_cache_size: int = 10000
    log_level: str = "INFO"
    max_in_flight: int = 256
    request_timeout_seconds: float = 5.0
    max_body_bytes: int = 1048576
    max_batch: int = 1000
    db_logging: bool = True
    db_queue_max: int = 100000
    db_flush_interval_seconds: float = 0.5
    # Answer a prediction only once its log row is committed (waiting at most db_ack_timeout_seconds;
    # never while the database is known to be down): a killed process then loses no answered row.
    db_ack_after_write: bool = False
    db_ack_timeout_seconds: float = 1.0
    retention_days: int = 30
    # Adaptive batching (batching.py): the defaults of a model version's max_batch_size and
    # max_batch_delay_us where its metadata.json sets none. 1 = batching off.
    default_max_batch_size: int = 1
    default_max_batch_delay_us: int = 0

    def __repr__(self) -> str:  # secrets never reach logs or tracebacks
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("api_key", "jwt_secret"):
            shown[secret] = "***"
        for url in ("timescale_url", "redis_url"):
            shown[url] = redact_url(shown[url])
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and /ready)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# --- parsers: each returns the typed value or raises ValueError with what is expected -------------

def _int_between(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"expected an integer {rng}, got {value}")
        return value
    return parse


def _positive_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"expected a positive number of seconds, got {raw!r}")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _url(schemes: tuple[str, ...], example: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 — raises ValueError on a non-numeric port
        except ValueError:
            raise ValueError(f"not a valid URL (expected e.g. {example})") from None
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)} "
                             f"(expected e.g. {example}), got {redact_url(value)!r}")
        if not parts.hostname and parts.scheme != "unix":
            raise ValueError(f"URL has no host (expected e.g. {example})")
        return value
    return parse


def _model_path(raw: str) -> Path:
    path = Path(raw.strip())
    if not path.is_dir():
        raise ValueError(f"folder {str(path)!r} does not exist (run `make model` or mount the models there)")
    return path


def _secret(min_len: int, what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw.encode()) < min_len:
            raise ValueError(f"{what} must be at least {min_len} characters long "
                             f"(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return raw
    return parse


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty (e.g. 0.0.0.0)")
    return value


def _instance(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 200:
        raise ValueError("must be 1 to 200 characters")
    return value


_PARSERS: dict[str, Callable[[str], object]] = {
    "timescale_url": _url(("postgresql", "postgres"), "postgresql://user:pw@host:5432/prediction_db"),
    "redis_url": _url(("redis", "rediss", "unix"), "redis://host:6379/0"),
    "model_path": _model_path,
    "api_key": _secret(MIN_API_KEY_CHARS, "API key"),
    "jwt_secret": _secret(MIN_JWT_SECRET_BYTES, "HS256 secret"),
    "host": _host,
    "port": _int_between(1, 65535),
    "grpc_port": _int_between(0, 65535),
    "instance": _instance,
    "cache_ttl_seconds": _int_between(1),
    "local_cache_size": _int_between(0),
    "log_level": _log_level,
    "max_in_flight": _int_between(1),
    "request_timeout_seconds": _positive_float,
    "max_body_bytes": _int_between(1024),
    "max_batch": _int_between(1),
    "db_logging": _bool,
    "db_queue_max": _int_between(1),
    "db_flush_interval_seconds": _positive_float,
    "db_ack_after_write": _bool,
    "db_ack_timeout_seconds": _positive_float,
    "retention_days": _int_between(1),
    "default_max_batch_size": _int_between(1, MAX_BATCH_SIZE_LIMIT),
    "default_max_batch_delay_us": _int_between(0, MAX_BATCH_DELAY_US_LIMIT),
}


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _parse_one(env: Mapping[str, str], name: str):
    var = env_name(name)
    try:
        return _PARSERS[name](env[var])
    except ValueError as exc:
        raise ConfigError(var, str(exc)) from None


FILE_SUFFIX = "_FILE"


def with_files(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each ``PREDICTION_<NAME>_FILE`` read into ``PREDICTION_<NAME>`` (the convention of
    the docker-library images: Docker secrets arrive as files under /run/secrets/). Setting both is an
    error; the file's trailing newline is not part of the value."""
    out = dict(env)
    for key, path in env.items():
        if not (key.startswith(PREFIX) and key.endswith(FILE_SUFFIX)):
            continue
        var = key[: -len(FILE_SUFFIX)]
        if env.get(var):
            raise ConfigError(key, f"is set together with {var}: set one of them")
        try:
            with open(path, encoding="utf-8") as f:
                out[var] = f.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``PREDICTION_*`` variable (or its ``_FILE``); raise ConfigError on the
    first bad one."""
    env = with_files(os.environ if env is None else env)
    values = {}
    for f in fields(Settings):
        var = env_name(f.name)
        if var not in env or env[var] == "":
            if f.default is not MISSING:
                continue  # optional: the dataclass default applies
            raise ConfigError(var, "is required but not set (see docs/CONTRACTS.md for its meaning)")
        values[f.name] = _parse_one(env, f.name)
    if not values.get("instance"):
        values["instance"] = socket.gethostname()
    known = {env_name(f.name) for f in fields(Settings)}
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known and k.removesuffix(FILE_SUFFIX) not in known)
    if unknown:
        # Not fatal (other tools may set their own PREDICTION_* names) but a typo should be visible.
        logging.getLogger(__name__).warning("ignoring unknown settings: %s", ", ".join(unknown))
    settings = Settings(**values)
    if settings.grpc_port == settings.port:
        raise ConfigError(env_name("grpc_port"), f"must differ from {env_name('port')} ({settings.port}): "
                          "REST and gRPC listen on ports of their own (0 turns gRPC off)")
    return settings


def load_database_url(env: Mapping[str, str] | None = None) -> str:
    """Only ``PREDICTION_TIMESCALE_URL`` or its ``_FILE`` (what ``python -m prediction_service migrate``
    needs)."""
    env = with_files(os.environ if env is None else env)
    var = env_name("timescale_url")
    if not env.get(var):
        raise ConfigError(var, "is required but not set (see docs/CONTRACTS.md for its meaning)")
    return _parse_one(env, "timescale_url")
