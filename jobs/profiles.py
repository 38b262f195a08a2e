"""`touchpoint run profiles --date D`: gold.customer_profiles, one row per customer (BRIEF §5).

Read from the identity map the identity run of D published and the silver snapshot that run read,
so every column is exact (late events, merges and splits included) and a rerun writes the same rows.

Incremental by default, like attribution: the per-customer event summaries (country, consent,
channels) are re-derived only for the customers whose events or identifiers changed since the
previous run (jobs.input_changes, jobs.attribution_scope), and the previous profiles' summaries are
kept for every other customer. The rest is recomputed for everyone on every run, because it moves
for everyone: the identifier summary (from the map), the orders (an order id is deduplicated across
customers, and order events are few) and RFM (recency and the quintiles move daily). The changed
customers' events and every order event come from one scan (jobs.changed_scope), shared with
attribution within a pipeline run. The previous
run's inputs are recorded in the profiles commit itself (Delta userMetadata); a table without them,
or `mode="full"`, gets a full recompute. docs/IDENTITY.md has the measurements.

Analyst-facing: no raw email or phone, only their SHA-256 hex (BRIEF §8).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, BooleanType, DoubleType, IntegerType, LongType, StringType, StructField, StructType, TimestampType,
)

from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.dates import as_of_for
from touchpoint.core.delta import read_version, rs_table, snapshot_fingerprint
from touchpoint.core.hashing import hashed_email, hashed_phone_e164
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.core.rfm import rfm_scores, rfm_segment
from touchpoint.jobs.attribution_scope import SEED_FLAG
from touchpoint.jobs.changed_scope import Scope, changed_scope, scope_source
from touchpoint.core.identity_graph import LakeCheckpointer, local_checkpoints
from touchpoint.jobs.identity_state import identity_snapshot, lookup_by_broadcast, snapshot_rows, write_snapshot

CONSENT_FLAGS = ("email_marketing", "ads_personalization", "analytics")
MICROS_PER_DAY = 86_400 * 1_000_000
# Recorded with each run; bump it when a column of event_summary changes meaning, so that the next
# run derives every customer instead of keeping summaries computed the old way.
PROFILE_STATE = 1
PROFILE_EVENT_COLUMNS = ("event_id", "event_ts", "event_type", "anonymous_id", "user_id", "email", "phone",
                         "country", "channel", "order_id", "revenue_reporting",
                         *[f"consent_{flag}" for flag in CONSENT_FLAGS])
EVENT_SUMMARY_COLUMNS = ("country", *[f"consent_{flag}" for flag in CONSENT_FLAGS], "consent_updated_at",
                         "first_channel", "last_channel", "channels_engaged")

_S, _TS, _L, _D, _I, _B = StringType(), TimestampType(), LongType(), DoubleType(), IntegerType(), BooleanType()
PROFILE_SCHEMA = StructType([StructField(name, kind, True) for name, kind in (
    ("customer_id", _S),
    ("first_seen", _TS), ("last_seen", _TS),
    ("anonymous_ids", _L), ("user_ids", _L), ("emails", _L), ("phones", _L),
    ("email_sha256", _S), ("phone_sha256", _S),
    ("country", _S),
    ("consent_email_marketing", _B), ("consent_ads_personalization", _B), ("consent_analytics", _B),
    ("consent_updated_at", _TS),
    ("lifetime_orders", _L), ("lifetime_revenue", _D), ("average_order_value", _D),
    ("first_order_ts", _TS), ("last_order_ts", _TS), ("days_since_last_order", _D),
    ("first_channel", _S), ("last_channel", _S), ("channels_engaged", ArrayType(_S)),
    ("rfm_recency", _I), ("rfm_frequency", _I), ("rfm_monetary", _I), ("rfm_segment", _S),
    ("as_of", _TS),
)])


def _latest(value: Column, condition: Column | None = None) -> Column:
    """Aggregate: `value` of the latest event (by event_ts, then event_id) where `condition` holds."""
    keyed = F.struct(F.col("event_ts"), F.col("event_id"), value.alias("v"))
    return F.max(keyed if condition is None else F.when(condition, keyed))["v"]


def _earliest(value: Column) -> Column:
    return F.min(F.struct(F.col("event_ts"), F.col("event_id"), value.alias("v")))["v"]


def identifier_summary(identity_map: DataFrame) -> DataFrame:
    """Per customer: first/last seen, identifier counts, hashed most recently seen email and phone.

    Most recently seen = the greatest last_seen; equal last_seen go to the smallest value.
    """
    def most_recent(kind: str) -> Column:
        recency = F.struct((-F.unix_micros("last_seen")).alias("k"), F.col("identifier_value").alias("v"))
        return F.min(F.when(F.col("identifier_type") == kind, recency))["v"]

    def count_of(kind: str) -> Column:
        return F.count(F.when(F.col("identifier_type") == kind, F.lit(1)))

    return identity_map.groupBy("customer_id").agg(
        F.min("first_seen").alias("first_seen"), F.max("last_seen").alias("last_seen"),
        count_of("anonymous_id").alias("anonymous_ids"), count_of("user_id").alias("user_ids"),
        count_of("email").alias("emails"), count_of("phone").alias("phones"),
        hashed_email(most_recent("email")).alias("email_sha256"),
        hashed_phone_e164(most_recent("phone")).alias("phone_sha256"),
    )


def event_summary(events: DataFrame) -> DataFrame:
    """Per customer, from its events: country, consent, first/last channel, channels engaged."""
    is_consent = F.col("event_type") == "consent"
    consents = {
        f"consent_{flag}": _latest(F.col(f"consent_{flag}"), is_consent & F.col(f"consent_{flag}").isNotNull())
        for flag in CONSENT_FLAGS
    }
    any_flag = F.lit(False)
    for flag in CONSENT_FLAGS:
        any_flag = any_flag | F.col(f"consent_{flag}").isNotNull()
    return events.groupBy("customer_id").agg(
        _latest(F.col("country"), F.col("country").isNotNull()).alias("country"),
        *[column.alias(name) for name, column in consents.items()],
        F.max(F.when(is_consent & any_flag, F.col("event_ts"))).alias("consent_updated_at"),
        _earliest(F.col("channel")).alias("first_channel"),
        _latest(F.col("channel")).alias("last_channel"),
        F.array_sort(F.collect_set("channel")).alias("channels_engaged"),
    )


def deduplicated_orders(events: DataFrame) -> DataFrame:
    """Order events, one per order_id: the smallest (event_ts, event_id) wins (BRIEF §2)."""
    orders = events.where((F.col("event_type") == "order") & F.col("order_id").isNotNull())
    first = orders.groupBy("order_id").agg(F.min(F.struct("event_ts", "event_id")).alias("first"))
    return orders.join(first.select("order_id", F.col("first.event_id").alias("event_id")), ["order_id", "event_id"])


def order_summary(orders: DataFrame, as_of: dt.datetime) -> DataFrame:
    """Per customer: lifetime orders and revenue (reporting currency), first/last order, recency.

    Revenue is summed in ascending order of the amounts, so the float result does not depend on
    how Spark partitioned the orders.
    """
    revenue = F.aggregate(F.array_sort(F.collect_list(F.coalesce("revenue_reporting", F.lit(0.0)))),
                          F.lit(0.0), lambda total, amount: total + amount)
    return orders.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("lifetime_orders"),
        revenue.alias("lifetime_revenue"),
        F.min("event_ts").alias("first_order_ts"),
        F.max("event_ts").alias("last_order_ts"),
    ).withColumn("recency_micros", F.unix_micros(F.lit(as_of)) - F.unix_micros("last_order_ts"))


def resolved_events(identity_map: DataFrame, broadcast: bool = False) -> Callable[[DataFrame], DataFrame]:
    """Silver events -> the columns profiles read, with customer_id (null: nobody's). `broadcast`:
    attach_customer_id's plan (jobs.identity_state.lookup_by_broadcast decides)."""
    def transform(events: DataFrame) -> DataFrame:
        return events.select(*PROFILE_EVENT_COLUMNS).transform(attach_customer_id(identity_map, broadcast=broadcast))

    return transform


def assemble_profiles(identity_map: DataFrame, event_summaries: DataFrame, resolved_orders: DataFrame,
                      as_of: dt.datetime, checkpoint, partitions: int) -> DataFrame:
    """Identifier summaries (every customer of the map) + event summaries + resolved order events
    (every one, deduplicated here across customers) -> customer profiles."""
    orders = order_summary(deduplicated_orders(resolved_orders).where(F.col("customer_id").isNotNull()), as_of)
    scored = rfm_scores(
        checkpoint(orders).select("customer_id", F.col("recency_micros").alias("recency"),
                                  F.col("lifetime_orders").alias("orders"), F.col("lifetime_revenue").alias("revenue")),
        checkpoint, partitions,
    ).select("customer_id", "rfm_recency", "rfm_frequency", "rfm_monetary")
    profiles = (
        identifier_summary(identity_map)
        .join(event_summaries, "customer_id", "left")
        .join(orders, "customer_id", "left")
        .join(scored, "customer_id", "left")
    )
    return profiles.select(
        "customer_id", "first_seen", "last_seen", "anonymous_ids", "user_ids", "emails", "phones",
        "email_sha256", "phone_sha256", "country",
        *[f"consent_{flag}" for flag in CONSENT_FLAGS], "consent_updated_at",
        F.coalesce("lifetime_orders", F.lit(0)).alias("lifetime_orders"),
        F.coalesce("lifetime_revenue", F.lit(0.0)).alias("lifetime_revenue"),
        (F.col("lifetime_revenue") / F.col("lifetime_orders")).alias("average_order_value"),
        "first_order_ts", "last_order_ts",
        (F.col("recency_micros") / F.lit(MICROS_PER_DAY)).alias("days_since_last_order"),
        "first_channel", "last_channel", F.coalesce("channels_engaged", F.array().cast("array<string>"))
        .alias("channels_engaged"),
        "rfm_recency", "rfm_frequency", "rfm_monetary",
        rfm_segment(F.col("rfm_recency"), F.col("rfm_frequency")).alias("rfm_segment"),
        F.lit(as_of).alias("as_of"),
    )


def build_profiles(events: DataFrame, identity_map: DataFrame, as_of: dt.datetime, checkpoint,
                   partitions: int, broadcast: bool = False) -> DataFrame:
    """Silver events (event_ts < as_of) + identity map -> customer profiles, every customer derived."""
    resolved = checkpoint(events.transform(resolved_events(identity_map, broadcast)))
    summaries = event_summary(resolved.where(F.col("customer_id").isNotNull()))
    return assemble_profiles(identity_map, summaries, resolved, as_of, checkpoint, partitions)


def update_profiles(identity_map: DataFrame, previous_profiles: DataFrame, scope: Scope, as_of: dt.datetime,
                    checkpoint, partitions: int) -> DataFrame:
    """Like build_profiles, but the event summaries of customers outside the scope's changed customers
    are those of `previous_profiles`: they have the same events as then. The scope's candidates
    (jobs.changed_scope) are resolved already: every event of a changed customer is a seed, and every
    order event is among them, so no other event is read."""
    scoped = scope.candidates.where(F.col(SEED_FLAG)).join(scope.customers, "customer_id", "left_semi")
    summaries = (previous_profiles.join(scope.customers, "customer_id", "left_anti")
                 .select("customer_id", *EVENT_SUMMARY_COLUMNS)
                 .unionByName(event_summary(scoped)))
    is_order = (F.col("event_type") == "order") & F.col("order_id").isNotNull()
    return assemble_profiles(identity_map, summaries, scope.candidates.where(is_order), as_of, checkpoint, partitions)


def last_run_state(path: str) -> tuple[dict | None, str | None]:
    """What the last profiles run recorded in its commit (its logical date and input versions, plus
    the table version it wrote as `customer_profiles_version`), else (None, why not). Any later commit
    to the table (an erasure, a restore) hides it: the next profiles run is a full one."""
    try:
        table = rs_table(path)
        last_commit = table.history(1)[0]
    except Exception:  # no table yet
        return None, "first run"
    try:
        state = json.loads(last_commit.get("userMetadata") or "")
    except ValueError:
        return None, "the last commit of gold.customer_profiles is not a profiles run"
    if state.get("state") != PROFILE_STATE:
        return None, "the profiles of the last run were derived differently"
    state["logical_date"] = dt.date.fromisoformat(state["logical_date"])
    state["customer_profiles_version"] = table.version()
    return state, None


def run(spark: SparkSession, settings: Settings, logical_date: dt.date, mode: str = "auto") -> dict:
    """Profiles as of D+1 00:00Z. mode: 'auto' (incremental when the previous run's state is
    usable) or 'full'."""
    if mode not in ("auto", "full"):
        raise ValueError(f"mode must be 'auto' or 'full', got {mode!r}")
    as_of = as_of_for(logical_date)
    snapshot = identity_snapshot(spark, settings, logical_date)
    if snapshot is None:
        raise RuntimeError(f"no identity run for {logical_date}: "
                           f"run `touchpoint run identity --date {logical_date}` first")
    map_path, map_version = table_path("gold.identity_map", settings), snapshot.map_version
    identity_map = read_version(spark, map_path, map_version)
    broadcast_map = lookup_by_broadcast(map_path, map_version)
    # The silver snapshot the identity run read: every identifier of these events is in its map.
    silver_path, silver_version = table_path("silver.events", settings), snapshot.silver_version
    silver = read_version(spark, silver_path, silver_version)
    events = silver.where(F.col("event_ts") < F.lit(as_of))
    path = table_path("gold.customer_profiles", settings)
    previous, full_reason = last_run_state(path) if mode == "auto" else (None, "full recompute requested")
    minimum = settings.profiles.incremental_min_events
    silver_events = snapshot_rows(silver_path, silver_version) if previous is not None else None
    if silver_events is not None and silver_events < minimum:
        previous, full_reason = None, f"silver holds {silver_events:,} events, fewer than {minimum:,}"
    scratch = f"{settings.lake_uri}/_scratch/profiles"
    partitions = settings.spark_shuffle_partitions
    with LakeCheckpointer(spark, scratch, local=local_checkpoints(spark, settings.identity.checkpoint)) as checkpoint:
        scope = None
        if previous is not None:
            scope, full_reason = changed_scope(
                spark, settings, "profiles", previous, {"silver.events": silver, "gold.identity_map": identity_map},
                {"silver.events": silver_version, "gold.identity_map": map_version},
                {"silver.events": silver_path, "gold.identity_map": map_path}, as_of,
                attach_customer_id(identity_map, broadcast=broadcast_map), checkpoint)
        if scope is None:
            profiles = build_profiles(events, identity_map, as_of, checkpoint, partitions, broadcast_map)
            derivation = f"all customers: {full_reason}"
        else:
            previous_profiles = read_version(spark, path, previous["customer_profiles_version"])
            profiles = update_profiles(identity_map, previous_profiles, scope, as_of, checkpoint, partitions)
            derivation = f"changed customers: {scope.customers.count()}"
        state = {"state": PROFILE_STATE, "logical_date": logical_date.isoformat(), "silver_version": silver_version,
                 "identity_map_version": map_version,
                 "identity_map_fingerprint": snapshot_fingerprint(map_path, map_version)}
        written = write_snapshot(profiles, path, PROFILE_SCHEMA, "gold.customer_profiles",
                                 user_metadata=json.dumps(state, sort_keys=True))
    return {"as_of": as_of.isoformat(), "customers": written.rows, "customer_profiles_version": written.version,
            "identity_map_version": map_version, "silver_version": silver_version,
            "mode": "full" if scope is None else "incremental", "derivation": derivation,
            "scope": scope_source(scope)}
