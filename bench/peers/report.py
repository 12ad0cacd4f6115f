"""Measured runs → the results document (var/bench/peers.json), the console table, the Markdown table.

The JSON is the source; both tables and the picture (plot.py) are drawn from it, so they never
disagree. Per server and case: the median req/s and its ratio to the baseline (median of the
per-round ratios, each against the baseline run right before it), req/s of every round, latency,
errors and the server's CPU time per request.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

from ..runner import Pair, Run, measured, pair_ratios, summarise, wrk_version
from .servers import SERVERS

CASES = {"fixed": "the same instance every request (the service answers it from its cache)",
         "random": "a new random instance every request (every server runs the model)"}


def target_key(server: str, case: str) -> str:
    return f"{server}:{case}"


def build(runs: list[Run], servers: list[str], cases: list[str], settings: dict, extra: dict) -> dict:
    results: dict[str, dict] = {}
    for case in cases:
        base_key = target_key("baseline", case)
        base_rounds = _per_round(runs, base_key)
        for server in servers:
            key = target_key(server, case)
            s = summarise(runs, key)
            cpu = s["probe"].get("server_cpu_s")
            if server == "baseline":
                ratios = [1.0] * len(base_rounds)
                per_round = [statistics.median(v) for v in base_rounds.values()]
            else:
                ratios = pair_ratios(runs, Pair(key, base_key))
                per_round = [r.rps for r in measured(runs, key)]
            entry = {
                "rps_median": s["rps_median"],
                "ratio_to_baseline": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                      "values": ratios},
                "rps_per_round": per_round,
                "rps_min": s["rps_min"], "rps_max": s["rps_max"],
                "latency_ms": {p: s["latency_ms_median"][p] for p in ("50", "90", "99", "max")},
                "non_2xx": s["errors"].get("status", 0),
                "socket_errors": s["error_count"] - s["errors"].get("status", 0),
                "requests": s["requests"],
                "runs": s["runs"],
                "cpu_us_per_request": 1e6 * cpu / s["requests"] if cpu else None,
                "probe": {k: v for k, v in s["probe"].items() if k != "server_cpu_s"},
            }
            results.setdefault(server, {})[case] = entry
        # CPU per request against the baseline's: what the req/s ratio would be if each server's own CPU
        # were the only limit. Much steadier than req/s on a shared machine (waiting for a CPU costs none).
        base_cpu = results["baseline"][case]["cpu_us_per_request"]
        for server in servers:
            cpu = results[server][case]["cpu_us_per_request"]
            results[server][case]["cpu_ratio_to_baseline"] = base_cpu / cpu if base_cpu and cpu else None
    return {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "settings": settings,
        "cases": {c: CASES[c] for c in cases},
        "servers": {k: {"label": SERVERS[k].label, "protocol": SERVERS[k].protocol, "does": SERVERS[k].does}
                    for k in servers},
        "results": results,
        **extra,
        "runs": [r.to_json() for r in runs],
    }


def _per_round(runs: list[Run], key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in measured(runs, key):
        out.setdefault(r.round, []).append(r.rps)
    return out


# --- rendering ---------------------------------------------------------------------------------------

HEADER = ["server", "case", "req/s per round", "req/s median", "× baseline [min–max]", "p50 ms", "p99 ms",
          "non-2xx", "socket errors", "CPU µs/req", "CPU × baseline"]


def rows(doc: dict) -> list[list[str]]:
    out = []
    for server, by_case in doc["results"].items():
        for case, e in by_case.items():
            r = e["ratio_to_baseline"]
            out.append([
                doc["servers"][server]["label"], case,
                " ".join(f"{v:,.0f}" for v in e["rps_per_round"]), f"{e['rps_median']:,.0f}",
                "1 (baseline)" if server == "baseline" else f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]",
                f"{e['latency_ms']['50']:.2f}", f"{e['latency_ms']['99']:.2f}", str(e["non_2xx"]),
                str(e["socket_errors"]),
                f"{e['cpu_us_per_request']:,.0f}" if e["cpu_us_per_request"] else "-",
                f"{e['cpu_ratio_to_baseline']:.2f}" if e["cpu_ratio_to_baseline"] else "-",
            ])
    return out


def _conditions(doc: dict) -> str:
    st = doc["settings"]
    pin = (f"each server pinned to CPU {st['server_cpus']}, wrk to CPU {st['wrk_cpus']}"
           if st.get("server_cpus") is not None else "no CPU pinning")
    return (f"{doc['model']['name']} v{doc['model']['version']} ({doc['model']['description']}); "
            f"{st['rounds']} interleaved rounds of {st['duration']} s runs at {st['connections']} connections, "
            f"wrk {st['threads']} thread; {pin}; load average {doc['load']['at_start'][0]:.1f} at the start, "
            f"{doc['machine']['loadavg_at_end'][0]:.1f} at the end (1 min), {doc['machine']['cpus']} CPUs; "
            f"{doc['finished_at']}")


def console(doc: dict) -> str:
    table = [HEADER] + rows(doc)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = []
    for n, r in enumerate(table):
        lines.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "per request, besides parse → infer → answer:"]
    lines += [f"  {s['label']:<28} {s['does']}" for s in doc["servers"].values()]
    lines += ["", "cases: " + "; ".join(f"{c}: {d}" for c, d in doc["cases"].items()),
              "× baseline: median over the rounds of (server req/s / the baseline run right before it); "
              "CPU × baseline: the baseline's CPU time per request over the server's (all its processes; "
              "the service's PostgreSQL and Redis not counted)", _conditions(doc)]
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    out = [f"Measured: {_conditions(doc)}.", "",
           "| server | per request, besides parse → infer → answer | case | req/s per round | req/s median "
           "| × baseline [min–max] | p50 ms | p99 ms | non-2xx | socket errors | CPU µs/req | CPU × baseline |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    last = None
    for r, (server, case) in zip(rows(doc), [(s, c) for s, bc in doc["results"].items() for c in bc]):
        first = server != last
        last = server
        does = doc["servers"][server]["does"] if first else ""
        out.append("| " + " | ".join([r[0] if first else "", does, *r[1:]]) + " |")
    return "\n".join(out) + "\n"
