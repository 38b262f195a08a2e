"""VACUUM and OPTIMIZE of stream-written tables (`lake_maintenance`), and what the file-listing
parallelism costs.

    python -m bench.lake_maintenance [--tables 4] [--appends 20] [--days 2] [--repeat 3] [--seed 42]

Builds `--tables` Delta tables the way the ingest stream writes them: `--appends` small appends each,
partitioned by date over `--days` days. Then, in one Spark application and alternating so that
machine noise hits both alike, VACUUMs every table (`jobs.maintenance.vacuum`, the configured
retention) `--repeat` times with the platform's listing parallelism (as many tasks as shuffle
partitions, `core.spark.spark_conf`) and with Spark's default (10,000 tasks). Reports the median
seconds of each and their ratio, then one OPTIMIZE of all tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings
from touchpoint.jobs.maintenance import STREAM_WRITTEN

LISTING_KEY = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
SPARK_DEFAULT_LISTING = "10000"


def build_tables(spark, settings, tables: int, appends: int, days: int, seed: int) -> None:
    from touchpoint.core.catalog import table_path

    rng = random.Random(seed)
    start = dt.date(2026, 3, 1)
    for name in STREAM_WRITTEN[:tables]:
        path = table_path(name, settings)
        for append in range(appends):
            rows = [(f"{name}-{append}-{i}", start + dt.timedelta(days=rng.randrange(days)), rng.random())
                    for i in range(200)]
            (spark.createDataFrame(rows, "id string, event_date date, value double")
             .write.format("delta").mode("append").partitionBy("event_date").save(path))
        progress(f"built {name}: {appends} appends over {days} days")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=4, choices=range(1, len(STREAM_WRITTEN) + 1))
    parser.add_argument("--appends", type=int, default=20)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import maintenance

    workdir = Path(tempfile.mkdtemp(prefix="bench-maintenance-"))
    settings = lake_settings(workdir / "lake", state_dir=str(workdir / "state"))
    spark = get_spark("bench-lake-maintenance", settings=settings)
    ours = spark.conf.get(LISTING_KEY)
    logical_date = dt.date(2026, 3, 1) + dt.timedelta(days=args.days)
    with RssSampler(roots=lambda: [os.getpid()]) as sampler:
        build_tables(spark, settings, args.tables, args.appends, args.days, args.seed)
        # keyed by setting, not by task count: the two are equal when the shuffle partitions are 10,000
        listings = {"platform": ours, "spark_default": SPARK_DEFAULT_LISTING}
        seconds: dict[str, list[float]] = {setting: [] for setting in listings}
        for round_number in range(args.repeat):
            order = ("platform", "spark_default") if round_number % 2 == 0 else ("spark_default", "platform")
            for setting in order:
                spark.conf.set(LISTING_KEY, listings[setting])
                started = time.monotonic()
                maintenance.vacuum(spark, settings, logical_date)
                seconds[setting].append(time.monotonic() - started)
                progress(f"round {round_number + 1}: VACUUM of {args.tables} tables with {listings[setting]} "
                         f"listing tasks: {seconds[setting][-1]:.1f}s")
        spark.conf.set(LISTING_KEY, ours)
        started = time.monotonic()
        compacted = maintenance.optimize(spark, settings, logical_date)["files_compacted"]
        optimize_seconds = time.monotonic() - started
        progress(f"OPTIMIZE of {args.tables} tables: {optimize_seconds:.1f}s, files removed {compacted}")
    spark.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    median = {setting: statistics.median(values) for setting, values in seconds.items()}
    write_result("lake_maintenance", {
        "parameters": vars(args),
        "vacuum_seconds": {"platform_listing_tasks": int(ours), "platform": round(median["platform"], 2),
                           "spark_default_listing_tasks": int(SPARK_DEFAULT_LISTING),
                           "spark_default": round(median["spark_default"], 2),
                           "ratio_default_to_platform": round(median["spark_default"] / median["platform"], 2),
                           "all": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()}},
        "optimize": {"seconds": round(optimize_seconds, 2), "files_removed": compacted},
        "peak_rss_mb": sampler.peaks_mb,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
