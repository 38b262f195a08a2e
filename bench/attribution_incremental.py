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

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from bench.changed_vs_all import alternate, arguments, link_copy, source_lake, table_digest
from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

COMPARED = ("gold.attribution_conversions", "gold.attribution_touchpoints", "gold.attribution_credits",
            "gold.attribution_daily", "gold.attribution_paths")


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, "a lake with silver.events and gold.identity_map")

    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import attribution

    workdir = Path(tempfile.mkdtemp(prefix="bench-attribution-incremental-"))
    settings = lake_settings(workdir / "scratch", spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4)
    spark = get_spark("bench-attribution-incremental", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            source = source_lake(spark, args, settings, workdir, result)
            # the identity map is copied with the gold tables
            link_copy(Path(table_path("gold.identity_map", source)), Path(table_path("gold.identity_map", settings)))
            day = dt.date.fromisoformat(result["parameters"]["last_day"])
            result["parameters"]["day"] = day.isoformat()
            progress(f"{result['parameters']['silver_events']:,} silver events; attributing {day - dt.timedelta(days=1)}")
            attribution.run(spark, settings, day - dt.timedelta(days=1))

            gold = Path(table_path("gold.identity_map", settings)).parent
            snapshots = {way: workdir / f"gold-{way}" for way in ("changed", "all")}
            for folder in snapshots.values():
                link_copy(gold, folder)
            # "all": the state a run before 2026-12-03 left, without the input versions it read
            runs = snapshots["all"] / Path(table_path("gold.attribution_runs", settings)).name
            DeltaTable.forPath(spark, str(runs)).update(set={"silver_version": F.lit(None).cast("long")})

            def restore(way: str) -> None:
                shutil.rmtree(gold)
                link_copy(snapshots[way], gold)

            outcome = alternate(args.repeat, restore, lambda way: attribution.run(spark, settings, day),
                                lambda: table_digest(spark, settings, COMPARED))
        summaries = outcome.pop("summaries")
        result.update(
            outcome,
            derivation={way: summary["derivation"] for way, summary in summaries.items()},
            conversions_recomputed={way: summary["conversions_recomputed"] for way, summary in summaries.items()},
            peak_rss_mb=dict(memory.peaks_mb),
        )
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("attribution_incremental", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
