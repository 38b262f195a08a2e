"""Benchmark 1, streaming drain: pre-load N generated events into Kafka, then measure the sustained
events/s through ingestion (bronze + silver) and through the speed layer, against the broker's own
consumer throughput (Kafka's ConsumerPerformance, same jars, same topic, same run).

    python -m bench.streaming_drain [--events 5000000] [--seed 42] [--max-offsets 500000]

Parameters are fixed by the arguments (seeded generator, a fresh topic and lake per run), so a rerun
measures the same work. Floor 20,000 events/s end to end; target 50,000.

Steps:
1. preload: the generator (historical mode, `max_events` = N) into a fresh topic on the broker of
   the settings (`touchpoint up`), record timestamps = send time;
2. ceiling: ConsumerPerformance reads the N records;
3. ingestion: `touchpoint stream ingest --available-now` in a fresh lake (its own JVM);
4. speed layer: `touchpoint stream speed --available-now` over the silver just written, when the
   speed layer's CLI exists;
5. memory: RSS of the driver JVM, Python processes and the broker, sampled every 0.5 s.
Sustained rates leave out JVM start-up and the first (cold) micro-batch; wall rates include them.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    checkpoint_commit_times, consumer_perf, progress, stream_default, sustained_rate, write_result,
)
from bench.faults import (
    ChildProcess, JARS, RssSampler, broker_pid, ingest_args, lake_table, reconciliation_totals, speed_args,
    subprocess_env,
)

EVENTS_PER_CUSTOMER = 20.0
LINES_PER_VALID = 1.016  # duplicates (1 %) and malformed (0.5 %) lines on top of valid events


def preload(topic: str, bootstrap: str, events: int, seed: int) -> dict:
    import datetime as dt

    from touchpoint.generator import GeneratorConfig, generate_kafka

    # 15 % headroom: customers make fewer lines than the mean suggests (939,015 lines for N = 1M with 2 %),
    # and max_events cuts the output at exactly N lines.
    customers = max(10, math.ceil(events / (EVENTS_PER_CUSTOMER * LINES_PER_VALID) * 1.15))
    # A recent window, as a live stream's: the customer views' horizons are counted back from the clock.
    start = dt.date.today() - dt.timedelta(days=2)
    config = GeneratorConfig(seed=seed, customers=customers, days=2, start_date=start,
                             events_per_customer=EVENTS_PER_CUSTOMER, max_events=events)
    started = time.monotonic()
    report = generate_kafka(topic, bootstrap, config, kafka_timestamps="now")
    seconds = time.monotonic() - started
    return {"lines": report["lines"], "expected_silver": report["expected_silver"],
            "expected_quarantine": report["expected_quarantine"], "expected_duplicates": report["expected_duplicates"],
            "customers": customers, "seconds": round(seconds, 1), "lines_per_second": round(report["lines"] / seconds, 1),
            "compression": report["output"]["compression"]}


def run_stream(args: list[str], env: dict, log: Path, settings, extra_roots=(),
               limit_seconds: float | None = None) -> tuple[int | None, float, dict, dict]:
    """Run a stream to its end; past `limit_seconds` it is killed and the code is None. Returns the
    exit code, the seconds and the peak resident and anonymous resident MB per role (RssSampler)."""
    started = time.monotonic()
    child = ChildProcess(args, env, log)
    broker = broker_pid(settings)
    code = None
    with RssSampler(lambda: [child.pid, *([broker] if broker else []), *extra_roots]) as memory:
        while child.alive():
            time.sleep(5)
            elapsed = time.monotonic() - started
            progress(f"  running {elapsed:.0f}s; bronze rows {reconciliation_totals(settings)['bronze']:,}, "
                     f"speed rows {sum(r['rows'] for r in lake_table(settings, 'speed.freshness', ['rows'])):,}")
            if limit_seconds is not None and elapsed > limit_seconds and child.alive():
                progress(f"  stopped after {elapsed:.0f}s (limit {limit_seconds:.0f}s)")
                child.kill()
                break
        else:
            code = child.wait(60)
    return code, time.monotonic() - started, dict(memory.peaks_mb), dict(memory.peaks_anon_mb)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-offsets", type=int, default=stream_default("max_offsets_per_trigger"),
                        help="stream.max_offsets_per_trigger (default: the platform's)")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--speed-seconds", type=float, default=None,
                        help="stop the speed layer's drain after this long; its rate is then that of the "
                             "batches it committed, and the end-to-end rate is not computed")
    parser.add_argument("--driver-memory", default=None,
                        help="spark.driver.memory of the ingest and speed processes (default: the settings')")
    parser.add_argument("--workdir", default=None, help="lake and logs (default: a temp folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the topic and the lake")
    args = parser.parse_args(argv)

    from touchpoint.core.config import load_settings, require_kafka
    from touchpoint.infra import kafka

    # The broker is checked and the topic made before the work folder exists: a missing broker
    # leaves no empty temp folder behind.
    broker = load_settings(jars_dir=str(JARS))
    require_kafka(broker)
    topic = f"bench.drain.{args.seed}.{args.events}.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topic(topic, partitions=args.partitions, settings=broker)
    try:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-drain-"))
    except OSError:  # no work folder: nothing ran, so the topic goes too
        kafka.delete_topic(topic, settings=broker)
        raise
    lake = workdir / "lake"
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS),
                             **({"spark_driver_memory": args.driver_memory} if args.driver_memory else {}))
    result: dict = {"parameters": {**vars(args), "topic": topic, "trigger": "availableNow",
                                   "spark_master": settings.spark_master, "shuffle_partitions": 2,
                                   "driver_memory": settings.spark_driver_memory}}
    failed = False
    try:
        progress(f"preloading {args.events:,} events into {topic}")
        result["preload"] = preload(topic, settings.kafka_bootstrap, args.events, args.seed)
        lines = result["preload"]["lines"]
        progress(f"preloaded {lines:,} lines at {result['preload']['lines_per_second']:,.0f}/s")

        progress("ceiling: Kafka ConsumerPerformance")
        result["ceiling"] = consumer_perf(settings.kafka_bootstrap, topic, lines)
        progress(f"ceiling {result['ceiling']['events_per_second']:,.0f} events/s")

        env = subprocess_env(lake, STREAM__MAX_OFFSETS_PER_TRIGGER=str(args.max_offsets),
                             SPARK_DRIVER_MEMORY=settings.spark_driver_memory)
        progress("ingestion: touchpoint stream ingest --available-now")
        code, wall, memory, anon = run_stream(ingest_args(topic, available_now=True), env, workdir / "ingest.log",
                                              settings)
        if code != 0:
            raise RuntimeError(f"ingest failed ({code}); see {workdir / 'ingest.log'}")
        per_batch = {r["batch_id"]: r["bronze"] for r in lake_table(settings, "silver.reconciliation")}
        sustained = sustained_rate(per_batch, checkpoint_commit_times(lake / "_checkpoints" / "ingest"))
        totals = reconciliation_totals(settings)
        result["ingest"] = {"wall_seconds": round(wall, 1), "wall_events_per_second": round(lines / wall, 1),
                            "sustained": sustained, "reconciliation": totals,
                            "exact": totals == {"bronze": lines, "silver": result["preload"]["expected_silver"],
                                                "quarantine": result["preload"]["expected_quarantine"],
                                                "duplicates": result["preload"]["expected_duplicates"]},
                            "peak_rss_mb": memory, "peak_anon_rss_mb": anon}
        progress(f"ingest: {lines / wall:,.0f} events/s wall, sustained {sustained['events_per_second']}")

        if importlib.util.find_spec("touchpoint.streaming.speed") is not None:
            from touchpoint.streaming.speed import query_names

            progress("speed layer: touchpoint stream speed --available-now")
            code, wall_speed, memory, anon = run_stream(speed_args(available_now=True), env, workdir / "speed.log",
                                                        settings, limit_seconds=args.speed_seconds)
            if code not in (0, None):
                raise RuntimeError(f"speed layer failed ({code}); see {workdir / 'speed.log'}")
            batches = lake_table(settings, "speed.freshness")
            # One query per group of views (streaming.speed.start_queries); the slower one bounds the drain.
            # A query that committed no batch before the limit is reported as such, not left out.
            started = set(query_names(settings))
            per_query = {}
            for query in sorted(started | {r["query"] for r in batches}):
                per_batch = {r["batch_id"]: r["rows"] for r in batches if r["query"] == query}
                per_query[query] = {"sustained": (sustained_rate(per_batch, checkpoint_commit_times(
                    lake / "_checkpoints" / query)) if per_batch else {"batches": 0, "events_per_second": None}),
                    "change_rows": sum(per_batch.values())}
            rates = {query: q["sustained"].get("events_per_second") for query, q in per_query.items()}
            stalled = sorted(query for query, q in per_query.items() if not q["change_rows"])
            measured = [rate for rate in rates.values() if rate]
            if stalled:
                sustained_speed = {"events_per_second": min(measured) if measured else None, "stalled": stalled,
                                   "basis": f"the queries that committed batches ({', '.join(stalled)} committed "
                                            f"none in {wall_speed:.0f} s)"}
            elif measured and all(rates.values()):
                sustained_speed = {"events_per_second": min(measured), "basis": "the slowest speed query"}
            else:
                sustained_speed = {"events_per_second": None}
            drained = code == 0
            result["speed"] = {"wall_seconds": round(wall_speed, 1), "drained": drained,
                               "wall_events_per_second": (round(result["preload"]["expected_silver"] / wall_speed, 1)
                                                          if drained else None),
                               "sustained": sustained_speed, "queries": per_query,
                               "peak_rss_mb": memory, "peak_anon_rss_mb": anon}
            # A stopped drain has no speed wall time: its sustained rate stands in for the rest of it.
            speed_rate = sustained_speed.get("events_per_second")
            end_to_end = (lines / (wall + wall_speed) if drained else
                          lines / (wall + lines / speed_rate) if speed_rate else 0.0)
            result["end_to_end_basis"] = ("ingest wall time + speed wall time" if drained else
                                          "ingest wall time + N / speed sustained rate (the speed drain was stopped)")
            if sustained_speed.get("stalled"):
                result["end_to_end_basis"] += (f"; only the views of the queries that committed batches: "
                                               f"{', '.join(sustained_speed['stalled'])} committed none")
        else:
            result["speed"] = {"skipped": "touchpoint.streaming.speed not available"}
            end_to_end = lines / wall
        ceiling = result["ceiling"]["events_per_second"]
        result["end_to_end"] = {"events_per_second": round(end_to_end, 1),
                                "ratio_to_ceiling": round(end_to_end / ceiling, 4) if ceiling else None,
                                "ingest_sustained_ratio_to_ceiling": (
                                    round(sustained["events_per_second"] / ceiling, 4)
                                    if sustained.get("events_per_second") and ceiling else None),
                                "floor": 20_000, "target": 50_000,
                                "meets_floor": end_to_end >= 20_000}
        progress(f"end to end {end_to_end:,.0f} events/s = {result['end_to_end']['ratio_to_ceiling']} of the ceiling")
    except BaseException:
        progress(f"failed: {workdir} is kept (the lake, ingest.log and speed.log)")
        failed = True
        raise
    finally:
        if not args.keep:
            kafka.delete_topic(topic, settings=settings)
            if args.workdir is None and not failed:
                shutil.rmtree(workdir, ignore_errors=True)
    write_result("streaming_drain", result)
    return result


if __name__ == "__main__":
    main()
