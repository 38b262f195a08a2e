"""Touchpoints, conversions, paths and the per-conversion credits of BRIEF §4, as pure transforms.

Everything here is `DataFrame -> DataFrame` (parametrised ones return a Callable for `.transform()`);
reading and writing happen in touchpoint.jobs.attribution. Instants are compared as integer
microseconds since the epoch, never as calendar dates.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# Touchpoints and conversions are one definition shared with the speed layer (BRIEF §4): the core module holds it.
from touchpoint.core.campaign_metrics import (  # noqa: F401  (re-exported for the attribution job)
    CLICK_TYPES, EMPTY_PATH_CHANNEL, MICROS_PER_DAY, campaign_name, earliest_orders, micros, touchpoint_types,
    touchpoints,
)
from touchpoint.core.config import AttributionSettings


MODELS = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov", "shapley")
HEURISTIC_MODELS = tuple(m for m in MODELS if m != "markov")
PATH_SEPARATOR = " > "

# Columns of the tables this module produces.
TOUCHPOINT_COLUMNS = ("touch_event_id", "customer_id", "touch_ts", "channel", "campaign")
CONVERSION_COLUMNS = ("conversion_id", "conversion_event_id", "customer_id", "conversion_ts", "revenue")
CREDIT_COLUMNS = ("model", "conversion_id", "customer_id", "conversion_ts", "touch_event_id", "touch_ts",
                  "channel", "campaign", "credit", "revenue_credit")
# One element of a conversion's path. Field order matters: array_sort on these structs orders by
# touch_ts, then touch_event_id (Spark compares strings by UTF-8 bytes, which is code-point order).
PATH_ELEMENT = "struct<touch_ts: timestamp, touch_event_id: string, channel: string, campaign: string>"


def days_to_micros(days: float) -> int:
    return round(days * MICROS_PER_DAY)


def lookback_micros(settings: AttributionSettings) -> int:
    return days_to_micros(settings.lookback_days)


def conversions(events: DataFrame) -> DataFrame:
    """Events with a resolved `customer_id` -> one conversion per order id (BRIEF §4), the earliest
    order event (core.campaign_metrics.earliest_orders: silver already deduplicates orders; the
    smallest (event_ts, event_id) still wins, so a conversion never depends on which copy a reader
    happens to see)."""
    return earliest_orders(events).select(*CONVERSION_COLUMNS)


def with_paths(touches: DataFrame, settings: AttributionSettings) -> Callable[[DataFrame], DataFrame]:
    """Conversions -> conversions with `path`: their customer's touchpoints with
    conv_ts − lookback ≤ touch_ts ≤ conv_ts, ordered by (touch_ts, touch_event_id).
    A conversion without a customer has an empty path."""
    lookback_us = lookback_micros(settings)

    def transform(convs: DataFrame) -> DataFrame:
        conv, touch = convs.alias("conv"), touches.alias("touch")
        conv_us = micros(F.col("conv.conversion_ts"))
        in_window = (
            (F.col("conv.customer_id") == F.col("touch.customer_id"))
            & micros(F.col("touch.touch_ts")).between(conv_us - lookback_us, conv_us)
        )
        element = F.when(
            F.col("touch.touch_event_id").isNotNull(),
            F.struct("touch.touch_ts", "touch.touch_event_id", "touch.channel", "touch.campaign"),
        )
        return (
            conv.join(touch, in_window, "left")
            .groupBy(*[F.col(f"conv.{c}") for c in CONVERSION_COLUMNS])
            .agg(F.array_sort(F.collect_list(element)).cast(f"array<{PATH_ELEMENT}>").alias("path"))
        )

    return transform


def path_string(path: Column) -> Column:
    """Channels of a path joined by ' > ', repeats kept (the ChannelAttribution format)."""
    return F.array_join(F.transform(path, lambda p: p["channel"]), PATH_SEPARATOR)


def removal_effect_map(removal_effects: Mapping[str, float]) -> Column:
    """A literal map<string,double> column (JSON round-trips doubles exactly)."""
    return F.from_json(F.lit(json.dumps(dict(sorted(removal_effects.items())))), "map<string,double>")


def _credit_columns(settings: AttributionSettings, removal_effects: Mapping[str, float]) -> dict[str, Column]:
    """Credit of the exploded touchpoint `t` (position `pos`) of `path`, per model."""
    n = F.size("path")
    pos = F.col("pos")
    last = n - 1
    latest_us = micros(F.element_at("path", -1)["touch_ts"])
    half_life_us = float(settings.half_life_days) * MICROS_PER_DAY

    def decay_weight(touch_ts: Column) -> Column:
        # 2^(−Δ/half_life), Δ in fractional days, normalised over the path. Δ is taken from the path's
        # latest touch, not the conversion: the same ratios, and the latest weighs 1, so a short
        # half-life with old touches cannot underflow every weight to 0 and divide 0 by 0.
        return F.pow(F.lit(2.0), -(latest_us - micros(touch_ts)).cast("double") / F.lit(half_life_us))

    decay_total = F.aggregate(F.col("path"), F.lit(0.0), lambda acc, p: acc + decay_weight(p["touch_ts"]))
    distinct_channels = F.array_sort(F.array_distinct(F.transform("path", lambda p: p["channel"])))
    channel_count = F.size(distinct_channels).cast("double")
    same_channel = F.size(F.filter("path", lambda p: p["channel"] == F.col("t.channel"))).cast("double")
    effects = removal_effect_map(removal_effects)
    effect_total = F.aggregate(distinct_channels, F.lit(0.0), lambda acc, c: acc + F.coalesce(effects[c], F.lit(0.0)))
    equal_split = F.lit(1.0) / channel_count / same_channel
    markov = F.when(
        effect_total > 0, F.coalesce(effects[F.col("t.channel")], F.lit(0.0)) / effect_total / same_channel
    ).otherwise(equal_split)
    return {
        "first_touch": F.when(pos == 0, 1.0).otherwise(0.0),
        "last_touch": F.when(pos == last, 1.0).otherwise(0.0),
        "linear": F.lit(1.0) / n,
        "position_based": (
            F.when(n == 1, 1.0)
            .when(n == 2, 0.5)
            .when((pos == 0) | (pos == last), 0.4)
            .otherwise(F.lit(0.2) / (n - 2))
        ),
        "time_decay": decay_weight(F.col("t.touch_ts")) / decay_total,
        "markov": markov,
        "shapley": equal_split,
    }


def credits(
    settings: AttributionSettings,
    removal_effects: Mapping[str, float] | None = None,
    models: Iterable[str] = MODELS,
) -> Callable[[DataFrame], DataFrame]:
    """Conversions with paths -> rows of gold.attribution_credits for `models`.

    Zero credits are not written. An empty path gets one `direct` row with credit 1 per model.
    Markov gives channel c RE(c)/Σ RE over the path's distinct channels, shared equally by the
    path's touchpoints of c; when that sum is 0 (no removal effect known for any of its
    channels) the credit falls back to an equal split over the distinct channels.
    """
    models = tuple(models)
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown attribution models {sorted(unknown)}; known: {', '.join(MODELS)}")
    effects = dict(removal_effects or {})

    def transform(convs: DataFrame) -> DataFrame:
        touched = convs.where(F.size("path") > 0).select("*", F.posexplode("path").alias("pos", "t"))
        per_model = _credit_columns(settings, effects)
        model_credit = F.explode(F.array(*[
            F.struct(F.lit(m).alias("model"), per_model[m].alias("credit")) for m in models
        ])).alias("m")
        touch_rows = touched.select(
            "*", model_credit,
        ).select(
            F.col("m.model").alias("model"), "conversion_id", "customer_id", "conversion_ts",
            F.col("t.touch_event_id").alias("touch_event_id"), F.col("t.touch_ts").alias("touch_ts"),
            F.col("t.channel").alias("channel"), F.col("t.campaign").alias("campaign"),
            F.col("m.credit").alias("credit"), "revenue",
        ).where(F.col("credit") > 0)
        empty_rows = convs.where(F.size("path") == 0).select(
            F.explode(F.array(*[F.lit(m) for m in models])).alias("model"), "conversion_id", "customer_id",
            "conversion_ts", F.lit(None).cast("string").alias("touch_event_id"),
            F.lit(None).cast("timestamp").alias("touch_ts"), F.lit(EMPTY_PATH_CHANNEL).alias("channel"),
            F.lit(None).cast("string").alias("campaign"), F.lit(1.0).alias("credit"), "revenue",
        )
        return (
            touch_rows.unionByName(empty_rows)
            .withColumn("revenue_credit", F.col("credit") * F.col("revenue"))
            .select(*CREDIT_COLUMNS)
        )

    return transform


def exact_sum(column: str, scale: int = 18) -> Column:
    """Σ of a double column that does not depend on row order (decimal addition is associative),
    so a full and an incremental run aggregate to bit-identical doubles."""
    return F.sum(F.col(column).cast(f"decimal(38,{scale})")).cast("double")


def daily(credit_rows: DataFrame) -> DataFrame:
    """gold.attribution_credits -> gold.attribution_daily (date is the conversion's UTC date)."""
    return (
        credit_rows.groupBy(F.to_date("conversion_ts").alias("date"), "model", "channel", "campaign")
        .agg(exact_sum("credit").alias("conversions"), exact_sum("revenue_credit", 14).alias("revenue"))
        .select("date", "model", "channel", "campaign", "conversions", "revenue")
    )


def training_paths(
    convs: DataFrame, touches: DataFrame, as_of_us: int, settings: AttributionSettings
) -> DataFrame:
    """The Markov training set as gold.attribution_paths (BRIEF §4).

    Converting paths of the conversions with as_of − training_days ≤ conv_ts < as_of (empty paths
    left out), plus at most one null path per customer: their touchpoints with
    as_of − lookback ≤ touch_ts < as_of strictly after their last conversion.
    """
    training_start = as_of_us - days_to_micros(settings.markov_training_days)
    lookback_start = as_of_us - lookback_micros(settings)
    conv_us = micros("conversion_ts")
    converting = (
        convs.where((conv_us >= training_start) & (conv_us < as_of_us) & (F.size("path") > 0))
        .select(path_string(F.col("path")).alias("path"), F.lit(1).alias("conversions"),
                F.col("revenue"), F.lit(0).alias("nulls"))
    )
    last_conversion = (
        convs.where(F.col("customer_id").isNotNull() & (conv_us < as_of_us))
        .groupBy("customer_id").agg(F.max("conversion_ts").alias("last_conversion_ts"))
    )
    touch_us = micros("touch_ts")
    null_paths = (
        touches.where((touch_us >= lookback_start) & (touch_us < as_of_us))
        .join(last_conversion, "customer_id", "left")
        .where(F.col("last_conversion_ts").isNull() | (F.col("touch_ts") > F.col("last_conversion_ts")))
        .groupBy("customer_id")
        .agg(F.array_sort(F.collect_list(F.struct("touch_ts", "touch_event_id", "channel"))).alias("path"))
        .select(path_string(F.col("path")).alias("path"), F.lit(0).alias("conversions"),
                F.lit(None).cast("double").alias("revenue"), F.lit(1).alias("nulls"))
    )
    return (
        converting.unionByName(null_paths)
        .groupBy("path")
        .agg(
            F.sum("conversions").cast("long").alias("total_conversions"),
            F.coalesce(exact_sum("revenue", 14), F.lit(0.0)).alias("total_conversion_value"),
            F.sum("nulls").cast("long").alias("total_null"),
        )
    )
