"""Draw var/bench/peers.json as a bar chart: median req/s per server and case, the rounds' spread, the ratio.

Runs in its own venv (bench/peers/requirements/plot.txt: matplotlib), started by ``python -m bench.peers``;
by hand: ``<plot venv>/bin/python bench/peers/plot.py var/bench/peers.json var/bench/peers.png``.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"fixed": "#4C72B0", "random": "#DD8452"}


def draw(doc: dict, out: str) -> None:
    servers = list(doc["results"])
    cases = list(doc["cases"])
    width = 0.8 / len(cases)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    top = 0.0
    for i, case in enumerate(cases):
        xs = [n + (i - (len(cases) - 1) / 2) * width for n in range(len(servers))]
        entries = [doc["results"][s][case] for s in servers]
        med = [e["rps_median"] for e in entries]
        lo = [m - min(e["rps_per_round"]) for m, e in zip(med, entries)]
        hi = [max(e["rps_per_round"]) - m for m, e in zip(med, entries)]
        ax.bar(xs, med, width * 0.92, yerr=[lo, hi], capsize=4, color=COLOURS.get(case), label=f"{case} body",
               error_kw={"elinewidth": 1.2, "ecolor": "#333333"})
        for x, m, h, s, e in zip(xs, med, hi, servers, entries):
            r = e["ratio_to_baseline"]["median"]
            cpu = e.get("cpu_ratio_to_baseline")
            text = "baseline" if s == "baseline" else f"{r:.2f}×" + (f"\nCPU {cpu:.2f}×" if cpu else "")
            ax.annotate(text, (x, m + h), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
            top = max(top, m + h)
    ax.set_xticks(range(len(servers)))
    ax.set_xticklabels([doc["servers"][s]["label"].replace(", ", ",\n").replace(" + ", " +\n") for s in servers],
                       fontsize=9)
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel("requests per second (median of the rounds; whiskers: min–max)")
    st, model = doc["settings"], doc["model"]
    ax.set_title(f"{model['name']} v{model['version']} ONNX model, one worker on one core, wrk {st['connections']} "
                 f"connections, {st['rounds']} interleaved rounds of {st['duration']} s\n"
                 f"labels: median ratio of req/s to the bare aiohttp + onnxruntime baseline run before it; "
                 f"CPU: its CPU time per request over the server's",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=9)
    load = doc["load"]["at_start"][0], doc["machine"]["loadavg_at_end"][0]
    fig.text(0.99, 0.01, f"make bench-peers, {doc['finished_at'][:16]}, {doc['machine']['cpus']} CPUs, "
             f"load average {load[0]:.1f} → {load[1]:.1f}", ha="right", fontsize=7.5, color="#555555")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py PEERS_JSON OUT_PNG")
    with open(sys.argv[1]) as f:
        draw(json.load(f), sys.argv[2])
