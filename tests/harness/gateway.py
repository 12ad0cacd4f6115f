"""What every gateway promises its clients, as reusable checks: errors nginx answers itself are the
API's JSON (`{"error":{"code","message"}}`, Retry-After on 502/503/504), and TLS meets Mozilla's
"intermediate" profile. Used against the local environment (tests/e2e), the rendered template
(tests/infra) and the Docker stacks: pass the host and port the gateway listens on.

Requests are written byte by byte over TLS, because several of them (a garbage request line, HTTP/2.0
in an HTTP/1 request line, a 20 kB URI) are exactly what HTTP client libraries refuse to send.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
from dataclasses import dataclass, field

HSTS = "max-age=63072000"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error(self) -> dict:
        """The JSON error object, after checking the shape every error must have."""
        assert self.headers.get("content-type") == "application/json", (
            f"{self.status} answered with Content-Type {self.headers.get('content-type')!r}: {self.body[:200]!r}")
        doc = json.loads(self.body)
        assert list(doc) == ["error"] and sorted(doc["error"]) == ["code", "message"], f"{self.status}: {doc}"
        assert doc["error"]["code"] and doc["error"]["message"], f"{self.status}: {doc}"
        return doc["error"]


def raw_request(host: str, port: int, request: bytes, *, tls: bool = True, server_name: str = "localhost",
                timeout: float = 10) -> Answer:
    """Send ``request`` as is (TLS without verification: the checks here are not about trust) and
    read the answer until the server closes the connection (requests should say Connection: close)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname=server_name)
    with sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"not an HTTP answer to {request[:60]!r}: {data[:200]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def _request(method: str, target: str, *headers: str, host: str = "localhost") -> bytes:
    return "\r\n".join([f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]).encode()


@dataclass
class Probe:
    """One request nginx answers itself, and the answer it must give."""
    name: str
    request: bytes
    status: int
    code: str
    headers: dict[str, str] = field(default_factory=dict)  # exact values expected
    tls: bool = True


def own_error_probes(server_name: str = "localhost") -> list[Probe]:
    """Every kind of error nginx produces on the API paths without asking a replica."""
    predict = "/api/v1/models/iris/predict"
    return [
        Probe("unknown path", _request("GET", "/no/such/path", host=server_name), 404, "not_found"),
        Probe("/metrics stays internal", _request("GET", "/metrics", host=server_name), 404, "not_found"),
        # Without `types {}` an .html URI would come back as text/html.
        Probe("unknown path with an extension", _request("GET", "/index.html", host=server_name), 404, "not_found"),
        Probe("TRACE on a GET endpoint", _request("TRACE", "/ready", host=server_name), 405, "method_not_allowed",
              {"allow": "GET"}),
        Probe("TRACE on predict", _request("TRACE", predict, host=server_name), 405, "method_not_allowed",
              {"allow": "POST"}),
        Probe("TRACE on an unknown path", _request("TRACE", "/nowhere", host=server_name), 404, "not_found"),
        # nginx refuses by the declared length, before any body byte is read.
        Probe("body over the gateway limit", _request("POST", predict, "Content-Type: application/json",
                                                      "Content-Length: 1073741824", host=server_name),
              413, "body_too_large"),
        Probe("URI too long", _request("GET", "/api/v1/models?" + "q" * 20000, host=server_name), 414, "uri_too_long"),
        Probe("headers too large", _request("GET", "/ready", "X-Padding: " + "p" * 40000, host=server_name),
              431, "headers_too_large"),
        Probe("garbage request line", b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        Probe("HTTP/2.0 in an HTTP/1 request line",
              f"GET /ready HTTP/2.0\r\nHost: {server_name}\r\n\r\n".encode(), 505, "http_version_not_supported"),
        Probe("unknown Transfer-Encoding", _request("POST", predict, "Transfer-Encoding: gzip", host=server_name),
              501, "not_implemented"),
        Probe("plain HTTP to the HTTPS port", _request("GET", "/ready", host=server_name), 400, "https_required",
              tls=False),
    ]


def check_own_errors(host: str, port: int, server_name: str = "localhost") -> list[str]:
    """Send every probe; return one line per broken promise (empty = all good)."""
    failures = []
    for probe in own_error_probes(server_name):
        try:
            answer = raw_request(host, port, probe.request, tls=probe.tls, server_name=server_name)
            assert answer.status == probe.status, f"status {answer.status}, expected {probe.status}: {answer.body[:200]!r}"
            error = answer.error()
            assert error["code"] == probe.code, f"code {error['code']!r}, expected {probe.code!r}"
            for name, value in probe.headers.items():
                assert answer.headers.get(name) == value, f"{name}: {answer.headers.get(name)!r}, expected {value!r}"
            if probe.tls:
                assert answer.headers.get("strict-transport-security") == HSTS, "no HSTS header on the error"
            assert "retry-after" not in answer.headers, "Retry-After on a client error"
        except (AssertionError, OSError, ValueError) as exc:
            failures.append(f"{probe.name}: {exc}")
    return failures


def check_upstream_error(host: str, port: int, status: int, code: str, server_name: str = "localhost",
                         path: str = "/ready") -> Answer:
    """GET ``path`` while the replicas are down (502) or too slow (504): JSON plus Retry-After."""
    answer = raw_request(host, port, _request("GET", path, host=server_name), server_name=server_name, timeout=60)
    assert answer.status == status, f"{path} answered {answer.status}, expected {status}: {answer.body[:200]!r}"
    assert answer.error()["code"] == code, answer.body
    assert answer.headers.get("retry-after", "").isdigit(), f"Retry-After missing or not seconds: {answer.headers}"
    assert answer.headers.get("strict-transport-security") == HSTS, answer.headers
    return answer


# --- TLS ---------------------------------------------------------------------------------------------------
# Mozilla's "intermediate" configuration, version 5.7 (ssl-config.mozilla.org, guidelines/5.7.json), as
# TLS scanners such as sslyze check it. sslyze itself cannot share our venv (it pins cryptography<47,
# which breaks community.crypto), so the same checks are made here with real handshakes: openssl
# s_client for TLS 1.3 suites and key-exchange groups, Python's ssl for TLS 1.2 suites and the certificate.
MOZILLA_INTERMEDIATE = {
    "tls_versions": {"TLSv1.2", "TLSv1.3"},
    "ciphers": {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
                "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"},
    "ciphersuites": {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"},
    "certificate_curves": {"secp256r1", "secp384r1"},
    "certificate_signature_hashes": {"sha256", "sha384", "sha512"},
    "rsa_key_size": 2048,
    "maximum_certificate_lifespan_days": 366,
    "hsts_min_age": 63072000,
}
MOZILLA_INTERMEDIATE_CURVES = ("X25519", "prime256v1", "secp384r1")
REFUSED_CURVES = ("X448", "secp521r1", "ffdhe2048", "ffdhe3072")
ALL_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                    "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")


def _openssl_handshake(host: str, port: int, server_name: str, *args: str) -> str | None:
    """The negotiated cipher of an `openssl s_client` handshake with ``args``, or None when refused."""
    result = subprocess.run(["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", server_name,
                             "-brief", *args], input="", capture_output=True, text=True, timeout=30)
    out = result.stdout + result.stderr
    if result.returncode != 0 or "CONNECTION ESTABLISHED" not in out:
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Ciphersuite:")), "?")


def handshake_with_group(host: str, port: int, group: str, server_name: str = "localhost",
                         version: str = "-tls1_3") -> bool:
    """Whether a handshake offering only ``group`` for the key exchange succeeds."""
    return _openssl_handshake(host, port, server_name, version, "-groups", group) is not None


def _tls12_handshake(host: str, port: int, server_name: str, ciphers: str) -> tuple[str, bytes] | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    except ssl.SSLError:
        return None  # this OpenSSL build cannot offer it at all
    try:
        with socket.create_connection((host, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.cipher()[0], tls.getpeercert(binary_form=True)
    except (ssl.SSLError, ConnectionError):
        return None


def mozilla_intermediate_issues(host: str, port: int, server_name: str = "localhost") -> dict[str, str]:
    """What differs from Mozilla's "intermediate" profile: protocols, suites, groups, cipher order,
    certificate key/signature/lifespan, HSTS. Empty = compliant. The trust chain is not checked:
    a self-signed certificate cannot chain to a public root by design."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    m = MOZILLA_INTERMEDIATE
    issues: dict[str, str] = {}
    versions = {name for name, flag in [("TLSv1", "-tls1"), ("TLSv1.1", "-tls1_1"), ("TLSv1.2", "-tls1_2"),
                                        ("TLSv1.3", "-tls1_3")]
                if _openssl_handshake(host, port, server_name, flag, "-cipher", "ALL:@SECLEVEL=0") is not None}
    if versions != m["tls_versions"]:
        issues["tls_versions"] = f"accepts {sorted(versions)}, should accept exactly {sorted(m['tls_versions'])}"

    all_tls12 = subprocess.run(["openssl", "ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"], capture_output=True,
                               text=True, check=True).stdout.strip().split(":")
    accepted, cert_der = set(), None
    for name in all_tls12:
        if (answer := _tls12_handshake(host, port, server_name, name)) is not None:
            accepted.add(answer[0])
            cert_der = answer[1]
    if not accepted or accepted - m["ciphers"]:
        issues["ciphers"] = f"TLS 1.2 suites {sorted(accepted - m['ciphers']) or 'none'} accepted; allowed: {sorted(m['ciphers'])}"

    suites = {s for s in ALL_TLS13_SUITES if _openssl_handshake(host, port, server_name, "-tls1_3", "-ciphersuites", s)}
    if not suites or suites - m["ciphersuites"]:
        issues["ciphersuites"] = f"TLS 1.3 suites {sorted(suites)} accepted; allowed: {sorted(m['ciphersuites'])}"

    groups = {g for g in MOZILLA_INTERMEDIATE_CURVES + REFUSED_CURVES for v in ("-tls1_2", "-tls1_3")
              if handshake_with_group(host, port, g, server_name, v)}
    if groups != set(MOZILLA_INTERMEDIATE_CURVES):
        issues["tls_curves"] = f"key exchange groups {sorted(groups)}; should be exactly {list(MOZILLA_INTERMEDIATE_CURVES)}"

    # server_preferred_order false: the server takes the client's first choice.
    pair = ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    chosen = [(_tls12_handshake(host, port, server_name, ":".join(order)) or ("none",))[0]
              for order in (pair, pair[::-1])]
    if chosen != pair:
        issues["server_preferred_order"] = f"offered {pair} both ways, server chose {chosen}: should follow the client"

    if cert_der is None:
        issues["certificate"] = "no TLS 1.2 handshake succeeded, no certificate to check"
        return issues
    cert = x509.load_der_x509_certificate(cert_der)
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in m["certificate_curves"]:
        issues["certificate_curves"] = f"certificate key on {key.curve.name}; allowed {sorted(m['certificate_curves'])}"
    elif isinstance(key, rsa.RSAPublicKey) and key.key_size < m["rsa_key_size"]:
        issues["rsa_key_size"] = f"RSA key of {key.key_size} bits; at least {m['rsa_key_size']}"
    elif not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        issues["certificate_types"] = f"certificate key {type(key).__name__}; should be ECDSA or RSA"
    if cert.signature_hash_algorithm is None or cert.signature_hash_algorithm.name not in m["certificate_signature_hashes"]:
        issues["certificate_signatures"] = f"signed with {cert.signature_hash_algorithm}"
    lifespan = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    if lifespan > m["maximum_certificate_lifespan_days"]:
        issues["maximum_certificate_lifespan"] = f"certificate lives {lifespan} days; at most {m['maximum_certificate_lifespan_days']}"

    hsts = raw_request(host, port, _request("GET", "/no/such/path", host=server_name),
                       server_name=server_name).headers.get("strict-transport-security", "")
    max_age = int(hsts.split("max-age=")[1].split(";")[0]) if "max-age=" in hsts else 0
    if max_age < m["hsts_min_age"]:
        issues["hsts_min_age"] = f"Strict-Transport-Security {hsts!r}; max-age at least {m['hsts_min_age']}"
    return issues
