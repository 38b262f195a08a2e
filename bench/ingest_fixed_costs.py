"""What a live ingest micro-batch pays whatever its size: the Delta commits' idempotency check, and
the dedup's scan of silver's event ids, which grows with the day's partition.

    python -m bench.ingest_fixed_costs [--appends 20] [--partition-rows 500000,2000000,8000000]
                                       [--batch-rows 85000] [--repeat 3] [--seed 42]

1. Commits: one-row appends to a fresh Delta table (the reconciliation table's schema, the smallest
   write a batch makes), in turn: with `txnAppId`/`txnVersion` (as the ingest sink wrote every table
   until 2026-12-05), marked with the batch in `userMetadata` (`core.delta.batch_mark`, as it writes
   them since), and plain, so that machine noise hits all three alike. Reports the median seconds of
   each and the Spark jobs each one ran (counted by job group).
2. Dedup scan: a one-date table of `--partition-rows` random event ids (the day's silver partition,
   in files of 100,000 rows), and a batch of `--batch-rows` new event ids of that date. Times
   `streaming.ingest.plan_silver_changes` (without orders) to the batch's inserts, the fastest of
   `--repeat` runs per size, and checks that every id of the batch is inserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

EVENT_DATE = dt.date(2026, 11, 27)
FILE_ROWS = 100_000


def commit_costs(spark, path: str, appends: int) -> dict:
    from touchpoint.core.delta import batch_mark, ensure_table
    from touchpoint.schemas.lake import RECONCILIATION_SCHEMA

    ensure_table(spark, path, RECONCILIATION_SCHEMA, [], "bench.reconciliation")
    sc = spark.sparkContext
    kinds = ("with_txn", "marked", "plain")
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    jobs: dict[str, list[int]] = {kind: [] for kind in kinds}
    for number in range(len(kinds) * (appends + 2)):
        kind = kinds[number % len(kinds)]
        row = spark.createDataFrame([("bench", number, 1, 1, 0, 0, 0, dt.datetime.now(dt.timezone.utc))],
                                    RECONCILIATION_SCHEMA)
        group = f"bench-append-{number}"
        sc.setJobGroup(group, kind)
        writer = row.write.format("delta").mode("append")
        if kind == "with_txn":
            writer = writer.option("txnAppId", "bench").option("txnVersion", number)
        elif kind == "marked":
            writer = writer.option("userMetadata", batch_mark("bench", number))
        started = time.monotonic()
        writer.save(path)
        elapsed = time.monotonic() - started
        if number >= 2 * len(kinds):  # the first two of each: JVM warm-up
            seconds[kind].append(elapsed)
            jobs[kind].append(len(sc.statusTracker().getJobIdsForGroup(group)))
    sc.setJobGroup("bench", "")
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    return {"median_seconds": {kind: round(value, 3) for kind, value in median.items()},
            "median_jobs": {kind: statistics.median(values) for kind, values in jobs.items()},
            "txn_extra_seconds": round(median["with_txn"] - median["plain"], 3),
            "marked_extra_seconds": round(median["marked"] - median["plain"], 3),
            "all_seconds": {kind: [round(v, 3) for v in values] for kind, values in seconds.items()}}


def event_ids(spark, first: int, count: int, seed: int):
    """`count` distinct UUID-shaped ids (a hash of the row number and the seed), all of EVENT_DATE."""
    from pyspark.sql import functions as F

    digest = F.sha2(F.concat_ws(":", F.lit(str(seed)), F.col("id").cast("string")), 256)
    uuid = F.concat_ws("-", *[F.substring(digest, start, length)
                              for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))])
    return spark.range(first, first + count).select(uuid.alias("event_id"), F.lit(EVENT_DATE).alias("event_date"))


def dedup_scan(spark, root: Path, partition_rows: int, batch_rows: int, repeat: int, seed: int) -> dict:
    from pyspark.sql import functions as F

    from touchpoint.streaming.ingest import plan_silver_changes

    silver_path = str(root / f"silver_{partition_rows}")
    (event_ids(spark, 0, partition_rows, seed).repartition(max(1, partition_rows // FILE_ROWS))
     .write.format("delta").partitionBy("event_date").save(silver_path))
    accepted = (event_ids(spark, partition_rows, batch_rows, seed)
                .withColumn("event_type", F.lit("page_view"))
                .withColumn("source_ts", F.lit(dt.datetime(2026, 11, 27, 12, tzinfo=dt.timezone.utc)))
                .withColumn("source_topic", F.lit("bench")).withColumn("source_partition", F.lit(0))
                .withColumn("source_offset", F.monotonically_increasing_id())
                .localCheckpoint(eager=True))
    seconds = []
    for _ in range(repeat):
        silver = spark.read.format("delta").load(silver_path)
        started = time.monotonic()
        inserted = plan_silver_changes(accepted, silver, [EVENT_DATE], with_orders=False).inserts.count()
        seconds.append(time.monotonic() - started)
        if inserted != batch_rows:
            raise RuntimeError(f"{inserted:,} inserts from a batch of {batch_rows:,} new ids")
    files = len(spark.read.format("delta").load(silver_path).inputFiles())
    shutil.rmtree(silver_path, ignore_errors=True)
    return {"partition_rows": partition_rows, "files": files, "fastest_seconds": round(min(seconds), 2),
            "all_seconds": [round(s, 2) for s in seconds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=20, help="appends of each kind")
    parser.add_argument("--partition-rows", default="500000,2000000,8000000")
    parser.add_argument("--batch-rows", type=int, default=85_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.partition_rows.split(",") if size]

    from touchpoint.core.spark import get_spark

    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-costs-"))
    settings = lake_settings(workdir / "lake", state_dir=str(workdir / "state"))
    spark = get_spark("bench-ingest-fixed-costs", settings=settings)
    with RssSampler(roots=lambda: [os.getpid()]) as sampler:
        commits = commit_costs(spark, str(workdir / "commits"), args.appends)
        progress("one-row append: " + ", ".join(
            f"{kind} {commits['median_seconds'][kind]}s ({commits['median_jobs'][kind]} jobs)"
            for kind in commits["median_seconds"]))
        scans = []
        for size in sizes:
            scans.append(dedup_scan(spark, workdir, size, args.batch_rows, args.repeat, args.seed))
            progress(f"dedup of {args.batch_rows:,} new ids against a partition of {size:,} rows "
                     f"({scans[-1]['files']} files): {scans[-1]['fastest_seconds']}s")
    spark.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    write_result("ingest_fixed_costs", {
        "parameters": {**vars(args), "file_rows": FILE_ROWS},
        "commits": commits,
        "dedup_scan": scans,
        "peak_rss_mb": sampler.peaks_mb,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
