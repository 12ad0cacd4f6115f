"""``python -m bench.peers`` (what ``make bench-peers`` runs): this service beside MLServer, BentoML and LitServe.

Makes each peer's pinned venv once (var/bench/peers-venvs/), starts every server on the same model
files, one worker pinned to one core — a bare aiohttp + onnxruntime baseline, the service as
deployed (auth, metrics, cache, DB logging on; throwaway PostgreSQL + Redis), MLServer, BentoML,
LitServe — checks that all give the same prediction, then runs wrk in interleaved rounds: every
run of a server follows a run of the baseline with the same kind of body, so each ratio compares
two neighbouring runs. Bodies: a fixed instance, and a new random one each request.

Writes var/bench/peers.json (the source), peers.md (the Markdown table) and peers.png (the picture,
drawn by matplotlib in its own venv). A report, not a test: exit 0 when numbers were produced, 1 when
a server did not start, answered wrongly or a run produced no numbers, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..environment import ServiceEnvironment, StartError, metrics_probe, timescaledb_missing
from ..runner import BenchError, Pair, Target, interleave
from . import report, venvs
from .apps.onnx_model import OnnxModel
from .servers import (PEERS, SERVERS, Running, check_answer, fixed_body, random_template, service_urls,
                      start_bentoml, start_litserve, start_mlserver, stop_tree, process_tree)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "service" / "models"
VAR = ROOT / "var"


def _env(name: str, default):
    return os.environ.get(name) or default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Environment: BENCH_PEERS_DURATION, BENCH_PEERS_ROUNDS, BENCH_PEERS_CONNECTIONS "
                                       "set the defaults of those options; BENCH_PEERS_VENVS the venvs' folder.")
    p.add_argument("--duration", type=int, default=int(_env("BENCH_PEERS_DURATION", 10)),
                   help="whole seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, default=int(_env("BENCH_PEERS_ROUNDS", 3)),
                   help="interleaved rounds; each runs every server once per case after a baseline run (default 3)")
    p.add_argument("--connections", type=int, default=int(_env("BENCH_PEERS_CONNECTIONS", 32)),
                   help="wrk connections (default 32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of one uncounted run per server and case (0 = none)")
    p.add_argument("--model", default="iris", help="model folder under service/models (default iris)")
    p.add_argument("--version", default="", help="version folder (default: the model's default version)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma list of servers to measure, the baseline always included (default all: "
                        f"{','.join(SERVERS)})")
    p.add_argument("--cases", default="fixed,random", help="fixed, random or both (default fixed,random)")
    p.add_argument("--feature-range", default="0:8", help="LO:HI of the random feature values (default 0:8)")
    p.add_argument("--output", type=Path, default=VAR / "bench",
                   help="folder for peers.json, peers.md, peers.png and the servers' logs (default var/bench)")
    p.add_argument("--venvs", type=Path, default=Path(_env("BENCH_PEERS_VENVS", VAR / "bench" / "peers-venvs")),
                   help="where the peers' venvs are made and kept (default var/bench/peers-venvs)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and wrk with taskset")
    p.add_argument("--no-plot", action="store_true", help="skip the picture (and the plot venv)")
    p.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        p.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    args.servers = ["baseline"] + [s for s in SERVERS if s in servers and s != "baseline"]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.cases or any(c not in report.CASES for c in args.cases):
        p.error(f"--cases takes fixed, random or both, got {','.join(args.cases)!r}")
    try:
        lo, hi = (float(x) for x in args.feature_range.split(":"))
    except ValueError:
        p.error(f"--feature-range expects LO:HI, e.g. 0:8, got {args.feature_range!r}")
    if not hi > lo:
        p.error(f"--feature-range: HI must be greater than LO in {args.feature_range!r}")
    args.feature_range = (lo, hi)
    if args.duration < 1 or args.rounds < 1 or args.threads < 1 or args.connections < args.threads:
        p.error("duration >= 1, rounds >= 1, threads >= 1 and connections >= threads")
    return args


def model_folder(model: str, version: str) -> tuple[Path, str, bool]:
    """(folder, version, is it the default version) of a model under service/models."""
    base = MODELS / model
    if not base.is_dir():
        raise BenchError(f"{base} is missing: run `make model` first (make bench-peers does)")
    versions = sorted((d for d in base.iterdir() if (d / "model.onnx").is_file()), key=lambda d: d.name)
    default = next((d.name for d in versions if json.loads((d / "metadata.json").read_text()).get("default")),
                   versions[-1].name if versions else None)
    chosen = version or default
    if chosen is None or not (base / chosen / "model.onnx").is_file():
        raise BenchError(f"{base}/{chosen} has no model.onnx (versions: {[d.name for d in versions]})")
    return base / chosen, chosen, chosen == default


def _cpus(no_pin: bool) -> tuple[str | None, str | None]:
    """(servers' CPU, wrk's CPU): the last and the first CPU we may use, when there are two or more."""
    allowed = sorted(os.sched_getaffinity(0))
    if no_pin or len(allowed) < 2:
        return None, None
    return str(allowed[-1]), str(allowed[0])


def _same(a: tuple[str, list[float]], b: tuple[str, list[float]]) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a[1], b[1]))


def start_servers(env: ServiceEnvironment, args, folder: Path, version: str, is_default: bool,
                  bins: dict[str, Path], workdir: Path) -> dict[str, Running]:
    running: dict[str, Running] = {}
    base = env.start_baseline(model_dir=folder)
    running["baseline"] = Running(SERVERS["baseline"], base.url, f"{base.url}/api/v1/models/{args.model}/predict", base)
    if {"service-v1", "service-v2"} & set(args.servers):
        svc = env.start_service("service", PREDICTION_LOG_LEVEL="INFO")  # deployed settings: DB logging, cache on
        urls = service_urls(svc.url, args.model, None if is_default else version)
        for key in ("service-v1", "service-v2"):
            if key in args.servers:
                running[key] = Running(SERVERS[key], svc.url, urls[key], svc,
                                       extra_probe=metrics_probe(svc.url, args.model))
    starters = {
        "mlserver": lambda: start_mlserver(env, bins["mlserver"], folder, args.model, version, workdir),
        "bentoml": lambda: start_bentoml(env, bins["bentoml"], folder, workdir),
        "litserve": lambda: start_litserve(env, bins["litserve"], folder),
    }
    for key in PEERS:
        if key in args.servers:
            proc, url = starters[key]()
            running[key] = Running(SERVERS[key], proc.url, url, proc)
    for r in running.values():
        r.processes = len(process_tree(r.process.proc.pid))
    return running


def run(args, log=print) -> dict:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (as root: apt-get install wrk; make deps does)")
    folder, version, is_default = model_folder(args.model, args.version)
    model = OnnxModel(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    # The plot's venv too, now rather than after the measurements.
    wanted = [k for k in PEERS if k in args.servers] + ([] if args.no_plot else ["plot"])
    bins = {k: python.parent for k, python in venvs.ensure_all(wanted, args.venvs, log).items()}
    server_cpus, wrk_cpus = _cpus(args.no_pin)
    workdir = args.output / "peers-run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    load_at_start = list(os.getloadavg())
    timescaledb = timescaledb_missing() is None
    with ServiceEnvironment(logdir=workdir / "logs", service_cpus=server_cpus, log=log, timescaledb=timescaledb) as env:
        running = start_servers(env, args, folder, version, is_default, bins, workdir)
        try:
            answers = {}
            for key, r in running.items():
                answers[key] = check_answer(r, fixed_body(r.server.protocol, model.features), env.api_key, model.labels)
                if not _same(answers[key], answers["baseline"]):
                    raise StartError(f"{r.server.label} predicts {answers[key]} for the instance the baseline "
                                     f"predicts {answers['baseline']}: not the same model")
            log(f"==> every server predicts {answers['baseline'][0]!r} for {fixed_body('v1', model.features)}")
            lo, hi = args.feature_range
            targets, pairs = {}, []
            for case in args.cases:
                for key, r in running.items():
                    script, body = (("fixed", fixed_body(r.server.protocol, model.features)) if case == "fixed" else
                                    ("random", random_template(r.server.protocol, model.features)))
                    extra = [f"{lo:g}:{hi:g}"] * len(model.features) if case == "random" else []
                    tk = report.target_key(key, case)
                    targets[tk] = Target(tk, f"{r.server.label} ({case})", r.url, script, [env.api_key, body, *extra],
                                         args.connections, args.threads, probe=r.probe)
                    if key != "baseline":
                        pairs.append(Pair(tk, report.target_key("baseline", case)))
            log(f"==> {args.rounds} rounds × {len(pairs)} (baseline, server) pairs of {args.duration} s runs, "
                f"{args.connections} connections; load average now {os.getloadavg()[0]:.1f}")
            runs = interleave(targets, pairs, args.rounds, args.duration, args.warmup, cpus=wrk_cpus, log=log)
            service_rows = env.db_rows()
        finally:
            for r in {id(r.process): r for r in running.values()}.values():
                stop_tree(env, r.process)
    settings = {"duration": args.duration, "rounds": args.rounds, "connections": args.connections,
                "threads": args.threads, "warmup": args.warmup, "feature_range": list(args.feature_range),
                "server_cpus": server_cpus, "wrk_cpus": wrk_cpus,
                "storage": "timescaledb" if timescaledb else "partitions"}
    extra = {"model": {"name": model.name, "version": version, "folder": str(folder.relative_to(ROOT)),
                       "description": meta.get("description", "")},
             "load": {"at_start": load_at_start},
             "answers": {k: {"label": a[0], "probabilities": a[1]} for k, a in answers.items()},
             "endpoints": {k: r.url for k, r in running.items()},
             "processes": {k: r.processes for k, r in running.items()},
             "service_db_rows_at_end": service_rows}
    return report.build(runs, args.servers, args.cases, settings, extra)


def draw(doc_path: Path, png: Path, venv_root: Path, log=print) -> None:
    python = venvs.ensure("plot", venv_root, log)
    proc = subprocess.run([str(python), str(Path(__file__).with_name("plot.py")), str(doc_path), str(png)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BenchError(f"plot.py exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        doc = run(args, log)
        args.output.mkdir(parents=True, exist_ok=True)
        js, md = args.output / "peers.json", args.output / "peers.md"
        js.write_text(json.dumps(doc, indent=2) + "\n")
        md.write_text(report.markdown(doc))
        print()
        print(report.console(doc))
        if args.markdown:
            print()
            print(report.markdown(doc))
        print(f"\nwritten: {js}, {md}", end="")
        if not args.no_plot:
            draw(js, args.output / "peers.png", args.venvs, log)
            print(f", {args.output / 'peers.png'}", end="")
        print()
    except (BenchError, StartError, venvs.VenvError) as exc:
        print(f"\nbench-peers failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
