"""Turn measured runs into the results document, a console table and a Markdown table.

The JSON document (``bench-results/bench.json``) is the source; the two tables are renderings of it,
so what is printed, what is stored and what goes into docs/performance.md never disagree.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .runner import Run, ratio_summary, pair_ratios, round_ratios, summarise, wrk_version
from .scenarios import Plan


def build_results(plan: Plan, runs: list[Run], settings: dict, extra: dict | None = None) -> dict:
    """The results document: settings, per-scenario summaries, ratios, goal verdicts, every run."""
    scenarios = {}
    for key, t in plan.targets.items():
        s = summarise(runs, key)
        s.update(label=t.label, description=t.description, connections=t.connections, threads=t.threads,
                 script=t.script, url=t.url)
        cpu = s["probe"].get("server_cpu_s")
        s["server_cpu_us_per_request"] = 1e6 * cpu / s["requests"] if cpu else None
        scenarios[key] = s
    ratios = {}
    for pair in plan.pairs:
        name = plan.pair_name(pair)
        ratios[name] = {**ratio_summary(pair_ratios(runs, pair)), "label": plan.ratio_labels.get(name, name),
                        "how": "candidate / the baseline run right before it, per round"}
        scenarios[pair.candidate].setdefault("ratio", name)  # the table shows its first baseline
        cb, cc = (scenarios[k]["server_cpu_us_per_request"] for k in (pair.baseline, pair.candidate))
        # What the req/s ratio would be if the server's CPU were the only limit (a quiet machine).
        ratios[name]["cpu_estimate"] = cb / cc if cb and cc else None
    for name, num, den in plan.extra_ratios:
        ratios[name] = {**ratio_summary(round_ratios(runs, num, den)), "label": plan.ratio_labels.get(name, name),
                        "how": "per round, the two runs of the same round"}
        cn, cd = (scenarios[k]["server_cpu_us_per_request"] for k in (num, den))
        ratios[name]["cpu_estimate"] = cd / cn if cn and cd else None
    results = {
        "mode": plan.mode,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "settings": settings,
        "scenarios": scenarios,
        "ratios": ratios,
        "runs": [r.to_json() for r in runs],
        **(extra or {}),
    }
    results["goals"] = [g.evaluate(results) for g in plan.goals]
    return results


def write_results(results: dict, outdir: Path, stem: str) -> tuple[Path, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    js, md = outdir / f"{stem}.json", outdir / f"{stem}.md"
    js.write_text(json.dumps(results, indent=2) + "\n")
    md.write_text(markdown(results))
    return js, md


# --- rendering ------------------------------------------------------------------------------------

def _cache_text(probe: dict) -> str:
    hits = sum(v for k, v in probe.items() if k.startswith("cache_hits_"))
    total = hits + probe.get("cache_misses", 0.0)
    return f"{100 * hits / total:.0f}%" if total else "-"


def _ratio_for(results: dict, key: str) -> str:
    name = results["scenarios"][key].get("ratio")
    if not name:
        return "-"
    r = results["ratios"][name]
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]"


def _rows(results: dict) -> list[list[str]]:
    rows = []
    for key, s in results["scenarios"].items():
        lat = s["latency_ms_median"]
        rows.append([
            s["label"], f"{s['rps_median']:,.0f}", f"{s['rps_min']:,.0f}–{s['rps_max']:,.0f}",
            f"{lat['50']:.2f}", f"{lat['95']:.2f}", f"{lat['99']:.2f}", str(s["error_count"]),
            _cache_text(s.get("probe", {})),
            f"{s['server_cpu_us_per_request']:.0f}" if s.get("server_cpu_us_per_request") else "-",
            _batch_text(s.get("probe", {})),
            _ratio_for(results, key),
        ])
    return rows


def _batch_text(probe: dict) -> str:
    """Requests per inference call under adaptive batching (from /metrics), or '-' when it is off."""
    calls = probe.get("batch_calls", 0.0)
    return f"{probe.get('batch_requests', 0.0) / calls:.1f}" if calls else "-"


HEADER = ["scenario", "req/s (median)", "req/s min–max", "p50 ms", "p95 ms", "p99 ms", "errors",
          "cache hits", "server CPU µs/req", "requests per inference call", "ratio vs baseline: median [min–max]"]


def _goal_line(g: dict) -> str:
    verdict = "PASS" if g["passed"] else "MISS"
    unit = f" {g['unit']}" if g["unit"] else ""
    if g["threshold"] == 0 and g["goal"].startswith("zero errors"):
        detail = f"{g['value']:.0f} errors"
    else:
        rel = f", {100 * g['margin_relative']:+.0f}%" if g["margin_relative"] is not None else ""
        detail = f"{g['value']:.3g}{unit} (margin {g['margin']:+.3g}{unit}{rel})"
    return f"{verdict}  {g['goal']}: {detail} — {g['basis']}"


def console(results: dict) -> str:
    rows = [HEADER] + _rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    right = {1, 2, 3, 4, 5, 6, 7, 8, 9}
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("ratios (req/s, interleaved in the same run):")
    for name, r in results["ratios"].items():
        vals = ", ".join(f"{v:.2f}" for v in r["values"])
        est = f"  CPU-cost estimate {r['cpu_estimate']:.2f}" if r.get("cpu_estimate") else ""
        lines.append(f"  {r['label']:<36} median {r['median']:.2f}  spread {r['min']:.2f}–{r['max']:.2f}  ({vals}){est}")
    if any(r.get("cpu_estimate") for r in results["ratios"].values()):
        lines.append("  (CPU-cost estimate: the ratio of the server processes' CPU time per request — what the req/s")
        lines.append("   ratio would be if that CPU were the only limit; PostgreSQL/Redis/wrk CPU not included)")
    lines.append("")
    lines.append("goals:")
    lines += [f"  {_goal_line(g)}" for g in results["goals"]]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    st = results["settings"]
    out = [f"Measured {results['finished_at']} on {results['machine']['cpus']} CPUs, "
           f"{st['duration']:g} s per run, {st['pairs']} interleaved pairs per candidate, "
           f"{', '.join(str(c) for c in st['connections'])} connections, wrk threads {st['threads']}"
           + (f", service pinned to CPU {st['service_cpus']}, wrk to CPU {st['wrk_cpus']}"
              if st.get("service_cpus") is not None else "") + ".", ""]
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * 9 + ["---"]) + "|")
    out += ["| " + " | ".join(r) + " |" for r in _rows(results)]
    out.append("")
    out.append("| ratio | median | spread (min–max) | CPU-cost estimate |")
    out.append("|---|---:|---:|---:|")
    out += [f"| {r['label']} | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} | "
            f"{r['cpu_estimate']:.2f} |" if r.get("cpu_estimate") else
            f"| {r['label']} | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} | - |"
            for r in results["ratios"].values()]
    out.append("")
    out.append("| goal | verdict | measured |")
    out.append("|---|---|---|")
    for g in results["goals"]:
        line = _goal_line(g)
        verdict, rest = line[:4], line[6:]
        measured = rest.split(": ", 1)[1] if ": " in rest else rest
        out.append(f"| {g['goal']} | {verdict} | {measured} |")
    return "\n".join(out) + "\n"
