"""``python -m bench`` (what ``make bench`` runs): wrk against the prediction service, as ratios.

Service mode (default, issue 2 §4): starts throwaway PostgreSQL + Redis, one service process per
configuration (DB logging on / off) and the bare-aiohttp baseline, then interleaves
baseline/candidate runs for scenarios (a)–(d) and (c-shared) and checks the goals.

Gateway mode (issue 5): ``python -m bench --gateway https://localhost:8443 --direct http://127.0.0.1:8001``
measures an already running local environment (``make up``) through nginx vs one instance directly.

This is a report, not a test: the exit status is 0 when numbers were produced, goals met or not,
and 1 when a run failed to produce numbers (2 for bad arguments).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .runner import BenchError, interleave
from .scenarios import gateway_plan, instance_body, predict_url, service_plan, v2_body, v2_url
from . import report

ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default):
    return os.environ.get(name) or default


def _connections(text: str) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected connection counts like 16 or 16,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive connection counts, got {text!r}")
    return values


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, e.g. 0:8, got {text!r}") from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"HI must be greater than LO in {text!r}")
    return lo, hi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Environment: BENCH_DURATION, BENCH_PAIRS, BENCH_CONNECTIONS, BENCH_THREADS, "
                                       "BENCH_WARMUP set the defaults of the options of the same name.")
    p.add_argument("--duration", type=int, default=None,
                   help="whole seconds per run (BENCH_DURATION; default 10, gateway mode 30)")
    p.add_argument("--pairs", type=int, default=int(_env("BENCH_PAIRS", 3)),
                   help="interleaved baseline/candidate pairs per candidate (BENCH_PAIRS; default 3)")
    p.add_argument("--connections", type=_connections, default=None,
                   help="wrk connections, comma-separated for several (BENCH_CONNECTIONS; default 16, gateway 16,64)")
    p.add_argument("--threads", type=int, default=None,
                   help="wrk threads (BENCH_THREADS; default 1, gateway mode 2)")
    p.add_argument("--warmup", type=int, default=int(_env("BENCH_WARMUP", 3)),
                   help="seconds of one discarded warm-up run per scenario (BENCH_WARMUP; default 3; 0 = none)")
    p.add_argument("--model", default="iris", help="model to benchmark (default iris)")
    p.add_argument("--version", default="",
                   help="model version (default: the model's default version, as deployed — iris v1, the 50-tree "
                        "forest, cache tier local)")
    p.add_argument("--shared-version", default="auto",
                   help="version for scenario (c-shared), a cache miss on a shared-tier (Redis) version: "
                        "'auto' = the model's first other version with cache tier shared (iris v2); '' = skip")
    p.add_argument("--heavy-model", default="iris_ensemble",
                   help="model of the adaptive-batching scenarios (h)/(h-off), whose inference dominates a request "
                        "(default iris_ensemble, at its default version); '' = skip them")
    p.add_argument("--feature-range", type=_range, default=(0.0, 8.0),
                   help="LO:HI of the random feature values in cache-miss runs (default 0:8)")
    p.add_argument("--output", type=Path, default=ROOT / "bench-results",
                   help="folder for bench.json / bench.md and server logs (default bench-results/)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the service to one CPU and wrk to another with taskset")
    p.add_argument("--markdown", action="store_true", help="print the Markdown tables instead of the console table")
    p.add_argument("--storage", choices=["auto", "timescaledb", "partitions"], default=_env("BENCH_STORAGE", "auto"),
                   help="the throwaway PostgreSQL of service mode: with TimescaleDB preloaded (hypertables, as "
                        "deployed) or without (native partitions); auto = TimescaleDB when installed (BENCH_STORAGE)")
    p.add_argument("--profile", choices=["b", "c", "d", "c-shared", "c-v2"], default=None,
                   help="instead of the benchmark: one run of this scenario with the service under pyinstrument; "
                        "writes bench-results/profile-<scenario>.{txt,html,pyisession}")
    g = p.add_argument_group("gateway mode (issue 5; needs the local environment of `make up`)")
    g.add_argument("--gateway", metavar="URL", help="gateway base URL, e.g. https://localhost:8443")
    g.add_argument("--direct", metavar="URL", help="one instance's base URL, e.g. http://127.0.0.1:8001")
    g.add_argument("--api-key", default=None, help="API key (default: $PREDICTION_API_KEY)")
    g.add_argument("--random", action="store_true",
                   help="gateway mode: a new instance per request (cache misses) instead of a fixed one")
    args = p.parse_args(argv)
    if bool(args.gateway) != bool(args.direct):
        p.error("--gateway and --direct go together")
    gateway = bool(args.gateway)
    if args.duration is None:
        args.duration = int(_env("BENCH_DURATION", 30 if gateway else 10))
    if args.connections is None:
        args.connections = _connections(_env("BENCH_CONNECTIONS", "16,64" if gateway else "16"))
    if args.threads is None:
        args.threads = int(_env("BENCH_THREADS", 2 if gateway else 1))
    if args.duration <= 0 or args.pairs < 1 or args.threads < 1:
        p.error("duration must be > 0, pairs >= 1, threads >= 1")
    if args.threads > min(args.connections):
        p.error(f"wrk needs at least one connection per thread ({args.threads} threads, "
                f"{min(args.connections)} connections)")
    args.version = args.version or None
    if args.storage == "auto":
        from .environment import timescaledb_missing
        args.storage = "partitions" if timescaledb_missing() else "timescaledb"
    return args


def _cpus(no_pin: bool) -> tuple[str | None, str | None]:
    """(service CPU, wrk CPU): the last and the first CPU we may use, when there are two or more."""
    if no_pin:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return str(allowed[-1]), str(allowed[0])


def _check(url: str, api_key: str, body: str, what: str, insecure_tls: bool = False) -> dict:
    """One request before measuring: a benchmark of 4xx answers would be worthless."""
    from .environment import StartError, http
    status, resp = http("POST", url, body.encode(), {"Content-Type": "application/json", "X-API-Key": api_key},
                        insecure_tls=insecure_tls)
    if status != 200:
        raise StartError(f"{what}: POST {url} answered {status}: {resp[:400]!r} (body sent: {body})")
    return json.loads(resp)


def run_service_mode(args, log) -> tuple[dict, str]:
    from .environment import ServiceEnvironment, combine, cpu_probe, describe_models, metrics_probe, version_info
    service_cpus, wrk_cpus = _cpus(args.no_pin)
    if not (ROOT / "service" / "models").is_dir():
        raise BenchError("service/models is missing: run `make model` first (make bench does)")
    with ServiceEnvironment(logdir=args.output / "logs", service_cpus=service_cpus, log=log,
                            timescaledb=args.storage == "timescaledb") as env:
        baseline = env.start_baseline()
        logging_on = env.start_service("service-logging-on", PREDICTION_DB_LOGGING="true")
        logging_off = env.start_service("service-logging-off", PREDICTION_DB_LOGGING="false")
        # Issue 19: the deployed configuration with adaptive batching off in every model's metadata.
        unbatched = env.start_service("service-batching-off", PREDICTION_DB_LOGGING="true",
                                      PREDICTION_MODEL_PATH=str(env.unbatched_models()))
        acked = env.start_service("service-ack", PREDICTION_DB_LOGGING="true", PREDICTION_DB_ACK_AFTER_WRITE="true")
        models = describe_models(logging_on.url, env.api_key)
        info = version_info(models, args.model, args.version)
        features, shared = [f["name"] for f in info["features"]], _shared_version(args, info)
        body = instance_body(features)
        answer = _check(predict_url(logging_on.url, args.model, args.version), env.api_key, body, "service")
        _check(predict_url(baseline.url, args.model, args.version), env.api_key, body, "baseline")
        log(f"==> {args.model} v{info['version']} (cache tier {info.get('cache_tier')}, max_batch_size "
            f"{info.get('max_batch_size')}) takes {features}; sample answer: {json.dumps(answer)[:160]}")
        _check(v2_url(logging_on.url, args.model, args.version), env.api_key, v2_body(features), "service (V2)")
        _check(predict_url(unbatched.url, args.model, args.version), env.api_key, body, "service, batching off")
        _check(predict_url(acked.url, args.model, args.version), env.api_key, body, "service, acknowledged writes")
        if shared:
            _check(predict_url(logging_on.url, args.model, shared), env.api_key, body, "service (shared tier)")
            log(f"==> (c-shared): {args.model} v{shared}, cache tier shared")
        heavy = _heavy_model(args, models, features, (logging_on, unbatched), env.api_key, log)
        on = combine(metrics_probe(logging_on.url, args.model), cpu_probe(logging_on.proc.pid))
        probes = {"a": cpu_probe(baseline.proc.pid), "b": on, "b-v2": on, "c": on, "c-shared": on, "c-v2": on,
                  "d": combine(metrics_probe(logging_off.url, args.model), cpu_probe(logging_off.proc.pid)),
                  "c-off": combine(metrics_probe(unbatched.url, args.model), cpu_probe(unbatched.proc.pid)),
                  "c-ack": combine(metrics_probe(acked.url, args.model), cpu_probe(acked.proc.pid))}
        if heavy:
            probes["h"] = combine(metrics_probe(logging_on.url, heavy), cpu_probe(logging_on.proc.pid))
            probes["h-off"] = combine(metrics_probe(unbatched.url, heavy), cpu_probe(unbatched.proc.pid))
        plan = service_plan(
            baseline_url=baseline.url, logging_url=logging_on.url, nolog_url=logging_off.url, api_key=env.api_key,
            model=args.model, version=args.version, features=features, feature_range=args.feature_range,
            connections=args.connections, threads=args.threads, tier=str(info.get("cache_tier")),
            shared_version=shared, unbatched_url=unbatched.url, heavy_model=heavy, ack_url=acked.url, probes=probes)
        _announce(plan, args, log, service_cpus, wrk_cpus)
        runs = interleave(plan.targets, plan.pairs, args.pairs, args.duration, args.warmup, cpus=wrk_cpus, log=log)
        rows = env.db_rows()
    settings = _settings(args, service_cpus, wrk_cpus)
    extra = {"model": {"name": args.model, "version": info["version"], "cache_tier": info.get("cache_tier"),
                       "max_batch_size": info.get("max_batch_size"), "shared_version": shared, "features": features,
                       "heavy_model": heavy},
             "database": {"predictions_rows_at_end": rows, "storage": args.storage}}
    return report.build_results(plan, runs, settings, extra), "bench"


def _heavy_model(args, models: dict, features: list[str], services, api_key: str, log) -> str | None:
    """The model of scenarios (h)/(h-off), checked to answer on both services; None to skip them."""
    from .environment import version_info
    if not args.heavy_model:
        return None
    info = version_info(models, args.heavy_model, None)
    heavy_features = [f["name"] for f in info["features"]]
    if heavy_features != features:
        raise BenchError(f"--heavy-model {args.heavy_model} takes {heavy_features}, not {features}: the scenarios "
                         "send the same random instances")
    if info.get("max_batch_size", 1) <= 1:
        raise BenchError(f"--heavy-model {args.heavy_model} has adaptive batching off (max_batch_size 1)")
    for svc, what in zip(services, ("heavy model", "heavy model, batching off")):
        _check(predict_url(svc.url, args.heavy_model, None), api_key, instance_body(features), what)
    log(f"==> (h): {args.heavy_model} v{info['version']}, max_batch_size {info['max_batch_size']}")
    return args.heavy_model


def _shared_version(args, info: dict) -> str | None:
    """The version scenario (c-shared) measures, or None to skip it."""
    if args.shared_version == "auto":
        return info["shared_versions"][0] if info["shared_versions"] else None
    return args.shared_version or None


def run_gateway_mode(args, log) -> tuple[dict, str]:
    from .environment import describe_models, model_features
    api_key = args.api_key or os.environ.get("PREDICTION_API_KEY")
    if not api_key:
        raise BenchError("gateway mode needs the API key of the running environment: --api-key or PREDICTION_API_KEY")
    try:
        features = model_features(describe_models(args.direct, api_key), args.model, args.version)
    except OSError as exc:
        raise BenchError(f"{args.direct} does not answer ({exc}); is the local environment up (make up)?") from None
    body = instance_body(features)
    _check(predict_url(args.direct, args.model, args.version), api_key, body, "direct")
    _check(predict_url(args.gateway, args.model, args.version), api_key, body, "gateway", insecure_tls=True)
    plan = gateway_plan(gateway_url=args.gateway, direct_url=args.direct, api_key=api_key, model=args.model,
                        version=args.version, features=features, connections=args.connections,
                        threads=args.threads, random_instances=args.random, feature_range=args.feature_range)
    # No pinning: nginx and the instances of the environment share every CPU, wrk has to as well.
    _announce(plan, args, log, None, None)
    runs = interleave(plan.targets, plan.pairs, args.pairs, args.duration, args.warmup, cpus=None, log=log)
    settings = _settings(args, None, None)
    settings.update(gateway=args.gateway, direct=args.direct, random_instances=args.random)
    extra = {"model": {"name": args.model, "version": args.version, "features": features}}
    return report.build_results(plan, runs, settings, extra), "bench-gateway"


def run_profile_mode(args, log) -> int:
    """One warm-up and one measured run of a scenario against a service under pyinstrument."""
    import subprocess
    from .environment import ServiceEnvironment, describe_models, version_info
    from .runner import run_wrk
    service_cpus, wrk_cpus = _cpus(args.no_pin)
    args.output.mkdir(parents=True, exist_ok=True)
    session = (args.output / f"profile-{args.profile}.pyisession").resolve()
    logging_on = "false" if args.profile == "d" else "true"
    with ServiceEnvironment(logdir=args.output / "logs", service_cpus=service_cpus, log=log,
                            timescaledb=args.storage == "timescaledb") as env:
        svc = env.start_service(f"service-profile-{args.profile}", profile_to=session,
                                PREDICTION_DB_LOGGING=logging_on)
        info = version_info(describe_models(svc.url, env.api_key), args.model, args.version)
        features = [f["name"] for f in info["features"]]
        shared = _shared_version(args, info)
        if args.profile == "c-shared" and not shared:
            raise BenchError(f"{args.model} has no other version with cache tier shared to profile")
        plan = service_plan(baseline_url=svc.url, logging_url=svc.url, nolog_url=svc.url, api_key=env.api_key,
                            model=args.model, version=args.version, features=features,
                            feature_range=args.feature_range, connections=args.connections[:1],
                            threads=args.threads, tier=str(info.get("cache_tier")), shared_version=shared)
        target = plan.targets[args.profile]
        for round_no, secs in ((0, args.warmup), (1, args.duration)):
            if secs:
                run = run_wrk(target, secs, round_no, cpus=wrk_cpus)
                log(f"  {'warm-up' if round_no == 0 else 'profiled'}: {run.rps:.0f} req/s, "
                    f"p99 {run.latency_ms['99']:.2f} ms, errors {run.error_count}")
        rc = env.stop(svc)
        if rc != 0 or not session.exists():
            raise BenchError(f"the profiled service exited with {rc} and wrote no profile; log {svc.logfile}")
    pyi = [sys.executable, "-m", "pyinstrument", "--load", str(session)]
    txt, html = session.with_suffix(".txt"), session.with_suffix(".html")
    subprocess.run(pyi + ["-r", "text", "--no-color", "-o", str(txt),
                          "-p", "processor_options.filter_threshold=0.005"], check=True)
    subprocess.run(pyi + ["-r", "html", "-o", str(html)], check=True)
    log(f"wrote {txt}, {html} (open in a browser) and {session}")
    return 0


def _settings(args, service_cpus, wrk_cpus) -> dict:
    return {"duration": args.duration, "pairs": args.pairs, "connections": args.connections,
            "threads": args.threads, "warmup": args.warmup, "service_cpus": service_cpus, "wrk_cpus": wrk_cpus,
            "feature_range": list(args.feature_range)}


def _announce(plan, args, log, service_cpus, wrk_cpus) -> None:
    n = len(plan.targets) * (1 if args.warmup > 0 else 0) + args.pairs * 2 * len(plan.pairs)
    secs = len(plan.targets) * args.warmup + args.pairs * 2 * len(plan.pairs) * args.duration
    pin = f"; service on CPU {service_cpus}, wrk on CPU {wrk_cpus}" if service_cpus is not None else ""
    log(f"==> {n} wrk runs, about {secs / 60:.1f} min ({args.duration:g} s each, {args.pairs} pairs per candidate, "
        f"connections {args.connections}, wrk threads {args.threads}{pin})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.markdown else sys.stdout, flush=True)

    from .environment import StartError
    if args.profile:
        try:
            return run_profile_mode(args, log)
        except (BenchError, StartError, OSError) as exc:
            print(f"bench: no profile: {exc}", file=sys.stderr)
            return 1
    try:
        results, stem = (run_gateway_mode if args.gateway else run_service_mode)(args, log)
    except (BenchError, StartError, OSError) as exc:  # OSError: a URL that does not answer
        print(f"bench: no numbers: {exc}", file=sys.stderr)
        return 1
    js, md = report.write_results(results, args.output, stem)
    print(report.markdown(results) if args.markdown else "\n" + report.console(results))
    log(f"\nwrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
