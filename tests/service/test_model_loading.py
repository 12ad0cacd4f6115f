"""Model folders: several models and versions, a broken one reported by name, reproducible training."""
from __future__ import annotations

import hashlib
import json
import shutil

from service_support import AUTH, IRIS, load_training_module
from metrics_text import sample
from prediction_service.app import create_app
from prediction_service.models import load_models


def broken_model_tree(demo_models, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(demo_models, root)
    # Four ways a model folder goes wrong, next to the good ones.
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    shutil.copy(demo_models / "iris" / "1" / "metadata.json", root / "corrupt" / "1" / "metadata.json")
    meta = json.loads((root / "corrupt" / "1" / "metadata.json").read_text())
    (root / "corrupt" / "1" / "metadata.json").write_text(json.dumps({**meta, "name": "corrupt"}))
    shutil.copytree(demo_models / "iris" / "2", root / "iris" / "3")  # metadata says version 2
    (root / "nometa" / "1").mkdir(parents=True)
    shutil.copy(demo_models / "iris" / "1" / "model.onnx", root / "nometa" / "1" / "model.onnx")
    shutil.copytree(demo_models / "iris" / "1", root / "wrongwidth" / "1")
    meta = json.loads((root / "wrongwidth" / "1" / "metadata.json").read_text())
    meta.update(name="wrongwidth", features=meta["features"][:3])
    (root / "wrongwidth" / "1" / "metadata.json").write_text(json.dumps(meta))
    shutil.copytree(demo_models / "iris" / "1", root / "badcache" / "1")
    meta = json.loads((root / "badcache" / "1" / "metadata.json").read_text())
    meta.update(name="badcache", cache=["sometimes"])
    (root / "badcache" / "1" / "metadata.json").write_text(json.dumps(meta))
    shutil.copytree(demo_models / "iris" / "1", root / "badrange" / "1")
    meta = json.loads((root / "badrange" / "1" / "metadata.json").read_text())
    meta.update(name="badrange", features=[{**f, "minimum": 5, "maximum": 1} for f in meta["features"]])
    (root / "badrange" / "1" / "metadata.json").write_text(json.dumps(meta))
    return root


def test_broken_models_are_reported_by_name_and_skipped(demo_models, tmp_path, caplog):
    registry = load_models(broken_model_tree(demo_models, tmp_path))
    assert {(n, v) for n, vs in registry.models.items() for v in vs} == {("iris", "1"), ("iris", "2"), ("diabetes", "1"),
                                                                         ("iris_ensemble", "1")}
    failures = {(f["model"], f["version"]): f["error"] for f in registry.failures}
    assert set(failures) == {("corrupt", "1"), ("iris", "3"), ("nometa", "1"), ("wrongwidth", "1"), ("badcache", "1"),
                             ("badrange", "1")}
    assert "cache must be true, false" in failures[("badcache", "1")]
    assert "'sepal_length': minimum must be below maximum" in failures[("badrange", "1")]
    assert "cannot be loaded by ONNX Runtime" in failures[("corrupt", "1")]
    assert "lives in folder iris/3" in failures[("iris", "3")]
    assert "metadata.json is missing" in failures[("nometa", "1")]
    assert "takes 4 features but metadata lists 3" in failures[("wrongwidth", "1")]
    logged = caplog.text
    assert all(f"model {name} version {version} not loaded" in logged for name, version in failures)


async def test_service_runs_with_the_good_models(aiohttp_client, make_settings, demo_models, tmp_path):
    client = await aiohttp_client(create_app(make_settings(model_path=broken_model_tree(demo_models, tmp_path))))
    assert (await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200
    body = await ready.json()
    assert body["models_loaded"] == 4
    assert {f["model"] for f in body["failed_models"]} == {"corrupt", "iris", "nometa", "wrongwidth", "badcache",
                                                           "badrange"}
    resp = await client.post("/api/v1/models/corrupt/predict", json=IRIS, headers=AUTH)
    assert resp.status == 404
    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "prediction_service_model_load_failures_total", model="corrupt") >= 1


async def test_not_ready_without_any_model(aiohttp_client, make_settings, tmp_path):
    client = await aiohttp_client(create_app(make_settings(model_path=tmp_path)))
    ready = await client.get("/ready")
    assert ready.status == 503
    assert (await ready.json())["status"] == "not_ready"
    assert (await client.get("/health")).status == 200  # alive, just not ready


def test_training_is_reproducible(tmp_path):
    train = load_training_module().train
    first, second = tmp_path / "a", tmp_path / "b"
    train(first)
    train(second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 8
    for rel in files:
        assert hashlib.sha256((first / rel).read_bytes()).digest() == hashlib.sha256((second / rel).read_bytes()).digest(), rel
