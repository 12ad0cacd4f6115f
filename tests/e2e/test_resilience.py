"""Kill a service instance under a steady stream of requests: nginx retries the other instance, so no
request fails, and supervisord brings the killed instance back."""
import os
import re
import signal
import threading
import time

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
    try:
        time.sleep(2)
        before_kill = len(results)
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    failed = [r for r in results if r != 200]
    assert before_kill > 0 and len(results) > before_kill, "the request stream did not run"
    assert not failed, f"{len(failed)} of {len(results)} requests failed while an instance died: {failed[:5]}"

    new_pid = wait_until(lambda: (p := _pid(localenv, "service-1")) != old_pid and p, 30,
                         "supervisord to restart service-1")
    assert new_pid != old_pid
    base = localenv.settings["localenv_service_base_port"]
    wait_until(lambda: requests.get(f"http://127.0.0.1:{base}/ready", timeout=2).status_code == 200, 60,
               "the restarted service-1 to be ready")
