"""Stack configuration paths the stack files do not take: operator-supplied secrets and bad values.

Each case runs the real program (stack_runner.py) on a real stack file plus overrides, the way
`pulumi config set [--secret]` would add them.
"""
from __future__ import annotations

import urllib.parse

import pytest

from pulumi_graph import ProgramFailed, is_secret, plain_strings, run_stack, stack_file

GIVEN = {
    "dbPassword": "p@ss/word:with%special&chars-0123456789",
    "appDbPassword": "app:p@ss/word with%special-0123456789",
    "monitorDbPassword": "monitor:p@ss/word%special-0123456789",
    "apiKey": "given-api-key-0123456789abcdef",
    "jwtSecret": "given-jwt-secret-0123456789abcdef",
    "grafanaAdminPassword": "given-grafana-admin-0123456789",
    "tlsCert": "-----BEGIN CERTIFICATE-----\ngiven-cert\n-----END CERTIFICATE-----\n",
    "tlsKey": "-----BEGIN PRIVATE KEY-----\ngiven-key-0123456789\n-----END PRIVATE KEY-----\n",
}


@pytest.fixture(scope="module")
def prod_with_secrets(tmp_path_factory):
    return run_stack("prod", tmp_path_factory.mktemp("prod-secrets"), {"secrets": GIVEN})


def test_configured_secrets_are_used_not_generated(prod_with_secrets):
    graph = prod_with_secrets
    assert not graph.of_type("random:index/randomPassword:RandomPassword")
    assert not [r for r in graph.resources if r.type.startswith("tls:")], "no self-signed cert when one is given"
    gw = graph.container("gateway-container")
    assert gw.upload("/etc/nginx/tls/server.crt") == GIVEN["tlsCert"]
    assert gw.upload("/etc/nginx/tls/server.key") == GIVEN["tlsKey"]
    assert graph.container("database-container").env()["POSTGRES_PASSWORD"] == GIVEN["dbPassword"]
    assert graph.container("monitoring-grafana").env()["GF_SECURITY_ADMIN_PASSWORD"] == GIVEN["grafanaAdminPassword"]
    for replica in graph.replicas():
        env = replica.env()
        assert env["PREDICTION_API_KEY"] == GIVEN["apiKey"]
        assert env["PREDICTION_JWT_SECRET"] == GIVEN["jwtSecret"]
        # The password is URL-encoded inside the DSN, so special characters survive.
        url = urllib.parse.urlsplit(env["PREDICTION_TIMESCALE_URL"])
        assert (url.username, urllib.parse.unquote(url.password)) == ("prediction_app", GIVEN["appDbPassword"])
        assert url.hostname == graph.container("database-container").get("name")
    migrate = graph.container("service-migrate").env()
    assert urllib.parse.unquote(urllib.parse.urlsplit(migrate["PREDICTION_TIMESCALE_URL"]).password) == GIVEN["dbPassword"]
    assert migrate["PREDICTION_APP_DB_PASSWORD"] == GIVEN["appDbPassword"]
    assert migrate["PREDICTION_MONITOR_DB_PASSWORD"] == GIVEN["monitorDbPassword"]
    assert graph.container("monitoring-postgres-exporter").env()["DATA_SOURCE_PASS"] == GIVEN["monitorDbPassword"]


def test_configured_secrets_stay_secret_everywhere(prod_with_secrets):
    graph = prod_with_secrets
    for r in graph.resources:
        for text in plain_strings(r.inputs):
            leaked = [k for k, v in GIVEN.items() if v in text or urllib.parse.quote(v, safe="") in text]
            assert not leaked, f"{r.type} {r.name} carries {leaked} in plain text"
    for name in ("database-container", "monitoring-grafana", "gateway-container", "service-migrate",
                 "monitoring-postgres-exporter"):
        assert any(is_secret(v) for v in graph.container(name).inputs.values()), name
    assert graph.exports["api_key"] == {"value": GIVEN["apiKey"], "secret": True}


def run_expecting_error(tmp_path, stack: str, overrides: dict) -> str:
    with pytest.raises(ProgramFailed) as info:
        run_stack(stack, tmp_path, overrides)
    return str(info.value)


def test_plain_text_secret_in_stack_config_is_refused(tmp_path):
    message = run_expecting_error(tmp_path, "staging", {"config": {"dbPassword": "oops-plain-text"}})
    assert "prediction-platform:dbPassword" in message and "pulumi config set --secret dbPassword" in message


def test_replicas_must_be_positive(tmp_path):
    service = dict(stack_file("staging")["service"], replicas=0)
    message = run_expecting_error(tmp_path, "staging", {"config": {"service": service}})
    assert "prediction-platform:service.replicas must be between 1 and 20, got 0" in message


def test_unknown_field_is_a_typo_not_a_default(tmp_path):
    service = dict(stack_file("prod")["service"], replica=3)
    message = run_expecting_error(tmp_path, "prod", {"config": {"service": service}})
    assert "prediction-platform:service has unknown field(s) replica" in message


def test_data_host_port_needs_a_non_internal_network(tmp_path):
    database = dict(stack_file("prod")["database"], hostPort=5432)
    message = run_expecting_error(tmp_path, "prod", {"config": {"database": database}})
    assert "database.hostPort is set but network.dataInternal is true" in message


def test_pinned_stacks_refuse_latest_tags(tmp_path):
    cache = dict(stack_file("prod")["cache"], tag="latest")
    message = run_expecting_error(tmp_path, "prod", {"config": {"cache": cache}})
    assert "prediction-platform:cache.tag is 'latest' but requirePinnedImages is true" in message


def test_tls_cert_without_key_is_refused(tmp_path):
    message = run_expecting_error(tmp_path, "staging", {"secrets": {"tlsCert": GIVEN["tlsCert"]}})
    assert "set both tlsCert and tlsKey" in message


def test_memory_is_megabytes(tmp_path):
    service = dict(stack_file("prod")["service"], memoryMb=1073741824)
    message = run_expecting_error(tmp_path, "prod", {"config": {"service": service}})
    assert "service.memoryMb is in megabytes" in message
