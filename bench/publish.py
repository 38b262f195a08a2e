"""Publishing staged gold tables (`jobs.pipeline.publish`): folders exchanged into place against a
Delta overwrite of every changed table.

    python -m bench.publish [--tables 6] [--rows 1000000] [--changed-rows 1000] [--repeat 3] [--seed 42]

Builds `--tables` published gold tables of `--rows` rows each. Each round stages them
(`prepare_staging`), appends `--changed-rows` rows to every staged copy (a job's commit) and
publishes. Rounds alternate between the platform's publish on a local lake (the staged folder
exchanged with the published one) and the overwrite it falls back to where folders cannot be
exchanged (an object store, or a file system without RENAME_EXCHANGE), so that machine noise hits
both alike. Reports the median seconds of each and their ratio, and checks after every round that
each published table holds exactly the rows it should.
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

LOGICAL_DATE = dt.date(2026, 3, 31)


def rows_frame(spark, first: int, count: int, seed: int):
    from pyspark.sql import functions as F

    return spark.range(first, first + count).select(
        F.col("id").alias("row_id"),
        F.concat(F.lit("c-"), (F.col("id") % 100_003).cast("string")).alias("customer_id"),
        F.rand(seed).alias("value"),
        F.date_add(F.lit(LOGICAL_DATE), -(F.col("id") % 90).cast("int")).alias("day"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=6)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed-rows", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from touchpoint.core.catalog import TABLES
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import pipeline

    names = pipeline.gold_tables()[:args.tables]
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    settings = lake_settings(workdir / "lake", state_dir=str(workdir / "state"))
    spark = get_spark("bench-publish", settings=settings)
    exchange = pipeline.exchange_folders
    seconds: dict[str, list[float]] = {"exchange": [], "overwrite": []}
    expected_rows = args.rows
    with RssSampler(roots=lambda: [os.getpid()]) as sampler:
        for name in names:
            rows_frame(spark, 0, args.rows, args.seed).write.format("delta").save(TABLES[name].path(settings))
        progress(f"built {len(names)} published tables of {args.rows:,} rows")
        for round_number in range(args.repeat):
            order = ("exchange", "overwrite") if round_number % 2 == 0 else ("overwrite", "exchange")
            for method in order:
                pipeline.prepare_staging(spark, settings, LOGICAL_DATE)
                staged = pipeline.staging_settings(settings, LOGICAL_DATE)
                change = rows_frame(spark, expected_rows, args.changed_rows, args.seed)
                for name in names:
                    change.write.format("delta").mode("append").save(TABLES[name].path(staged))
                expected_rows += args.changed_rows
                # The overwrite is what publish does where folders cannot be exchanged.
                pipeline.exchange_folders = exchange if method == "exchange" else (lambda first, second: False)
                try:
                    started = time.monotonic()
                    published = pipeline.publish(spark, settings, LOGICAL_DATE)["published"]
                    seconds[method].append(time.monotonic() - started)
                finally:
                    pipeline.exchange_folders = exchange
                counts = {name: spark.read.format("delta").load(TABLES[name].path(settings)).count() for name in names}
                if sorted(published) != sorted(names) or set(counts.values()) != {expected_rows}:
                    raise RuntimeError(f"publish by {method}: published {published}, rows {counts}, "
                                       f"expected {expected_rows} in each of {names}")
                progress(f"round {round_number + 1}: publish by {method} of {len(names)} tables: "
                         f"{seconds[method][-1]:.1f}s")
    spark.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    median = {method: statistics.median(values) for method, values in seconds.items()}
    write_result("publish", {
        "parameters": vars(args),
        "tables": names,
        "publish_seconds": {"exchange": round(median["exchange"], 2), "overwrite": round(median["overwrite"], 2),
                            "ratio_overwrite_to_exchange": round(median["overwrite"] / median["exchange"], 1),
                            "all": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()}},
        "peak_rss_mb": sampler.peaks_mb,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
