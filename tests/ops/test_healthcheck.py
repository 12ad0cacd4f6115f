"""roles/healthcheck against the real throwaway PostgreSQL and Redis (and the real service when it can be
started): passes when everything is up, fails ONCE naming every component that is down."""
from __future__ import annotations

import pytest

from harness.net import free_port


def run_vars(postgres, redis_port, **extra):
    return {"healthcheck_postgres_host": postgres.host, "healthcheck_postgres_port": postgres.port,
            "healthcheck_redis_host": "127.0.0.1", "healthcheck_redis_port": redis_port, **extra}


def test_passes_when_postgres_and_redis_are_up(postgres, redis_factory, playbook):
    redis = redis_factory()
    run = playbook("healthcheck.yml", run_vars(postgres, redis.port))
    assert run.rc == 0, run.failure_messages()
    assert run.changed == 0
    assert "PostgreSQL: UP" in run.stdout and "Redis: UP" in run.stdout


def test_read_only_checks_also_run_in_check_mode(postgres, redis_factory, playbook):
    redis = redis_factory()
    redis.stop()
    run = playbook("healthcheck.yml", run_vars(postgres, redis.port), check=True)
    assert run.rc != 0  # a dry run still checks for real, and still finds Redis down
    assert any("Redis" in m for m in run.failure_messages())


def test_redis_down_fails_with_a_message_naming_redis(postgres, redis_factory, playbook):
    redis = redis_factory()
    redis.stop()
    run = playbook("healthcheck.yml", run_vars(postgres, redis.port))
    assert run.rc != 0
    [message] = run.failure_messages()  # one failure, not one per check
    assert message.startswith("DOWN on localhost: Redis.")
    assert f"127.0.0.1:{redis.port}" in message and "Connection refused" in message
    assert "PostgreSQL" not in message  # it is up, so it is not blamed


def test_every_down_component_is_named_in_one_message(postgres, redis_factory, playbook):
    redis = redis_factory()
    redis.stop()
    dead_pg = free_port()
    run = playbook("healthcheck.yml", {**run_vars(postgres, redis.port), "healthcheck_postgres_port": dead_pg,
                                       "healthcheck_service_url": f"http://127.0.0.1:{free_port()}"})
    assert run.rc != 0
    [message] = run.failure_messages()
    for component in ("Service /health via service", "Service /ready via service", "PostgreSQL", "Redis"):
        assert component in message, message
    assert f"127.0.0.1:{dead_pg}" in message


def test_gateway_url_takes_precedence_over_the_service_url(postgres, redis_factory, playbook):
    redis = redis_factory()
    gw = free_port()
    run = playbook("healthcheck.yml", {**run_vars(postgres, redis.port),
                                       "healthcheck_service_url": "http://127.0.0.1:1",
                                       "healthcheck_gateway_url": f"https://127.0.0.1:{gw}/",
                                       "healthcheck_validate_certs": False})
    assert run.rc != 0
    [message] = run.failure_messages()
    assert "via gateway" in message and f"https://127.0.0.1:{gw}/health" in message
    assert "127.0.0.1:1/" not in message
    assert "Redis" not in message and "PostgreSQL" not in message


@pytest.fixture
def service(fresh_db, redis_factory, repo_root):
    """The real prediction service (python -m prediction_service) on a free port, migrated fresh database."""
    import os
    import subprocess
    import sys

    from harness.net import wait_for_port

    models = repo_root / "service/models"
    if not any(models.glob("*/*/model.onnx")):
        pytest.skip("no demo models in service/models (make model builds them; make test does so first)")
    redis = redis_factory()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(repo_root / "service"), "PREDICTION_TIMESCALE_URL": fresh_db,
           "PREDICTION_REDIS_URL": redis.url, "PREDICTION_MODEL_PATH": str(models),
           "PREDICTION_API_KEY": "healthcheck-test-api-key-0123456789", "PREDICTION_JWT_SECRET": "x" * 40,
           "PREDICTION_HOST": "127.0.0.1", "PREDICTION_PORT": str(port), "PREDICTION_LOG_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "prediction_service", "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.Popen([sys.executable, "-m", "prediction_service"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        yield {"url": f"http://127.0.0.1:{port}", "redis": redis}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_passes_against_the_real_service(postgres, service, playbook):
    run = playbook("healthcheck.yml", run_vars(postgres, service["redis"].port,
                                               healthcheck_service_url=service["url"]))
    assert run.rc == 0, run.failure_messages()
    for component in ("Service /health via service: UP", "Service /ready via service: UP", "PostgreSQL: UP",
                      "Redis: UP"):
        assert component in run.stdout
