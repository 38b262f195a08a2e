"""Incremental profiles: the changed customers' event summaries re-derived (the platform) against
every customer derived from all of silver (`mode="full"`, and what a run does when the changes since
the last one cannot be read), for the same day from the same stored state, alternating in one Spark
application.

    python -m bench.profiles_incremental [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` (e.g. `DIR/lake` of `bench.batch_pipeline --workdir DIR`) it reads silver.events from
there (nothing there is written); otherwise it builds a lake as `bench.attribution_peers` does. In
a scratch lake it runs identity and profiles for day D-1, D being the last event date in silver,
then identity for D, and keeps a copy of the gold tables. Then it runs profiles for D `--repeat`
times each way, each run starting from that copy, the two ways alternating. The changes between the
two days are those of a daily run: D's events cross the as-of. Reports the median seconds of each
way, their ratio, and checks that every run wrote the same gold.customer_profiles.
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

from bench.attribution_incremental import link_copy, table_digest
from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

COMPARED = ("gold.customer_profiles",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=None, help="a lake with silver.events")
    parser.add_argument("--events", type=int, default=2_000_000, help="when building a lake")
    parser.add_argument("--days", type=int, default=90, help="when building a lake")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import identity, profiles

    workdir = Path(tempfile.mkdtemp(prefix="bench-profiles-incremental-"))
    scratch = workdir / "scratch"
    # incremental at any size: at development size this shows where a full run is cheaper
    settings = lake_settings(scratch, spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4,
                             profiles={"incremental_min_events": 0})
    spark = get_spark("bench-profiles-incremental", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            if args.lake:
                source = lake_settings(args.lake)
            else:
                from bench.attribution_peers import build_lake

                source = lake_settings(workdir / "source", spark_driver_memory=args.driver_memory)
                result["data"] = build_lake(spark, source, args.events, args.days, args.seed, workdir)
            os.makedirs(scratch, exist_ok=True)  # silver is only read: a link to it
            os.symlink(Path(table_path("silver.events", source)).parent, scratch / "silver")
            silver = spark.read.format("delta").load(table_path("silver.events", settings))
            day = silver.agg(F.max("event_date")).first()[0]
            before = day - dt.timedelta(days=1)
            result["parameters"].update(day=day.isoformat(), silver_events=silver.count())
            progress(f"{result['parameters']['silver_events']:,} silver events; identity and profiles for {before}")
            started = time.monotonic()
            identity.run(spark, settings, before)
            result["identity_before_seconds"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            result["profiles_before"] = profiles.run(spark, settings, before)
            result["profiles_before_seconds"] = round(time.monotonic() - started, 1)
            progress(f"profiles for {before}: {result['profiles_before_seconds']} s; identity for {day}")
            identity.run(spark, settings, day)

            gold = Path(table_path("gold.customer_profiles", settings)).parent
            base = workdir / "gold-base"
            link_copy(gold, base)
            seconds: dict[str, list[float]] = {"changed": [], "all": []}
            derivations, digests = {}, {}
            for round_number in range(args.repeat):
                order = ("changed", "all") if round_number % 2 == 0 else ("all", "changed")
                for way in order:
                    shutil.rmtree(gold)
                    link_copy(base, gold)
                    started = time.monotonic()
                    summary = profiles.run(spark, settings, day, mode="auto" if way == "changed" else "full")
                    seconds[way].append(round(time.monotonic() - started, 1))
                    derivations[way] = summary["derivation"]
                    digest = table_digest(spark, settings, COMPARED)
                    if digests.setdefault(way, digest) != digest:
                        raise AssertionError(f"{way}: round {round_number + 1} wrote other rows than round 1")
                    progress(f"round {round_number + 1} {way}: {seconds[way][-1]} s ({summary['derivation']})")
            if digests["changed"] != digests["all"]:
                raise AssertionError(f"the two ways wrote different profiles: {digests}")
        medians = {way: statistics.median(values) for way, values in seconds.items()}
        result.update(
            seconds=seconds, median_seconds=medians, ratio_all_to_changed=round(medians["all"] / medians["changed"], 2),
            derivation=derivations, tables=digests["changed"], identical_tables=True,
            peak_rss_mb=dict(memory.peaks_mb),
        )
        progress(f"changed customers {medians['changed']} s, every customer {medians['all']} s")
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("profiles_incremental", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
