"""Row validation and batch encoding (pure functions; the database tests cover the SQL that reads
them, including the per-second aggregates PostgreSQL computes from the batch)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from prediction_service.storage.batch import Record, statement_params, to_record

T0 = datetime(2024, 5, 1, 12, 0, 0, 100_000, tzinfo=timezone.utc)


def rec(model="m", version="1", t=T0, latency=1.0, hit=False, output=(1,)) -> Record:
    return to_record({"time": t, "model": model, "model_version": version, "request_id": 1,
                      "input": {"a": 1}, "output": list(output), "latency_ms": latency, "cache_hit": hit})


def test_to_record_normalises_types():
    r = to_record({"model": "m", "model_version": 2, "request_id": 7, "input": {}, "output": {},
                   "latency_ms": np.float64(3.5), "cache_hit": 1, "time": datetime(2024, 1, 1)})
    assert r == Record(datetime(2024, 1, 1, tzinfo=timezone.utc), "m", "2", "7", {}, {}, 3.5, True)
    assert to_record({"model": "m", "latency_ms": float("inf")}).latency_ms is None
    assert to_record({"model": "m"}).time.tzinfo is not None  # no time: now, in UTC
    assert to_record(r) is r  # a Record is already validated


@pytest.mark.parametrize("bad", [{"input": {}}, {"model": ""}, {"model": "m", "time": "2024-01-01"},
                                 {"model": "m", "latency_ms": "fast"}])
def test_to_record_rejects_unusable_rows(bad):
    with pytest.raises((KeyError, TypeError, ValueError)):
        to_record(bad)


def test_batch_is_one_json_array_with_numpy_and_nan_mended():
    records = [rec(), to_record({"time": T0, "model": "m", "model_version": "1", "request_id": None,
                                 "input": {"a": np.float32(0.5), "b": np.array([1, 2])},
                                 "output": {"p": [float("nan")]}, "latency_ms": None})]
    params, kept = statement_params(records, "inst")
    assert kept == records and params["instance"] == "inst"
    rows = json.loads(params["rows"])
    assert rows == [[T0.isoformat(), "m", "1", "1", {"a": 1}, [1], 1.0, False],
                    [T0.isoformat(), "m", "1", None, {"a": 0.5, "b": [1, 2]}, {"p": [None]}, None, False]]


def test_a_record_that_cannot_be_encoded_is_left_out():
    cycle: list = []
    cycle.append(cycle)
    good = rec()
    params, kept = statement_params([good, rec(output=[cycle])], "i")
    assert kept == [good] and len(json.loads(params["rows"])) == 1
    assert set(params) == {"instance", "rows"}  # aggregates come from the rows written, in SQL


def test_a_batch_needing_the_slow_path_keeps_its_other_rows_and_times():
    big = rec(output=[2 ** 70])  # beyond 64 bits: orjson refuses, the json module takes it
    params, kept = statement_params([rec(), big], "i")
    rows = json.loads(params["rows"])
    assert kept == [rec(), big] and rows[1][5] == [2 ** 70] and rows[0][0] == rows[1][0] == T0.isoformat()
