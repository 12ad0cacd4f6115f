"""Exact repeats of a prediction request, answered from their pre-serialised answer.

Most predictions are expected to be cache hits, and a cached request is often the very same request
again: same model version, same body. For those, everything between reading the body and writing
the answer — parsing, validation, cache keys, building and encoding the answer — comes out as it
did the last time. So when the slow path (handlers.py, v2/handlers.py) answers a request entirely
from the in-process cache, it remembers the answer's bytes under the request's exact bytes (API,
model version, body and, on V2, the binary-data header), and the next identical request is
answered from them.

The slow path stays the single source of truth for what an answer is: an entry is only ever made
from an answer it gave, and used only while the slow path would give the same answer again —

- while each instance's result is still the very object the in-process cache holds under its key,
  checked on every use with the cache's own lookup: its TTL, LRU eviction and anything else that
  drops or replaces a result apply as they do to the slow path (and the lookup keeps the entry
  fresh in the LRU just as the slow path's would);
- while the model is the same loaded object (a reloaded model invalidates its entries).

The answer then differs from the slow path's only in the request id, which is per request anyway
and is spliced in. Everything else a request does still happens: auth, limits, timeout and request
metrics in the middleware, the cache-hit count, and one prediction-log row per instance (their
input and output JSON encoded once, when the entry is made).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .cache import LocalCache, PredictionCache
from .models import Model

# Bodies up to this size are remembered (a 20-instance iris batch fits; a larger batch is rarely
# repeated byte for byte). Bounds the memory: at most local_cache_size entries (10,000 by default:
# ≤ 20 MiB of bodies, plus their answers).
MAX_BODY_BYTES = 2048


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4× more, on every answer
class Answer:
    """An encoded answer waiting for its request id: ``head`` + the id's JSON + ``tail`` (+ ``binary``,
    the V2 binary output data after the JSON). Both paths render their answers with it."""

    head: bytes
    fixed_id: bytes | None  # the id's JSON when the request named it (V2 "id"); None: the request id
    tail: bytes
    binary: bytes | None = None  # None: a plain JSON answer

    def render(self, request_id: str) -> tuple[bytes, int | None]:
        """The answer's bytes for a request, and the length of the JSON part when binary data follows."""
        ident = self.fixed_id if self.fixed_id is not None else b'"' + request_id.encode() + b'"'
        json = self.head + ident + self.tail
        if self.binary is None:
            return json, None
        return json + self.binary, len(json)


@dataclass(slots=True, frozen=True)
class Repeat:
    """A remembered answer, what it was made of, and its prediction-log rows' JSON."""

    model: Model
    cached: tuple  # ((cache key, result), ...) per instance: the answer holds while these do
    answer: Answer
    log: tuple  # ((input JSON, output JSON), ...) per instance, as orjson.Fragment


class Repeats:
    """Remembered answers by exact request, least recently used dropped first. Event loop only."""

    def __init__(self, local: LocalCache, max_entries: int):
        self._local = local
        self._max = max_entries
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, api: str, model: Model, body: bytes, header: str | None = None) -> Repeat | None:
        """The remembered answer to this request, if the slow path would still give it."""
        if not self._max:
            return None
        key = (api, model.name, model.version, header, body)
        repeat = self._entries.get(key)
        if repeat is None:
            return None
        if repeat.model is not model or not self._still_cached(repeat.cached):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return repeat

    def remember(self, api: str, model: Model, body: bytes, header: str | None, rows: list, results: list,
                 answer: Answer, inputs: list, writer=None) -> None:
        """Remember the slow path's answer to a request whose every instance was a cache hit.

        ``rows``/``results``: each instance's feature row and result, as the in-process cache holds
        them; ``inputs``: the instances as the prediction log stores them, encoded by ``writer`` (the
        prediction writer, None without DB logging).
        """
        if not self._max or len(body) > MAX_BODY_BYTES:
            return
        cached = tuple((PredictionCache.key(model, row), result) for row, result in zip(rows, results))
        if not self._still_cached(cached):
            return
        log = () if writer is None else tuple((writer.encoded(inp), writer.encoded(result))
                                              for inp, (_, result) in zip(inputs, cached))
        key = (api, model.name, model.version, header, body)
        self._entries[key] = Repeat(model, cached, answer, log)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def _still_cached(self, cached: tuple) -> bool:
        get = self._local.get
        for key, result in cached:
            if get(key) is not result:
                return False
        return True
