"""The speed layer (BRIEF §7, issue 7): silver's change feed -> speed.* real-time views.

Source: the Change Data Feed of silver.events, not Kafka. Silver is already validated, normalised,
enriched with channels and deduplicated (by event_id and by order id), so the speed layer applies
exactly the batch definitions to exactly the rows batch will read. Every change row carries its
silver commit version (`_commit_version`), which is how the serving views tell rows the batch
has already read from rows that arrived after it (docs/SERVING.md). A displaced order is a
`delete` in the feed and is subtracted.

Event time: no watermark. Every change of silver is applied, however late its event_ts: silver is
already deduplicated and the sink exactly-once, and a watermark would drop late inserts (a gap until
the next batch), late deletes (a double count) and, after one future-dated event, every on-time one.

Two queries by default (`start_queries`), one application: `speed` keeps the campaign measures
(campaign_minute, campaign_daily: sums of the changed rows, seconds per micro-batch) at
`stream.trigger_seconds`; `speed_customers` keeps the views that need the customer (identity
extension, last touch, activity, real-time segments: tens of seconds per micro-batch on a small
machine) at `stream.customer_trigger_seconds`. The split keeps the campaign views' lag at the ingest
cadence instead of the customer work's. With `customer_trigger_seconds` unset one query keeps all.

One foreachBatch sink, `SpeedSink`, testable on a static DataFrame of change rows. Each of its
writes is done once per batch (`core.delta.BatchWrites`, commits marked with (query:table,
batch_id)), so a micro-batch replayed after a crash neither loses nor doubles anything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.campaign_metrics import (
    attribution_window_micros, campaign_totals, conversions, customer_activity, last_touch,
    measure_rows, micros, touchpoints,
)
from touchpoint.core.catalog import table_path
from touchpoint.core.channels import load_rules
from touchpoint.core.config import ConfigError, Settings
from touchpoint.core.delta import (
    BatchWrites, batch_mark, ensure_table, is_delta, latest_version, read_version, retry_on_conflict,
    snapshot_fingerprint, snapshot_present, unreadable_change_version,
)
from touchpoint.core.identity_lookup import BROADCAST_MAP_MAX_IDENTIFIERS, attach_customer_id, carrier_flag
from touchpoint.core.segments import (
    SegmentDefinitionError, behaviour_windows, behaviours_of, compile_segments, load_segments, segment_members,
    with_behaviour_counts,
)
from touchpoint.core.serving import SCHEMAS, expiry_bound
from touchpoint.core.spark import (
    checkpoint_with_own_size, delta_source_position, has_checkpoint, local_checkpoint, release_checkpoint,
)
from touchpoint.core.stream_identity import extend_identity_map
from touchpoint.schemas.lake import SILVER_SCHEMA

log = logging.getLogger(__name__)
CHANGE_SIGN = {"insert": 1, "update_postimage": 1, "delete": -1, "update_preimage": -1}
IDENTIFIERS = ("anonymous_id", "user_id", "email", "phone")
EVENT_COLUMNS = ("event_id", "event_type", "event_ts", "event_date", "channel", "campaign_name", "order_id",
                 "revenue_reporting", "price", "quantity", *IDENTIFIERS)
_MIN_TS = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)
# What a speed query keeps: "campaigns" (campaign_minute, campaign_daily), "customers"
# (campaign_conversions, customer_activity, segment_membership) or "all" of them.
VIEWS = ("all", "campaigns", "customers")
VIEW_TABLES = {"campaigns": ("speed.campaign_minute", "speed.campaign_daily"),
               "customers": ("speed.campaign_conversions", "speed.customer_activity", "speed.segment_membership")}
VIEW_TABLES["all"] = VIEW_TABLES["campaigns"] + VIEW_TABLES["customers"]
SPEED_TABLES = (*VIEW_TABLES["all"], "speed.freshness")  # speed.freshness: every query's log
CUSTOMER_QUERY_SUFFIX = "_customers"


def _instant(epoch_micros: int | None) -> dt.datetime | None:
    if epoch_micros is None:
        return None
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=epoch_micros)


# ---- pure transforms ---------------------------------------------------------------------------

def signed_changes(changes: DataFrame) -> DataFrame:
    """CDF rows -> silver rows with `sign` (+1 added, -1 removed) and `silver_version`."""
    sign = F.coalesce(*[F.when(F.col("_change_type") == kind, F.lit(value)) for kind, value in CHANGE_SIGN.items()])
    return (changes.where(F.col("_change_type").isin(*CHANGE_SIGN))
            .withColumn("sign", sign).withColumn("silver_version", F.col("_commit_version").cast("long")))


def not_expired(bucket_column: str, bound: dt.datetime | None, version: int | None,
                kind: str = "ts") -> Callable[[DataFrame], DataFrame]:
    """Keep the speed rows expiry would keep: bucket >= `bound` (the cut H less the backfill grace,
    `core.serving.expiry_bound`) or silver_version > V. Rows the batch holds within the grace are
    written too, so that a backfill moving the cut back finds them."""

    def transform(rows: DataFrame) -> DataFrame:
        if bound is None:
            return rows
        lowest = F.lit(bound).cast("date" if kind == "date" else "timestamp")
        return rows.where((F.col(bucket_column) >= lowest) | (F.col("silver_version") > F.lit(version)))

    return transform


def realtime_definitions(settings: Settings) -> list:
    """The segment definitions of `stream.realtime_segments`, checked for what the speed layer can
    evaluate: it counts events back to `stream.activity_horizon_days` only, so a longer behaviour
    window would count fewer events than the batch and serve a different membership."""
    wanted = set(settings.stream.realtime_segments)
    if not wanted:
        return []
    definitions = [d for d in load_segments(settings.segments_dir, load_rules(settings.channel_rules_file).channels)
                   if d.name in wanted]
    missing = sorted(wanted - {d.name for d in definitions})
    if missing:
        raise ConfigError(f"key 'stream.realtime_segments' (env TOUCHPOINT_STREAM__REALTIME_SEGMENTS): {missing} "
                          f"name no segment file in {settings.segments_dir}; list only defined segments")
    horizon = settings.stream.activity_horizon_days
    problems = [d.problem(path, f"a {days:g}-day window is longer than stream.activity_horizon_days ({horizon:g}), "
                          "as far back as the speed layer counts events",
                          "shorten the window, raise stream.activity_horizon_days, or leave the segment to the "
                          "daily batch (drop it from stream.realtime_segments)")
                for d in definitions for path, days in behaviour_windows(d) if days > horizon]
    if problems:
        raise SegmentDefinitionError(problems)
    return definitions


def realtime_members(definitions, base: DataFrame, events: DataFrame,
                     as_of: dt.datetime) -> DataFrame:
    """(segment, customer_id) of the segment definitions as of `as_of`: the compiler and evaluation
    the batch segments job uses, over `base` (customer_id plus any profile attributes)."""
    compiled = compile_segments(definitions, base.schema, as_of)
    behaviours = behaviours_of(compiled)
    return (base.transform(with_behaviour_counts(events, behaviours, as_of))
            .transform(segment_members(compiled)))


# ---- the sink ------------------------------------------------------------------------------------

@dataclass
class IdentityState:
    """The extended identity map a customer-views query keeps between micro-batches: what it
    extends (`published`: the cut and the map's and guardrails' fingerprints), the silver version
    it covers, the map itself (a local checkpoint) and its size."""

    published: tuple
    silver_version: int
    frame: DataFrame
    identifiers: int

    @property
    def broadcast(self) -> bool:
        """Whether the map (hence any part of it) is small enough to look up broadcast."""
        return self.identifiers <= BROADCAST_MAP_MAX_IDENTIFIERS

    def resolve(self) -> Callable[[DataFrame], DataFrame]:
        """Events -> events with customer_id; broadcast lookups while the map is small enough."""
        return attach_customer_id(self.frame, broadcast=self.broadcast)

    def events_of(self, customers: DataFrame, order_ids: DataFrame) -> Callable[[DataFrame], DataFrame]:
        """Events -> the events carrying an identifier of `customers` (customer_id) or an order id in
        `order_ids` (conversion_id, trimmed): a superset of those customers' events and of those
        orders' events (identity_lookup.carrier_flag), found by broadcast probes alone, so that only
        these are resolved and kept. Every event when the map is too large to broadcast."""
        def transform(events: DataFrame) -> DataFrame:
            if not self.broadcast:
                return events
            theirs = self.frame.join(customers.select("customer_id"), "customer_id", "left_semi")
            orders = F.broadcast(order_ids.select(F.col("conversion_id").alias("_changed_order")).distinct())
            return (events.transform(carrier_flag(theirs, "_carries"))
                    .join(orders, F.trim("order_id") == F.col("_changed_order"), "left")
                    .where(F.col("_carries") | F.col("_changed_order").isNotNull())
                    .select(*events.columns))

        return transform

    def release(self) -> None:
        release_checkpoint(self.frame)


class SpeedSink:
    """foreachBatch sink: silver change rows -> speed.* tables, each write exactly once."""

    def __init__(self, settings: Settings, query_name: str = "speed", fail_after: str | None = None,
                 views: str = "all"):
        if views not in VIEWS:
            raise ValueError(f"views={views!r}: expected one of {', '.join(VIEWS)}")
        self.settings = settings
        self.query_name = query_name
        self.views = views
        self.fail_after = fail_after  # fault injection for the crash test: raise after this write
        self.paths = {name: table_path(name, settings) for name in SPEED_TABLES + (
            "silver.events", "gold.identity_map", "gold.identity_guardrails", "gold.customer_profiles",
            "gold.segment_membership", "gold.campaign_daily", "gold.campaign_minute", "gold.campaign_conversions",
            "gold.customer_activity")}
        self.writes = BatchWrites(self.paths, self._app)
        self.resynced: dict | None = None  # the resync this query's stream continues from (start_stream)
        self._ready = False
        self._identity_state: IdentityState | None = None
        self.identity_builds = {"rebuilt": 0, "extended": 0}

    def ensure_tables(self, spark: SparkSession) -> None:
        for name in SPEED_TABLES:
            ensure_table(spark, self.paths[name], SCHEMAS[name], (), name)

    def _app(self, table: str) -> str:
        return f"{self.query_name}:{table}"

    def already_processed(self, batch_id: int) -> bool:
        return self.writes.holds("speed.freshness", batch_id)

    def _exists(self, spark: SparkSession, name: str) -> bool:
        return is_delta(spark, self.paths[name])

    def _cut(self, spark: SparkSession, gold: str) -> tuple[dt.datetime | None, int]:
        """(H, V) of a published gold table, read with delta-rs (no Spark job per micro-batch)."""
        from touchpoint.core.serving import read_cut

        high_water_mark, version = read_cut(self.settings, gold)
        return high_water_mark, (version if version is not None else -1)

    def _step(self, name: str) -> None:
        now = time.monotonic()
        log.info("speed %s: %s done after %.1fs", self.query_name, name, now - getattr(self, "_t0", now))
        if self.fail_after == name:
            raise RuntimeError(f"injected failure after {name}")

    def __call__(self, changes: DataFrame, batch_id: int) -> dict:
        spark = changes.sparkSession
        if not self._ready:
            self.ensure_tables(spark)
            self._ready = True
        # One FAIR pool per query (when the application schedules FAIR, as `touchpoint stream speed`
        # does): the customer query's long jobs do not queue the campaign query's short ones.
        spark.sparkContext.setLocalProperty("spark.scheduler.pool", self.query_name)
        with self.writes.batch():
            if self.already_processed(batch_id):
                return {"skipped": 1}
            # Frames reused within a batch are local checkpoints (core.spark.local_checkpoint), freed
            # at the end of their batch: a stream runs for weeks.
            with local_checkpoint(changes.transform(signed_changes)) as signed:
                return self._process(spark, signed, batch_id)

    def _process(self, spark: SparkSession, signed: DataFrame, batch_id: int) -> dict:
        started = self._t0 = time.monotonic()
        # Instants travel as epoch microseconds: Python datetimes from Spark are in the local zone.
        row = signed.agg(F.count(F.lit(1)).alias("rows"), F.min("silver_version").alias("first"),
                         F.max("silver_version").alias("last"),
                         # An event counts at its arrival at the latest: one valid event dated up to a
                         # day ahead (a device clock) would move the clock there and keep it there.
                         F.max(F.when(F.col("sign") > 0, F.least(micros("event_ts"), micros("source_ts"))))
                         .alias("max_ts"),
                         F.min(micros("event_ts")).alias("min_ts"),
                         F.min(micros("source_ts")).alias("oldest_arrival")).first()
        stats = {**row.asDict(), "max_ts": _instant(row["max_ts"]), "min_ts": _instant(row["min_ts"]),
                 "oldest_arrival": _instant(row["oldest_arrival"])}
        result = {"rows": stats["rows"]}
        if self.resynced is not None:
            batch_version = published_batch_version(self.settings)
            reason = batch_between(self.resynced, batch_version)
            if reason is not None:  # the restart resyncs (resync_reason)
                raise RuntimeError(f"speed {self.query_name}: {reason}; restart the query")
            if batch_version is not None and batch_version >= self.resynced["snapshot_version"]:
                self.resynced = None  # a published batch covers every fed row: nothing left to check
        clock = self._clock(spark, stats["max_ts"])
        if stats["rows"] and self.views in ("all", "campaigns"):
            self._campaign_measures(spark, signed, batch_id)
            self._step("campaign_measures")
        # An empty micro-batch changes nothing: the clock only moves with events.
        if stats["rows"] and self.views in ("all", "customers"):
            silver = self._silver_snapshot(spark)
            identity = self._identity(spark, silver)
            self._step("identity")
            self._last_touch(spark, signed, silver, identity, stats["min_ts"], batch_id)
            self._step("last_touch")
            self._activity_and_segments(spark, silver, identity, clock, batch_id)
            self._step("activity_and_segments")
        processed_at = dt.datetime.now(dt.timezone.utc)
        lag = (processed_at - stats["oldest_arrival"]).total_seconds() if stats["oldest_arrival"] else None
        row = spark.createDataFrame(
            [(self.query_name, batch_id, processed_at, stats["rows"], stats["first"], stats["last"], clock,
              stats["oldest_arrival"], lag)], SCHEMAS["speed.freshness"])
        self._append(row, "speed.freshness", batch_id)  # last write: already_processed() keys on it
        log.info("speed batch %s: %s rows in %.1fs", batch_id, stats["rows"], time.monotonic() - started)
        return {**result, "clock": clock, "lag_seconds": lag}

    # -- writes

    # Retried when they lose a commit race (the other speed query's freshness append, lake
    # maintenance expiring speed rows); a replayed batch skips the tables that hold it (BatchWrites).
    def _append(self, frame: DataFrame, table: str, batch_id: int) -> None:
        self._write(frame, table, batch_id, "append")

    def _overwrite(self, frame: DataFrame, table: str, batch_id: int) -> None:
        self._write(frame, table, batch_id, "overwrite")

    def _write(self, frame: DataFrame, table: str, batch_id: int, mode: str) -> None:
        self.writes.write(frame, table, batch_id, mode)

    # -- the views

    def _campaign_measures(self, spark: SparkSession, signed: DataFrame, batch_id: int) -> None:
        measured = measure_rows(signed)
        for grain, table, gold, kind in (("minute", "speed.campaign_minute", "gold.campaign_minute", "ts"),
                                         ("date", "speed.campaign_daily", "gold.campaign_daily", "date")):
            high_water_mark, version = self._cut(spark, gold)
            bound = None if high_water_mark is None else expiry_bound(high_water_mark, self.settings)
            totals = (measured.transform(campaign_totals(grain, ("silver_version",)))
                      .transform(not_expired(grain, bound, version, kind))
                      .select(*SCHEMAS[table].fieldNames()))
            # Partial sums are appended, not merged: serving sums them per key anyway, and an
            # append is one job where a MERGE is several.
            self._append(totals, table, batch_id)

    def _silver_snapshot(self, spark: SparkSession) -> tuple[int, DataFrame]:
        version = latest_version(spark, self.paths["silver.events"])
        frame = read_version(spark, self.paths["silver.events"], version)
        return version, frame.select(*EVENT_COLUMNS, "source_ts")

    def _clock(self, spark: SparkSession, batch_max_ts: dt.datetime | None) -> dt.datetime | None:
        """The event-time clock: the latest event_ts the query has seen, each capped at its arrival
        (never moves back)."""
        if not hasattr(self, "_last_clock"):  # read once per sink; then kept in memory
            self._last_clock = _instant(spark.read.format("delta").load(self.paths["speed.freshness"])
                                        .where(F.col("query") == self.query_name)
                                        .agg(F.max(micros("clock"))).first()[0])
        candidates = [t for t in (self._last_clock, batch_max_ts) if t is not None]
        self._last_clock = max(candidates) if candidates else None
        return self._last_clock

    def _published_identity(self, spark: SparkSession) -> tuple[tuple, dict[str, int]]:
        """(what was published, the versions of gold.identity_map and gold.identity_guardrails that
        say it), from the Delta logs alone: the cut of gold.campaign_conversions and the fingerprints
        of the map and its guardrails (a publish exchanges table folders, so version numbers alone do
        not tell tables apart)."""
        high_water_mark, covered_version = self._cut(spark, "gold.campaign_conversions")
        versions = {name: latest_version(spark, self.paths[name])
                    for name in ("gold.identity_map", "gold.identity_guardrails") if self._exists(spark, name)}
        fingerprints = tuple(snapshot_fingerprint(self.paths[name], versions[name]) if name in versions else None
                             for name in ("gold.identity_map", "gold.identity_guardrails"))
        return (high_water_mark, covered_version, *fingerprints), versions

    def _identity(self, spark: SparkSession, silver: tuple[int, DataFrame]) -> IdentityState:
        """The published identity map extended with the links of the events it does not cover.

        Kept between micro-batches: while the published side is the same and silver has only
        gained rows since, the kept map is extended with the new rows alone. Min-label components
        make that equal to extending the published map with every uncovered row at once (each
        component's label is its node of the least key, however its links arrived). Anything else (a new
        publish, a displaced order, an erasure) rebuilds it from the published map."""
        version, events = silver
        key, versions = self._published_identity(spark)
        high_water_mark, covered_version = key[0], key[1]
        kept = self._identity_state
        if kept is not None and kept.published == key and kept.silver_version == version:
            return kept
        added = None
        if kept is not None and kept.published == key and kept.silver_version < version:
            added = self._silver_inserts(spark, kept.silver_version, version)
        if added is not None:
            base, how = kept.frame, "extended"
            uncovered = added if high_water_mark is None else added.where(
                (F.col("event_ts") >= F.lit(high_water_mark)) | (F.col("_commit_version") > F.lit(covered_version)))
        else:
            base, how = self._published_table(spark, "gold.identity_map", versions), "rebuilt"
            if base is None:
                base = spark.createDataFrame([], "identifier_type string, identifier_value string, customer_id string")
            if high_water_mark is None:
                uncovered = events
            else:
                uncovered = events.where(F.col("event_ts") >= F.lit(high_water_mark))
                if version > covered_version:
                    uncovered = uncovered.unionByName(self._rows_since(spark, covered_version, version, events))
        guardrails = self._published_table(spark, "gold.identity_guardrails", versions)
        held_back = guardrails.where(F.col("reason") == "shared_device") if guardrails is not None else None
        with ExitStack() as intermediate:
            extended = extend_identity_map(base, uncovered.select(*IDENTIFIERS),
                                           self.settings.identity.blocklist, held_back, intermediate)
            # Computed now, so the intermediate checkpoints and the previous map can go.
            frame = checkpoint_with_own_size(extended)  # the next extension joins it: keep estimates flat
        state = IdentityState(key, version, frame, frame.count())
        if kept is not None:
            kept.release()
        self._identity_state = state
        self.identity_builds[how] += 1
        log.info("speed %s: identity map %s to silver version %s (%s identifiers)", self.query_name, how,
                 version, state.identifiers)
        return state

    def _published_table(self, spark: SparkSession, name: str, versions: dict[str, int]) -> DataFrame | None:
        """A published gold table at the version its fingerprint was taken from (None when absent)."""
        return read_version(spark, self.paths[name], versions[name]) if name in versions else None

    def _silver_inserts(self, spark: SparkSession, after: int, through: int,
                        inserts_only: bool = True) -> DataFrame | None:
        """The rows inserted into silver in versions (after, through], with `_commit_version`. With
        `inserts_only`, None when those versions also removed or changed rows."""
        changes = (spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", after + 1).option("endingVersion", through)
                   .load(self.paths["silver.events"]))
        if inserts_only and not changes.where(F.col("_change_type") != "insert").isEmpty():
            return None
        return changes.where(F.col("_change_type") == "insert").select(*EVENT_COLUMNS, "source_ts", "_commit_version")

    def _rows_since(self, spark: SparkSession, after: int, through: int, events: DataFrame) -> DataFrame:
        """The rows of `events` (silver at `through`) inserted after version `after`: from the change
        feed, else, when its files are gone (an erasure's purge), the rows not in silver at `after`,
        else every row (a superset: extending the map with links it holds already changes nothing)."""
        silver = self.paths["silver.events"]
        if unreadable_change_version(silver, after + 1, through) is None:  # minus rows deleted since
            return (self._silver_inserts(spark, after, through, inserts_only=False).drop("_commit_version")
                    .join(events.select("event_id"), "event_id", "left_semi"))
        if snapshot_present(silver, after):
            return events.join(read_version(spark, silver, after).select("event_id"), "event_id", "left_anti")
        return events

    def release(self) -> None:
        """Free the identity map kept between micro-batches (a stopped query's sink)."""
        if self._identity_state is not None:
            self._identity_state.release()
            self._identity_state = None

    def _last_touch(self, spark: SparkSession, signed: DataFrame, silver: tuple[int, DataFrame],
                    identity: IdentityState, earliest: dt.datetime, batch_id: int) -> None:
        """Recompute the last touch of every conversion the changes can affect: the conversions of
        the changed events' customers from (earliest change − lookback − landing window) on, and
        the conversions of changed order ids."""
        version, events = silver
        cfg = self.settings.attribution
        window_us = attribution_window_micros(cfg)
        changed = signed.select(*EVENT_COLUMNS).transform(identity.resolve())
        affected = (changed.where(F.col("customer_id").isNotNull()).groupBy("customer_id")
                    .agg((micros(F.min("event_ts")) - F.lit(window_us)).alias("from_us")))
        order_ids = (signed.where(F.col("event_type") == "order")
                     .select(F.trim("order_id").alias("conversion_id")).distinct())
        start = earliest - dt.timedelta(microseconds=2 * window_us)
        # Only the events that can be the affected customers' or the changed orders' are resolved
        # and kept for the two lookups below (IdentityState.events_of), not the whole window.
        recent = (events.where(F.col("event_date") >= F.lit(start.date()))
                  .where(F.col("event_ts") >= F.lit(start))
                  .transform(identity.events_of(affected, order_ids))
                  .transform(identity.resolve()))
        with local_checkpoint(recent) as recent:
            of_affected = recent.join(affected, "customer_id", "left_semi")
            changed_orders = recent.join(order_ids.withColumnRenamed("conversion_id", "_oid"),
                                         F.trim("order_id") == F.col("_oid"), "left_semi")
            candidate_orders = (changed_orders.unionByName(of_affected).where(F.col("event_type") == "order")
                                .dropDuplicates(["event_id"]))
            convs = candidate_orders.transform(conversions)
            in_scope = (convs.join(affected, "customer_id", "left")
                        .join(order_ids.withColumn("_changed", F.lit(True)), "conversion_id", "left")
                        .where(F.col("_changed").isNotNull() | (micros("conversion_ts") >= F.col("from_us")))
                        .drop("from_us", "_changed"))
            attributed = in_scope.transform(last_touch(of_affected.transform(touchpoints(cfg)), cfg))
            rows = attributed.withColumn("removed", F.lit(False))
            gone = order_ids.join(attributed.select("conversion_id"), "conversion_id", "left_anti")
            tombstones = gone.select("conversion_id", *[F.lit(None).cast(f.dataType).alias(f.name)
                                                        for f in SCHEMAS["speed.campaign_conversions"].fields
                                                        if f.name not in ("conversion_id", "removed", "silver_version", "batch_id")],
                                     F.lit(True).alias("removed"))
            source = (rows.unionByName(tombstones).withColumn("silver_version", F.lit(version).cast("long"))
                      .withColumn("batch_id", F.lit(batch_id).cast("long"))
                      .select(*[F.col(f.name).cast(f.dataType) for f in SCHEMAS["speed.campaign_conversions"].fields]))
            # Appended: serving takes each conversion's latest recomputation (silver_version, batch_id).
            self._append(source, "speed.campaign_conversions", batch_id)

    def _activity_and_segments(self, spark: SparkSession, silver: tuple[int, DataFrame], identity: IdentityState,
                               clock: dt.datetime, batch_id: int) -> None:
        version, events = silver
        high_water_mark, _ = self._cut(spark, "gold.customer_activity")
        horizon = clock - dt.timedelta(days=self.settings.stream.activity_horizon_days)
        window = (events.where(F.col("event_date") >= F.lit(horizon.date()))
                  .where((F.col("event_ts") >= F.lit(horizon)) & (F.col("event_ts") <= F.lit(clock)))
                  .transform(identity.resolve()))
        with local_checkpoint(window) as window:
            recent_customers = window.where(F.col("customer_id").isNotNull())
            if high_water_mark is not None:
                recent_customers = recent_customers.where(F.col("event_ts") >= F.lit(high_water_mark))
            activity = (window.join(recent_customers.select("customer_id").distinct(), "customer_id", "left_semi")
                        .transform(customer_activity(clock))
                        .withColumn("silver_version", F.lit(version).cast("long")))
            self._overwrite(activity.select(*SCHEMAS["speed.customer_activity"].fieldNames()),
                            "speed.customer_activity", batch_id)
            # Real-time segments are evaluated at the instant right after the latest event seen.
            as_of = clock + dt.timedelta(microseconds=1)
            definitions = realtime_definitions(self.settings)
            if not definitions:
                return
            # Everyone who may be a member: the customers with events in the window, and the batch's
            # members (a member with no event since keeps or loses the segment as time passes).
            base = window.where(F.col("customer_id").isNotNull()).select("customer_id")
            if self._exists(spark, "gold.segment_membership"):
                batch_members = (spark.read.format("delta").load(self.paths["gold.segment_membership"])
                                 .where(F.col("exited_at").isNull()
                                        & F.col("segment").isin(*[d.name for d in definitions])))
                base = base.unionByName(batch_members.select("customer_id"))
            base = base.distinct()
            if self._exists(spark, "gold.customer_profiles"):
                profiles = spark.read.format("delta").load(self.paths["gold.customer_profiles"])
                base = base.join(profiles, "customer_id", "left")
            members = realtime_members(definitions, base, window, as_of).select("segment", "customer_id")
            # One row per evaluated segment without a customer: the evaluation instant, so that serving
            # tells "evaluated, no member" from "not evaluated since the batch".
            evaluated = spark.createDataFrame([(d.name, None) for d in definitions],
                                              "segment string, customer_id string")
            snapshot = (members.unionByName(evaluated).withColumn("as_of", F.lit(as_of).cast("timestamp"))
                        .withColumn("silver_version", F.lit(version).cast("long")))
            self._overwrite(snapshot.select(*SCHEMAS["speed.segment_membership"].fieldNames()),
                            "speed.segment_membership", batch_id)


# ---- change feed and entry points ------------------------------------------------------------------

def enable_change_feed(spark: SparkSession, settings: Settings) -> int:
    """Make sure silver.events exists with its Change Data Feed on; return the first version whose
    changes the feed holds."""
    from delta.tables import DeltaTable

    path = table_path("silver.events", settings)
    ensure_table(spark, path, SILVER_SCHEMA, ["event_date"], "silver.events")
    table = DeltaTable.forPath(spark, path)
    properties = table.detail().select("properties").first()[0] or {}
    if properties.get("delta.enableChangeDataFeed", "false").lower() != "true":
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    return change_feed_start(row.asDict() for row in table.history().select("version", "operationParameters").collect())


def change_feed_start(history: Iterable[Mapping]) -> int:
    """The first version of silver's change feed, from the table history (Delta's commit infos, as
    Spark's `DeltaTable.history()` rows or delta-rs's `history()` dicts): the last commit that
    switched the feed on, or 0 when it was on from the table's creation."""
    start = 0
    for commit in sorted(history, key=lambda c: c["version"]):
        parameters = commit.get("operationParameters") or {}
        if "enableChangeDataFeed" in " ".join(f"{k}={v}" for k, v in parameters.items()):
            start = commit["version"]
    return start


def bootstrap(spark: SparkSession, settings: Settings, start_version: int, query_name: str = "speed",
              views: str = "all") -> dict:
    """Feed the rows silver held before its change feed was switched on through the sink, once."""
    if start_version == 0:
        return {"bootstrap": "not needed"}
    sink = SpeedSink(settings, f"{query_name}:bootstrap", views=views)
    sink.ensure_tables(spark)
    if sink.already_processed(0):
        return {"bootstrap": "done before"}
    return {"bootstrap": feed_snapshot(spark, settings, start_version, sink)}


def feed_snapshot(spark: SparkSession, settings: Settings, version: int, sink: SpeedSink) -> dict | str:
    """Feed silver's snapshot at `version` through a one-off sink as batch 0, as the changes since
    the published batch. Rows the batch already read keep its silver version, so serving keeps them
    below H out of the speed side; the others count as inserted at `version`, and the rows the batch
    read that silver no longer holds as deleted at `version`. When the batch's snapshot can no longer
    be read (vacuumed), every row below H counts as read by the batch and none as deleted: until the
    next batch run, a late arrival since the batch is missing below H and a row deleted since is
    still counted there (never a double count)."""
    from touchpoint.core.serving import read_cut

    path = table_path("silver.events", settings)
    snapshot = read_version(spark, path, version)
    high_water_mark, batch_version = read_cut(settings, "gold.campaign_daily")
    tagged = snapshot.withColumn("_commit_version", F.lit(version).cast("long"))
    deleted = None
    if batch_version is not None and 0 <= batch_version < version:
        if snapshot_present(path, batch_version):
            batch_read = read_version(spark, path, batch_version)
            tagged = tagged.join(batch_read.select("event_id").withColumn("_seen", F.lit(True)), "event_id", "left")
            # only rows the batch views count (below H); the snapshot's inserts alone make up the rest
            deleted = (batch_read.where(F.col("event_ts") < F.lit(high_water_mark))
                       .join(snapshot.select("event_id"), "event_id", "left_anti")
                       .withColumn("_commit_version", F.lit(version).cast("long"))
                       .withColumn("_change_type", F.lit("delete")))
        else:
            log.warning("speed %s: silver version %s, which the published batch read, is gone: rows before %s "
                        "count as read by it", sink.query_name, batch_version, high_water_mark)
            tagged = tagged.withColumn("_seen", F.col("event_ts") < F.lit(high_water_mark))
        tagged = (tagged.withColumn("_commit_version", F.when(F.col("_seen"), F.lit(batch_version))
                                    .otherwise(F.col("_commit_version")).cast("long")).drop("_seen"))
    changes = tagged.withColumn("_change_type", F.lit("insert"))
    if snapshot.isEmpty() and (deleted is None or deleted.isEmpty()):
        return "silver was empty"
    if deleted is not None:
        changes = changes.unionByName(deleted)
    changes = changes.withColumn("_commit_timestamp", F.current_timestamp())
    try:
        return sink(changes, 0)
    finally:
        sink.release()  # a one-off sink: its kept identity map is not needed after


RESYNC_START = "touchpoint_resync.json"  # in a resynced query's checkpoint folder


def resync_reason(settings: Settings, checkpoint: str, sink: SpeedSink, start_version: int) -> str | None:
    """Why the query cannot go on from its checkpoint (or start from the feed's first version), or
    None when it can. Checked for local checkpoints only (core.spark.has_checkpoint takes a remote
    one as present, delta_source_position does not read it)."""
    silver = table_path("silver.events", settings)
    if has_checkpoint(checkpoint):
        record = resynced(checkpoint)
        position = delta_source_position(checkpoint)
        if position is None:  # no batch committed yet: the first one starts where the query was started
            position = start_version if record is None else record["snapshot_version"]
        gone = unreadable_change_version(silver, position)
        if gone is not None:
            return (f"silver version {gone}, which its checkpoint reads next, can no longer be read "
                    "(VACUUM or an erasure's purge removed its files)")
        return None if record is None else batch_between(record, published_batch_version(settings))
    if sink.writes.committed("speed.freshness") is not None:
        # A new checkpoint numbers batches from 0, and the sink skips the ids the tables hold.
        return f"its checkpoint {checkpoint} is gone, and the speed tables hold batches it wrote"
    gone = unreadable_change_version(silver, start_version)
    return None if gone is None else (
        f"silver's change feed from version {start_version} can no longer be read (version {gone})")


def resync(spark: SparkSession, settings: Settings, checkpoint: str, sink: SpeedSink, reason: str) -> int:
    """Start the query over from silver's current snapshot: forget its checkpoint, empty its views
    (their commits restart its batch marks), feed the snapshot at its version V through a one-off
    sink, and return V: the change stream reads the changes after it (`resynced`). The speed
    views are derived from silver alone, so this loses nothing; a crash part way leaves no checkpoint
    and restarted marks, and the next start resyncs again."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        raise ValueError(f"resync needs a local checkpoint folder, not {checkpoint}")
    log.warning("speed %s: %s; starting over from silver's current snapshot", sink.query_name, reason)
    folder = Path(checkpoint.removeprefix("file://"))
    # Renamed away first: a checkpoint half deleted (offsets without their commits) would fail every start.
    discarded = folder.with_name(folder.name + ".discarded")
    shutil.rmtree(discarded, ignore_errors=True)
    if folder.exists():
        os.replace(folder, discarded)
    shutil.rmtree(discarded, ignore_errors=True)
    start = folder / RESYNC_START
    for name in (*VIEW_TABLES[sink.views], "speed.freshness"):
        path, mark = table_path(name, settings), batch_mark(f"{sink.query_name}:{name}", -1)
        emptied = spark.createDataFrame([], SCHEMAS[name])
        mode = "append" if name == "speed.freshness" else "overwrite"  # the log keeps its rows
        retry_on_conflict(lambda: emptied.write.format("delta").mode(mode).option("userMetadata", mark).save(path),
                          f"resync {name}")
    sink.writes.forget()
    silver = table_path("silver.events", settings)
    version = latest_version(spark, silver)
    # Delta starts a stream at an existing version only, so the stream starts at V and drops V's own
    # changes: V's files must be there (they are, unless a VACUUM left no commit after them).
    if unreadable_change_version(silver, version) is not None:
        raise RuntimeError(f"speed {sink.query_name}: silver's latest version {version} cannot be read (its files "
                           "were removed); start the speed layer again once ingestion has committed to silver")
    # Read before feeding: if a publish lands meanwhile, the next check resyncs again (never misses it).
    batch_version = published_batch_version(settings)
    seed = SpeedSink(settings, f"{sink.query_name}:resync-{uuid.uuid4().hex[:8]}", views=sink.views)
    feed_snapshot(spark, settings, version, seed)
    # Kept beside the checkpoint: a replay of the stream's first batch after a crash starts where the
    # restart asks, and must drop V's changes again (the fed snapshot holds them).
    start.parent.mkdir(parents=True, exist_ok=True)
    start.write_text(json.dumps({"snapshot_version": version, "batch_version": batch_version, "reason": reason}) + "\n")
    return version


def published_batch_version(settings: Settings) -> int | None:
    """The silver version the published batch views read (gold.campaign_daily's cut)."""
    from touchpoint.core.serving import read_cut

    return read_cut(settings, "gold.campaign_daily")[1]


def batch_between(resynced: dict, batch_version: int | None) -> str | None:
    """Why a resynced query's rows are wrong now, or None: a batch published since the resync read a
    silver version older than the resync's snapshot V. The fed rows carry V, not their own commit
    versions, so the rows that batch read from after the previous one would be served twice (and
    deletes subtracted twice); a resync against the new batch sets them right."""
    fed = resynced["snapshot_version"]
    if batch_version is None or batch_version == resynced.get("batch_version") or batch_version >= fed:
        return None
    return (f"a batch published since the resync read silver version {batch_version}, older than the resync's "
            f"snapshot {fed}")


def resynced(checkpoint: str) -> dict | None:
    """What `resync` recorded for the query (`snapshot_version` V, the `batch_version` it set the
    snapshot against), None if it was not resynced: its stream starts at V and keeps only later changes."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return None
    start = Path(checkpoint.removeprefix("file://")) / RESYNC_START
    return json.loads(start.read_text()) if start.is_file() else None


def change_stream(spark: SparkSession, settings: Settings, start_version: int, after: int | None = None) -> DataFrame:
    """Silver's change feed from `start_version`; with `after`, only the changes of later versions."""
    changes = (spark.readStream.format("delta").option("readChangeFeed", "true")
               .option("startingVersion", start_version)
               # A backlog (a restart, a burst) is read in bounded steps, not in one batch that the
               # customer views' joins cannot hold in memory (found by bench/freshness at 5,000/s).
               .option("maxBytesPerTrigger", str(settings.stream.speed_max_bytes_per_trigger))
               .load(table_path("silver.events", settings)))
    return changes if after is None else changes.where(F.col("_commit_version") > F.lit(after))


def query_names(settings: Settings, query_name: str = "speed") -> list[str]:
    """The queries `start_queries` starts: the campaign-views query `query_name` and the
    customer-views query `<query_name>_customers`, or `query_name` alone for all views when
    `stream.customer_trigger_seconds` is unset."""
    if settings.stream.customer_trigger_seconds is None:
        return [query_name]
    return [query_name, query_name + CUSTOMER_QUERY_SUFFIX]


def start_queries(spark: SparkSession, settings: Settings, query_name: str = "speed", trigger_once: bool = False,
                  views: str = "all"):
    """Start the speed layer as configured (`query_names`). Returns the started queries.

    `views="campaigns"` or `"customers"` starts that one of the two queries alone, so that each can
    run in a process of its own (`touchpoint stream speed --views`); a process for the customer
    views can then run at a lower CPU priority than ingestion and the campaign views."""
    if views not in VIEWS:
        raise ValueError(f"views={views!r}: expected one of {', '.join(VIEWS)}")
    names = query_names(settings, query_name)
    if len(names) == 1:
        if views != "all":
            raise ValueError(f"views={views!r} needs the two speed queries: set stream.customer_trigger_seconds "
                             "(TOUCHPOINT_STREAM__CUSTOMER_TRIGGER_SECONDS), or start every view with views='all'")
        return [start_stream(spark, settings, query_name, trigger_once)]
    campaigns, customers = names
    started = []
    if views in ("all", "campaigns"):
        started.append(start_stream(spark, settings, campaigns, trigger_once, views="campaigns"))
    if views in ("all", "customers"):
        started.append(start_stream(spark, settings, customers, trigger_once, views="customers",
                                    trigger_seconds=settings.stream.customer_trigger_seconds))
    return started


def start_stream(spark: SparkSession, settings: Settings, query_name: str = "speed", trigger_once: bool = False,
                 sink: SpeedSink | None = None, views: str = "all", trigger_seconds: float | None = None):
    """Start one silver change feed -> speed.* query keeping `views` (one of VIEWS). `trigger_once` drains
    what is there and stops."""
    start_version = enable_change_feed(spark, settings)
    checkpoint = f"{settings.checkpoint_root}/{query_name}"
    if views in ("all", "customers"):
        realtime_definitions(settings)  # a bad real-time segment fails the start, not a micro-batch
    sink = sink or SpeedSink(settings, query_name, views=views)
    sink.ensure_tables(spark)
    reason = resync_reason(settings, checkpoint, sink, start_version)
    if reason is not None:
        resync(spark, settings, checkpoint, sink, reason)
    elif start_version > 0 and not has_checkpoint(checkpoint):
        bootstrap(spark, settings, start_version, query_name, views)
    record = resynced(checkpoint)
    sink.resynced = record
    after = None if record is None else record["snapshot_version"]
    if after is not None:
        start_version = after
    # No micro-batch without data: the sink has nothing to do without changes.
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "false")
    writer = (change_stream(spark, settings, start_version, after).writeStream.queryName(query_name)
              .foreachBatch(lambda frame, batch_id: sink(frame, batch_id))
              .option("checkpointLocation", checkpoint))
    if trigger_once:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{trigger_seconds or settings.stream.trigger_seconds} seconds")
    return writer.start()


