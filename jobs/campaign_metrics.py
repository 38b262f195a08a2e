"""`touchpoint run campaign_metrics --date D`: the batch side of the Lambda serving views (BRIEF §7).

Reads silver.events at the version the identity run of D read (so events and the identity map are
one consistent snapshot; the latest version when there is no such run) and gold.identity_map, and
derives, over every event with event_ts < H = D+1 00:00Z:
- gold.campaign_minute / gold.campaign_daily: impressions, clicks, orders, revenue and last-touch
  orders and revenue per campaign per minute / day;
- gold.campaign_conversions: each conversion with its last touch (serving overrides single
  conversions with the speed layer's recomputation);
- gold.customer_activity: each customer's activity as of H.
Every row carries the cut (batch_as_of = H, batch_silver_version = V). Each table is overwritten
as a whole: a rerun of D writes the same rows. The definitions are touchpoint.core.campaign_metrics,
shared with the speed layer.

A run is incremental when the last run's state (recorded in its commits) allows: the additive
measures are the stored ones plus the signed measures of silver's changes since then, and only the
conversions of the changed customers and order ids are re-derived (docs/SERVING.md, "Incremental
batch views"). Either way the tables are those a full derivation writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import ExitStack
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.campaign_metrics import (
    CONVERSION_COLUMNS, GRAINS, LAST_TOUCH_MEASURES, MEASURES, MONEY, campaign_totals, conversions,
    customer_activity, last_touch, last_touch_totals, measure_rows, touchpoints,
)
from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.dates import as_of_for
from touchpoint.core.delta import is_delta, latest_version, read_version, snapshot_fingerprint
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.core.serving import SCHEMAS
from touchpoint.core.spark import local_checkpoint
from touchpoint.jobs.attribution import settings_fingerprint
from touchpoint.jobs.attribution_scope import (
    changed_customers, conversions_in_scope, events_in_scope, resolved_scope_seeds, scope_conversion_ids,
    with_changed_identifier_flag,
)
from touchpoint.jobs.identity_state import lookup_by_broadcast, snapshot_rows
from touchpoint.jobs.input_changes import changes_since, recorded_state, signed_silver_changes
from touchpoint.jobs.steps import step_timer

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "event_type", "event_ts", "event_date", "channel", "campaign_name", "order_id",
                 "revenue_reporting", "price", "quantity", "anonymous_id", "user_id", "email", "phone")
# Recorded in each commit of a run; bump it when a table's derivation changes, so that the next run
# derives everything instead of adding to tables computed the old way.
CAMPAIGN_STATE = 1
GRAIN_TABLES = {"minute": "gold.campaign_minute", "date": "gold.campaign_daily"}
# The tables an incremental run adds to (customer_activity is derived afresh from its horizon).
STATE_TABLES = ("gold.campaign_conversions", *GRAIN_TABLES.values())


def campaign_table(grain: str, additive: DataFrame, convs: DataFrame) -> DataFrame:
    """Additive totals (campaign_totals) and last-touch measures per (bucket, campaign), one row per key."""
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


def updated_totals(grain: str, stored: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Signed measure rows of silver's changes (measure_rows) -> the additive totals of a stored
    campaign table plus theirs. Measures are longs and DECIMAL(38, 9), so the sums are exact; a key
    whose counts all come to zero has no measured event left (each counts one) and is dropped, as
    campaign_totals would not have it."""
    key = [grain, "campaign"]

    def transform(changes: DataFrame) -> DataFrame:
        summed = (stored.select(*key, *MEASURES).unionByName(changes.transform(campaign_totals(grain)))
                  .groupBy(*key).agg(*[F.sum(m).cast(MONEY if m == "revenue" else "long").alias(m) for m in MEASURES]))
        return summed.where((F.col("impressions") != 0) | (F.col("clicks") != 0) | (F.col("orders") != 0))

    return transform


def updated_conversions(stored: DataFrame, rebuilt: DataFrame, seeds: DataFrame,
                        customers: DataFrame) -> DataFrame:
    """Stored conversions with those of the order ids in scope and of the changed customers
    replaced by `rebuilt` (every conversion of those order ids and customers, re-derived)."""
    replaced = stored.transform(conversions_in_scope(scope_conversion_ids(seeds), customers)).select("conversion_id")
    return (stored.select(*CONVERSION_COLUMNS).join(replaced, "conversion_id", "left_anti")
            .unionByName(rebuilt.select(*CONVERSION_COLUMNS)))


def with_cut(as_of: dt.datetime, silver_version: int):
    def transform(frame: DataFrame) -> DataFrame:
        return frame.withColumn("batch_as_of", F.lit(as_of).cast("timestamp")).withColumn(
            "batch_silver_version", F.lit(silver_version).cast("long"))

    return transform


def _silver_version(spark: SparkSession, settings: Settings, logical_date: dt.date) -> int:
    """The silver version the identity run of D read, else the latest."""
    runs = table_path("gold.identity_runs", settings)
    if is_delta(spark, runs):
        row = (spark.read.format("delta").load(runs).where(F.col("logical_date") == F.lit(logical_date))
               .agg(F.max("silver_version")).first())
        if row and row[0] is not None:
            return int(row[0])
    return latest_version(spark, table_path("silver.events", settings))


def _write(frame: DataFrame, name: str, settings: Settings, state: str) -> None:
    columns = SCHEMAS[name]
    (frame.select(*[F.col(f.name).cast(f.dataType) for f in columns.fields])
     .write.format("delta").mode("overwrite").option("overwriteSchema", "true").option("userMetadata", state)
     .save(table_path(name, settings)))


def _previous_state(settings: Settings) -> tuple[dict | None, str | None]:
    """The state the last run recorded, when every table it adds to still holds that run's output."""
    states = {}
    for name in STATE_TABLES:
        state, reason = recorded_state(table_path(name, settings), name, "campaign_metrics", CAMPAIGN_STATE)
        if state is None:
            return None, reason
        states[name] = state
    first = states[STATE_TABLES[0]]
    inputs = ("logical_date", "silver_version", "identity_map_version", "settings_fingerprint")
    if any(tuple(s[k] for k in inputs) != tuple(first[k] for k in inputs) for s in states.values()):
        return None, "the campaign tables were not all written by the same run"
    if first["settings_fingerprint"] != settings_fingerprint(settings.attribution):
        return None, "attribution settings changed"
    return {**first, "versions": {name: s["version"] for name, s in states.items()}}, None


def run(spark: SparkSession, settings: Settings, logical_date: dt.date, mode: str = "auto") -> dict:
    """The batch serving views as of D+1 00:00Z. mode: 'auto' (incremental when the last run's state
    is usable) or 'full'."""
    if mode not in ("auto", "full"):
        raise ValueError(f"mode must be 'auto' or 'full', got {mode!r}")
    as_of = as_of_for(logical_date)
    silver_path, map_path = table_path("silver.events", settings), table_path("gold.identity_map", settings)
    for name, path in (("silver.events", silver_path), ("gold.identity_map", map_path)):
        if not is_delta(spark, path):
            raise FileNotFoundError(f"campaign_metrics needs {name}, which has no Delta table at {path}")
    version = _silver_version(spark, settings, logical_date)
    silver = read_version(spark, silver_path, version)
    events = (silver.where(F.col("event_date") <= F.lit((as_of - dt.timedelta(microseconds=1)).date()))
              .where(F.col("event_ts") < F.lit(as_of))
              .select(*EVENT_COLUMNS))
    map_version = latest_version(spark, map_path)
    identity_map = read_version(spark, map_path, map_version)
    broadcast_map = lookup_by_broadcast(map_path, map_version)
    resolve = attach_customer_id(identity_map, broadcast=broadcast_map)
    cfg = settings.attribution
    previous, full_reason = _previous_state(settings) if mode == "auto" else (None, "full recompute requested")
    minimum = settings.campaign_metrics.incremental_min_events
    silver_events = snapshot_rows(silver_path, version) if previous is not None else None
    if silver_events is not None and silver_events < minimum:
        previous, full_reason = None, f"silver holds {silver_events:,} events, fewer than {minimum:,}"
    scope = None
    if previous is not None:
        scope, full_reason = changes_since(
            spark, "campaign_metrics", previous, {"silver.events": silver, "gold.identity_map": identity_map},
            {"silver.events": version, "gold.identity_map": map_version},
            {"silver.events": silver_path, "gold.identity_map": map_path}, as_of)
    step = step_timer(log, "campaign_metrics", logical_date)
    horizon = as_of - dt.timedelta(days=settings.stream.activity_horizon_days)
    # Reused frames are local checkpoints, not persisted frames (core.spark.local_checkpoint says why).
    with ExitStack() as checkpoints:
        def keep(frame: DataFrame) -> DataFrame:
            return checkpoints.enter_context(local_checkpoint(frame))

        derived = None
        if scope is not None:
            scope = keep(scope[0]), keep(scope[1])
            try:  # files a VACUUM removed (an old map version, change feed files) show on reading
                scope[0].count(), scope[1].count()
            except Exception as unreadable:
                log.warning("campaign_metrics %s: the changes since the last run cannot be read: %s",
                            logical_date, unreadable)
                full_reason = f"the changes since the last run cannot be read ({type(unreadable).__name__})"
            else:
                derived = _changed(spark, settings, previous, scope, events, resolve, broadcast_map, keep, step,
                                   silver, version, as_of)
        if derived is None:
            resolved = keep(events.transform(resolve))
            step("events resolved")
            convs = keep(resolved.transform(conversions).transform(last_touch(resolved.transform(touchpoints(cfg)), cfg)))
            measured = measure_rows(resolved)
            totals = {grain: measured.transform(campaign_totals(grain)) for grain in GRAINS}
            derivation = f"all customers: {full_reason}"
        else:
            convs, totals, resolved, derivation = derived
        step("conversions with their last touch")
        state = json.dumps({
            "state": CAMPAIGN_STATE, "logical_date": logical_date.isoformat(), "silver_version": version,
            "identity_map_version": map_version, "identity_map_fingerprint": snapshot_fingerprint(map_path, map_version),
            "settings_fingerprint": settings_fingerprint(cfg)}, sort_keys=True)
        cut = with_cut(as_of, version)
        _write(convs.transform(cut), "gold.campaign_conversions", settings, state)
        step("gold.campaign_conversions written")
        for grain, name in GRAIN_TABLES.items():
            _write(campaign_table(grain, totals[grain], convs).transform(cut), name, settings, state)
            step(f"{name} written")
        activity = resolved.where(F.col("event_ts") >= F.lit(horizon)).transform(customer_activity(as_of))
        _write(activity.transform(cut), "gold.customer_activity", settings, state)
        step("gold.customer_activity written")
        conversions_count = convs.count()
    return {"as_of": as_of.isoformat(), "silver_version": version, "conversions": conversions_count,
            "mode": "full" if derived is None else "incremental", "derivation": derivation}


def _changed(spark: SparkSession, settings: Settings, previous: dict, scope: tuple[DataFrame, DataFrame],
             events: DataFrame, resolve, broadcast: bool, keep, step, silver: DataFrame, version: int,
             as_of: dt.datetime) -> tuple[DataFrame, dict[str, DataFrame], DataFrame, str]:
    """Conversions, additive totals and the resolved events (for customer activity) from the last
    run's tables and what changed since.

    Every event is resolved once, as a full run does (cheap with broadcast lookups); the scope is
    then filters of that frame (jobs.attribution_scope.resolved_scope_seeds). Re-derived are the
    conversions of the order ids in scope and of the changed customers, with the touchpoints of
    their customers, including a customer who did not change but now owns a re-derived conversion
    (another customer's earlier order event of that order id was erased)."""
    cfg = settings.attribution
    changed_events, changes = scope
    resolved = keep(events.transform(with_changed_identifier_flag(changes, broadcast)).transform(resolve))
    customers = keep(changed_customers(changes, changed_events.transform(resolve).select("customer_id")))
    seeds = keep(resolved.transform(resolved_scope_seeds(customers, changed_events)))
    rebuilt_conversions = keep(resolved.transform(events_in_scope(seeds)).transform(conversions))
    # last_touch joins touchpoints by customer: only the rebuilt conversions' customers' are needed
    owners = rebuilt_conversions.where(F.col("customer_id").isNotNull()).select("customer_id").distinct()
    touches = resolved.join(F.broadcast(owners), "customer_id", "left_semi").transform(touchpoints(cfg))
    step(f"scope: {customers.count()} changed customers")
    convs_path = table_path("gold.campaign_conversions", settings)
    stored_conversions = read_version(spark, convs_path, previous["versions"]["gold.campaign_conversions"])
    convs = keep(updated_conversions(stored_conversions, rebuilt_conversions.transform(last_touch(touches, cfg)),
                                     seeds, customers))
    measured_changes = keep(measure_rows(signed_silver_changes(
        spark, table_path("silver.events", settings), silver, previous["silver_version"], version,
        as_of_for(previous["logical_date"]), as_of, ("event_type", "event_ts", "campaign_name", "revenue_reporting"))))
    totals = {}
    for grain, name in GRAIN_TABLES.items():
        stored = read_version(spark, table_path(name, settings), previous["versions"][name])
        totals[grain] = keep(measured_changes.transform(updated_totals(grain, stored)))
    return convs, totals, resolved, f"changed customers: {customers.count()}"
