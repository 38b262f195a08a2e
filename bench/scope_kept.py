"""The changed-customer scope derived once per pipeline run: incremental profiles then attribution
for the same day, in a pipeline run's staging namespace (profiles keeps its scope, attribution reads
it: jobs.changed_scope) against standalone runs (each job diffs the maps and scans silver itself),
alternating in one Spark application.

    python -m bench.scope_kept [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` it reads silver.events from there (e.g. `DIR/lake` of `bench.batch_pipeline --workdir
DIR`); otherwise it builds a lake as `bench.attribution_peers` does. In a scratch lake it runs
identity, profiles and attribution for day D-1 (D the last event date in silver), then identity for
D, and keeps a copy of the gold tables. Each run starts from that copy (as the published tables, or
as a staging namespace's copy of them) and runs profiles and attribution for D. Reports the median
seconds of each way and of each job, and checks that every run wrote the same tables.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.changed_vs_all import arguments, link_copy, source_lake, table_digest, timed
from bench.common import alternate_ways, progress, write_result
from bench.faults import RssSampler, lake_settings

COMPARED = ("gold.customer_profiles", "gold.attribution_conversions", "gold.attribution_touchpoints",
            "gold.attribution_credits")
WAYS = ("derived", "kept")


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, "a lake with silver.events")

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import attribution, identity, profiles
    from touchpoint.jobs.pipeline import staging_settings

    workdir = Path(tempfile.mkdtemp(prefix="bench-scope-kept-"))
    settings = lake_settings(workdir / "scratch", spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4,
                             profiles={"incremental_min_events": 0})
    spark = get_spark("bench-scope-kept", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            source_lake(spark, args, settings, workdir, result)
            day = dt.date.fromisoformat(result["parameters"]["last_day"])
            before = day - dt.timedelta(days=1)
            result["parameters"]["day"] = day.isoformat()
            progress(f"{result['parameters']['silver_events']:,} silver events; identity, profiles and "
                     f"attribution for {before}")
            timed(result, "identity_before", lambda: identity.run(spark, settings, before))
            timed(result, "profiles_before", lambda: profiles.run(spark, settings, before))
            timed(result, "attribution_before", lambda: attribution.run(spark, settings, before))
            progress(f"identity for {day}")
            identity.run(spark, settings, day)

            gold = Path(table_path("gold.customer_profiles", settings)).parent
            base = workdir / "gold-base"
            link_copy(gold, base)
            staged = staging_settings(settings, day)
            staged_gold = Path(table_path("gold.customer_profiles", staged)).parent

            def run(way: str) -> tuple[float, dict, dict]:
                use, target = (settings, gold) if way == "derived" else (staged, staged_gold)
                for folder in (gold, staged_gold):
                    shutil.rmtree(folder, ignore_errors=True)
                link_copy(base, target)
                started = time.monotonic()
                profiled = profiles.run(spark, use, day)
                between = time.monotonic()
                attributed = attribution.run(spark, use, day)
                ended = time.monotonic()
                expected = ["derived", "derived" if way == "derived" else "kept by profiles"]
                if [profiled["scope"], attributed["scope"]] != expected:
                    raise AssertionError(f"{way}: scopes {profiled['scope']}, {attributed['scope']}; expected {expected}")
                summary = {"profiles_seconds": round(between - started, 1),
                           "attribution_seconds": round(ended - between, 1),
                           "scopes": [profiled["scope"], attributed["scope"]],
                           "derivation": [profiled["derivation"], attributed["derivation"]]}
                return round(ended - started, 1), summary, table_digest(spark, use, COMPARED)

            outcome = alternate_ways(WAYS, args.repeat, run, lambda summary: f"{summary}")
        medians = outcome["median_seconds"]
        result.update(
            seconds=outcome["seconds"], median_seconds=medians,
            ratio_derived_to_kept=round(medians["derived"] / medians["kept"], 2),
            median_job_seconds={way: {job: round(statistics.median(s[f"{job}_seconds"] for s in runs), 1)
                                      for job in ("profiles", "attribution")}
                                for way, runs in outcome["summaries"].items()},
            summaries={way: runs[-1] for way, runs in outcome["summaries"].items()},
            tables=outcome["digest"], identical_tables=True, peak_rss_mb=dict(memory.peaks_mb))
        progress(f"derived {medians['derived']} s, kept {medians['kept']} s")
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("scope_kept", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
