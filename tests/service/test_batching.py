"""Adaptive batching (batching.py): concurrent cache misses of one model version run as one inference
call, and every request still gets exactly what it would get alone.

To make "a request arrives while an inference is running" certain rather than likely, most tests hold
the running inference at a gate: the model's real ONNX Runtime session is wrapped so that ``run()``
waits until the test opens the gate (and counts the rows of each call). The call held is a large
request's (EXECUTOR_MIN_ROWS instances: it runs in the worker thread, with or without batching), and
batched calls are sent to the worker thread too, so the event loop keeps taking requests meanwhile.
The last test uses no gate: many clients against a real service process.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import threading

import aiohttp
import psycopg2
import pytest

from metrics_text import sample
from service_support import AUTH, IRIS, ServiceProcess, service_env
from prediction_service import batching
from prediction_service.app import create_app
from prediction_service.config import ConfigError, load_settings
from prediction_service.models import EXECUTOR_MIN_ROWS, load_models
from prediction_service.state import STATE
from prediction_service.storage import apply_migrations

FEATURES = list(IRIS)


def predict_url(model: str = "iris", version: str | None = None) -> str:
    return f"/api/v1/models/{model}/predict" + (f"?version={version}" if version else "")


def instance(i: int, **changes) -> dict:
    """A distinct iris instance per ``i`` (so that every request is a cache miss)."""
    return {**IRIS, "sepal_length": round(4.0 + i * 0.013, 3), "petal_length": round(1.0 + (i % 50) * 0.1, 2),
            **changes}


def large(start: int = 1000) -> dict:
    """A request of EXECUTOR_MIN_ROWS distinct instances: even alone, its call runs in the worker thread."""
    return {"instances": [instance(start + i) for i in range(EXECUTOR_MIN_ROWS)]}


def model_tree(demo_models, tmp_path, name: str = "models", **metadata_by_version) -> object:
    """A copy of the demo models with metadata changed per ``"<model>/<version>"`` (keys with '/'
    passed as ``iris__2=…``; the value a dict of fields, None to drop a field)."""
    root = tmp_path / name
    shutil.copytree(demo_models, root)
    for key, changes in metadata_by_version.items():
        path = root / key.replace("__", "/") / "metadata.json"
        meta = json.loads(path.read_text())
        for field, value in changes.items():
            if value is None:
                meta.pop(field, None)
            else:
                meta[field] = value
        path.write_text(json.dumps(meta))
    return root


def unbatched_tree(demo_models, tmp_path):
    """The demo models with adaptive batching off everywhere: what every answer must equal."""
    return model_tree(demo_models, tmp_path, "unbatched", **{m: {"max_batch_size": 1}
                                                            for m in ("iris__1", "iris__2", "iris_ensemble__1",
                                                                      "diabetes__1")})


class GatedSession:
    """A model's real ONNX Runtime session whose ``run()`` waits at a gate the test opens, and which
    records the rows of every call. ``fail_on``: a feature value that makes ``run()`` raise, as a
    model that cannot compute some input would (the isolation of a failed batch is tested with it)."""

    def __init__(self, session, fail_on: float | None = None):
        self._session = session
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail_on = fail_on

    def run(self, output_names, feeds):
        (x,) = feeds.values()
        self.calls.append(len(x))
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("[ONNXRuntimeError] : simulated failure for this input")
        return self._session.run(output_names, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


def gate(app, model: str = "iris", version: str = "1", **kwargs) -> GatedSession:
    m = app[STATE].registry.get(model, version)
    m.session = GatedSession(m.session, **kwargs)
    return m.session


@pytest.fixture
def in_worker_thread(monkeypatch):
    """Every batch runs in the worker thread (however short), so a gated inference holds no request."""
    monkeypatch.setattr(batching, "THREAD_MIN_SECONDS", 0.0)


async def wait_queued(app, n: int, model: str = "iris", version: str = "1") -> None:
    batcher = app[STATE].registry.get(model, version).batcher
    for _ in range(1000):
        if batcher.queued >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{batcher.queued} requests queued for {model} v{version}, expected {n}")


async def entered(session: GatedSession) -> None:
    for _ in range(1000):
        if session.entered.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no inference started")


async def metrics_text(client) -> str:
    return await (await client.get("/metrics")).text()


BATCH_SAMPLES = {"calls": ("batch_requests_count", {}), "requests": ("batch_requests_sum", {}),
                 "calls_of_one": ("batch_requests_bucket", {"le": "1.0"}), "rows": ("batch_rows_sum", {}),
                 "waits": ("batch_queue_wait_seconds_count", {}), "wait_seconds": ("batch_queue_wait_seconds_sum", {})}


async def batch_metrics(client, model: str = "iris", version: str = "1") -> dict[str, float]:
    """The batching metrics of one version, as /metrics shows them (the registry is per process:
    compare two readings)."""
    text = await metrics_text(client)
    return {key: sample(text, f"prediction_service_{name}", model=model, version=version, **labels)
            for key, (name, labels) in BATCH_SAMPLES.items()}


def delta(after: dict, before: dict) -> dict:
    return {k: round(after[k] - before[k], 9) for k in after}


def answer(body: dict) -> dict:
    """What a prediction answers, without what differs per request (request id, cache flags)."""
    return {k: v for k, v in body.items() if k not in ("request_id", "cached", "cache_hits", "id", "parameters")}


async def post_all(client, requests_: list[tuple[str, dict]]) -> list[tuple[int, dict]]:
    async def one(url, body):
        resp = await client.post(url, json=body, headers=AUTH)
        return resp.status, await resp.json()
    return list(await asyncio.gather(*(one(url, body) for url, body in requests_)))


async def test_requests_arriving_during_an_inference_run_as_one_batch(aiohttp_client, make_settings, demo_models,
                                                                      tmp_path, in_worker_thread):
    """The first request to the idle model runs alone at once; the ten that arrive while it runs are one
    inference call; every answer equals what batching off answers, on /api/v1 and /v2 alike."""
    n = EXECUTOR_MIN_ROWS
    app = create_app(make_settings())
    client = await aiohttp_client(app)
    reference = await aiohttp_client(create_app(make_settings(model_path=unbatched_tree(demo_models, tmp_path))))
    session = gate(app)
    before = await batch_metrics(client)
    first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
    await entered(session)
    queued = [(predict_url(), instance(i)) for i in range(1, 8)]
    queued.append((predict_url(), {"instances": [instance(20), instance(21), instance(22)]}))
    queued += [("/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                      "data": [list(instance(i).values())]}]}) for i in (30, 31)]
    pending = asyncio.ensure_future(post_all(client, queued))
    await wait_queued(app, len(queued))
    session.gate.set()
    first_resp = await first
    results = [(first_resp.status, await first_resp.json())] + await pending

    # Two calls: the first request alone, then everything that queued meanwhile (12 rows) together.
    assert session.calls == [n, 12]
    seen = delta(await batch_metrics(client), before)
    assert (seen["calls"], seen["calls_of_one"], seen["requests"], seen["rows"], seen["waits"]) == \
        (2, 1, 1 + len(queued), n + 12, 1 + len(queued))

    expected = await post_all(reference, [(predict_url(), large())] + queued)
    assert [status for status, _ in results] == [200] * len(expected)
    assert [answer(body) for _, body in results] == [answer(body) for _, body in expected]
    # Each request has its own id and cache entries: asked again, each is answered from the cache.
    assert len({body.get("request_id") for _, body in results[:9]}) == 9
    again = await post_all(client, [(predict_url(), large())] + queued[:8])
    assert all(body["cached"] for _, body in again)
    assert session.calls == [n, 12]


async def test_grpc_model_infer_joins_the_same_batches(aiohttp_client, make_settings, in_worker_thread):
    """gRPC ModelInfer goes through the same prediction path: its requests queued during an inference run
    in one call with REST's, each answered with its own rows (equal to what REST answers for them)."""
    import numpy as np
    import tritonclient.grpc as triton
    import tritonclient.grpc.aio as triton_aio

    from harness.net import free_port

    port = free_port()
    app = create_app(make_settings(grpc_port=port))
    client = await aiohttp_client(app)
    grpc_client = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        session = gate(app)
        first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
        await entered(session)

        def grpc_infer(instances: list[dict]):
            x = np.asarray([[row[f] for f in IRIS] for row in instances], np.float32)
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return grpc_client.infer("iris", [tensor], model_version="1", headers={"x-api-key": AUTH["X-API-Key"]})

        grpc_rows = [[instance(1)], [instance(2), instance(3)]]
        grpc_calls = [asyncio.ensure_future(grpc_infer(rows)) for rows in grpc_rows]
        rest = asyncio.ensure_future(post_all(client, [(predict_url(), instance(4))]))
        await wait_queued(app, 3)
        session.gate.set()
        assert (await first).status == 200
        grpc_results = await asyncio.gather(*grpc_calls)
        [(status, body)] = await rest
        assert status == 200
        assert session.calls == [EXECUTOR_MIN_ROWS, 4]  # both gRPC requests and the REST one: one call
        # Each gRPC request got its own rows' answers: what REST answers for them.
        session.calls.clear()
        for rows, result in zip(grpc_rows, grpc_results):
            expected = await post_all(client, [(predict_url(), {"instances": rows})])
            assert result.as_numpy("label").astype(str).tolist() == expected[0][1]["predictions"]
    finally:
        await grpc_client.close()


async def test_a_lone_request_runs_at_once_and_alone(aiohttp_client, make_settings, demo_models, tmp_path):
    """Even with a long max_batch_delay_us, a request that finds the model idle does not wait for company."""
    tree = model_tree(demo_models, tmp_path, iris__1={"max_batch_delay_us": 1_000_000})
    client = await aiohttp_client(create_app(make_settings(model_path=tree)))
    before = await batch_metrics(client)
    resp = await client.post(predict_url(), json=instance(1), headers=AUTH)
    assert resp.status == 200 and (await resp.json())["predictions"] == ["setosa"]
    seen = delta(await batch_metrics(client), before)
    assert (seen["calls"], seen["calls_of_one"], seen["requests"], seen["rows"], seen["waits"]) == (1, 1, 1, 1, 1)
    # It did not queue at all: no wait, not the 1 s a queued batch may wait to fill up.
    assert seen["wait_seconds"] == 0


async def test_a_batch_that_is_not_full_waits_for_more_up_to_the_delay(aiohttp_client, make_settings, demo_models,
                                                                       tmp_path, in_worker_thread):
    """Queued requests may wait max_batch_delay_us for company; once max_batch_size rows are there, they go."""
    tree = model_tree(demo_models, tmp_path, iris__1={"max_batch_size": 3, "max_batch_delay_us": 1_000_000})
    app = create_app(make_settings(model_path=tree))
    client = await aiohttp_client(app)
    session = gate(app)
    first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
    await entered(session)
    second = asyncio.ensure_future(client.post(predict_url(), json=instance(1), headers=AUTH))
    await wait_queued(app, 1)
    session.gate.set()
    assert (await first).status == 200
    await asyncio.sleep(0.1)
    assert not second.done(), "a batch of one row of three ran without waiting for the delay"
    rest = await post_all(client, [(predict_url(), instance(2)), (predict_url(), instance(3))])
    assert (await second).status == 200 and [s for s, _ in rest] == [200, 200]
    assert session.calls == [EXECUTOR_MIN_ROWS, 3]


async def test_versions_are_never_batched_together(aiohttp_client, make_settings, demo_models, tmp_path,
                                                   in_worker_thread):
    tree = model_tree(demo_models, tmp_path, iris__2={"max_batch_size": 32})
    app = create_app(make_settings(model_path=tree))
    client = await aiohttp_client(app)
    reference = await aiohttp_client(create_app(make_settings(model_path=unbatched_tree(demo_models, tmp_path))))
    sessions = {v: gate(app, version=v) for v in ("1", "2")}
    before = {v: await batch_metrics(client, version=v) for v in ("1", "2")}
    firsts = []
    for v, session in sessions.items():
        firsts.append(asyncio.ensure_future(client.post(predict_url(version=v), json=large(), headers=AUTH)))
        await entered(session)
    queued = [(predict_url(version=v), instance(i)) for i in range(1, 7) for v in ("1", "2")]
    pending = asyncio.ensure_future(post_all(client, queued))
    await wait_queued(app, 6, version="1")
    await wait_queued(app, 6, version="2")
    for session in sessions.values():
        session.gate.set()
    results = [(r.status, await r.json()) for r in await asyncio.gather(*firsts)] + await pending

    assert sessions["1"].calls == sessions["2"].calls == [EXECUTOR_MIN_ROWS, 6]
    expected = await post_all(reference, [(predict_url(version=v), large()) for v in ("1", "2")] + queued)
    assert [answer(body) for _, body in results] == [answer(body) for _, body in expected]
    # The forest (v1) and the logistic regression (v2) differ: a mixed batch could not have given these.
    assert results[2][1]["probabilities"] != results[3][1]["probabilities"]
    for v in ("1", "2"):
        seen = delta(await batch_metrics(client, version=v), before[v])
        assert (seen["calls"], seen["rows"]) == (2, EXECUTOR_MIN_ROWS + 6)


async def test_one_requests_bad_row_never_fails_its_neighbours(aiohttp_client, make_settings, demo_models, tmp_path,
                                                               in_worker_thread):
    """A model with no declared range gives no finite output for one request's row: that request gets
    its 422 naming its own instance; the others in the same batch get their answers."""
    tree = model_tree(demo_models, tmp_path)
    shutil.copytree(tree / "iris" / "2", tree / "wide" / "1")
    meta = json.loads((tree / "wide" / "1" / "metadata.json").read_text())
    meta.update(name="wide", version="1", features=[{"name": f["name"]} for f in meta["features"]],
                max_batch_size=32, cache="off")
    (tree / "wide" / "1" / "metadata.json").write_text(json.dumps(meta))
    app = create_app(make_settings(model_path=tree))
    client = await aiohttp_client(app)
    session = gate(app, "wide")
    first = asyncio.ensure_future(client.post(predict_url("wide"), json=large(), headers=AUTH))
    await entered(session)
    queued = [(predict_url("wide"), instance(1)),
              (predict_url("wide"), {"instances": [instance(2), instance(3, petal_length=3e38)]}),
              (predict_url("wide"), instance(4))]
    pending = asyncio.ensure_future(post_all(client, queued))
    await wait_queued(app, 3, "wide")
    session.gate.set()
    assert (await first).status == 200
    (s1, good1), (s2, bad), (s3, good2) = await pending
    assert session.calls == [EXECUTOR_MIN_ROWS, 4]  # the bad row was computed in the same call as its neighbours
    assert (s1, s3) == (200, 200) and len(good1["predictions"]) == len(good2["predictions"]) == 1
    assert s2 == 422 and bad["error"]["code"] == "non_finite_output"
    assert bad["error"]["message"].startswith("instance 1:"), bad


async def test_a_batch_that_fails_whole_is_rerun_request_by_request(aiohttp_client, make_settings, in_worker_thread):
    """When the batched call raises, each request runs alone: only the one whose rows fail gets the error."""
    app = create_app(make_settings())
    client = await aiohttp_client(app)
    session = gate(app, fail_on=42.0)
    first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
    await entered(session)
    queued = [(predict_url(), instance(1)), (predict_url(), instance(2, petal_width=42.0)),
              (predict_url(), instance(3))]
    pending = asyncio.ensure_future(post_all(client, queued))
    await wait_queued(app, 3)
    session.gate.set()
    assert (await first).status == 200
    (s1, good1), (s2, failed), (s3, good2) = await pending
    assert session.calls == [EXECUTOR_MIN_ROWS, 3, 1, 1, 1]
    assert (s1, s3) == (200, 200) and good1["predictions"] and good2["predictions"]
    assert s2 == 500 and failed["error"]["code"] == "internal_error"


async def test_each_request_keeps_its_own_deadline(aiohttp_client, make_settings, in_worker_thread):
    """A request whose time runs out while its inference runs gets its 503; one queued later, whose
    time has not run out, is answered when the inference ends; one that timed out in the queue is never
    computed, and the queue goes on serving."""
    app = create_app(make_settings(request_timeout_seconds=2))
    client = await aiohttp_client(app)
    session = gate(app)
    first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
    await entered(session)
    early = asyncio.ensure_future(client.post(predict_url(), json=instance(1), headers=AUTH))
    await wait_queued(app, 1)
    await asyncio.sleep(1.0)
    late = asyncio.ensure_future(client.post(predict_url(), json=instance(2), headers=AUTH))
    await wait_queued(app, 2)
    timed_out = await first
    assert timed_out.status == 503 and (await timed_out.json())["error"]["code"] == "timeout"
    early_resp = await early
    assert early_resp.status == 503  # its deadline passed while it was still queued
    session.gate.set()
    late_resp = await late
    assert late_resp.status == 200, await late_resp.text()
    # The first call's result went to nobody; the early request's row was never computed.
    assert session.calls == [EXECUTOR_MIN_ROWS, 1]
    assert (await client.post(predict_url(), json=instance(3), headers=AUTH)).status == 200


async def test_each_request_logs_its_own_rows(aiohttp_client, make_settings, fresh_db, in_worker_thread):
    apply_migrations(fresh_db)
    app = create_app(make_settings(timescale_url=fresh_db, db_logging="true", db_flush_interval_seconds=0.1))
    client = await aiohttp_client(app)
    session = gate(app)
    first = asyncio.ensure_future(client.post(predict_url(), json=large(), headers=AUTH))
    await entered(session)
    queued = [(predict_url(), instance(1)), (predict_url(), {"instances": [instance(2), instance(3)]}),
              (predict_url(), instance(4))]
    pending = asyncio.ensure_future(post_all(client, queued))
    await wait_queued(app, 3)
    session.gate.set()
    assert (await first).status == 200
    results = [body for _, body in await pending]
    assert session.calls == [EXECUTOR_MIN_ROWS, 4]
    ids = tuple(body["request_id"] for body in results)
    for _ in range(300):
        with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, input, output->>'label' FROM predictions WHERE request_id IN %s "
                        "ORDER BY input->>'sepal_length'", (ids,))
            rows = cur.fetchall()
        if len(rows) == 4:
            break
        await asyncio.sleep(0.1)
    # One row per instance, each under its own request's id, with its own answer.
    assert [(r[0], r[1]) for r in rows] == [(ids[0], instance(1)), (ids[1], instance(2)), (ids[1], instance(3)),
                                            (ids[2], instance(4))]
    assert [r[2] for r in rows] == [label for body in results for label in body["predictions"]]


def test_batching_settings_come_from_metadata_else_the_service_default(demo_models, tmp_path):
    tree = model_tree(demo_models, tmp_path, iris__2={"max_batch_size": None, "max_batch_delay_us": None})
    registry = load_models(tree, max_batch_size=8, max_batch_delay_us=250)
    v1, v2 = registry.get("iris", "1"), registry.get("iris", "2")
    assert (v1.max_batch_size, v1.max_batch_delay_us) == (32, 250)  # its metadata sets only the size
    assert (v2.max_batch_size, v2.max_batch_delay_us) == (8, 250)  # the defaults
    assert v2.batcher is not None and registry.get("iris", "2").describe()["max_batch_size"] == 8
    off = load_models(tree)  # service default: off
    assert off.get("iris", "2").batcher is None and off.get("iris", "2").max_batch_size == 1


def test_bad_batching_settings_are_refused_by_name(demo_models, tmp_path):
    tree = model_tree(demo_models, tmp_path, iris__2={"max_batch_size": 0},
                      iris_ensemble__1={"max_batch_delay_us": "soon"})
    registry = load_models(tree)
    errors = {(f["model"], f["version"]): f["error"] for f in registry.failures}
    assert "max_batch_size must be an integer from 1 to 10000, got 0" in errors[("iris", "2")]
    assert "max_batch_delay_us must be an integer from 0 to 1000000, got 'soon'" in errors[("iris_ensemble", "1")]
    env = service_env(tree, "redis://127.0.0.1:1/0", "postgresql://u@127.0.0.1:1/db")
    with pytest.raises(ConfigError, match="PREDICTION_DEFAULT_MAX_BATCH_SIZE: expected an integer between 1 and 10000"):
        load_settings({**env, "PREDICTION_DEFAULT_MAX_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="PREDICTION_DEFAULT_MAX_BATCH_DELAY_US: expected an integer"):
        load_settings({**env, "PREDICTION_DEFAULT_MAX_BATCH_DELAY_US": "1ms"})
    settings = load_settings({**env, "PREDICTION_DEFAULT_MAX_BATCH_SIZE": "16", "PREDICTION_DEFAULT_MAX_BATCH_DELAY_US": "100"})
    assert (settings.default_max_batch_size, settings.default_max_batch_delay_us) == (16, 100)


@pytest.mark.slow
async def test_many_clients_against_a_real_service_get_the_unbatched_answers(demo_models, tmp_path, redis_server,
                                                                             postgres):
    """No gate: 48 connections at once to a service process, on the heavy model and on iris; the answers
    equal a batching-off process's, and batches of more than one request did form."""
    services = [ServiceProcess(service_env(tree, redis_server.url, postgres.dsn()))
                for tree in (demo_models, unbatched_tree(demo_models, tmp_path))]
    try:
        bodies = [("iris_ensemble", instance(i)) for i in range(144)] + [("iris", instance(i)) for i in range(144)]

        async def run(url):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=48)) as http:
                async def one(model, body):
                    async with http.post(f"{url}{predict_url(model)}", json=body, headers=AUTH) as resp:
                        assert resp.status == 200, await resp.text()
                        return answer(await resp.json())
                answers = await asyncio.gather(*(one(m, b) for m, b in bodies))
                async with http.get(f"{url}/metrics") as resp:
                    return answers, await resp.text()

        batched, text = await run(services[0].url)
        unbatched, text_off = await run(services[1].url)
        assert batched == unbatched
        for model, version in (("iris_ensemble", "1"), ("iris", "1")):
            calls = sample(text, "prediction_service_batch_requests_count", model=model, version=version)
            served = sample(text, "prediction_service_batch_requests_sum", model=model, version=version)
            assert served == 144 and 0 < calls < served, (model, calls, served)
        assert "prediction_service_batch_requests_count{" not in text_off  # batching off: no batches
    finally:
        for service in services:
            service.stop()
