"""The gateway's certificate: valid for the host name, not about to expire, key private, TLS 1.2+."""
import datetime

import pytest

from host_expectations import run_ok


@pytest.fixture(scope="module")
def tls(expected, localenv):
    cert = expected.get("nginx_gateway_tls_certificate") or f"{localenv['tls_dir']}/cert.pem"
    key = expected.get("nginx_gateway_tls_certificate_key") or f"{localenv['tls_dir']}/key.pem"
    return {"cert": cert, "key": key, "name": localenv["hostname"], "port": localenv["https_port"]}


def test_key_is_private(host, tls):
    key = host.file(tls["key"])
    assert key.is_file, f"{tls['key']} is missing"
    assert key.mode == 0o600, f"{tls['key']} has mode {oct(key.mode)}; a private key must be 0600"


def test_certificate_names_the_host(host, tls):
    sans = run_ok(host, "openssl x509 -in %s -noout -ext subjectAltName", tls["cert"])
    assert f"DNS:{tls['name']}" in sans, f"certificate SANs {sans.strip()!r} do not include DNS:{tls['name']}"


def test_certificate_valid_for_30_more_days(host, tls):
    r = host.run("openssl x509 -in %s -noout -checkend 2592000", tls["cert"])
    assert r.rc == 0, f"{tls['cert']} expires within 30 days (or already has): {r.stdout.strip()}"


def test_key_matches_certificate(host, tls):
    cert_pub = run_ok(host, "openssl x509 -in %s -noout -pubkey", tls["cert"])
    key_pub = run_ok(host, "openssl pkey -in %s -pubout", tls["key"])
    assert cert_pub == key_pub, f"{tls['key']} is not the key of {tls['cert']}"


def test_gateway_presents_it_and_verifies_for_the_name(host, tls):
    r = host.run("openssl s_client -connect 127.0.0.1:%s -servername %s -verify_hostname %s -CAfile %s "
                 "-verify_return_error -brief </dev/null", str(tls["port"]), tls["name"], tls["name"], tls["cert"])
    out = r.stdout + r.stderr
    assert r.rc == 0 and "Verification: OK" in out, f"TLS handshake on port {tls['port']} failed:\n{out}"


def test_gateway_refuses_tls_1_1(host, tls):
    r = host.run("openssl s_client -connect 127.0.0.1:%s -tls1_1 </dev/null", str(tls["port"]))
    assert r.rc != 0, "the gateway accepted TLS 1.1; only TLS 1.2+ is allowed"


def test_generated_certificate_lifespan_within_mozilla_limit(host, tls, expected):
    if expected.get("nginx_gateway_tls_certificate"):
        pytest.skip("the certificate is given, not generated here")
    dates = dict(line.split("=", 1) for line in run_ok(host, "openssl x509 -in %s -noout -startdate -enddate",
                                                       tls["cert"]).splitlines())
    parse = lambda s: datetime.datetime.strptime(s.strip(), "%b %d %H:%M:%S %Y %Z")  # noqa: E731
    days = (parse(dates["notAfter"]) - parse(dates["notBefore"])).days
    limit = min(int(expected.get("nginx_gateway_tls_valid_days", 366)), 366)
    assert days <= limit, (f"{tls['cert']} is valid for {days} days; Mozilla's intermediate profile allows at most "
                           f"366 and the role issues {limit}: make up re-issues it")
