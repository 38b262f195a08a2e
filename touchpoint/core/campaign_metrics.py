"""Campaign metrics and customer activity: one definition for the batch job and the speed layer.

Everything here is a pure transform over silver-shaped events (speed adds a `sign` column for
rows the change feed deletes). touchpoint.jobs.campaign_metrics runs it over silver below the
batch high-water mark; touchpoint.streaming.speed runs it over the silver change feed.

Definitions (docs/SERVING.md):
- campaign: `campaign_name` as written, trimmed; null when empty (BRIEF §4);
- impressions: `ad_impression` events; clicks: `ad_click` + `email_click`; orders: `order`
  events (silver keeps one per order id); revenue: Σ `revenue_reporting` of those orders;
- buckets: the UTC minute (`minute`) or UTC date (`date`) of `event_ts`;
- last touch (BRIEF §4): per conversion, the touchpoint with the greatest (touch_ts, event_id)
  among its customer's touchpoints with conv_ts − lookback ≤ touch_ts ≤ conv_ts; none gives
  channel `direct` and a null campaign. Counted on the conversion's minute / date.
Money is DECIMAL(38, 9): its sums do not depend on row order, so a total built from partial
sums of the speed layer equals the batch total to the last digit.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType

from touchpoint.core.config import AttributionSettings

MONEY = DecimalType(38, 9)
MICROS_PER_MINUTE = 60_000_000
MICROS_PER_DAY = 86_400_000_000
IMPRESSION_TYPES = ("ad_impression",)
CLICK_TYPES = ("ad_click", "email_click")
ORDER_TYPE = "order"
MEASURED_TYPES = IMPRESSION_TYPES + CLICK_TYPES + (ORDER_TYPE,)
MEASURES = ("impressions", "clicks", "orders", "revenue")
LAST_TOUCH_MEASURES = ("last_touch_orders", "last_touch_revenue")
EMPTY_PATH_CHANNEL = "direct"
GRAINS = ("minute", "date")
# Columns of a per-conversion last-touch row (gold.campaign_conversions, speed.campaign_conversions).
CONVERSION_COLUMNS = ("conversion_id", "conversion_ts", "customer_id", "revenue", "last_touch_event_id",
                      "last_touch_ts", "last_touch_channel", "last_touch_campaign")


def campaign_name(value: Column) -> Column:
    """The campaign as written (trimmed), null when there is none."""
    trimmed = F.trim(value)
    return F.when(F.length(trimmed) > 0, trimmed)


def money(value: Column) -> Column:
    return value.cast(MONEY)


def signed(value: Column, sign: Column) -> Column:
    """value × sign (±1), in value's own type. Spark types a DECIMAL(38,9) times an integer as a
    decimal of scale 6 or 7 (by the integer's precision: a column or a literal) and rounds the
    product there, so batch and speed would round revenue differently."""
    return F.when(sign < 0, -value).otherwise(value)


def micros(value: str | Column) -> Column:
    return F.unix_micros(F.col(value) if isinstance(value, str) else value)


def bucket(grain: str, ts: Column) -> Column:
    if grain == "minute":
        return F.date_trunc("minute", ts)
    if grain == "date":
        return F.to_date(ts)
    raise ValueError(f"grain must be one of {GRAINS}, got {grain!r}")


# ---------------------------------------------------------------- additive campaign measures


def measure_rows(events: DataFrame) -> DataFrame:
    """Events -> one row per measured event: campaign, event_ts and the four measures, each
    multiplied by `sign` when the frame has one (-1 for a row the change feed deleted)."""
    sign = F.col("sign") if "sign" in events.columns else F.lit(1)
    kind = F.col("event_type")
    is_order = kind == ORDER_TYPE
    return events.where(kind.isin(*MEASURED_TYPES)).select(
        campaign_name(F.col("campaign_name")).alias("campaign"),
        "event_ts",
        (F.when(kind.isin(*IMPRESSION_TYPES), 1).otherwise(0) * sign).cast("long").alias("impressions"),
        (F.when(kind.isin(*CLICK_TYPES), 1).otherwise(0) * sign).cast("long").alias("clicks"),
        (F.when(is_order, 1).otherwise(0) * sign).cast("long").alias("orders"),
        signed(F.when(is_order, F.coalesce(money(F.col("revenue_reporting")), F.lit(0).cast(MONEY)))
               .otherwise(F.lit(0).cast(MONEY)), sign).alias("revenue"),
        *[c for c in ("silver_version",) if c in events.columns],
    )


def campaign_totals(grain: str, extra_keys: tuple[str, ...] = ()) -> Callable[[DataFrame], DataFrame]:
    """measure_rows -> Σ measures per (bucket, campaign, *extra_keys)."""

    def transform(rows: DataFrame) -> DataFrame:
        return (rows.groupBy(bucket(grain, F.col("event_ts")).alias(grain), "campaign", *extra_keys)
                .agg(*[F.sum(m).cast(MONEY if m == "revenue" else "long").alias(m) for m in MEASURES]))

    return transform


# ---------------------------------------------------------------- last touch


def touchpoint_types(settings: AttributionSettings) -> tuple[str, ...]:
    kinds = tuple(settings.touchpoint_event_types)
    if settings.view_through and "ad_impression" not in kinds:
        kinds += ("ad_impression",)
    return kinds


def touchpoints(settings: AttributionSettings) -> Callable[[DataFrame], DataFrame]:
    """Events with `customer_id` -> touchpoints (touch_event_id, customer_id, touch_ts, channel,
    campaign), BRIEF §4: clicks (and impressions with view-through) of known customers, and page
    views whose channel is not `direct` unless they land a click of the same customer, channel and
    campaign in the landing window up to and including the page view."""
    kinds = touchpoint_types(settings)
    window_us = round(settings.landing_window_minutes * MICROS_PER_MINUTE)

    def transform(events: DataFrame) -> DataFrame:
        known = events.where(F.col("customer_id").isNotNull()).select(
            F.col("event_id").alias("touch_event_id"), "customer_id", "event_type",
            F.col("event_ts").alias("touch_ts"),
            F.coalesce(F.col("channel"), F.lit(EMPTY_PATH_CHANNEL)).alias("channel"),
            campaign_name(F.col("campaign_name")).alias("campaign"),
        )
        others = [k for k in kinds if k != "page_view"]
        is_touch = F.col("event_type").isin(*others) if others else F.lit(False)
        if "page_view" in kinds:
            is_touch = is_touch | ((F.col("event_type") == "page_view") & (F.col("channel") != EMPTY_PATH_CHANNEL))
        candidates = known.where(is_touch)
        if window_us > 0:
            clicks = known.where(F.col("event_type").isin(*CLICK_TYPES)).select(
                "customer_id", "channel", "campaign", micros("touch_ts").alias("click_us"))
            view, click = candidates.alias("view"), clicks.alias("click")
            view_us = micros(F.col("view.touch_ts"))
            landing = ((F.col("view.event_type") == "page_view")
                       & (F.col("view.customer_id") == F.col("click.customer_id"))
                       & (F.col("view.channel") == F.col("click.channel"))
                       & F.col("view.campaign").eqNullSafe(F.col("click.campaign"))
                       & F.col("click.click_us").between(view_us - window_us, view_us))
            candidates = view.join(click, landing, "left_anti")
        return candidates.select("touch_event_id", "customer_id", "touch_ts", "channel", "campaign")

    return transform


def earliest_orders(events: DataFrame) -> DataFrame:
    """Events with `customer_id` -> one row per trimmed, non-empty order id: the order event with the
    smallest (event_ts, event_id) (BRIEF §2, §4). Columns: conversion_id, conversion_ts,
    conversion_event_id, customer_id, revenue (`revenue_reporting` as stored). The one definition of a
    conversion: the serving tables and attribution (jobs.attribution_models) select from it."""
    order_id = F.trim(F.col("order_id"))
    earliest = F.min(F.struct(F.col("event_ts").alias("conversion_ts"), F.col("event_id").alias("conversion_event_id"),
                              F.col("customer_id"), F.col("revenue_reporting").alias("revenue")))
    return (events.where((F.col("event_type") == ORDER_TYPE) & (F.length(order_id) > 0))
            .groupBy(order_id.alias("conversion_id")).agg(earliest.alias("o"))
            .select("conversion_id", "o.conversion_ts", "o.conversion_event_id", "o.customer_id", "o.revenue"))


def conversions(events: DataFrame) -> DataFrame:
    """Events with `customer_id` -> the conversions of the serving tables: earliest_orders with the
    revenue as money."""
    return earliest_orders(events).select("conversion_id", "conversion_ts", "customer_id",
                                          money(F.col("revenue")).alias("revenue"))


def last_touch(touches: DataFrame, settings: AttributionSettings) -> Callable[[DataFrame], DataFrame]:
    """Conversions -> conversions with their last touch (CONVERSION_COLUMNS)."""
    lookback_us = round(settings.lookback_days * MICROS_PER_DAY)

    def transform(convs: DataFrame) -> DataFrame:
        conv, touch = convs.alias("c"), touches.alias("t")
        conv_us = micros(F.col("c.conversion_ts"))
        in_path = ((F.col("c.customer_id") == F.col("t.customer_id"))
                   & micros(F.col("t.touch_ts")).between(conv_us - lookback_us, conv_us))
        last = F.max_by(F.struct("t.touch_event_id", "t.touch_ts", "t.channel", "t.campaign"),
                        F.struct("t.touch_ts", "t.touch_event_id"))
        return (conv.join(touch, in_path, "left")
                .groupBy("c.conversion_id", "c.conversion_ts", "c.customer_id", "c.revenue")
                .agg(last.alias("last"))
                .select("conversion_id", "conversion_ts", "customer_id", "revenue",
                        F.col("last.touch_event_id").alias("last_touch_event_id"),
                        F.col("last.touch_ts").alias("last_touch_ts"),
                        F.coalesce(F.col("last.channel"), F.lit(EMPTY_PATH_CHANNEL)).alias("last_touch_channel"),
                        F.col("last.campaign").alias("last_touch_campaign")))

    return transform


def last_touch_of_paths(convs_with_paths: DataFrame) -> DataFrame:
    """Conversions with their ordered paths (gold.attribution_conversions: the customer's touchpoints
    in the lookback window, ascending by (touch_ts, touch_event_id)) -> CONVERSION_COLUMNS. The
    path's last element is the touchpoint `last_touch` picks: the same window, the same order."""
    last = F.get(F.col("path"), F.size("path") - 1)  # null for an empty path
    return convs_with_paths.select(
        "conversion_id", "conversion_ts", "customer_id", money(F.col("revenue")).alias("revenue"),
        last["touch_event_id"].alias("last_touch_event_id"), last["touch_ts"].alias("last_touch_ts"),
        F.coalesce(last["channel"], F.lit(EMPTY_PATH_CHANNEL)).alias("last_touch_channel"),
        last["campaign"].alias("last_touch_campaign"))


def last_touch_totals(grain: str) -> Callable[[DataFrame], DataFrame]:
    """Per-conversion last-touch rows -> last_touch_orders / last_touch_revenue per (bucket, campaign)."""

    def transform(convs: DataFrame) -> DataFrame:
        return (convs.groupBy(bucket(grain, F.col("conversion_ts")).alias(grain),
                              F.col("last_touch_campaign").alias("campaign"))
                .agg(F.count(F.lit(1)).cast("long").alias("last_touch_orders"),
                     F.sum(F.coalesce("revenue", F.lit(0).cast(MONEY))).cast(MONEY).alias("last_touch_revenue")))

    return transform


def attribution_window_micros(settings: AttributionSettings) -> int:
    """How far before a conversion an event can still change its last touch (lookback + landing)."""
    return round(settings.lookback_days * MICROS_PER_DAY + settings.landing_window_minutes * MICROS_PER_MINUTE)


# ---------------------------------------------------------------- customer activity

ACTIVITY_COLUMNS = ("customer_id", "as_of", "last_event_ts", "last_event_type", "events_last_30m",
                    "page_views_last_30m", "open_cart_value", "last_cart_ts", "cart_abandoned")


def customer_activity(as_of: dt.datetime | Column, recent_minutes: float = 30,
                      abandon_minutes: float = 30) -> Callable[[DataFrame], DataFrame]:
    """Events with `customer_id` (already limited to the horizon of interest) -> one row per customer
    as of the instant `as_of` (events after it are ignored):
    - last event (ts, type; ties by event_id), events and page views in [as_of − recent, as_of];
    - open cart: add_to_cart events after the customer's last order, valued Σ price × quantity;
    - cart_abandoned: an open cart whose last add_to_cart is at least `abandon_minutes` before as_of.
    """
    at = as_of if isinstance(as_of, Column) else F.lit(as_of).cast("timestamp")
    recent_start_us = micros(at) - F.lit(round(recent_minutes * MICROS_PER_MINUTE))
    abandon_us = round(abandon_minutes * MICROS_PER_MINUTE)

    def transform(events: DataFrame) -> DataFrame:
        known = events.where(F.col("customer_id").isNotNull() & (F.col("event_ts") <= at))
        ts_us = micros("event_ts")
        recent = ts_us >= recent_start_us
        last_order = (known.where(F.col("event_type") == ORDER_TYPE).groupBy("customer_id")
                      .agg(F.max("event_ts").alias("last_order_ts")))
        per_customer = known.join(last_order, "customer_id", "left")
        in_cart = ((F.col("event_type") == "add_to_cart")
                   & (F.col("last_order_ts").isNull() | (F.col("event_ts") > F.col("last_order_ts"))))
        line_value = money(F.coalesce(F.col("price"), F.lit(0.0))) * F.coalesce(F.col("quantity"), F.lit(1))
        rows = per_customer.groupBy("customer_id").agg(
            F.max_by(F.struct("event_ts", "event_type"), F.struct("event_ts", "event_id")).alias("last"),
            F.count_if(recent).cast("long").alias("events_last_30m"),
            F.count_if(recent & (F.col("event_type") == "page_view")).cast("long").alias("page_views_last_30m"),
            F.sum(F.when(in_cart, line_value)).cast(MONEY).alias("open_cart_value"),
            F.max(F.when(in_cart, F.col("event_ts"))).alias("last_cart_ts"),
        )
        return rows.select(
            "customer_id", at.alias("as_of"), F.col("last.event_ts").alias("last_event_ts"),
            F.col("last.event_type").alias("last_event_type"), "events_last_30m", "page_views_last_30m",
            F.coalesce("open_cart_value", F.lit(0).cast(MONEY)).alias("open_cart_value"), "last_cart_ts",
            F.coalesce(micros("last_cart_ts") <= micros(at) - F.lit(abandon_us), F.lit(False)).alias("cart_abandoned"),
        )

    return transform
