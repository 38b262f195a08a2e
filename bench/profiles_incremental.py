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

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from bench.changed_vs_all import alternate, arguments, link_copy, source_lake, table_digest, timed
from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

COMPARED = ("gold.customer_profiles",)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, "a lake with silver.events")

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import identity, profiles

    workdir = Path(tempfile.mkdtemp(prefix="bench-profiles-incremental-"))
    # incremental at any size: at development size this shows where a full run is cheaper
    settings = lake_settings(workdir / "scratch", spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4,
                             profiles={"incremental_min_events": 0})
    spark = get_spark("bench-profiles-incremental", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            source_lake(spark, args, settings, workdir, result)
            day = dt.date.fromisoformat(result["parameters"]["last_day"])
            before = day - dt.timedelta(days=1)
            result["parameters"]["day"] = day.isoformat()
            progress(f"{result['parameters']['silver_events']:,} silver events; identity and profiles for {before}")
            timed(result, "identity_before", lambda: identity.run(spark, settings, before))
            result["profiles_before"] = timed(result, "profiles_before", lambda: profiles.run(spark, settings, before))
            progress(f"profiles for {before}: {result['profiles_before_seconds']} s; identity for {day}")
            identity.run(spark, settings, day)

            gold = Path(table_path("gold.customer_profiles", settings)).parent
            base = workdir / "gold-base"
            link_copy(gold, base)

            def restore(way: str) -> None:
                shutil.rmtree(gold)
                link_copy(base, gold)

            outcome = alternate(
                args.repeat, restore,
                lambda way: profiles.run(spark, settings, day, mode="auto" if way == "changed" else "full"),
                lambda: table_digest(spark, settings, COMPARED))
        summaries = outcome.pop("summaries")
        result.update(outcome, derivation={way: summary["derivation"] for way, summary in summaries.items()},
                      peak_rss_mb=dict(memory.peaks_mb))
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("profiles_incremental", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
