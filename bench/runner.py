"""Run wrk and interleave runs: the measuring half of the benchmark (no servers started here).

This machine is noisy (±30% between two 10 s runs), so no number stands alone: every candidate
run is preceded by a run of its baseline, and what we report is the median of the per-pair ratios
with their spread. The order of the pairs rotates from round to round so that no candidate always
runs first after a warm-up or always last.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

WRK = shutil.which("wrk") or "/usr/bin/wrk"
SCRIPTS = Path(__file__).resolve().parent / "wrk"
RESULT_MARKER = "BENCH_RESULT "


class BenchError(RuntimeError):
    """A run did not produce numbers (wrk failed, printed no result, or completed no request)."""


@dataclass
class Target:
    """One thing wrk can hammer: a URL, the Lua script and its arguments, the load shape."""

    key: str                 # short id used in tables and JSON, e.g. "a" or "gateway@64"
    label: str               # what a reader sees
    url: str
    script: str              # "fixed" (same body every request) or "random" (new instance each time)
    script_args: list[str]
    connections: int = 16
    threads: int = 1
    description: str = ""
    # Called before and after each run; the difference of the two dicts is stored with the run
    # (e.g. cache hits/misses read from the service's /metrics). Optional.
    probe: Callable[[], dict[str, float]] | None = field(default=None, repr=False)


@dataclass
class Run:
    """The numbers of one wrk run."""

    key: str
    round: int               # 0 = warm-up (never counted), 1..N = measured rounds
    rps: float
    requests: int
    duration_s: float
    latency_ms: dict[str, float]   # "50", "75", "90", "95", "99", "99.9", "max", "mean"
    errors: dict[str, int]         # wrk's connect/read/write/timeout socket errors and status (HTTP >= 400)
    loadavg_1m: float
    probe: dict[str, float] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict:
        d = asdict(self)
        d["error_count"] = self.error_count
        return d


def wrk_version() -> str:
    out = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


def parse_result(stdout: str) -> dict:
    """The JSON line our Lua ``done()`` prints; BenchError if it is missing or broken."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            try:
                return json.loads(line[len(RESULT_MARKER):])
            except ValueError as exc:
                raise BenchError(f"wrk printed a malformed result line ({exc}): {line[:200]}") from None
    raise BenchError("wrk printed no BENCH_RESULT line; its output was:\n" + stdout[-2000:])


def run_wrk(target: Target, duration: float, round_no: int, cpus: str | None = None,
            timeout: float = 2.0) -> Run:
    """One wrk run against ``target``; ``cpus`` pins wrk with taskset (e.g. "0").

    wrk takes whole seconds only, so ``duration`` is rounded (at least 1 s).
    """
    duration = max(1, round(duration))
    cmd = [WRK, "-t", str(target.threads), "-c", str(target.connections), "-d", f"{duration}s",
           "--timeout", f"{timeout:g}s", "-s", str(SCRIPTS / f"{target.script}.lua"), target.url,
           "--", *target.script_args]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    before = target.probe() if target.probe else {}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{target.key}: wrk did not finish within {duration + 60:g}s") from None
    after = target.probe() if target.probe else {}
    if proc.returncode != 0:
        raise BenchError(f"{target.key}: wrk exited with {proc.returncode}: "
                         f"{(proc.stderr.strip() or proc.stdout.strip())[-1000:]}")
    res = parse_result(proc.stdout)
    if res["requests"] <= 0:
        raise BenchError(f"{target.key}: wrk completed no request (errors: {res['errors']})")
    duration_s = res["duration_us"] / 1e6
    lat = res["latency_us"]
    latency_ms = {p: v / 1000 for p, v in lat["percentiles"].items()}
    latency_ms.update(max=lat["max"] / 1000, mean=lat["mean"] / 1000)
    return Run(key=target.key, round=round_no, rps=res["requests"] / duration_s, requests=res["requests"],
               duration_s=duration_s, latency_ms=latency_ms, errors=dict(res["errors"]),
               loadavg_1m=os.getloadavg()[0],
               probe={k: after.get(k, 0.0) - before.get(k, 0.0) for k in after})


@dataclass
class Pair:
    """A candidate and the baseline it is measured against (the baseline runs right before it)."""

    candidate: str
    baseline: str


def interleave(targets: dict[str, Target], pairs: list[Pair], rounds: int, duration: float,
               warmup: float, cpus: str | None = None, log: Callable[[str], None] = print) -> list[Run]:
    """Warm up every target once, then ``rounds`` rounds of (baseline, candidate) for every pair.

    Returns every run, warm-ups included (round 0); the caller decides what to count.
    """
    runs: list[Run] = []
    total = len(targets) + rounds * 2 * len(pairs)
    step = 0

    def one(key: str, round_no: int, secs: float) -> Run:
        nonlocal step
        step += 1
        t = targets[key]
        run = run_wrk(t, secs, round_no, cpus=cpus)
        tag = "warm-up" if round_no == 0 else f"round {round_no}"
        log(f"  [{step:>3}/{total}] {tag:<8} {t.key:<12} {run.rps:>9.0f} req/s  p50 {run.latency_ms['50']:6.2f} ms"
            f"  p99 {run.latency_ms['99']:7.2f} ms  errors {run.error_count}")
        runs.append(run)
        return run

    if warmup > 0:
        for key in targets:
            one(key, 0, warmup)
    else:
        total -= len(targets)
    for r in range(1, rounds + 1):
        shift = (r - 1) % len(pairs)
        for pair in pairs[shift:] + pairs[:shift]:
            one(pair.baseline, r, duration)
            one(pair.candidate, r, duration)
            time.sleep(0.2)  # let the last connections close before the next run
    return runs


# --- statistics over the measured runs -------------------------------------------------------------

def measured(runs: list[Run], key: str) -> list[Run]:
    return [r for r in runs if r.key == key and r.round > 0]


def summarise(runs: list[Run], key: str) -> dict:
    """Median req/s and latencies over the measured runs of one target, errors summed."""
    rs = measured(runs, key)
    if not rs:
        raise BenchError(f"{key}: no measured run")
    med = statistics.median
    lat_keys = rs[0].latency_ms.keys()
    probe_keys = set().union(*(r.probe.keys() for r in rs))
    return {
        "runs": len(rs),
        "rps_median": med(r.rps for r in rs),
        "rps_min": min(r.rps for r in rs),
        "rps_max": max(r.rps for r in rs),
        "latency_ms_median": {k: med(r.latency_ms[k] for r in rs) for k in lat_keys},
        "latency_ms_worst": {k: max(r.latency_ms[k] for r in rs) for k in lat_keys},
        "errors": {k: sum(r.errors.get(k, 0) for r in rs) for k in rs[0].errors},
        "error_count": sum(r.error_count for r in rs),
        "requests": sum(r.requests for r in rs),
        "probe": {k: sum(r.probe.get(k, 0.0) for r in rs) for k in sorted(probe_keys)},
    }


def pair_ratios(runs: list[Run], pair: Pair) -> list[float]:
    """Candidate req/s over the baseline run right before it, one ratio per round."""
    ordered = [r for r in runs if r.round > 0]
    ratios = []
    for i, run in enumerate(ordered):
        if run.key == pair.candidate and i > 0 and ordered[i - 1].key == pair.baseline:
            ratios.append(run.rps / ordered[i - 1].rps)
    return ratios


def round_ratios(runs: list[Run], numerator: str, denominator: str) -> list[float]:
    """numerator/denominator req/s for each round in which both ran (not adjacent runs)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.round > 0:
            by_round.setdefault(r.round, {})[r.key] = r.rps
    return [v[numerator] / v[denominator] for _, v in sorted(by_round.items())
            if numerator in v and denominator in v]


def ratio_summary(values: list[float]) -> dict:
    if not values:
        raise BenchError("no ratio could be formed (missing runs)")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
