"""Configuration: every wrong or missing PREDICTION_* value stops start-up with one clear line."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from service_support import SERVICE_DIR, service_env
from prediction_service.config import ConfigError, load_settings


@pytest.fixture
def env(demo_models):
    return service_env(demo_models, "redis://127.0.0.1:6379/0", "postgresql://u:pw@127.0.0.1:5432/prediction_db")


def test_defaults_match_the_contract(env):
    s = load_settings(env)
    assert (s.host, s.port, s.cache_ttl_seconds, s.local_cache_size, s.max_in_flight) == ("0.0.0.0", 8000, 300, 10000, 256)
    assert (s.request_timeout_seconds, s.max_body_bytes, s.max_batch) == (5.0, 1048576, 1000)
    assert (s.db_queue_max, s.db_flush_interval_seconds, s.retention_days) == (100000, 0.5, 30)
    assert s.log_level == "WARNING" and s.db_logging is False
    del env["PREDICTION_GRPC_PORT"]  # service_env turns gRPC off for the tests
    assert load_settings(env).grpc_port == 8001


def test_secrets_do_not_show_in_repr(env):
    text = repr(load_settings(env))
    assert env["PREDICTION_API_KEY"] not in text and env["PREDICTION_JWT_SECRET"] not in text
    assert ":pw@" not in text


BAD = [
    ("PREDICTION_API_KEY", None, "is required"),
    ("PREDICTION_TIMESCALE_URL", None, "is required"),
    ("PREDICTION_TIMESCALE_URL", "mysql://h/db", "scheme must be one of postgresql://"),
    ("PREDICTION_REDIS_URL", "localhost:6379", "scheme must be one of redis://"),
    ("PREDICTION_REDIS_URL", "redis://host:notaport/0", "not a valid URL"),
    ("PREDICTION_MODEL_PATH", "/nonexistent/models", "does not exist"),
    ("PREDICTION_PORT", "eighty", "expected an integer"),
    ("PREDICTION_PORT", "70000", "between 1 and 65535"),
    ("PREDICTION_GRPC_PORT", "-1", "between 0 and 65535"),
    ("PREDICTION_GRPC_PORT", "8000", "must differ from PREDICTION_PORT (8000)"),
    ("PREDICTION_CACHE_TTL_SECONDS", "0", ">= 1"),
    ("PREDICTION_MAX_IN_FLIGHT", "-3", ">= 1"),
    ("PREDICTION_REQUEST_TIMEOUT_SECONDS", "soon", "number of seconds"),
    ("PREDICTION_REQUEST_TIMEOUT_SECONDS", "inf", "positive number"),
    ("PREDICTION_DB_LOGGING", "maybe", "true or false"),
    ("PREDICTION_LOG_LEVEL", "LOUD", "one of DEBUG"),
    ("PREDICTION_JWT_SECRET", "short", "at least 32"),
    ("PREDICTION_API_KEY", "abc", "at least 16"),
]


@pytest.mark.parametrize("var,value,fragment", BAD, ids=[f"{v}={x}" for v, x, _ in BAD])
def test_bad_value_names_the_variable(env, var, value, fragment):
    if value is None:
        env.pop(var)
    else:
        env[var] = value
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.variable == var
    message = str(err.value)
    assert message.startswith(var + ":") and fragment in message and "\n" not in message


def test_process_exits_with_one_clear_line(env):
    env["PREDICTION_PORT"] = "eighty"
    proc = subprocess.run([sys.executable, "-m", "prediction_service"], env={**env, "PYTHONPATH": str(SERVICE_DIR)},
                          capture_output=True, text=True, timeout=60, cwd=SERVICE_DIR)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["configuration error: PREDICTION_PORT: expected an integer, got 'eighty'"]


def test_migrate_needs_only_the_database_url():
    proc = subprocess.run([sys.executable, "-m", "prediction_service", "migrate"],
                          env={"PYTHONPATH": str(SERVICE_DIR), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, cwd=SERVICE_DIR)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "configuration error: PREDICTION_TIMESCALE_URL: is required but not set (see docs/CONTRACTS.md for its meaning)"]


def test_port_taken_exits_with_one_log_line_naming_it(env):
    """Past the settings, the one start-up failure left is the listening socket: one JSON log line, no traceback."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "prediction_service"], capture_output=True, text=True, timeout=120,
                              env={**env, "PREDICTION_HOST": "127.0.0.1", "PREDICTION_PORT": str(port),
                                   "PYTHONPATH": str(SERVICE_DIR)}, cwd=SERVICE_DIR)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    assert last["level"] == "ERROR" and last["msg"].startswith(f"cannot listen on 127.0.0.1:{port}: "), last
    assert "address already in use" in last["msg"].lower() and "Traceback" not in proc.stderr


def test_check_config_validates_without_starting(env):
    """`python -m prediction_service check-config`: what deployment tools run before starting an instance."""
    def check(**changes):
        return subprocess.run([sys.executable, "-m", "prediction_service", "check-config"], capture_output=True,
                              text=True, timeout=60, env={**env, **changes, "PYTHONPATH": str(SERVICE_DIR)},
                              cwd=SERVICE_DIR)
    ok = check()
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration ok"), ok.stderr
    refused = check(PREDICTION_API_KEY="too-short")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [f"configuration error: {message}" for message in
                                                   [str(_error_of(env, PREDICTION_API_KEY="too-short"))]]


def _error_of(env, **changes) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_settings({**env, **changes})
    return err.value


def test_secrets_may_come_from_files_as_docker_secrets_do(env, tmp_path):
    """PREDICTION_<NAME>_FILE names a file holding the value (Docker secrets under /run/secrets/)."""
    key = tmp_path / "api_key"
    key.write_text("k" * 20 + "\n")
    env = {k: v for k, v in env.items() if k != "PREDICTION_API_KEY"}
    settings = load_settings({**env, "PREDICTION_API_KEY_FILE": str(key)})
    assert settings.api_key == "k" * 20  # the trailing newline is not part of it
    with pytest.raises(ConfigError, match="PREDICTION_API_KEY_FILE: cannot read .*/missing"):
        load_settings({**env, "PREDICTION_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="PREDICTION_API_KEY_FILE: is set together with PREDICTION_API_KEY"):
        load_settings({**env, "PREDICTION_API_KEY": "k" * 20, "PREDICTION_API_KEY_FILE": str(key)})
    short = tmp_path / "short"
    short.write_text("short")
    with pytest.raises(ConfigError, match="PREDICTION_API_KEY: API key must be at least 16"):
        load_settings({**env, "PREDICTION_API_KEY_FILE": str(short)})
