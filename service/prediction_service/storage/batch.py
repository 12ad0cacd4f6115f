"""Turning submitted prediction rows into one multi-row INSERT (and its per-second aggregates).

A batch is written by a single statement: the whole batch travels as ONE JSON array parameter
(one orjson encode for the batch, no per-row SQL quoting on the event loop) and
``jsonb_array_elements`` turns it back into rows in the server. The aggregates for
``prediction_metrics`` are computed by PostgreSQL from the rows that statement inserted (a
data-modifying CTE), so a batch and its aggregates are written together or not at all.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, NamedTuple

import orjson


class Record(NamedTuple):
    """One validated prediction row (input/output still Python objects)."""

    time: datetime
    model: str
    model_version: str
    request_id: str | None
    input: Any
    output: Any
    latency_ms: float | None
    cache_hit: bool


# One statement: the rows, and (in the same implicit transaction) their per-second aggregates,
# computed by PostgreSQL from the rows just inserted. Grouping by the rows' own time (not the
# flush time) keeps the series true when a backlog is written late, e.g. after an outage.
# Aggregating in SQL costs the service nothing per row (in Python it was ~5 µs a row).
INSERT_SQL = """\
WITH inserted AS (
    INSERT INTO predictions
        (time, instance, model, model_version, request_id, input, output, latency_ms, cache_hit)
    SELECT (e->>0)::timestamptz, %(instance)s, e->>1, e->>2, e->>3, e->4, e->5,
           (e->>6)::double precision, (e->>7)::boolean
      FROM jsonb_array_elements(%(rows)s::jsonb) AS e
    RETURNING time, model, model_version, latency_ms, cache_hit
)
INSERT INTO prediction_metrics
    (time, instance, model, model_version, requests, cache_hits, latency_ms_avg, latency_ms_max)
SELECT date_trunc('second', time, 'UTC'), %(instance)s, model, model_version, count(*)::integer,
       (count(*) FILTER (WHERE cache_hit))::integer, avg(latency_ms), max(latency_ms)
  FROM inserted
 GROUP BY 1, 3, 4;
"""

_ENCODER_OPTIONS = {"separators": (",", ":"), "ensure_ascii": False}


def to_record(row: dict[str, Any] | Record) -> Record:
    """Validate and convert one submitted row; raises ``ValueError``/``TypeError``/``KeyError`` if unusable.

    ``time`` defaults to now and a naive time is taken as UTC; ``model`` is required. A
    :class:`Record` is taken as it is: whoever built one (the predict handler) vouches for it.
    """
    if type(row) is Record:
        return row
    when = row.get("time")
    if when is None:
        when = datetime.now(timezone.utc)
    elif not isinstance(when, datetime):
        raise TypeError(f"time must be a datetime, got {type(when).__name__}")
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    model = row["model"]
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty string")
    request_id = row.get("request_id")
    latency = row.get("latency_ms")
    latency = None if latency is None else float(latency)
    if latency is not None and not math.isfinite(latency):
        latency = None
    return Record(
        time=when,
        model=model,
        model_version=str(row.get("model_version") or ""),
        request_id=None if request_id is None else str(request_id),
        input=row.get("input"),
        output=row.get("output"),
        latency_ms=latency,
        cache_hit=bool(row.get("cache_hit", False)),
    )


def statement_params(records: list[Record], instance: str) -> tuple[dict[str, Any], list[Record]]:
    """Parameters of :data:`INSERT_SQL` for one batch, and the records they hold.

    Values JSON cannot hold are stored as null (NaN, infinity) or as their ``str()``/``tolist()``
    (e.g. numpy values); a record that still cannot be encoded is left out of the returned list.
    """
    try:
        # A Record's fields are in the order the SQL reads them (e->>0 … e->>7); orjson writes
        # the aware datetime exactly as isoformat() does.
        rows = orjson.dumps([list(r) for r in records], default=_json_default, option=_ORJSON_OPTIONS).decode()
        kept = records
    except (ValueError, TypeError, RecursionError):
        # Rare: some record holds a cycle, an integer beyond 64 bits, a lone surrogate or an
        # unusual datetime. Encode one by one with the json module, mending or leaving out.
        parts, kept = [], []
        for r in records:
            try:
                parts.append(_encode_one(r))
            except (ValueError, TypeError, RecursionError):
                continue
            kept.append(r)
        rows = "[" + ",".join(parts) + "]"
    return {"instance": instance, "rows": rows}, kept


def _row(r: Record) -> list:
    return [r.time.isoformat(), r.model, r.model_version, r.request_id, r.input, r.output,
            r.latency_ms, r.cache_hit]


def _encode_one(r: Record) -> str:
    try:
        return _STRICT.encode(_row(r))
    except ValueError:
        # NaN/Infinity are not JSON (jsonb refuses them): store them as null rather than lose the row.
        return _STRICT.encode(_finite(_row(r)))


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (model outputs) know how to become plain Python values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


# orjson (one C call for the whole batch, ~10x the json module) writes NaN and infinity as
# null, which is what the mending path does too; numpy values and non-str keys come out as with
# the json module.
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# One encoder reused: json.dumps with options builds a new encoder per call.
_STRICT = json.JSONEncoder(allow_nan=False, default=_json_default, **_ENCODER_OPTIONS)
