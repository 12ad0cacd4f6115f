"""Kill a service instance under a steady stream of requests: nginx retries the other instance, so no
request fails, and supervisord brings the killed instance back."""
import os
import re
import signal
import threading

import pytest
import requests

from harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pid(localenv, program: str) -> int:
    out = localenv.supervisorctl("status", program).stdout
    m = re.search(r"RUNNING\s+pid (\d+)", out)
    assert m, f"{program} is not RUNNING: {out}"
    return int(m.group(1))


def test_killed_instance_loses_no_request_and_comes_back(localenv):
    old_pid = _pid(localenv, "service-1")
    results: list[int | str] = []
    stop = threading.Event()

    def stream(worker: int):
        s = localenv.session()
        i = 0
        while not stop.is_set():
            i += 1
            body = {"sepal_length": 5.0 + (worker * 1000 + i) % 300 / 100, "sepal_width": 3.0,
                    "petal_length": 1.5, "petal_width": 0.2}
            try:
                results.append(s.post(f"{localenv.url}/api/v1/models/iris/predict", json=body, timeout=10).status_code)
            except Exception as exc:  # noqa: BLE001 — a transport error is a failed request too
                results.append(repr(exc))

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    base = localenv.settings["localenv_service_base_port"]
    try:
        # Counted, not timed: a loaded machine serves fewer requests per second, never none.
        wait_until(lambda: len(results) >= 20, 120, "the request stream to run")
        before_kill = len(results)
        os.kill(old_pid, signal.SIGKILL)
        # The stream goes on through the whole outage: until supervisord has service-1 back and ready.
        new_pid = wait_until(lambda: (p := _pid(localenv, "service-1")) != old_pid and p, 60,
                             "supervisord to restart service-1")
        wait_until(lambda: requests.get(f"http://127.0.0.1:{base}/ready", timeout=2).status_code == 200, 60,
                   "the restarted service-1 to be ready")
        wait_until(lambda: len(results) >= before_kill + 20, 120, "requests after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    failed = [r for r in results if r != 200]
    assert new_pid != old_pid
    assert not failed, f"{len(failed)} of {len(results)} requests failed while an instance died: {failed[:5]}"
