"""Incremental attribution: the changed customers re-derived (the platform) against every customer
re-derived (what an incremental run did before 2026-12-03, and still does when the changes since the
last run cannot be read), for the same day on the same lake, alternating in one Spark application.

    python -m bench.attribution_incremental [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` (e.g. `DIR/lake` of `bench.batch_pipeline --workdir DIR`) it takes silver.events and
gold.identity_map from there (nothing there is written); otherwise it builds a lake as
`bench.attribution_peers` does. In a scratch lake it attributes day D-1 from scratch, D being the
last event date in silver, and keeps a copy of the gold tables. Then it runs D `--repeat` times each
way, each run starting from that copy, the two ways alternating:
- changed: the run re-derives the customers whose events crossed the as-of (D's events: silver and
  the identity map are the snapshots D-1 read, so those are the only changes);
- all: the same state, but the last run's recorded input versions removed (as a run before
  2026-12-03 left them), so the run re-derives every customer from all of silver.
Reports the median seconds of each and their ratio, and checks that every run wrote the same tables.
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

COMPARED = ("gold.attribution_conversions", "gold.attribution_touchpoints", "gold.attribution_credits",
            "gold.attribution_daily", "gold.attribution_paths")


def link_copy(source: Path, target: Path) -> None:
    """A table folder copied as staging copies it: logs copied, data files hard-linked."""
    def copy(src: str, dst: str) -> None:
        if f"{os.sep}_delta_log{os.sep}" in src:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source, target, copy_function=copy)


def table_digest(spark, settings, names=COMPARED) -> dict:
    """Rows and an order-free hash sum of every compared table."""
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path

    digest = {}
    for name in names:
        frame = spark.read.format("delta").load(table_path(name, settings))
        row = frame.select(F.count(F.lit(1)), F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)"))).first()
        digest[name] = [row[0], str(row[1])]
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=None, help="a lake with silver.events and gold.identity_map")
    parser.add_argument("--events", type=int, default=2_000_000, help="when building a lake")
    parser.add_argument("--days", type=int, default=90, help="when building a lake")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args(argv)

    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import attribution

    workdir = Path(tempfile.mkdtemp(prefix="bench-attribution-incremental-"))
    scratch = workdir / "scratch"
    settings = lake_settings(scratch, spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4)
    spark = get_spark("bench-attribution-incremental", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            if args.lake:
                source = lake_settings(args.lake)
            else:
                from bench.attribution_peers import build_lake

                source = lake_settings(workdir / "source", spark_driver_memory=args.driver_memory)
                result["data"] = build_lake(spark, source, args.events, args.days, args.seed, workdir)
            # silver is only read: a link to it; the identity map is copied with the gold tables
            os.makedirs(scratch, exist_ok=True)
            os.symlink(Path(table_path("silver.events", source)).parent, scratch / "silver")
            link_copy(Path(table_path("gold.identity_map", source)), Path(table_path("gold.identity_map", settings)))
            silver = spark.read.format("delta").load(table_path("silver.events", settings))
            day = silver.agg(F.max("event_date")).first()[0]
            result["parameters"].update(day=day.isoformat(), silver_events=silver.count())
            progress(f"{result['parameters']['silver_events']:,} silver events; attributing {day - dt.timedelta(days=1)}")
            attribution.run(spark, settings, day - dt.timedelta(days=1))

            gold = Path(table_path("gold.identity_map", settings)).parent
            snapshots = {way: workdir / f"gold-{way}" for way in ("changed", "all")}
            for folder in snapshots.values():
                link_copy(gold, folder)
            runs = snapshots["all"] / Path(table_path("gold.attribution_runs", settings)).name
            DeltaTable.forPath(spark, str(runs)).update(set={"silver_version": F.lit(None).cast("long")})

            seconds: dict[str, list[float]] = {"changed": [], "all": []}
            derivations, digests, recomputed = {}, {}, {}
            for round_number in range(args.repeat):
                order = ("changed", "all") if round_number % 2 == 0 else ("all", "changed")
                for way in order:
                    shutil.rmtree(gold)
                    link_copy(snapshots[way], gold)
                    started = time.monotonic()
                    summary = attribution.run(spark, settings, day)
                    seconds[way].append(round(time.monotonic() - started, 1))
                    derivations[way], recomputed[way] = summary["derivation"], summary["conversions_recomputed"]
                    digest = table_digest(spark, settings)
                    if digests.setdefault(way, digest) != digest:
                        raise AssertionError(f"{way}: round {round_number + 1} wrote other tables than round 1")
                    progress(f"round {round_number + 1} {way}: {seconds[way][-1]} s ({summary['derivation']}, "
                             f"{summary['conversions_recomputed']} conversions rebuilt)")
            if digests["changed"] != digests["all"]:
                raise AssertionError(f"the two ways wrote different tables: {digests}")
        medians = {way: statistics.median(values) for way, values in seconds.items()}
        result.update(
            seconds=seconds, median_seconds=medians,
            ratio_all_to_changed=round(medians["all"] / medians["changed"], 2),
            derivation=derivations, conversions_recomputed=recomputed, tables=digests["changed"],
            identical_tables=True, peak_rss_mb=dict(memory.peaks_mb),
        )
        progress(f"changed customers {medians['changed']} s, every customer {medians['all']} s")
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("attribution_incremental", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
