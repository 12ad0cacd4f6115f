"""What is measured and what it is held to: the scenarios of each benchmark mode and their goals.

Two modes share the runner and the report:

- ``service`` (issue 2): one service process against a bare-aiohttp baseline —
  (a) baseline, (b) predict cache hit, (c) predict cache miss with DB logging, on the deployed
  configuration (the model's own cache tier: iris v1 is "local", so a miss never asks Redis),
  (d) as (c) with DB logging off, and (c-shared) as (c) on a version whose cache tier is
  "shared" (iris v2), so the cost of the Redis tier (MGET on a miss, background SET) shows;
  (b-v2) the instance of (b) through the Open Inference Protocol (/v2 infer), paired with (b);
  (c-v2) the cache miss of (c) through /v2 infer, paired with (c) (issue 19 item 4);
  (c-ack) as (c) on a service that answers once each row is committed, paired with (c).
- ``service`` adaptive batching (issue 19): the same scenarios on a service whose model metadata
  all say batching off — (c-off) against (c); and a heavy model (h) at 32 connections and at 1
  connection against (h-off), the same on the batching-off service.
- ``gateway`` (issue 5): the same predict request through nginx TLS (https://localhost:8443)
  against one instance reached directly, at 16 and 64 connections.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from .runner import Pair, Target

PREDICT_PATH = "/api/v1/models/{model}/predict"
V2_INFER_PATH = "/v2/models/{model}/infer"
V2_INPUT = "input"  # the demo models' ONNX input: the [N, n_features] tensor of a V2 request


# --- request bodies -------------------------------------------------------------------------------

def instance_body(features: list[str], value: float = 1.0, version: str | None = None) -> str:
    """One instance with named features at the top level (the service's single-instance format)."""
    body: dict = {name: value + i * 0.5 for i, name in enumerate(features)}
    return json.dumps(body, separators=(",", ":"))


def v2_body(features: list[str], value: float = 1.0) -> str:
    """The instance of :func:`instance_body` as a V2 inference request: one [1, n] FP32 tensor."""
    data = [value + i * 0.5 for i in range(len(features))]
    return json.dumps({"inputs": [{"name": V2_INPUT, "shape": [1, len(features)], "datatype": "FP32", "data": data}]},
                      separators=(",", ":"))


def random_template(features: list[str]) -> str:
    """The same body with a ``@i@`` marker where random.lua writes the i-th feature value."""
    return "{" + ",".join(f'{json.dumps(name)}:@{i}@' for i, name in enumerate(features)) + "}"


def v2_random_template(features: list[str]) -> str:
    """:func:`random_template`'s instance as a V2 inference request (one [1, n] FP32 tensor)."""
    data = ",".join(f"@{i}@" for i in range(len(features)))
    return ('{"inputs":[{"name":"' + V2_INPUT + f'","shape":[1,{len(features)}],"datatype":"FP32","data":[{data}]}}]}}')


def predict_url(base: str, model: str, version: str | None) -> str:
    url = base.rstrip("/") + PREDICT_PATH.format(model=model)
    return url + (f"?version={version}" if version else "")


def v2_url(base: str, model: str, version: str | None) -> str:
    path = f"/v2/models/{model}/versions/{version}/infer" if version else V2_INFER_PATH.format(model=model)
    return base.rstrip("/") + path


# --- goals ----------------------------------------------------------------------------------------

@dataclass
class Goal:
    """One goal from the issue: a measured value against a threshold (PASS/MISS with the margin)."""

    name: str
    measure: Callable[[dict], float]   # from the results document
    threshold: float
    at_least: bool                     # True: value >= threshold; False: value < threshold
    unit: str = ""
    basis: str = ""                    # how the value was taken, e.g. "median of 3 pairs"
    must_be_zero: bool = False         # a count that must be 0 (threshold unused)

    def evaluate(self, results: dict) -> dict:
        value = self.measure(results)
        if self.must_be_zero:
            passed, margin, rel = value == 0, -value, None
        else:
            passed = value >= self.threshold if self.at_least else value < self.threshold
            margin = value - self.threshold if self.at_least else self.threshold - value
            rel = margin / self.threshold if self.threshold else None
        return {"goal": self.name, "value": value, "threshold": self.threshold, "at_least": self.at_least,
                "unit": self.unit, "must_be_zero": self.must_be_zero, "passed": passed, "margin": margin, "margin_relative": rel, "basis": self.basis}


def _ratio(name: str) -> Callable[[dict], float]:
    return lambda res: res["ratios"][name]["median"]


def _latency(key: str, pct: str) -> Callable[[dict], float]:
    return lambda res: res["scenarios"][key]["latency_ms_median"][pct]


def _errors(keys: list[str]) -> Callable[[dict], float]:
    return lambda res: float(sum(res["scenarios"][k]["error_count"] for k in keys))


def _latency_difference(key: str, baseline: str, pct: str) -> Callable[[dict], float]:
    return lambda res: (res["scenarios"][key]["latency_ms_median"][pct]
                        - res["scenarios"][baseline]["latency_ms_median"][pct])


@dataclass
class Plan:
    """Targets to hammer, how they pair up, extra ratios between rounds, and the goals."""

    mode: str
    targets: dict[str, Target]
    pairs: list[Pair]
    extra_ratios: list[tuple[str, str, str]] = field(default_factory=list)  # (name, numerator, denominator)
    goals: list[Goal] = field(default_factory=list)
    ratio_labels: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def pair_name(pair: Pair) -> str:
        return f"{pair.candidate}/{pair.baseline}"


# --- service mode (issue 2 §4) --------------------------------------------------------------------

SERVICE_SCENARIOS = {
    "a": ("(a) baseline: bare aiohttp, same JSON parsed",
          "A bare aiohttp handler that parses the same JSON body and returns a constant: the framework ceiling."),
    "b": ("(b) predict, cache hit",
          "The same body on every request: after the first, answered from the in-process cache tier; "
          "from the second on, as an exact repeat, from its remembered answer (repeats.py)."),
    "b-v2": ("(b-v2) V2 infer, cache hit",
             "The instance of (b) as an Open Inference Protocol request (one [1, n] FP32 JSON tensor) to "
             "/v2/models/<model>/infer: the same cache entry, so (b-v2)/(b) is the cost of the protocol."),
    "c": ("(c) predict, cache miss, DB logging, deployed cache tier ({tier})",
          "A new random instance on every request, on the model version as deployed (its cache tier: {tier}; "
          "'local' never asks Redis, 'shared' does): cache miss, ONNX inference, the result cached, and "
          "a row queued for PostgreSQL."),
    "d": ("(d) as (c), DB logging off",
          "Like (c) on a service started with PREDICTION_DB_LOGGING=false: the cost of logging is (c) vs (d)."),
    "c-shared": ("(c-shared) as (c), shared tier: Redis + DB logging ({shared})",
                 "Like (c) on a model version whose cache tier is 'shared' ({shared}): every miss also does a "
                 "Redis MGET (merged per event-loop tick) and a background Redis SET (coalesced per 50 ms)."),
    "c-v2": ("(c-v2) V2 infer, cache miss",
             "The miss of (c) as an Open Inference Protocol request (a new random instance as one [1, n] FP32 "
             "JSON tensor) to /v2/models/<model>/infer on the same service: (c-v2)/(c) is the protocol's cost "
             "on the miss path (issue 19)."),
    "c-ack": ("(c-ack) as (c), answers wait for their row's commit",
              "Like (c) on a service started with PREDICTION_DB_ACK_AFTER_WRITE=true: each answer waits until "
              "its prediction row is committed (group commit). (c-ack)/(c) is what that durability costs."),
    "c-off": ("(c-off) as (c), adaptive batching off",
              "Like (c) on a service whose model metadata all say max_batch_size 1: every miss runs its own "
              "inference call, as before issue 19. (c)/(c-off) is what batching does to the reference model."),
}

# Adaptive batching's heavy model (issue 19): at these connection counts, on and off.
BATCHING_SCENARIOS = {
    "h": ("(h) heavy model {heavy}, cache miss, batching on",
          "A new random instance per request to {heavy}, whose inference dominates a request and whose "
          "metadata turns adaptive batching on: misses that arrive while an inference runs are one call."),
    "h-off": ("(h-off) as (h), batching off",
              "Like (h) on the service with batching off: one inference call per request."),
}
HEAVY_CONNECTIONS = (32, 1)


def service_plan(*, baseline_url: str, logging_url: str, nolog_url: str, api_key: str, model: str,
                 version: str | None, features: list[str], feature_range: tuple[float, float],
                 connections: list[int], threads: int,
                 probes: dict[str, Callable[[], dict[str, float]]] | None = None,
                 tier: str = "?", shared_version: str | None = None,
                 unbatched_url: str | None = None, heavy_model: str | None = None,
                 ack_url: str | None = None) -> Plan:
    """Scenarios (a)–(d) and (c-v2), plus (c-shared) when ``shared_version`` is given, at each
    connection count; goals at every count measured. ``tier``: the cache tier of the benchmarked
    version. With ``unbatched_url`` (the same service with batching off): (c-off), and with
    ``heavy_model`` the adaptive-batching scenarios (h)/(h-off) at HEAVY_CONNECTIONS. With ``ack_url``
    (the service answering after its rows' commit): (c-ack), paired with (c)."""
    probes = probes or {}
    fixed = ["fixed", [api_key, instance_body(features)]]
    fixed_v2 = ["fixed", [api_key, v2_body(features)]]
    lo, hi = feature_range
    ranges = [f"{lo:g}:{hi:g}"] * len(features)
    rand = ["random", [api_key, random_template(features), *ranges]]
    rand_v2 = ["random", [api_key, v2_random_template(features), *ranges]]
    where = {"a": (baseline_url, fixed, version), "b": (logging_url, fixed, version),
             "b-v2": (logging_url, fixed_v2, version),
             "c": (logging_url, rand, version), "d": (nolog_url, rand, version),
             "c-shared": (logging_url, rand, shared_version), "c-v2": (logging_url, rand_v2, version),
             "c-off": (unbatched_url, rand, version), "c-ack": (ack_url, rand, version)}
    scenarios = {s: v for s, v in SERVICE_SCENARIOS.items()
                 if (s != "c-shared" or shared_version) and (s != "c-off" or unbatched_url)
                 and (s != "c-ack" or ack_url)}
    fill = {"tier": tier, "shared": f"{model} v{shared_version}"}
    targets: dict[str, Target] = {}
    pairs: list[Pair] = []
    extra: list[tuple[str, str, str]] = []
    goals: list[Goal] = []
    labels: dict[str, str] = {}
    many = len(connections) > 1
    for conns in connections:
        k = {s: (f"{s}@{conns}" if many else s) for s in scenarios}
        for s, (label, desc) in scenarios.items():
            base, (script, args), v = where[s]
            targets[k[s]] = Target(key=k[s], label=label.format(**fill) + (f" @{conns}" if many else ""),
                                   url=(v2_url if s in ("b-v2", "c-v2") else predict_url)(base, model, v),
                                   script=script, script_args=list(args),
                                   connections=conns, threads=threads, description=desc.format(**fill),
                                   probe=probes.get(s))
        for s in scenarios:
            if s not in ("a", "b-v2", "c-v2", "c-off", "c-ack"):
                pairs.append(Pair(k[s], k["a"]))
        pairs.append(Pair(k["b-v2"], k["b"]))  # V2 against /api/v1 itself, the run right before it
        pairs.append(Pair(k["c-v2"], k["c"]))  # ... and on the miss path
        if "c-ack" in k:
            pairs.append(Pair(k["c-ack"], k["c"]))  # acknowledged writes against the run right before
            labels[f"{k['c-ack']}/{k['c']}"] = "(c-ack)/(c) cost of answering after the row's commit"
        if "c-off" in k:
            pairs.append(Pair(k["c"], k["c-off"]))  # batching on (as deployed) against off
            labels[f"{k['c']}/{k['c-off']}"] = "(c)/(c-off) reference model, batching on vs off"
        extra.append((f"{k['c']}/{k['d']}", k["c"], k["d"]))
        labels.update({f"{k['b']}/{k['a']}": "(b)/(a) cache hit vs ceiling",
                       f"{k['b-v2']}/{k['b']}": "(b-v2)/(b) V2 infer vs /api/v1 predict, cache hit",
                       f"{k['c-v2']}/{k['c']}": "(c-v2)/(c) V2 infer vs /api/v1 predict, cache miss",
                       f"{k['c']}/{k['a']}": "(c)/(a) cache miss vs ceiling",
                       f"{k['d']}/{k['a']}": "(d)/(a) no DB logging vs ceiling",
                       f"{k['c']}/{k['d']}": "(c)/(d) cost of DB logging"})
        if "c-shared" in k:
            labels[f"{k['c-shared']}/{k['a']}"] = "(c-shared)/(a) cache miss, shared tier (Redis) vs ceiling"
            extra.append((f"{k['c-shared']}/{k['c']}", k["c-shared"], k["c"]))
            labels[f"{k['c-shared']}/{k['c']}"] = "(c-shared)/(c) cost of the Redis tier on a miss"
        at = f" at {conns} connections"
        goals += [
            Goal(f"(b)/(a) >= 0.7{at}", _ratio(f"{k['b']}/{k['a']}"), 0.7, True, basis="median ratio"),
            Goal(f"(c)/(a) >= 0.35{at}", _ratio(f"{k['c']}/{k['a']}"), 0.35, True, basis="median ratio"),
            Goal(f"(c)/(d) >= 0.9{at} (logging costs < 10%)", _ratio(f"{k['c']}/{k['d']}"), 0.9, True,
                 basis="median of per-round ratios"),
            Goal(f"(b-v2)/(b) >= 0.9{at} (V2 costs < 10% over /api/v1)", _ratio(f"{k['b-v2']}/{k['b']}"), 0.9, True,
                 basis="median ratio"),
            Goal(f"(c-v2)/(c) >= 0.9{at} (V2 miss path within 10% of /api/v1's)", _ratio(f"{k['c-v2']}/{k['c']}"),
                 0.9, True, basis="median ratio"),
        ]
        if "c-off" in k:
            # "No slower than today": today is batching off; 0.95 leaves this machine's noise room.
            goals.append(Goal(f"(c)/(c-off) >= 0.95{at} (reference model no slower with batching)",
                              _ratio(f"{k['c']}/{k['c-off']}"), 0.95, True, basis="median ratio"))
        for s in ("b", "b-v2", "c", "d"):
            goals.append(Goal(f"p99 of ({s}) < 20 ms{at}", _latency(k[s], "99"), 20.0, False, "ms",
                              basis="median over runs"))
        goals.append(Goal(f"zero errors{at}", _errors([k[s] for s in scenarios]), 0.0, False,
                          basis="HTTP errors + socket errors, all measured runs", must_be_zero=True))
    if heavy_model and unbatched_url:
        _heavy_scenarios(targets, pairs, goals, labels, logging_url=logging_url, unbatched_url=unbatched_url,
                         heavy_model=heavy_model, rand=rand, threads=threads, probes=probes)
    return Plan("service", targets, pairs, extra, goals, labels)


def _heavy_scenarios(targets, pairs, goals, labels, *, logging_url, unbatched_url, heavy_model, rand, threads,
                     probes) -> None:
    """(h) against (h-off) at each of HEAVY_CONNECTIONS, and issue 19's goals for them."""
    keys = []
    for conns in HEAVY_CONNECTIONS:
        for s, base in (("h", logging_url), ("h-off", unbatched_url)):
            label, desc = BATCHING_SCENARIOS[s]
            key = f"{s}@{conns}"
            keys.append(key)
            targets[key] = Target(key=key, label=label.format(heavy=heavy_model) + f" @{conns}",
                                  url=predict_url(base, heavy_model, None), script=rand[0],
                                  script_args=list(rand[1]), connections=conns, threads=min(threads, conns),
                                  description=desc.format(heavy=heavy_model), probe=probes.get(s))
        pairs.append(Pair(f"h@{conns}", f"h-off@{conns}"))
        labels[f"h@{conns}/h-off@{conns}"] = f"(h)/(h-off) heavy model, batching on vs off @{conns}"
    load, lone = HEAVY_CONNECTIONS
    goals.append(Goal(f"(h)/(h-off) >= 3 at {load} connections (batching triples the heavy model's throughput)",
                      _ratio(f"h@{load}/h-off@{load}"), 3.0, True, basis="median ratio"))
    goals.append(Goal(f"p50 of (h) - p50 of (h-off) < 0.2 ms at {lone} connection (a lone request is not delayed)",
                      _latency_difference(f"h@{lone}", f"h-off@{lone}", "50"), 0.2, False, "ms",
                      basis="difference of the medians over runs"))
    goals.append(Goal("zero errors in (h), (h-off)", _errors(keys), 0.0, False,
                      basis="HTTP errors + socket errors, all measured runs", must_be_zero=True))


# --- gateway mode (issue 5 "Benchmark through the gateway") ---------------------------------------

def gateway_plan(*, gateway_url: str, direct_url: str, api_key: str, model: str, version: str | None,
                 features: list[str], connections: list[int], threads: int, random_instances: bool,
                 feature_range: tuple[float, float]) -> Plan:
    """Gateway vs direct at each connection count; TLS + proxy may cost at most 25% of throughput."""
    if random_instances:
        lo, hi = feature_range
        script, args = "random", [api_key, random_template(features), *[f"{lo:g}:{hi:g}"] * len(features)]
    else:
        script, args = "fixed", [api_key, instance_body(features)]
    targets: dict[str, Target] = {}
    pairs: list[Pair] = []
    goals: list[Goal] = []
    labels: dict[str, str] = {}
    for conns in connections:
        d, g = f"direct@{conns}", f"gateway@{conns}"
        targets[d] = Target(d, f"direct to one instance @{conns}", predict_url(direct_url, model, version),
                            script, list(args), conns, threads,
                            description=f"{direct_url}: one service instance, no TLS, no proxy")
        targets[g] = Target(g, f"through the gateway @{conns}", predict_url(gateway_url, model, version),
                            script, list(args), conns, threads,
                            description=f"{gateway_url}: nginx TLS termination, load-balanced over the instances")
        pairs.append(Pair(g, d))
        labels[f"{g}/{d}"] = f"gateway/direct @{conns}"
        goals.append(Goal(f"gateway/direct >= 0.75 at {conns} connections (TLS + proxy cost < 25%)",
                          _ratio(f"{g}/{d}"), 0.75, True, basis="median ratio"))
        goals.append(Goal(f"zero errors at {conns} connections", _errors([d, g]), 0.0, False,
                          basis="HTTP errors + socket errors, all measured runs", must_be_zero=True))
    top = max(connections)
    goals.append(Goal(f"p95 through the gateway < 200 ms at {top} connections", _latency(f"gateway@{top}", "95"),
                      200.0, False, "ms", basis="median over runs"))
    return Plan("gateway", targets, pairs, [], goals, labels)
