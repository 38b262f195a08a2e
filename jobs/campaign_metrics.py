"""`touchpoint run campaign_metrics --date D`: the batch side of the Lambda serving views (BRIEF §7).

Reads silver.events at the version the identity run of D read and gold.identity_map at the version
it wrote (one consistent snapshot; the latest versions when there is no such run), and recomputes,
over every event with event_ts < H = D+1 00:00Z:
- gold.campaign_minute / gold.campaign_daily: impressions, clicks, orders, revenue and last-touch
  orders and revenue per campaign per minute / day;
- gold.campaign_conversions: each conversion with its last touch (serving overrides single
  conversions with the speed layer's recomputation);
- gold.customer_activity: each customer's activity as of H.
Every row carries the cut (batch_as_of = H, batch_silver_version = V). Each table is overwritten
as a whole: a rerun of D writes the same rows. The definitions are touchpoint.core.campaign_metrics,
shared with the speed layer.

The last touch of each conversion is its path's last element when D's attribution run (a step
before, in marketing_daily) read the same snapshot with the same settings: then the measures are
summed without resolving customers and only the activity horizon's events are resolved. Otherwise
every event below H is resolved once and all four tables are derived from it. Either way the
dates' totals are sums of the minutes' (docs/SERVING.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import ExitStack

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.campaign_metrics import (
    LAST_TOUCH_MEASURES, MEASURES, MONEY, campaign_totals, conversions, customer_activity, last_touch,
    last_touch_of_paths, last_touch_totals, measure_rows, touchpoints,
)
from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.dates import as_of_for
from touchpoint.core.delta import is_delta, read_version
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.core.serving import SCHEMAS
from touchpoint.core.spark import local_checkpoint
from touchpoint.jobs.attribution import conversions_of_date
from touchpoint.jobs.identity_state import inputs_of_date, lookup_by_broadcast
from touchpoint.jobs.steps import step_timer

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "event_type", "event_ts", "event_date", "channel", "campaign_name", "order_id",
                 "revenue_reporting", "price", "quantity", "anonymous_id", "user_id", "email", "phone")


def campaign_table(grain: str, additive: DataFrame, convs: DataFrame) -> DataFrame:
    """Additive totals per (bucket, campaign) and last-touch measures of the conversions, one row per key."""
    attributed = convs.transform(last_touch_totals(grain))
    key = [grain, "campaign"]
    joined = additive.alias("a").join(
        attributed.alias("l"),
        (F.col(f"a.{grain}") == F.col(f"l.{grain}")) & F.col("a.campaign").eqNullSafe(F.col("l.campaign")), "full")
    zero = {m: F.lit(0).cast(MONEY if "revenue" in m else "long") for m in MEASURES + LAST_TOUCH_MEASURES}
    return joined.select(
        *[F.coalesce(F.col(f"a.{k}"), F.col(f"l.{k}")).alias(k) for k in key],
        *[F.coalesce(F.col(f"a.{m}"), zero[m]).alias(m) for m in MEASURES],
        *[F.coalesce(F.col(f"l.{m}"), zero[m]).alias(m) for m in LAST_TOUCH_MEASURES],
    )


def daily_from_minutes(minute_totals: DataFrame) -> DataFrame:
    """Per-minute additive totals -> per-date ones: sums of sums, exact for counts and DECIMAL money."""
    return minute_totals.withColumnRenamed("minute", "event_ts").transform(campaign_totals("date"))


def with_cut(as_of: dt.datetime, silver_version: int):
    def transform(frame: DataFrame) -> DataFrame:
        return frame.withColumn("batch_as_of", F.lit(as_of).cast("timestamp")).withColumn(
            "batch_silver_version", F.lit(silver_version).cast("long"))

    return transform


def _write(frame: DataFrame, name: str, settings: Settings) -> None:
    columns = SCHEMAS[name]
    (frame.select(*[F.col(f.name).cast(f.dataType) for f in columns.fields])
     .write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(table_path(name, settings)))


def run(spark: SparkSession, settings: Settings, logical_date: dt.date, mode: str = "auto") -> dict:
    """mode 'auto': each conversion's last touch is the last element of its path when D's attribution
    run read the same snapshot with the same settings (the pipeline's order), else derived from
    silver; 'full': always derived from silver."""
    if mode not in ("auto", "full"):
        raise ValueError(f"mode must be 'auto' or 'full', got {mode!r}")
    as_of = as_of_for(logical_date)
    silver_path, map_path = table_path("silver.events", settings), table_path("gold.identity_map", settings)
    for name, path in (("silver.events", silver_path), ("gold.identity_map", map_path)):
        if not is_delta(spark, path):
            raise FileNotFoundError(f"campaign_metrics needs {name}, which has no Delta table at {path}")
    snapshot = inputs_of_date(spark, settings, logical_date, "campaign_metrics")
    version, map_version = snapshot.silver_version, snapshot.map_version
    silver = read_version(spark, silver_path, version)
    events = (silver.where(F.col("event_date") <= F.lit((as_of - dt.timedelta(microseconds=1)).date()))
              .where(F.col("event_ts") < F.lit(as_of))
              .select(*EVENT_COLUMNS))
    resolve = attach_customer_id(read_version(spark, map_path, map_version),
                                 broadcast=lookup_by_broadcast(map_path, map_version))
    cfg = settings.attribution
    step = step_timer(log, "campaign_metrics", logical_date)
    # Reused frames are local checkpoints, not persisted frames (core.spark.local_checkpoint says why).
    with ExitStack() as checkpoints:
        def keep(frame: DataFrame) -> DataFrame:
            return checkpoints.enter_context(local_checkpoint(frame))

        paths_version, why_derived = (None, "full recompute requested") if mode == "full" else conversions_of_date(
            spark, settings, logical_date, version, map_version)
        horizon = as_of - dt.timedelta(days=settings.stream.activity_horizon_days)

        def within_horizon(frame: DataFrame) -> DataFrame:
            return frame.where(F.col("event_date") >= F.lit(horizon.date())).where(F.col("event_ts") >= F.lit(horizon))

        if paths_version is not None:
            convs = keep(read_version(spark, table_path("gold.attribution_conversions", settings), paths_version)
                         .transform(last_touch_of_paths))
            # the measures need no customer, and activity only the horizon's
            measured_events, activity_events = events, events.transform(within_horizon).transform(resolve)
            last_touch_source = f"attribution paths (gold.attribution_conversions version {paths_version})"
        else:
            # every event resolved once, kept: cheaper than reading silver again for each table (bench/README.md)
            resolved = keep(events.transform(resolve))
            convs = keep(resolved.transform(conversions).transform(last_touch(resolved.transform(touchpoints(cfg)), cfg)))
            measured_events, activity_events = resolved, resolved.transform(within_horizon)
            last_touch_source = f"derived from silver: {why_derived}"
        step(f"conversions with their last touch ({last_touch_source})")
        cut = with_cut(as_of, version)
        _write(convs.transform(cut), "gold.campaign_conversions", settings)
        step("gold.campaign_conversions written")
        minute_totals = keep(measure_rows(measured_events).transform(campaign_totals("minute")))
        for grain, name, additive in (("minute", "gold.campaign_minute", minute_totals),
                                      ("date", "gold.campaign_daily", daily_from_minutes(minute_totals))):
            _write(campaign_table(grain, additive, convs).transform(cut), name, settings)
            step(f"{name} written")
        activity = activity_events.transform(customer_activity(as_of))
        _write(activity.transform(cut), "gold.customer_activity", settings)
        step("gold.customer_activity written")
        conversions_count = convs.count()
    return {"as_of": as_of.isoformat(), "silver_version": version, "conversions": conversions_count,
            "last_touch": last_touch_source}
