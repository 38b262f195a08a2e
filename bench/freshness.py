"""Benchmark 2, freshness: event-to-visible lag in the serving view at a steady 5,000 events/s (the
average of a retailer with 500M interactions a day) and during a 10x burst.
Floor: p95 <= 10 s; target: p95 <= 3 s.

    python -m bench.freshness [--rate 5000] [--steady-seconds 120] [--burst-factor 10]
                              [--burst-seconds 20] [--trigger-seconds 1] [--max-offsets 500000]
                              [--customer-nice N] [--generator-processes 2]
                              [--spark-conf spark.KEY=VALUE ...]

Runs, against the broker of the settings, on a fresh topic and lake:
- the ingest stream (`touchpoint stream ingest`) and the speed layer (`touchpoint stream speed`),
  each its own process, with processing-time triggers of `--trigger-seconds`;
- with `--customer-nice N`, the speed layer as two processes: `--views campaigns`, and
  `--views customers --nice N` (the customer views below the other streams' CPU priority);
- the generator in real-time mode (seeded), paced at `--rate` lines/s with a burst of
  `--burst-factor` x for `--burst-seconds`, then `--tail-seconds` more at the base rate, in
  `--generator-processes` processes (each a shard of the customers at rate / processes): one Python
  process makes about 30,000 lines/s alone, short of the burst's 50,000. While its pacing waits,
  the generator simulates up to `--lookahead` lines ahead (default: the burst's), so that during
  the burst it only renders and sends them.

An event is visible in the serving views once the speed batch that read its silver commit has
committed (`speed.freshness.processed_at`; serving reads speed.* directly). Its lag is that instant
minus the moment it was produced (its Kafka record timestamp, `source_ts`, which the real-time
generator sets to the send time). Silver commit versions come from silver's change data feed
(delta-rs), the speed batches' version ranges from `speed.freshness`. The generator shares the
2 cores with the streams: the achieved rates are reported next to the requested ones (the burst's
as the valid events produced within its window, per second).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import own_cpu_seconds, progress, realtime_traffic, stream_default, write_result
from bench.faults import (
    BackgroundGenerator, ChildProcess, JARS, RssSampler, broker_pid, ingest_args, lake_table, speed_args,
    subprocess_env, wait_for,
)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"events": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))], 3)

    return {"events": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99),
            "max": round(ordered[-1], 3)}


def silver_versions(settings):
    """(event_id, source_ts, _commit_version) of every insert into silver, from its change feed."""
    from deltalake import DeltaTable

    from touchpoint.core.catalog import table_path
    from touchpoint.streaming.speed import change_feed_start

    import pyarrow as pa

    silver = DeltaTable(table_path("silver.events", settings))
    start = change_feed_start(silver.history())
    # delta-rs hands back an arro3 table (string_view columns, which few pyarrow kernels take):
    # pyarrow reads it over the Arrow C stream interface, and the filter runs in Python.
    table = pa.table(silver.load_cdf(starting_version=start).read_all())
    return [row for row in table.select(["event_id", "source_ts", "_commit_version", "_change_type"]).to_pylist()
            if row["_change_type"] == "insert"]


def visible_lags(settings, burst: tuple[float, float]) -> dict:
    """Lags per speed query (`speed`: campaign views; `speed_customers`: customer views)."""
    freshness = lake_table(settings, "speed.freshness")
    rows = silver_versions(settings)
    return {query: query_lags([r for r in freshness if r["query"] == query], rows, burst)
            for query in sorted({r["query"] for r in freshness})}


def query_lags(batches: list[dict], rows: list[dict], burst: tuple[float, float]) -> dict:
    import bisect

    batches = sorted(batches, key=lambda r: r["batch_id"])
    # A query's batches read disjoint, increasing silver version ranges: find an insert's batch by bisection.
    spans = sorted((r["first_version"], r["last_version"], r["processed_at"]) for r in batches
                   if r["first_version"] is not None and r["last_version"] is not None and r["rows"])
    firsts = [first for first, _, _ in spans]
    steady, during_burst, unseen = [], [], 0
    for row in rows:
        index = bisect.bisect_right(firsts, row["_commit_version"]) - 1
        if index < 0 or row["_commit_version"] > spans[index][1]:
            unseen += 1
            continue
        lag = (spans[index][2] - row["source_ts"]).total_seconds()
        produced = row["source_ts"].timestamp()
        (during_burst if burst[0] <= produced < burst[1] else steady).append(lag)
    return {"steady": percentiles(steady), "burst": percentiles(during_burst), "not_visible": unseen,
            "speed_batches": len(batches)}


def streams_alive(*streams: ChildProcess) -> bool:
    """True while every stream runs; raises, with its log's tail, once one has exited: every wait on
    the streams (start-up, catch-up) would otherwise run to its timeout (a speed query that ran out
    of heap ended its process)."""
    for stream in streams:
        if not stream.alive():
            raise RuntimeError(f"{' '.join(stream.args)} exited with {stream.proc.returncode}:\n{stream.log_tail()}")
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--steady-seconds", type=float, default=120)
    parser.add_argument("--burst-factor", type=float, default=10)
    parser.add_argument("--burst-seconds", type=float, default=20)
    parser.add_argument("--tail-seconds", type=float, default=60)
    parser.add_argument("--trigger-seconds", type=float, default=1.0)
    parser.add_argument("--customer-trigger-seconds", type=float, default=30.0)
    parser.add_argument("--customer-nice", type=int, default=None,
                        help="run the customer views in a speed process of their own, at this Unix nice "
                             "(default: one speed process for both queries)")
    parser.add_argument("--max-offsets", type=int, default=stream_default("max_offsets_per_trigger"),
                        help="stream.max_offsets_per_trigger (default: the platform's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--generator-processes", type=int, default=2,
                        help="generator processes, each a shard of the customers (1: one thread in this process)")
    parser.add_argument("--lookahead", type=int, default=None,
                        help="lines the generator simulates ahead while its pacing waits (default: the burst's "
                             "lines, so the burst costs only rendering and sending)")
    parser.add_argument("--driver-memory", default=None,
                        help="spark.driver.memory of the ingest and speed processes (default: the settings')")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a Spark setting for the ingest and speed processes (repeatable; settings.spark_conf)")
    parser.add_argument("--logs", default=None,
                        help="a folder to copy ingest.log and speed.log to (the per-step timings of each batch)")
    args = parser.parse_args(argv)

    from touchpoint.core.config import load_settings, require_kafka
    from touchpoint.infra import kafka

    workdir = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    lake = workdir / "lake"
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS))
    require_kafka(settings)
    topic = f"bench.freshness.{args.seed}.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topic(topic, settings=settings)
    knobs = {"STREAM__TRIGGER_SECONDS": str(args.trigger_seconds),
             "STREAM__CUSTOMER_TRIGGER_SECONDS": str(args.customer_trigger_seconds),
             "STREAM__MAX_OFFSETS_PER_TRIGGER": str(args.max_offsets), "STREAM__STARTING_OFFSETS": "earliest"}
    if args.driver_memory:
        knobs["SPARK_DRIVER_MEMORY"] = args.driver_memory
    if args.spark_conf:
        pairs = [item.split("=", 1) for item in args.spark_conf]
        if any(len(pair) != 2 or not pair[0].startswith("spark.") for pair in pairs):
            parser.error("--spark-conf takes spark.KEY=VALUE")
        knobs["SPARK_CONF"] = json.dumps(dict(pairs), sort_keys=True)
    env = subprocess_env(lake, **knobs)
    result: dict = {"parameters": {**vars(args), "topic": topic, "knobs": knobs,
                                   "spark_master": settings.spark_master, "shuffle_partitions": 2}}
    duration = args.steady_seconds + args.burst_seconds + args.tail_seconds
    lookahead = args.lookahead if args.lookahead is not None else int(
        args.rate * args.burst_factor * args.burst_seconds)
    config = realtime_traffic(args.seed, args.customers)
    ingest = speed = customers = None
    failed = False
    try:
        ingest = ChildProcess(ingest_args(topic), env, workdir / "ingest.log")
        progress("waiting for the ingest stream to create silver")
        wait_for(lambda: streams_alive(ingest) and (lake / "silver" / "events" / "_delta_log").is_dir(), 900,
                 what="silver.events")
        if args.customer_nice is None:
            speed = ChildProcess(speed_args(), env, workdir / "speed.log")
        else:  # the campaign views at the streams' priority, the customer views below it
            speed = ChildProcess(speed_args(views="campaigns"), env, workdir / "speed.log")
            customers = ChildProcess(speed_args(views="customers", nice=args.customer_nice), env,
                                     workdir / "speed_customers.log")
        streams = [stream for stream in (ingest, speed, customers) if stream is not None]
        wait_for(lambda: streams_alive(*streams) and (lake / "speed" / "freshness" / "_delta_log").is_dir(),
                 900, what="speed.freshness")
        broker = broker_pid(settings)
        progress(f"producing {args.rate:,.0f}/s for {args.steady_seconds}s, {args.burst_factor}x for "
                 f"{args.burst_seconds}s, then {args.tail_seconds}s")
        names = {stream.pid: name for stream, name in ((ingest, "ingest"), (speed, "speed"),
                                                       (customers, "speed_customers")) if stream is not None}
        with RssSampler(lambda: [stream.pid for stream in streams] + ([broker] if broker else []),
                        names=lambda: {**names, **({broker: "broker"} if broker else {})}) as memory:
            started = time.time()
            # CPU while producing, per process: how the 2 cores were shared (this process runs the
            # generator, or waits for its processes: children it reaps, so RUSAGE_CHILDREN counts them).
            cpu_before, own_before = memory.cpu_by_root(), own_cpu_seconds()
            generator = BackgroundGenerator(topic, settings.kafka_bootstrap, config, rate=args.rate,
                                            processes=args.generator_processes, lookahead=lookahead,
                                            burst_factor=args.burst_factor,
                                            burst_start=args.steady_seconds, burst_seconds=args.burst_seconds,
                                            duration=duration)
            generator.start()
            report = generator.result(timeout=duration + 600)
            cpu_after, own_after = memory.cpu_by_root(), own_cpu_seconds()
            producing = time.time() - started
            names = {ingest.pid: "ingest", speed.pid: "speed", **({customers.pid: "speed_customers"} if customers else {}),
                     **({broker: "broker"} if broker else {})}
            used = {names[root]: round(cpu_after[root] - cpu_before.get(root, 0.0), 1) for root in cpu_after}
            used["generator_and_bench"] = round(own_after - own_before, 1)
            result["cpu_while_producing"] = {"wall_seconds": round(producing, 1), "cpu_seconds": used,
                                             "cores_used": round(sum(used.values()) / producing, 2)}
            progress(f"generator sent {report['lines']:,} lines at {report['lines_per_second']:,.0f}/s on average; "
                     f"CPU seconds while producing: {used} in {producing:.0f} s")
            # the pacing starts with the first line (the generator's processes start it together)
            first_line = dt.datetime.fromisoformat(report["first_arrival"].replace("Z", "+00:00")).timestamp()
            burst = (first_line + args.steady_seconds, first_line + args.steady_seconds + args.burst_seconds)

            wait_for(lambda: streams_alive(*streams) and sum(
                r["bronze"] for r in lake_table(settings, "silver.reconciliation", ["bronze"])) >= report["lines"],
                timeout=1800, interval=2, what="ingestion catching up")
            deadline = time.monotonic() + 1800
            lags = visible_lags(settings, burst)
            # Both speed queries (campaign views, customer views) must have caught up.
            while ((set(lags) != {"speed", "speed_customers"} or any(q["not_visible"] for q in lags.values()))
                   and time.monotonic() < deadline and streams_alive(*streams)):
                time.sleep(10)
                lags = visible_lags(settings, burst)
        result["peak_rss_mb"] = dict(memory.peaks_mb)
        result["peak_anon_rss_mb"] = dict(memory.peaks_anon_mb)
        result["peak_anon_rss_mb_by_process"] = dict(memory.peaks_anon_by_tree_mb)
        result["generator"] = {"lines": report["lines"], "average_lines_per_second": report["lines_per_second"],
                               "processes": args.generator_processes, "lookahead": lookahead,
                               "burst_valid_events_per_second": round(
                                   lags.get("speed", {}).get("burst", {}).get("events", 0) / args.burst_seconds, 1)
                               if args.burst_seconds else None,
                               "requested": {"rate": args.rate, "burst_rate": args.rate * args.burst_factor}}
        result["lag_seconds"] = lags
        result["floor_p95_seconds"], result["target_p95_seconds"] = 10, 3
        progress(f"lags: {result['lag_seconds']}")
    except BaseException:
        progress(f"failed: {workdir} is kept (the lake, ingest.log and speed.log)")
        failed = True
        raise
    finally:
        for child in (customers, speed, ingest):
            if child is not None:
                child.kill()
        kafka.delete_topic(topic, settings=settings)
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
            for log_file in ("ingest.log", "speed.log", "speed_customers.log"):
                if (workdir / log_file).exists():
                    shutil.copy(workdir / log_file, Path(args.logs) / log_file)
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
    write_result("freshness", result)
    return result


if __name__ == "__main__":
    main()
