"""Row validation, batch encoding and the batch statement (pure functions; the database tests cover
the SQL that reads them, including the per-second aggregates PostgreSQL computes from the batch)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import numpy as np
import pytest

import orjson

from prediction_service.storage.batch import Record, batch_statement, encode_rows, to_record

T0 = datetime(2024, 5, 1, 12, 0, 0, 100_000, tzinfo=timezone.utc)
EPOCH0 = T0.timestamp()  # how a Record holds it


def rec(model="m", version="1", t=T0, latency=1.0, hit=False, output=(1,)) -> Record:
    return to_record({"time": t, "model": model, "model_version": version, "request_id": 1,
                      "input": {"a": 1}, "output": list(output), "latency_ms": latency, "cache_hit": hit})


def test_to_record_normalises_types():
    r = to_record({"model": "m", "model_version": 2, "request_id": 7, "input": {}, "output": {},
                   "latency_ms": np.float64(3.5), "cache_hit": 1, "time": datetime(2024, 1, 1)})
    assert r == Record(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp(), "m", "2", "7", {}, {}, 3.5, True)
    assert to_record({"model": "m", "latency_ms": float("inf")}).latency_ms is None
    assert abs(to_record({"model": "m"}).time - datetime.now(timezone.utc).timestamp()) < 60  # no time: now
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
    encoded, kept = encode_rows(records)
    assert kept == records
    rows = json.loads(encoded)
    assert rows == [[EPOCH0, "m", "1", "1", {"a": 1}, [1], 1.0, False],
                    [EPOCH0, "m", "1", None, {"a": 0.5, "b": [1, 2]}, {"p": [None]}, None, False]]


def test_json_already_encoded_goes_in_as_it_is():
    fragment = orjson.Fragment(b'{"label":"setosa"}')
    encoded, _ = encode_rows([Record(EPOCH0, "m", "1", "r", {"a": 1}, fragment, 0.5, True)])
    assert json.loads(encoded) == [[EPOCH0, "m", "1", "r", {"a": 1}, {"label": "setosa"}, 0.5, True]]


def test_a_record_that_cannot_be_encoded_is_left_out():
    cycle: list = []
    cycle.append(cycle)
    good = rec()
    encoded, kept = encode_rows([good, rec(output=[cycle])])
    assert kept == [good] and len(json.loads(encoded)) == 1


def test_a_batch_needing_the_slow_path_keeps_its_other_rows_and_times():
    big = rec(output=[2 ** 70])  # beyond 64 bits: orjson refuses, the json module takes it
    encoded, kept = encode_rows([rec(), big, rec()._replace(output=orjson.Fragment(b"[3]"))])
    rows = json.loads(encoded)
    assert kept[:2] == [rec(), big] and len(kept) == 3
    assert [r[5] for r in rows] == [[1], [2 ** 70], [3]] and rows[0][0] == rows[1][0] == EPOCH0


@pytest.mark.parametrize("instance", ["node-a", "it's", "$r$", "$r$ and $r1$", "nœud"])
def test_the_statement_carries_the_values_unescaped_and_unchanged(instance):
    rows = b'[[1.5,"m","1","a $r$ \\\' quote",{},{},1.0,true]]'
    sql = batch_statement(rows, instance).decode()
    literals = [m.group(2) for m in re.finditer(r"(\$r\d*\$)(.*?)\1", sql, re.S)]
    assert literals == [instance, rows.decode(), instance]  # INSERT rows, aggregates: instance twice
