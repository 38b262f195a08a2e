"""The batch side of the serving views, `campaign_metrics` for one day, three ways over the same
snapshot, alternating in one Spark application:

- `paths`: the platform's daily way. D's attribution run read the same snapshot, so each
  conversion's last touch is its stored path's last element; the measures are summed without
  resolving customers, and activity resolves only its horizon.
- `derived`: `mode="full"`, what a run does without D's attribution state. Touchpoints and
  conversions are derived from silver; the rest as in `paths`.
- `resolved_all`: the job as it was until session 49, kept here as the baseline. Every event below
  H is resolved and kept, and every table is derived from that.

    python -m bench.campaign_metrics [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` (e.g. `DIR/lake` of `bench.batch_pipeline --workdir DIR`) it reads silver.events from
there (nothing there is written); otherwise it builds a lake as `bench.attribution_peers` does. In
a scratch lake it runs identity and attribution for D, the last event date in silver, then
campaign_metrics `--repeat` times each way. It checks that every run wrote the same four tables,
and reports the median seconds of each way.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.changed_vs_all import arguments, source_lake, table_digest, timed
from bench.common import alternate_ways, progress, write_result
from bench.faults import RssSampler, lake_settings

WAYS = ("paths", "derived", "resolved_all")
TABLES = ("gold.campaign_conversions", "gold.campaign_minute", "gold.campaign_daily", "gold.customer_activity")


def resolved_all(spark, settings, day: dt.date) -> dict:
    """The baseline: campaign_metrics as of session 49 (every event resolved, then each table)."""
    from pyspark.sql import functions as F

    from touchpoint.core.campaign_metrics import (
        campaign_totals, conversions, customer_activity, last_touch, measure_rows, touchpoints,
    )
    from touchpoint.core.catalog import table_path
    from touchpoint.core.dates import as_of_for
    from touchpoint.core.delta import read_version
    from touchpoint.core.identity_lookup import attach_customer_id
    from touchpoint.core.spark import local_checkpoint
    from touchpoint.jobs.campaign_metrics import EVENT_COLUMNS, _write, campaign_table, with_cut
    from touchpoint.jobs.identity_state import inputs_of_date, lookup_by_broadcast

    as_of = as_of_for(day)
    snapshot = inputs_of_date(spark, settings, day, "campaign_metrics")
    silver_path, map_path = table_path("silver.events", settings), table_path("gold.identity_map", settings)
    events = (read_version(spark, silver_path, snapshot.silver_version)
              .where(F.col("event_date") <= F.lit((as_of - dt.timedelta(microseconds=1)).date()))
              .where(F.col("event_ts") < F.lit(as_of)).select(*EVENT_COLUMNS))
    resolve = attach_customer_id(read_version(spark, map_path, snapshot.map_version),
                                 broadcast=lookup_by_broadcast(map_path, snapshot.map_version))
    cfg, cut = settings.attribution, with_cut(as_of, snapshot.silver_version)
    with ExitStack() as checkpoints:
        resolved = checkpoints.enter_context(local_checkpoint(events.transform(resolve)))
        convs = checkpoints.enter_context(local_checkpoint(
            resolved.transform(conversions).transform(last_touch(resolved.transform(touchpoints(cfg)), cfg))))
        _write(convs.transform(cut), "gold.campaign_conversions", settings)
        measured = measure_rows(resolved)
        for grain, name in (("minute", "gold.campaign_minute"), ("date", "gold.campaign_daily")):
            _write(campaign_table(grain, measured.transform(campaign_totals(grain)), convs).transform(cut),
                   name, settings)
        horizon = as_of - dt.timedelta(days=settings.stream.activity_horizon_days)
        _write(resolved.where(F.col("event_ts") >= F.lit(horizon)).transform(customer_activity(as_of))
               .transform(cut), "gold.customer_activity", settings)
        return {"last_touch": "every event resolved (as of session 49)", "conversions": convs.count()}


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, "a lake with silver.events")

    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import attribution, campaign_metrics, identity

    workdir = Path(tempfile.mkdtemp(prefix="bench-campaign-metrics-"))
    settings = lake_settings(workdir / "scratch", spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4)
    spark = get_spark("bench-campaign-metrics", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            source_lake(spark, args, settings, workdir, result)
            day = dt.date.fromisoformat(result["parameters"]["last_day"])
            result["parameters"]["day"] = day.isoformat()
            progress(f"{result['parameters']['silver_events']:,} silver events; identity and attribution for {day}")
            for name, job in (("identity", identity), ("attribution", attribution)):
                timed(result, name, lambda: job.run(spark, settings, day))
            progress(f"identity {result['identity_seconds']} s, attribution {result['attribution_seconds']} s")

            def run(way: str) -> tuple[float, dict, dict]:
                started = time.monotonic()
                if way == "resolved_all":
                    summary = resolved_all(spark, settings, day)
                else:
                    summary = campaign_metrics.run(spark, settings, day, mode="auto" if way == "paths" else "full")
                took = round(time.monotonic() - started, 1)
                return took, summary, table_digest(spark, settings, TABLES)

            outcome = alternate_ways(WAYS, args.repeat, run, lambda summary: summary["last_touch"])
        medians = outcome["median_seconds"]
        progress(f"median s: {medians}")
        result.update(seconds=outcome["seconds"], median_seconds=medians,
                      ratio_resolved_all_to_paths=round(medians["resolved_all"] / medians["paths"], 2),
                      ratio_derived_to_paths=round(medians["derived"] / medians["paths"], 2),
                      last_touch={way: runs[-1]["last_touch"] for way, runs in outcome["summaries"].items()},
                      conversions=outcome["summaries"]["paths"][-1]["conversions"],
                      tables=outcome["digest"], identical_tables=True, peak_rss_mb=dict(memory.peaks_mb))
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("campaign_metrics", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
