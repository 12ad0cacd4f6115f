"""Turning submitted prediction rows into one multi-row INSERT (and its per-flush aggregates).

A batch is written by a single statement: the whole batch travels as ONE JSON array parameter
(one C-level ``json`` encode for the batch, no per-row SQL quoting on the event loop) and
``jsonb_array_elements`` turns it back into rows in the server. The aggregates for
``prediction_metrics`` go in the same statement string, so PostgreSQL runs both INSERTs in one
implicit transaction: a batch and its aggregates are written together or not at all.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, NamedTuple


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


INSERT_SQL = """\
INSERT INTO predictions
    (time, instance, model, model_version, request_id, input, output, latency_ms, cache_hit)
SELECT (e->>0)::timestamptz, %(instance)s, e->>1, e->>2, e->>3, e->4, e->5,
       (e->>6)::double precision, (e->>7)::boolean
  FROM jsonb_array_elements(%(rows)s::jsonb) AS e;
INSERT INTO prediction_metrics
    (time, instance, model, model_version, requests, cache_hits, latency_ms_avg, latency_ms_max)
SELECT (e->>0)::timestamptz, %(instance)s, e->>1, e->>2, (e->>3)::integer, (e->>4)::integer,
       (e->>5)::double precision, (e->>6)::double precision
  FROM jsonb_array_elements(%(aggregates)s::jsonb) AS e;
"""

_ENCODER_OPTIONS = {"separators": (",", ":"), "ensure_ascii": False}


def to_record(row: dict[str, Any]) -> Record:
    """Validate and convert one submitted row; raises ``ValueError``/``TypeError``/``KeyError`` if unusable.

    ``time`` defaults to now and a naive time is taken as UTC; ``model`` is required.
    """
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
        rows = _STRICT.encode([_row(r) for r in records])
        kept = records
    except (ValueError, TypeError, RecursionError):
        # Rare: some record holds NaN or a cycle. Encode one by one, mending or leaving out.
        parts, kept = [], []
        for r in records:
            try:
                parts.append(_encode_one(r))
            except (ValueError, TypeError, RecursionError):
                continue
            kept.append(r)
        rows = "[" + ",".join(parts) + "]"
    aggregates = [[t.isoformat(), m, v, n, h, avg, top] for t, m, v, n, h, avg, top in aggregate(kept)]
    return {"instance": instance, "rows": rows, "aggregates": _STRICT.encode(aggregates)}, kept


def aggregate(records: list[Record]) -> list[tuple]:
    """Per (model, version, second) of the rows' own time: requests, cache hits, latency avg and max.

    Grouping by the rows' time (not the flush time) keeps the series true when a backlog is written
    late, e.g. after a database outage.
    """
    groups: dict[tuple, list] = {}
    for r in records:
        key = (r.time.replace(microsecond=0), r.model, r.model_version)
        g = groups.get(key)
        if g is None:
            g = groups[key] = [0, 0, 0.0, 0, None]  # requests, hits, latency sum, latency n, max
        g[0] += 1
        g[1] += r.cache_hit
        if r.latency_ms is not None:
            g[2] += r.latency_ms
            g[3] += 1
            g[4] = r.latency_ms if g[4] is None else max(g[4], r.latency_ms)
    return [(t, m, v, n, hits, (total / count) if count else None, top)
            for (t, m, v), (n, hits, total, count, top) in groups.items()]


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


# One encoder reused: json.dumps with options builds a new encoder per call.
_STRICT = json.JSONEncoder(allow_nan=False, default=_json_default, **_ENCODER_OPTIONS)
