"""The local gateway (nginx 1.22 rendered by Ansible) keeps the API's promises where nginx answers
itself: JSON errors, Retry-After when no replica can answer, Mozilla "intermediate" TLS."""
import datetime

import pytest
from cryptography import x509

from harness.gateway import check_own_errors, check_upstream_error, mozilla_intermediate_issues
from harness.waiting import wait_until
from localenv_support import wait_instances_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _https_port(localenv) -> int:
    return int(localenv.settings["localenv_https_port"])


def test_errors_nginx_answers_itself_are_api_json(localenv):
    assert check_own_errors("127.0.0.1", _https_port(localenv)) == []


def test_errors_of_the_service_pass_through_unchanged(localenv):
    s = localenv.session()
    r = s.delete(f"{localenv.url}/ready", timeout=10)
    assert (r.status_code, r.headers.get("Allow")) == (405, "GET"), r.text
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = s.post(f"{localenv.url}/api/v1/models/iris/predict", json={**IRIS, "petal_colour": 1.0}, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_feature", r.text


def test_every_replica_stopped_is_json_502_with_retry_after(localenv):
    programs = ["service-1", "service-2"]
    stop = localenv.supervisorctl("stop", *programs)
    try:
        assert stop.returncode == 0, stop.stdout + stop.stderr
        answer = check_upstream_error("127.0.0.1", _https_port(localenv), 502, "upstream_unavailable")
        print(f"\nall replicas stopped: {answer.status} {answer.body.decode()} Retry-After {answer.headers['retry-after']}")
        r = localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict", json=IRIS, timeout=10)
        assert r.status_code == 502 and r.headers["Content-Type"] == "application/json", r.text
        assert r.json()["error"]["code"] == "upstream_unavailable" and r.headers["Retry-After"].isdigit()
    finally:
        localenv.supervisorctl("start", *programs)
        wait_instances_ready(localenv)
    # Back to normal through the gateway once nginx tries the replicas again.
    wait_until(lambda: localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict", json=IRIS,
                                               timeout=10).status_code == 200, 30, "a prediction through the gateway")


def test_tls_meets_mozilla_intermediate(localenv):
    assert mozilla_intermediate_issues("127.0.0.1", _https_port(localenv)) == {}


def test_generated_certificate_lives_at_most_365_days(localenv):
    with open(localenv.cacert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    lifespan = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=300) < lifespan <= datetime.timedelta(days=365), lifespan
