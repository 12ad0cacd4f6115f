"""nginx: the rendered configuration passes `nginx -t`; plain HTTP only redirects; /metrics is not exposed."""
from host_expectations import run_ok


def test_nginx_config_is_valid(host, localenv):
    d = localenv["nginx_dir"]
    r = host.run("nginx -t -p %s -e %s/logs/error.log -c %s/nginx.conf", d, d, d)
    assert r.rc == 0, f"nginx -t failed for {d}/nginx.conf:\n{r.stderr}"


def test_http_redirects_to_https(host, localenv):
    out = run_ok(host, "curl -s -o /dev/null -w '%%{http_code} %%{redirect_url}' http://127.0.0.1:%s/api/v1/models",
                 str(localenv["http_port"]))
    code, _, location = out.partition(" ")
    assert code == "301", f"plain HTTP answered {code}, expected a 301 redirect"
    assert location.startswith("https://") and f":{localenv['https_port']}/api/v1/models" in location, (
        f"redirect goes to {location!r}, expected https://…:{localenv['https_port']}/api/v1/models")


def test_metrics_not_reachable_through_gateway(host, localenv):
    code = run_ok(host, "curl -sk -o /dev/null -w '%%{http_code}' https://127.0.0.1:%s/metrics",
                  str(localenv["https_port"]))
    assert code == "404", f"/metrics through the gateway answered {code}; it must stay internal"


def test_gateway_health_through_tls(host, localenv):
    code = run_ok(host, "curl -sk -o /dev/null -w '%%{http_code}' https://127.0.0.1:%s/ready",
                  str(localenv["https_port"]))
    assert code == "200", f"GET /ready through the gateway answered {code}"
