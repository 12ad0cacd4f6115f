"""The shared nginx and Prometheus templates, rendered for this machine and checked by the real tools.

They are rendered the way Ansible's `template` module renders them (core Jinja2, trim_blocks,
undefined variables are errors) with local values: 127.0.0.1 upstreams, a temp prefix, a
self-signed certificate from openssl. Then `nginx -t`, `promtool check config`, and a live nginx
in front of two tiny HTTP backends to check the behaviour the config promises.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jinja2
import pytest
import yaml

from harness.net import free_port
from harness.waiting import wait_until
from harness.gateway import check_own_errors, check_upstream_error, mozilla_intermediate_issues, raw_request

ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = ROOT / "roles/nginx_gateway/templates/nginx.conf.j2"
PROMETHEUS_TEMPLATE = ROOT / "roles/prometheus_server/templates/prometheus.yml.j2"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ANSIBLE = ROOT / ".venv/bin/ansible"


def render(template: Path, **variables) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, keep_trailing_newline=True)
    return env.get_template(template.name).render(**variables)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return cert, key


def http2_in_listen(binary: str = NGINX) -> bool:
    """Whether this nginx predates the `http2` directive (1.25.1), as roles/nginx_gateway finds out."""
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", subprocess.run([binary, "-v"], capture_output=True, text=True).stderr)
    return tuple(map(int, found.groups())) < (1, 25, 1)


def nginx_vars(tmp: Path, upstreams: list[str], https_port: int, http_port: int) -> dict:
    cert, key = self_signed(tmp)
    (tmp / "temp").mkdir(exist_ok=True)
    return {
        "nginx_pid_path": str(tmp / "nginx.pid"),
        "nginx_error_log": str(tmp / "error.log"),
        "nginx_access_log": str(tmp / "access.log"),
        "nginx_temp_dir": str(tmp / "temp"),
        "nginx_worker_processes": 1,
        "nginx_server_name": "localhost",
        "nginx_https_port": https_port,
        "nginx_http_port": http_port,
        "nginx_ssl_certificate": str(cert),
        "nginx_ssl_certificate_key": str(key),
        "nginx_upstream_servers": upstreams,
        "nginx_upstream_keepalive": 8,
        "nginx_http2_in_listen": http2_in_listen(),
    }


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True)


# --- nginx -t ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "rest+grpc"])
def test_nginx_config_passes_nginx_t(tmp_path, grpc):
    variables = nginx_vars(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"],
                           free_port(), free_port())
    if grpc:
        variables["nginx_grpc_upstream_servers"] = ["127.0.0.1:18101", "127.0.0.1:18102", "127.0.0.1:18103"]
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(NGINX_TEMPLATE, **variables))
    result = nginx_test(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_template_requires_its_variables(tmp_path):
    with pytest.raises(jinja2.UndefinedError, match="nginx_upstream_servers"):
        variables = nginx_vars(tmp_path, [], 8443, 8080)
        del variables["nginx_upstream_servers"]
        render(NGINX_TEMPLATE, **variables)


# --- live gateway -----------------------------------------------------------------------------------------

class Backend:
    """A replica stand-in: answers every path with its own name and records each request."""

    def __init__(self, name: str, delay: float = 0, port: int = 0, host: str = "127.0.0.1"):
        self.name = name
        self.requests: list[dict] = []
        self.connections: list[socket.socket] = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                backend.connections.append(self.connection)

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                received = self.rfile.read(length)
                time.sleep(delay)
                backend.requests.append({"path": self.path, "method": self.command, "version": self.request_version,
                                         "connection": self.headers.get("Connection"), "peer": self.client_address,
                                         "body": received})
                body = json.dumps({"backend": backend.name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Stop as a process would: no more listening, and the gateway's kept-alive connections dropped."""
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start_gateway(tmp_path: Path, backends: list[Backend], image: str | None = None, **overrides):
    """nginx from the shared template in front of ``backends``; stopped by the returned function.
    ``image``: run the nginx of that Docker image (host network, ``tmp_path`` mounted) instead of the
    host's, for what the Debian package's 1.22 lacks (upstream ``resolve``)."""
    https_port, http_port = free_port(), free_port()
    variables = nginx_vars(tmp_path, [b.address for b in backends], https_port, http_port)
    variables["nginx_https_redirect_port"] = https_port
    if image is not None:
        variables["nginx_http2_in_listen"] = False  # the image's nginx is 1.27.3
    variables.update(overrides)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(NGINX_TEMPLATE, **variables))
    command = [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"), "-g", "daemon off;"]
    container = f"t{os.getpid():x}-gateway-{https_port}"
    if image is not None:
        command = ["docker", "run", "--rm", "--name", container, "--network", "host",
                   "-v", f"{tmp_path}:{tmp_path}", "--entrypoint", "nginx", image, *command[1:]]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60  # a liveness bound: nginx (or its container) may start slowly under load
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"nginx did not listen: {(tmp_path / 'error.log').read_text()}")

    def stop():
        if image is not None:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        proc.terminate()
        proc.wait(timeout=10)
        for b in backends:
            try:
                b.stop()
            except OSError:
                pass

    return {"backends": backends, "https": https_port, "http": http_port, "tmp": tmp_path, "stop": stop}


@pytest.fixture
def gateway(tmp_path):
    gw = start_gateway(tmp_path, [Backend("a"), Backend("b")])
    yield gw
    gw["stop"]()


def client_context(max_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions; the server must refuse
    return ctx


def fetch(url: str, data: bytes | None = None, ctx: ssl.SSLContext | None = None, timeout: float = 5):
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx or client_context()),
                                         NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_gateway_balances_api_over_every_upstream_with_keepalive(gateway):
    base = f"https://127.0.0.1:{gateway['https']}"
    seen = [json.loads(fetch(f"{base}/api/v1/models")[2])["backend"] for _ in range(10)]
    assert set(seen) == {"a", "b"}
    for b in gateway["backends"]:
        assert all(r["version"] == "HTTP/1.1" and r["connection"] is None for r in b.requests)
        # Keep-alive: the requests to one replica share connections instead of opening one each.
        assert len({r["peer"] for r in b.requests}) < len(b.requests)
    for path in ("/health", "/v2", "/v2/health/ready", "/v2/models/m/infer"):  # the V2 protocol too
        status, _, body = fetch(f"{base}{path}")
        assert status == 200 and json.loads(body)["path"] == path, path


def test_gateway_hides_metrics_and_unknown_paths(gateway):
    base = f"https://127.0.0.1:{gateway['https']}"
    for path in ("/metrics", "/metrics/", "/api/../metrics", "/", "/admin", "/v2x", "/v2/../metrics"):
        status, _, _ = fetch(f"{base}{path}")
        assert status == 404, path
    assert not [r for b in gateway["backends"] for r in b.requests if "metrics" in r["path"]]


def test_gateway_redirects_http_to_https(gateway):
    status, headers, _ = fetch(f"http://127.0.0.1:{gateway['http']}/api/v1/models?x=1")
    assert status == 301
    assert headers["Location"] == f"https://127.0.0.1:{gateway['https']}/api/v1/models?x=1"
    assert not [r for b in gateway["backends"] for r in b.requests], "nothing is proxied over plain HTTP"


def test_gateway_speaks_tls_1_2_and_refuses_1_1(gateway):
    # Behaviour only: the AEAD-only cipher list alone would also refuse TLS 1.1, so the
    # `ssl_protocols TLSv1.2 TLSv1.3` directive itself is asserted in test_pulumi_stacks.
    base = f"https://127.0.0.1:{gateway['https']}"
    assert fetch(f"{base}/health", ctx=client_context(ssl.TLSVersion.TLSv1_2))[0] == 200
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        fetch(f"{base}/health", ctx=client_context(ssl.TLSVersion.TLSv1_1))


def test_gateway_retries_post_on_a_dead_replica(gateway):
    a, b = gateway["backends"]
    b.stop()
    base = f"https://127.0.0.1:{gateway['https']}"
    for _ in range(6):
        status, _, body = fetch(f"{base}/api/v1/models/m/predict", data=b'{"instances": [[1]]}')
        assert status == 200 and json.loads(body)["backend"] == "a"
    assert len([r for r in a.requests if r["method"] == "POST"]) == 6


def test_gateway_serves_when_every_replica_is_marked_failed_but_one_answers(tmp_path):
    # A roll-out's shape: b refuses while it starts (3 refusals mark it failed for fail_timeout=10s),
    # then listens, and a stops. b is the only replica answering while nginx still counts it failed.
    a, b = Backend("a"), Backend("b")
    port_b = int(b.address.rsplit(":", 1)[1])
    b.stop()
    gw = start_gateway(tmp_path, [a, b])
    base = f"https://127.0.0.1:{gw['https']}"
    try:
        before = [fetch(f"{base}/api/v1/models") for _ in range(10)]
        assert [(s, json.loads(body)["backend"]) for s, _, body in before] == [(200, "a")] * 10
        b = Backend("b", port=port_b)
        gw["backends"].append(b)
        a.stop()
        after = [fetch(f"{base}/api/v1/models/m/predict", data=b'{"instances": [[1]]}') for _ in range(6)]
        assert [(s, json.loads(body).get("backend")) for s, _, body in after] == [(200, "b")] * 6, after
    finally:
        gw["stop"]()


GATEWAY_IMAGE = "nginx:1.27.3"  # the stacks' gateway image (tests/docker builds it)


def gateway_image() -> str:
    """The stacks' nginx image, for the upstream ``resolve`` the host's nginx lacks; without it, a
    skip (a failure under CI, where the Docker suite has built it before this one runs)."""
    found = subprocess.run(["docker", "image", "inspect", GATEWAY_IMAGE], capture_output=True) \
        if shutil.which("docker") else None
    if found is None or found.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{GATEWAY_IMAGE} is not on the Docker engine; the Docker suite builds it (make test-docker)")
        pytest.skip(f"needs {GATEWAY_IMAGE} on a Docker engine (make test-docker builds it)")
    return GATEWAY_IMAGE


class TinyDns:
    """A UDP DNS server answering A queries for one name with ``addresses`` (changeable), NXDOMAIN
    for any other: Docker's embedded DNS as the gateway sees it when replicas come and go."""

    def __init__(self, name: str, addresses: list[str]):
        self.name, self.addresses = name, list(addresses)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, client = self.sock.recvfrom(512)
            except OSError:
                return
            qid, i, labels = data[:2], 12, []
            while data[i]:
                labels.append(data[i + 1:i + 1 + data[i]].decode())
                i += 1 + data[i]
            qtype = int.from_bytes(data[i + 1:i + 3], "big")
            question = data[12:i + 5]
            known = ".".join(labels) == self.name
            answers = self.addresses if known and qtype == 1 else []
            header = qid + (0x8180 if known else 0x8183).to_bytes(2, "big") + (1).to_bytes(2, "big") \
                + len(answers).to_bytes(2, "big") + bytes(4)
            # Each answer: pointer to the question's name, type A, class IN, TTL 1 s, 4 bytes.
            records = b"".join(b"\xc0\x0c" + bytes.fromhex("00010001000000010004") + socket.inet_aton(a)
                               for a in answers)
            self.sock.sendto(header + question + records, client)

    def close(self):
        self.sock.close()


def test_gateway_retries_a_request_whose_replica_vanished_while_addresses_changed(tmp_path):
    # Two replicas behind one name. One stops answering (a container gone: its address takes
    # requests nowhere) and leaves the DNS answer while requests wait on it. nginx re-resolves,
    # and each waiting request's next attempt finds the upstream changed: nginx answers 502
    # unless the gateway gives it another pass.
    hung = socket.socket()
    hung.bind(("127.0.0.2", 0))
    hung.listen(64)
    port = hung.getsockname()[1]
    waiting: list[socket.socket] = []  # connections the hung replica accepted and never answers

    def accept_forever():
        while True:
            try:
                waiting.append(hung.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    live = Backend("live", host="127.0.0.3", port=port)
    dns = TinyDns("replicas.test", ["127.0.0.2", "127.0.0.3"])
    gw = start_gateway(tmp_path, [live], image=gateway_image(), nginx_upstream_servers=[f"replicas.test:{port}"],
                       nginx_resolver=dns.address, nginx_proxy_read_timeout="2s")
    base = f"https://127.0.0.1:{gw['https']}"
    try:
        wait_until(lambda: fetch(f"{base}/health")[0] == 200, 10, "nginx to resolve replicas.test")
        already = len(waiting)
        results = []
        workers = [threading.Thread(target=lambda i=i: results.append(
            fetch(f"{base}/api/v1/models/m/predict", data=b'{"instances": [[%d]]}' % i, timeout=20)))
            for i in range(6)]
        for w in workers:
            w.start()
        # Only once a request waits on the hung replica does the change of addresses matter.
        wait_until(lambda: len(waiting) > already, 10, "a request to wait on the hung replica", interval=0.05)
        dns.addresses = ["127.0.0.3"]
        for w in workers:
            w.join()
        assert sorted(status for status, _, _ in results) == [200] * 6, \
            [(s, b[:120]) for s, _, b in results]
        # Each POST reached the live replica with its body, the ones sent again included.
        bodies = {r["body"] for r in live.requests if r["method"] == "POST"}
        assert bodies == {b'{"instances": [[%d]]}' % i for i in range(6)}
    finally:
        gw["stop"]()
        dns.close()
        hung.shutdown(socket.SHUT_RDWR)  # ends the accepting thread
        hung.close()
        for conn in waiting:
            conn.close()


# --- errors nginx answers itself, TLS profile (the checks tests/e2e runs on the local environment) ----------

def test_gateway_own_errors_are_api_json(gateway):
    assert check_own_errors("127.0.0.1", gateway["https"]) == []
    assert not [r for b in gateway["backends"] for r in b.requests], "nginx answered these itself"


def test_gateway_own_errors_on_v2_paths_take_the_protocol_shape(gateway):
    """The Open Inference Protocol's error body, {"error": "<message>"}, on /v2 paths."""
    trace = raw_request("127.0.0.1", gateway["https"],
                        b"TRACE /v2/models/iris/infer HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert (trace.status, trace.headers.get("allow")) == (405, "POST")
    assert json.loads(trace.body) == {"error": "method TRACE not allowed; use POST"}
    big = raw_request("127.0.0.1", gateway["https"],
                      b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      b"Content-Length: 3000000\r\n\r\n")
    assert big.status == 413 and isinstance(json.loads(big.body)["error"], str), big
    api = raw_request("127.0.0.1", gateway["https"],
                      b"TRACE /api/v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert json.loads(api.body)["error"]["code"] == "method_not_allowed"  # /api keeps the API's shape


def test_gateway_every_replica_down_is_json_502_with_retry_after(gateway):
    for b in gateway["backends"]:
        b.stop()
    check_upstream_error("127.0.0.1", gateway["https"], 502, "upstream_unavailable")


def test_gateway_slow_replicas_are_json_504_with_retry_after(tmp_path):
    gw = start_gateway(tmp_path, [Backend("slow-a", delay=3), Backend("slow-b", delay=3)],
                       nginx_proxy_read_timeout="1s")
    try:
        check_upstream_error("127.0.0.1", gw["https"], 504, "upstream_timeout")
    finally:
        gw["stop"]()


def _service_routes() -> dict[str, str]:
    """Path pattern -> methods of every route the service serves through the gateway (not /metrics)."""
    from aiohttp import web

    from prediction_service.app import add_routes
    app = web.Application()
    add_routes(app)
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical
        if path != "/metrics" and route.method != "HEAD":
            routes.setdefault(path, set()).add(route.method)
    return {path: ", ".join(sorted(methods)) for path, methods in routes.items()}


def test_gateway_allowed_methods_are_the_service_routes(gateway):
    conf = (gateway["tmp"] / "nginx.conf").read_text()
    block = re.search(r"map \$uri \$gateway_allowed_methods \{(.*?)\}", conf, re.S).group(1)
    in_map = {k: v.rstrip(";") for k, v in (line.split(None, 1) for line in block.strip().splitlines())
              if k != "default"}
    routes = _service_routes()
    as_regex = {re.sub(r"\{[^}]+\}", "[^/]+", p) for p in routes}
    assert {k.lstrip("~^").rstrip("$") for k in in_map} == as_regex, (in_map, routes)
    # And nginx answers with them: each route's methods in Allow, a placeholder filled in.
    for path, methods in routes.items():
        target = re.sub(r"\{[^}]+\}", "iris", path)
        answer = raw_request("127.0.0.1", gateway["https"], f"TRACE {target} HTTP/1.1\r\nHost: localhost\r\n"
                             "Connection: close\r\n\r\n".encode())
        assert (answer.status, answer.headers.get("allow")) == (405, methods), (path, answer)


def test_gateway_meets_mozilla_intermediate(gateway):
    assert mozilla_intermediate_issues("127.0.0.1", gateway["https"]) == {}


# --- Prometheus -------------------------------------------------------------------------------------------

def prometheus_vars(rule_files: list[str], targets: list[dict]) -> dict:
    return {
        "prometheus_scrape_interval": "15s",
        "prometheus_evaluation_interval": "15s",
        "prometheus_external_labels": {"environment": "test"},
        "prometheus_rule_files": rule_files,
        "prometheus_service_targets": targets,
        "prometheus_node_exporter_targets": ["127.0.0.1:9100"],
        "prometheus_self_target": "127.0.0.1:9090",
        "prometheus_postgres_exporter_targets": ["127.0.0.1:9187"],
        "prometheus_redis_exporter_targets": ["127.0.0.1:9121"],
        # A mountpoint with regex metacharacters: the relabel rule must match it literally.
        "prometheus_database_mountpoint": "/srv/db.data+1",
    }


def test_prometheus_config_passes_promtool_with_the_rule_files(tmp_path):
    rules = sorted((ROOT / "dashboards/alerts").glob("*.rules.yml"))
    assert rules, "dashboards/alerts/*.rules.yml should exist (ops engineer's files)"
    targets = [{"target": f"127.0.0.1:{18001 + i}", "instance": f"service-{i + 1}"} for i in range(3)]
    conf = tmp_path / "prometheus.yml"
    conf.write_text(render(PROMETHEUS_TEMPLATE, **prometheus_vars([str(r) for r in rules], targets)))
    result = subprocess.run([PROMTOOL, "check", "config", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for rule in rules:
        assert "SUCCESS" in result.stdout and rule.name in result.stdout
    parsed = yaml.safe_load(conf.read_text())
    jobs = {j["job_name"]: j for j in parsed["scrape_configs"]}
    assert set(jobs) == {"prediction_service", "node", "prometheus", "postgres", "redis"}
    assert jobs["postgres"]["static_configs"] == [{"targets": ["127.0.0.1:9187"]}]
    assert jobs["redis"]["static_configs"] == [{"targets": ["127.0.0.1:9121"]}]
    [relabel] = jobs["node"]["metric_relabel_configs"]
    assert (relabel["source_labels"], relabel["target_label"], relabel["replacement"]) == (
        ["__name__", "mountpoint"], "volume", "database")
    assert re.fullmatch(relabel["regex"], "node_filesystem_avail_bytes;/srv/db.data+1")
    assert not re.fullmatch(relabel["regex"], "node_filesystem_avail_bytes;/srv/dbXdata1")
    assert not re.fullmatch(relabel["regex"], "node_cpu_seconds_total;/srv/db.data+1")
    assert [sc["labels"]["instance"] for sc in jobs["prediction_service"]["static_configs"]] == [
        "service-1", "service-2", "service-3"]


def test_prometheus_optional_jobs_are_omitted_when_empty(tmp_path):
    variables = prometheus_vars([], [{"target": "127.0.0.1:8000", "instance": "only"}])
    variables["prometheus_node_exporter_targets"] = []
    for optional in ("prometheus_self_target", "prometheus_postgres_exporter_targets",
                     "prometheus_redis_exporter_targets", "prometheus_database_mountpoint"):
        del variables[optional]
    conf = tmp_path / "prometheus.yml"
    conf.write_text(render(PROMETHEUS_TEMPLATE, **variables))
    parsed = yaml.safe_load(conf.read_text())
    assert [j["job_name"] for j in parsed["scrape_configs"]] == ["prediction_service"]
    assert parsed["rule_files"] == []
    # The exporters' jobs do not depend on a node-exporter being scraped.
    variables["prometheus_postgres_exporter_targets"] = ["127.0.0.1:9187"]
    conf.write_text(render(PROMETHEUS_TEMPLATE, **variables))
    assert [j["job_name"] for j in yaml.safe_load(conf.read_text())["scrape_configs"]] == ["prediction_service", "postgres"]
    result = subprocess.run([PROMTOOL, "check", "config", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Ansible renders the same text ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not ANSIBLE.exists(), reason="ansible is installed by `make test` (requirements.txt)")
@pytest.mark.parametrize("template", [NGINX_TEMPLATE, PROMETHEUS_TEMPLATE], ids=["nginx", "prometheus"])
def test_ansible_template_module_renders_the_same_text(tmp_path, template):
    if template == NGINX_TEMPLATE:
        variables = nginx_vars(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], 8443, 8080)
        variables["nginx_grpc_upstream_servers"] = ["127.0.0.1:18101", "127.0.0.1:18102"]
    else:
        variables = prometheus_vars(["/etc/prometheus/rules/a.rules.yml"],
                                    [{"target": "127.0.0.1:18001", "instance": "service-1"}])
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    dest = tmp_path / "ansible.out"
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    result = subprocess.run(
        [str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local", "-m", "template",
         "-a", f"src={template} dest={dest}", "-e", f"@{tmp_path / 'vars.json'}",
         "-e", f"ansible_python_interpreter={sys.executable}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dest.read_text() == render(template, **variables)


# --- gRPC through the gateway (HTTP/2 by ALPN, grpc_pass to each replica's gRPC port) --------------------

SERVICE = "/inference.GRPCInferenceService"
LIVE = b"\x08\x01"  # ServerLiveResponse(live=True), serialised


class GrpcBackend:
    """A replica's gRPC port stand-in: answers every call of the protocol's service with ``LIVE``
    (after ``delay`` seconds), names itself in the trailing metadata and records each call."""

    def __init__(self, name: str, delay: float = 0):
        import grpc
        from concurrent.futures import ThreadPoolExecutor

        self.name, self.calls = name, []
        backend = self

        def answering(method: str):
            def answer(request: bytes, context):
                backend.calls.append({"method": method, "metadata": dict(context.invocation_metadata()),
                                      "request": request})
                time.sleep(delay)
                context.set_trailing_metadata((("backend", backend.name),))
                return LIVE
            return grpc.unary_unary_rpc_method_handler(answer)

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                return answering(details.method) if details.method.startswith(SERVICE + "/") else None

        self.server = grpc.server(ThreadPoolExecutor(8), handlers=[Handler()],
                                  options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 << 20)])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self):
        self.server.stop(None)


def grpc_call(port: int, cert: Path, method: str = f"{SERVICE}/ServerLive", request: bytes = b"",
              metadata=(), timeout: float = 10):
    """One unary call over TLS (ALPN h2) to the gateway: (response, trailing metadata), or the RpcError."""
    import grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials,
                             options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        try:
            response, call = channel.unary_unary(method).with_call(request, metadata=metadata, timeout=timeout)
            return response, dict(call.trailing_metadata())
        except grpc.RpcError as err:
            return err


def start_grpc_gateway(tmp_path: Path, grpc_backends: list[GrpcBackend], image: str | None = None, **overrides):
    gw = start_gateway(tmp_path, [Backend("rest")], image=image,
                       nginx_grpc_upstream_servers=[b.address for b in grpc_backends], **overrides)
    stop_rest = gw["stop"]

    def stop():
        stop_rest()
        for b in grpc_backends:
            b.stop()

    return {**gw, "stop": stop, "grpc_backends": grpc_backends, "cert": tmp_path / "server.crt"}


@pytest.mark.parametrize("nginx", ["host", "image"], ids=["host-nginx", "gateway-image-1.27.3"])
def test_gateway_carries_grpc_over_tls_to_every_grpc_upstream(tmp_path, nginx):
    """HTTP/2 is negotiated by ALPN on the HTTPS port; REST keeps working there over HTTP/1.1."""
    image = gateway_image() if nginx == "image" else None
    gw = start_grpc_gateway(tmp_path, [GrpcBackend("a"), GrpcBackend("b")], image=image)
    try:
        answers = [grpc_call(gw["https"], gw["cert"], metadata=(("x-api-key", "k"),)) for _ in range(8)]
        assert {a[0] for a in answers} == {LIVE}, answers
        assert {a[1]["backend"] for a in answers} == {"a", "b"}
        calls = [c for b in gw["grpc_backends"] for c in b.calls]
        assert all(c["method"] == f"{SERVICE}/ServerLive" and c["metadata"]["x-api-key"] == "k" for c in calls)
        ctx = ssl.create_default_context(cafile=str(gw["cert"]))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", gw["https"])) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
        status, _, body = fetch(f"https://127.0.0.1:{gw['https']}/api/v1/models")
        assert status == 200 and json.loads(body)["backend"] == "rest"
    finally:
        gw["stop"]()


@pytest.mark.parametrize("nginx", ["host", "image"], ids=["host-nginx", "gateway-image-1.27.3"])
def test_gateway_own_grpc_errors_are_grpc_statuses(tmp_path, nginx):
    """What nginx answers itself to a gRPC call is a gRPC status with a message, never HTML or JSON."""
    import grpc

    slow = GrpcBackend("slow", delay=3)
    gw = start_grpc_gateway(tmp_path, [slow], image=gateway_image() if nginx == "image" else None,
                            nginx_proxy_read_timeout="1s")
    port, cert = gw["https"], gw["cert"]
    try:
        other = grpc_call(port, cert, "/grpc.health.v1.Health/Check")
        assert other.code() == grpc.StatusCode.UNIMPLEMENTED and "inference.GRPCInferenceService" in other.details()
        # On the wire as a gRPC server ends a failed call: 200, application/grpc, the status in trailers
        # (gRPC-Go clients such as grpcurl take any other HTTP status, or no Content-Type, as UNKNOWN).
        dump = subprocess.run(["curl", "-s", "--http2", "--cacert", str(cert), "-X", "POST", "-D", "-", "-o", "/dev/null",
                               "-H", "content-type: application/grpc", "--data-binary", "",
                               f"https://localhost:{port}/grpc.health.v1.Health/Check"],
                              capture_output=True, text=True, timeout=30).stdout
        headers, _, trailers = dump.partition("\n\n")  # text mode: CRLF read as LF
        assert headers.startswith("HTTP/2 200") and "content-type: application/grpc" in headers.lower(), dump
        assert "grpc-status: 12" in trailers and "grpc-status" not in headers, dump
        big = grpc_call(port, cert, f"{SERVICE}/ModelInfer", b"\0" * (3 << 20))
        assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "gateway limit of 2m" in big.details()
        late = grpc_call(port, cert)
        assert late.code() == grpc.StatusCode.UNAVAILABLE and "retry" in late.details(), late
        slow.stop()
        down = grpc_call(port, cert)
        assert down.code() == grpc.StatusCode.UNAVAILABLE and "no service instance" in down.details(), down
        # No call reached a replica but the slow one's, and a non-gRPC request to the path is the API's JSON 404.
        assert [c["method"] for c in slow.calls] == [f"{SERVICE}/ServerLive"]
        status, _, body = fetch(f"https://127.0.0.1:{port}{SERVICE}/ModelInfer", data=b"{}")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    finally:
        gw["stop"]()


def test_gateway_retries_grpc_on_a_dead_replica(tmp_path):
    a, b = GrpcBackend("a"), GrpcBackend("b")
    gw = start_grpc_gateway(tmp_path, [a, b])
    try:
        b.stop()
        answers = [grpc_call(gw["https"], gw["cert"], f"{SERVICE}/ModelInfer", b"x") for _ in range(6)]
        assert [a[1]["backend"] if isinstance(a, tuple) else a for a in answers] == ["a"] * 6
    finally:
        gw["stop"]()
