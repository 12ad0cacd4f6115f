"""``python -m bench.storage``: what TimescaleDB does to the stored predictions (issue 10).

Two measurements on a throwaway PostgreSQL 15 with TimescaleDB preloaded (``tests/harness``), with
the service's own migrations and write statement:

1. **Compression**: one realistic day of rows written by the writer's statement into a day that the
   compression policy (migration 0004) covers, then the policy's job run; the on-disk size of that
   day's chunks before and after (``chunk_compression_stats``: table + indexes + TOAST).
2. **Write path, continuous aggregate or not**: today's statement (the rows plus their per-second
   aggregates into ``prediction_metrics``, one statement per batch) against the rows alone with the
   aggregates left to a continuous aggregate refreshed afterwards. Rounds alternate A and B on two
   databases of the same server; each figure is the PostgreSQL backend's CPU time (from /proc, so
   waiting for a CPU on a shared machine does not count) per 1,000-row batch, the refresh's CPU
   shared out over the batches it covers. Ratios of medians, with min–max.

This is a report, not a test. Exit status 0 when numbers were produced, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "service"))
from harness.postgres import start_postgres, timescaledb_missing  # noqa: E402
from prediction_service.storage import apply_migrations  # noqa: E402
from prediction_service.storage.batch import INSERT_SQL, Record, batch_statement, encode_rows  # noqa: E402

BATCH = 1000
IRIS_LABELS = ("setosa", "versicolor", "virginica")
DIABETES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")

# Variant B: the rows only; prediction_metrics' figures come from a continuous aggregate over them.
INSERT_ROWS_SQL = INSERT_SQL[INSERT_SQL.index("INSERT INTO predictions"):INSERT_SQL.index("RETURNING")].rstrip() + ";"
CAGG_SQL = """
CREATE MATERIALIZED VIEW prediction_metrics_cagg WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 second', time) AS time, instance, model, model_version,
       count(*)::integer AS requests, (count(*) FILTER (WHERE cache_hit))::integer AS cache_hits,
       avg(latency_ms) AS latency_ms_avg, max(latency_ms) AS latency_ms_max
  FROM predictions GROUP BY 1, 2, 3, 4 WITH NO DATA
"""


def realistic_records(n: int, day_start: datetime, rng: random.Random) -> list[tuple[str, list[Record]]]:
    """``n`` prediction rows spread over one day as three instances write them: (instance, batch) pairs.

    Traffic follows a day curve (quiet at night); models: iris v1 70 %, iris v2 20 %, diabetes v1
    10 %, as clients send them (iris features with one decimal, standardised diabetes features),
    outputs as the service stores them (a forest's probabilities are multiples of 1/50), 20 % cache
    hits, latencies of a few milliseconds, 32-hex request ids, batches of up to 1,000 rows.
    """
    weights = [0.3 + (1 - abs(h - 14) / 14) for h in range(24)]
    cumulative = [sum(weights[:i + 1]) / sum(weights) for i in range(24)]
    seconds = []
    for _ in range(n):
        u = rng.random()
        hour = next(i for i, c in enumerate(cumulative) if u <= c)
        seconds.append(hour * 3600 + rng.random() * 3600)
    seconds.sort()
    rows_by_instance: dict[str, list[Record]] = {f"prediction-service-{i}": [] for i in (1, 2, 3)}
    names = list(rows_by_instance)
    for s in seconds:
        t = (day_start + timedelta(seconds=s)).timestamp()
        u = rng.random()
        if u < 0.9:
            version = "1" if u < 0.7 else "2"
            inp = {"sepal_length": round(rng.uniform(4.3, 7.9), 1), "sepal_width": round(rng.uniform(2.0, 4.4), 1),
                   "petal_length": round(rng.uniform(1.0, 6.9), 1), "petal_width": round(rng.uniform(0.1, 2.5), 1)}
            votes = [rng.randint(0, 50) for _ in IRIS_LABELS]
            votes[rng.randrange(3)] += 50
            total = sum(votes)
            probs = {k: round(v / total * 50) / 50 for k, v in zip(IRIS_LABELS, votes)}
            out = {"label": max(probs, key=probs.get), "probabilities": probs}
            model = "iris"
        else:
            version, model = "1", "diabetes"
            inp = {k: round(rng.gauss(0, 0.048), 9) for k in DIABETES}
            out = {"value": round(rng.gauss(152, 60), 6)}
        rows_by_instance[rng.choice(names)].append(
            Record(t, model, version, os.urandom(16).hex(), inp, out, round(rng.uniform(0.4, 6.0), 3),
                   rng.random() < 0.2))
    batches = []
    for instance, rows in rows_by_instance.items():
        batches += [(instance, rows[i:i + BATCH]) for i in range(0, len(rows), BATCH)]
    batches.sort(key=lambda b: b[1][0].time)
    return batches


def write(conn, batches, rows_only: bool = False) -> None:
    """The writer's own statement per batch (``rows_only``: variant B, without the aggregates)."""
    with conn.cursor() as cur:
        for instance, rows in batches:
            encoded, _ = encode_rows(rows)
            if rows_only:
                cur.execute(INSERT_ROWS_SQL, {"instance": instance, "rows": encoded.decode()})
            else:
                cur.execute(batch_statement(encoded, instance))


def measure_compression(server, rows: int, rng: random.Random, log) -> dict:
    dsn = server.create_database("bench_compression")
    apply_migrations(dsn)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    day = (datetime.now(timezone.utc) - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    log(f"==> writing one day of {rows:,} prediction rows ({day:%Y-%m-%d}) with the writer's statement")
    batches = realistic_records(rows, day, rng)
    started = time.monotonic()
    write(conn, batches)
    write_s = time.monotonic() - started
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE predictions, prediction_metrics")
        cur.execute("SELECT job_id, hypertable_name FROM timescaledb_information.jobs "
                    "WHERE proc_name = 'policy_compression' ORDER BY 2")
        jobs = cur.fetchall()
        result = {"rows": rows, "write_s": round(write_s, 1), "tables": {}}
        for job, table in jobs:
            started = time.monotonic()
            cur.execute(f"CALL run_job({job})")
            seconds = time.monotonic() - started
            cur.execute("SELECT count(*), sum(before_compression_total_bytes), sum(after_compression_total_bytes) "
                        f"FROM chunk_compression_stats('{table}') WHERE compression_status = 'Compressed'")
            chunks, before, after = cur.fetchone()
            before, after = int(before), int(after)
            cur.execute(f"SELECT count(*) FROM {table}")
            (count,) = cur.fetchone()
            result["tables"][table] = {"rows": count, "chunks": chunks, "before_bytes": before,
                                       "after_bytes": after, "ratio": round(before / after, 1),
                                       "compress_s": round(seconds, 1)}
            log(f"    {table}: {count:,} rows, {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
                f"(x{before / after:.1f}) in {seconds:.1f} s")
    conn.close()
    return result


def _backend_cpu_s(conn) -> float:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_write_path(server, rounds: int, batches_per_round: int, rng: random.Random, log) -> dict:
    """Interleaved rounds: A = today's statement; B = rows only, then a refresh of the continuous aggregate."""
    conns = {}
    for variant in ("a", "b"):
        dsn = server.create_database(f"bench_write_{variant}")
        apply_migrations(dsn)
        conns[variant] = psycopg2.connect(dsn)
        conns[variant].autocommit = True
    with conns["b"].cursor() as cur:
        cur.execute(CAGG_SQL)
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    per_round = batches_per_round * BATCH
    samples: dict[str, list[float]] = {"a": [], "b": [], "b_insert": [], "b_refresh": []}
    log(f"==> write path: {rounds} rounds x {batches_per_round} batches of {BATCH} rows, A/B alternating")
    for r in range(rounds + 1):  # round 0 warms both up and is not counted
        t0 = start + timedelta(minutes=5 * r)
        # A day's traffic shape squeezed into 5 minutes (x288): ~100 rows/s, several rows per second
        # and model in each per-second group, like a busy writer's batches.
        e0 = t0.timestamp()
        batches = [(i, [row._replace(time=e0 + (row.time - e0) / 288) for row in rows])
                   for i, rows in realistic_records(per_round, t0, rng)]
        for variant in (("a", "b") if r % 2 else ("b", "a")):
            conn = conns[variant]
            shifted = batches
            cpu0 = _backend_cpu_s(conn)
            write(conn, shifted, rows_only=variant == "b")
            cpu1 = _backend_cpu_s(conn)
            if variant == "b":
                with conn.cursor() as cur:
                    cur.execute("CALL refresh_continuous_aggregate('prediction_metrics_cagg', %s, %s)",
                                (t0 - timedelta(seconds=1), t0 + timedelta(minutes=5, seconds=1)))
                cpu2 = _backend_cpu_s(conn)
            if r == 0:
                continue
            n = len(shifted)
            if variant == "a":
                samples["a"].append((cpu1 - cpu0) / n * 1e6)
            else:
                samples["b"].append((cpu2 - cpu0) / n * 1e6)
                samples["b_insert"].append((cpu1 - cpu0) / n * 1e6)
                samples["b_refresh"].append((cpu2 - cpu1) / n * 1e6)
        if r:
            log(f"    round {r}: A {samples['a'][-1]:.0f} us/batch, B {samples['b'][-1]:.0f} us/batch "
                f"(insert {samples['b_insert'][-1]:.0f} + refresh {samples['b_refresh'][-1]:.0f})")
    for conn in conns.values():
        conn.close()
    ratios = [b / a for a, b in zip(samples["a"], samples["b"])]
    return {"rounds": rounds, "batches_per_round": batches_per_round, "batch_rows": BATCH,
            "cpu_us_per_batch": {k: {"median": round(statistics.median(v)), "min": round(min(v)),
                                     "max": round(max(v))} for k, v in samples.items()},
            "b_over_a": {"median": round(statistics.median(ratios), 2), "min": round(min(ratios), 2),
                         "max": round(max(ratios), 2)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=864_000,
                   help="rows in the realistic day (default 864,000 = 10 predictions/s on average)")
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds of the write-path comparison (default 6)")
    p.add_argument("--batches", type=int, default=30, help="1,000-row batches per round and variant (default 30)")
    p.add_argument("--output", type=Path, default=ROOT / "bench-results", help="folder for storage.json")
    p.add_argument("--seed", type=int, default=10)
    args = p.parse_args(argv)
    missing = timescaledb_missing()
    if missing:
        print(f"bench.storage needs TimescaleDB: {missing}", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    load = os.getloadavg()
    server = start_postgres(timescaledb=True)
    try:
        results = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "loadavg_start": [round(x, 1) for x in load], "cpus": os.cpu_count()}
        results["compression"] = measure_compression(server, args.rows, rng, log)
        results["write_path"] = measure_write_path(server, args.rounds, args.batches, rng, log)
        results["loadavg_end"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        server.destroy()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "storage.json").write_text(json.dumps(results, indent=2) + "\n")
    w = results["write_path"]["cpu_us_per_batch"]
    print(f"\nload average {results['loadavg_start']} -> {results['loadavg_end']} on {results['cpus']} CPUs")
    for table, c in results["compression"]["tables"].items():
        print(f"compression {table}: {c['rows']:,} rows, {c['before_bytes'] / 2**20:.1f} MiB -> "
              f"{c['after_bytes'] / 2**20:.1f} MiB, ratio {c['ratio']}")
    print(f"write path, PostgreSQL CPU per 1,000-row batch (median, min-max): "
          f"A per-batch aggregates {w['a']['median']} us ({w['a']['min']}-{w['a']['max']}); "
          f"B rows only {w['b_insert']['median']} us + continuous-aggregate refresh {w['b_refresh']['median']} us "
          f"= {w['b']['median']} us ({w['b']['min']}-{w['b']['max']}); "
          f"B/A {results['write_path']['b_over_a']['median']} "
          f"({results['write_path']['b_over_a']['min']}-{results['write_path']['b_over_a']['max']})")
    print(f"results: {args.output / 'storage.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
