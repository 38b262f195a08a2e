"""`touchpoint run segments --date D`: evaluate every segment file as of D+1 00:00Z (BRIEF §6).

Reads gold.customer_profiles, silver.events (for behaviour conditions, resolved to customers through
gold.identity_map) and gold.identity_merges. Writes:
- gold.segment_membership  (segment, customer_id, entered_at, exited_at): one row per stay in a
  segment, exited_at null while it lasts. Instants are run instants (as_of of the run that saw the
  change), so "who was in S on date X" is `entered_at <= X+1 00:00Z < coalesce(exited_at, ∞)`;
- gold.segment_sizes       members, entered and exited per segment per logical date, with the
  definition's fingerprint; its dates are the run instants the history is made of.

A run for D is a point update of the membership history at its instant T: it sets membership at T to
the evaluation and leaves every other run instant as it was (the run after T keeps its own state).
That makes a rerun of D idempotent, and a rerun or backfill of an older D safe while later runs exist.
Identity merges move history to the surviving customer id before the update, overlapping stays
joined into one, so membership carries over a merge (docs/SEGMENTS.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DateType, LongType, StringType, StructField, StructType, TimestampType

from touchpoint.core.catalog import table_path
from touchpoint.core.channels import load_rules
from touchpoint.core.config import Settings
from touchpoint.core.delta import ensure_table, is_delta, read_version
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.core.segments import (
    EVENT_COLUMNS, behaviours_of, compile_segments, load_segments, longest_window_days, segment_members,
    window_start, with_behaviour_counts,
)
from touchpoint.core.dates import as_of_for
from touchpoint.jobs.identity_state import inputs_of_date, lookup_by_broadcast, recorded_snapshot
from touchpoint.jobs.profiles import last_run_state

_S, _TS, _L = StringType(), TimestampType(), LongType()


def _schema(*fields: tuple[str, object]) -> StructType:
    return StructType([StructField(name, kind, True) for name, kind in fields])


MEMBERSHIP_SCHEMA = _schema(("segment", _S), ("customer_id", _S), ("entered_at", _TS), ("exited_at", _TS))
# One row per segment and run date; definition_sha256 is null for a segment no longer defined
# (whose stays the run closed). The dates in this table are the run instants of the history.
SIZES_SCHEMA = _schema(("date", DateType()), ("segment", _S), ("as_of", _TS), ("members", _L), ("entered", _L),
                       ("exited", _L), ("definition_sha256", _S))

KEY = ["segment", "customer_id"]
# Stands for "still a member" (a null exited_at) where intervals are compared.
_FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)
_MAX_MERGE_HOPS = 32
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- pure transforms

# A stay as the update sees it: [start, end), end = _FOREVER while it lasts.
STAY = StructType([StructField("start", _TS, True), StructField("end", _TS, True)])


def _is_member_at(instant: Column) -> Column:
    return (F.col("entered_at") <= instant) & (F.col("exited_at").isNull() | (F.col("exited_at") > instant))


def members_at(instant: dt.datetime) -> Callable[[DataFrame], DataFrame]:
    """Membership history -> the rows of customers who were members at `instant`."""
    return lambda membership: membership.where(_is_member_at(F.lit(instant)))


def members_on(day: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Membership history -> who was in each segment on `day`, i.e. as evaluated by the run for that day."""
    return members_at(as_of_for(day))


def rekey(survivors: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """Membership -> membership under surviving customer ids, with `rekeyed` true on moved rows.

    `survivors` is (old_customer_id, customer_id) with chains already resolved."""

    def transform(membership: DataFrame) -> DataFrame:
        if survivors is None:
            return membership.withColumn("rekeyed", F.lit(False))
        renamed = survivors.select(F.col("old_customer_id").alias("customer_id"), F.col("customer_id").alias("survivor"))
        return (membership.join(renamed, "customer_id", "left")
                .withColumn("rekeyed", F.col("survivor").isNotNull())
                .withColumn("customer_id", F.coalesce("survivor", "customer_id")).drop("survivor"))

    return transform


def _stay(start: Column, end: Column) -> Column:
    return F.struct(start.alias("start"), end.alias("end")).cast(STAY)


def union_stays(stays: Column) -> Column:
    """array<stay> -> sorted union: overlapping or touching stays become one, empty ones vanish."""

    def absorb(done: Column, stay: Column) -> Column:
        last = F.try_element_at(done, F.lit(-1))
        widened = F.concat(F.slice(done, 1, F.size(done) - 1),
                           F.array(_stay(last["start"], F.greatest(last["end"], stay["end"]))))
        return F.when(last.isNotNull() & (stay["start"] <= last["end"]), widened).otherwise(
            F.concat(done, F.array(stay)))

    non_empty = F.filter(stays, lambda stay: stay["end"] > stay["start"])
    return F.aggregate(F.array_sort(non_empty), F.array().cast(ArrayType(STAY)), absorb)


def set_membership_at(stays: Column, member: Column, as_of: dt.datetime, next_as_of: dt.datetime | None) -> Column:
    """array<stay> -> the stays with membership at `as_of` set to `member` and unchanged at every
    other run instant: a stay cut at as_of resumes at next_as_of if it covered it; a new member
    stays until next_as_of (then whatever the history says there)."""
    at, later = F.lit(as_of), F.lit(next_as_of).cast(_TS)

    def pieces(stay: Column) -> Column:
        cut = ~member & (stay["start"] <= at) & (stay["end"] > at)
        before = F.when(stay["start"] < at, _stay(stay["start"], at))
        after = F.when(later.isNotNull() & (stay["end"] > later), _stay(later, stay["end"]))
        return F.when(cut, F.filter(F.array(before, after), lambda p: p.isNotNull())).otherwise(F.array(stay))

    kept = F.flatten(F.transform(stays, pieces))
    joined = F.concat(kept, F.array(_stay(at, F.coalesce(later, F.lit(_FOREVER)))))
    return union_stays(F.when(member, joined).otherwise(kept))


def membership_update(today: DataFrame, as_of: dt.datetime, next_as_of: dt.datetime | None,
                      survivors: DataFrame | None = None) -> Callable[[DataFrame], DataFrame]:
    """Stored membership -> (segment, customer_id, stays, changed) per customer and segment, under
    surviving ids: the whole new history with the members at `as_of` being `today` (segment,
    customer_id), and whether it differs from the stored one."""

    def transform(membership: DataFrame) -> DataFrame:
        stored = membership.transform(rekey(survivors)).select(
            *KEY, _stay(F.col("entered_at"), F.coalesce("exited_at", F.lit(_FOREVER))).alias("stay"),
            F.lit(False).alias("member"), "rekeyed")
        evaluated = today.select(*KEY, F.lit(None).cast(STAY).alias("stay"), F.lit(True).alias("member"),
                                 F.lit(False).alias("rekeyed"))
        grouped = stored.unionByName(evaluated).groupBy(*KEY).agg(
            F.array_sort(F.collect_list("stay")).alias("old"), F.max("member").alias("member"),
            F.max("rekeyed").alias("rekeyed"))
        stays = set_membership_at(F.col("old"), F.col("member"), as_of, next_as_of)
        return grouped.select(*KEY, stays.alias("stays"), (F.col("rekeyed") | (stays != F.col("old"))).alias("changed"))

    return transform


def stay_rows(updated: DataFrame) -> DataFrame:
    """(segment, customer_id, stays) -> membership rows."""
    return updated.select(*KEY, F.explode("stays").alias("stay")).select(
        *KEY, F.col("stay.start").alias("entered_at"),
        F.when(F.col("stay.end") < F.lit(_FOREVER), F.col("stay.end")).alias("exited_at"))


def size_counts(instants: list[dt.datetime]) -> Callable[[DataFrame], DataFrame]:
    """Membership rows -> per segment, members / entered / exited at each instant, as columns
    members_<i>, entered_<i>, exited_<i> (one aggregation for all instants)."""

    def transform(membership: DataFrame) -> DataFrame:
        counts = []
        for i, instant in enumerate(instants):
            at = F.lit(instant)
            counts += [F.count_if(_is_member_at(at)).alias(f"members_{i}"),
                       F.count_if(F.col("entered_at") == at).alias(f"entered_{i}"),
                       F.count_if(F.col("exited_at") == at).alias(f"exited_{i}")]
        return membership.groupBy("segment").agg(*counts)

    return transform


# ---------------------------------------------------------------- lake edge


def _survivors(spark: SparkSession, settings: Settings, live_ids: DataFrame) -> DataFrame | None:
    """Retired customer id -> its surviving id, chains of merges followed to their end."""
    path = table_path("gold.identity_merges", settings)
    if not is_delta(spark, path):
        return None
    hops = (
        spark.read.format("delta").load(path)
        .where(F.col("old_customer_id") != F.col("new_customer_id"))
        .groupBy("old_customer_id")
        .agg(F.max_by("new_customer_id", F.struct("merged_at", "new_customer_id")).alias("customer_id"))
        # an id still in the profiles is alive, whatever an older merge said about it
        .join(live_ids.select(F.col("customer_id").alias("old_customer_id")), "old_customer_id", "left_anti")
    )
    next_hop = hops.select(F.col("old_customer_id").alias("customer_id"), F.col("customer_id").alias("next_id"))
    resolved = hops
    for _ in range(_MAX_MERGE_HOPS):  # usually no chain at all: one check
        if resolved.join(next_hop, "customer_id", "left_semi").isEmpty():
            return resolved
        resolved = (resolved.join(next_hop, "customer_id", "left")
                    .select("old_customer_id", F.coalesce("next_id", "customer_id").alias("customer_id"))
                    .localCheckpoint())
    raise RuntimeError(f"gold.identity_merges has chains longer than {_MAX_MERGE_HOPS} merges, or a cycle")


def _behaviour_events(spark: SparkSession, settings: Settings, window_days: float, logical_date: dt.date,
                      profiles_inputs: dict | None) -> DataFrame:
    """The events of the behaviour windows, with their customers: from the silver snapshot and map
    the evaluated profiles were derived from (`profiles_inputs`, their commit's record), else from
    what the identity run of D read and wrote. Either way the customers as of the run, and the
    events the profiles saw: identity may have run for D again since, over events appended later."""
    as_of = as_of_for(logical_date)
    silver_path, map_path = table_path("silver.events", settings), table_path("gold.identity_map", settings)
    for name, path in (("silver.events", silver_path), ("gold.identity_map", map_path)):
        if not is_delta(spark, path):
            raise RuntimeError(f"{name} not found at {path}: behaviour conditions need it (run ingest and identity)")
    snapshot = recorded_snapshot(settings, profiles_inputs) if profiles_inputs is not None else None
    if snapshot is None:
        snapshot = inputs_of_date(spark, settings, logical_date, "segments")
    silver_version, map_version = snapshot.silver_version, snapshot.map_version
    start = as_of - dt.timedelta(microseconds=round(window_days * 86_400_000_000))
    events = (
        read_version(spark, silver_path, silver_version)
        .where((F.col("event_date") >= F.lit(start.date())) & (F.col("event_ts") >= window_start(as_of, window_days))
               & (F.col("event_ts") < F.lit(as_of)))
        .select("event_id", "anonymous_id", "user_id", "email", "phone", *EVENT_COLUMNS[1:])
    )
    return events.transform(attach_customer_id(read_version(spark, map_path, map_version),
                                               broadcast=lookup_by_broadcast(map_path, map_version)))


def _run_dates(spark: SparkSession, sizes_path: str) -> list[tuple]:
    """Every row of gold.segment_sizes (one per segment and run: a small table), as of micros."""
    if not is_delta(spark, sizes_path):
        return []
    frame = spark.read.format("delta").load(sizes_path)
    return sorted(tuple(r) for r in frame.select(
        "date", "segment", F.unix_micros("as_of").alias("as_of"), *SIZES_SCHEMA.fieldNames()[3:]).collect())


def _micros(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // dt.timedelta(microseconds=1)


def _instant(micros: int) -> dt.datetime:
    # through epoch microseconds: Python datetimes from Spark are in the driver's local zone
    return _EPOCH + dt.timedelta(microseconds=micros)


def _require_profiles_as_of(profiles: DataFrame, as_of: dt.datetime, logical_date: dt.date, path: str) -> None:
    """Segments of D are evaluated on the profiles as of D (BRIEF §4: event_ts < as_of): a run of an
    older date on later profiles would count orders, RFM and last orders that came after it."""
    low, high = profiles.agg(F.min(F.unix_micros("as_of")), F.max(F.unix_micros("as_of"))).first()
    if low is None:  # no customer yet: nothing to be out of date
        return
    if low != high or low != _micros(as_of):
        found = ", ".join(sorted({_instant(low).isoformat(), _instant(high).isoformat()}))
        raise RuntimeError(f"gold.customer_profiles at {path} is as of {found}, not {as_of.isoformat()}: run profiles "
                           f"for {logical_date} first (touchpoint run profiles --date {logical_date}, after identity), "
                           f"or run the whole date (touchpoint run pipeline --date {logical_date})")


def run(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    as_of = as_of_for(logical_date)
    profiles_path, membership_path, sizes_path = (table_path(name, settings) for name in (
        "gold.customer_profiles", "gold.segment_membership", "gold.segment_sizes"))
    if not is_delta(spark, profiles_path):
        raise RuntimeError(f"gold.customer_profiles not found at {profiles_path}: run profiles first")
    definitions = load_segments(settings.segments_dir, load_rules(settings.channel_rules_file).channels)

    # The profiles version and the inputs its run recorded are read together: a profiles run
    # committing meanwhile must not pair one snapshot's rows with another's inputs.
    recorded, _ = last_run_state(profiles_path)
    if recorded is not None and recorded["logical_date"] == logical_date:
        profiles = read_version(spark, profiles_path, recorded["customer_profiles_version"])
    else:  # written otherwise (an erasure's rewrite, by hand): D's identity run says what to read
        recorded, profiles = None, spark.read.format("delta").load(profiles_path)
    _require_profiles_as_of(profiles, as_of, logical_date, profiles_path)
    compiled = compile_segments(definitions, profiles.schema, as_of)
    behaviours = behaviours_of(compiled)
    window_days = longest_window_days(behaviours)
    evaluated = profiles
    if window_days is not None:
        events = _behaviour_events(spark, settings, window_days, logical_date, recorded)
        evaluated = profiles.transform(with_behaviour_counts(events, behaviours, as_of))
    today = evaluated.transform(segment_members(compiled))

    # The run instants are the dates of gold.segment_sizes; the next one after this run matters.
    sizes_before = _run_dates(spark, sizes_path)
    later = sorted({(r[0], r[2]) for r in sizes_before if r[0] > logical_date})
    next_run = (later[0][0], _instant(later[0][1])) if later else None

    ensure_table(spark, membership_path, MEMBERSHIP_SCHEMA, catalog_name="gold.segment_membership")
    stored = spark.read.format("delta").load(membership_path)
    survivors = _survivors(spark, settings, profiles.select("customer_id"))
    updated = stored.transform(membership_update(today, as_of, next_run[1] if next_run else None, survivors)
                               ).localCheckpoint()
    changed = not updated.where(F.col("changed")).isEmpty()
    if changed:  # the whole table is rewritten in one commit; a rerun that changes nothing writes nothing
        stay_rows(updated).write.format("delta").mode("overwrite").save(membership_path)

    # Sizes of this run, and of the next one: its entered / exited counts depend on this run.
    instants = [(logical_date, as_of)] + ([next_run] if next_run else [])
    counted = {r["segment"]: r for r in stay_rows(updated).transform(size_counts([t for _, t in instants])).collect()}
    fingerprints = {d.name: d.fingerprint for d in definitions}
    previous = [r for r in sizes_before if r[0] in {d for d, _ in instants}]
    sizes = []
    for i, (day, instant) in enumerate(instants):
        # this run: every defined segment, and any other whose stays it closed; the next run: its own segments
        named = fingerprints if i == 0 else {r[1]: r[6] for r in previous if r[0] == day}
        for name in sorted(set(named) | set(counted)):
            row = counted.get(name)
            values = tuple(row[f"{k}_{i}"] if row else 0 for k in ("members", "entered", "exited"))
            if name in named or any(values):
                sizes.append((day, name, _micros(instant), *values, named.get(name)))
    sizes.sort()
    if sizes != previous:
        dates = ", ".join(f"DATE'{d.isoformat()}'" for d, _ in instants)
        frame = spark.createDataFrame([(r[0], r[1], _instant(r[2]), *r[3:]) for r in sizes], SIZES_SCHEMA)
        ensure_table(spark, sizes_path, SIZES_SCHEMA, catalog_name="gold.segment_sizes")
        frame.write.format("delta").mode("overwrite").option("replaceWhere", f"date IN ({dates})").save(sizes_path)

    mine = [r for r in sizes if r[0] == logical_date]
    return {
        "as_of": as_of.isoformat(),
        "segments": len(definitions),
        "membership_changed": changed,
        "members": sum(r[3] for r in mine), "entered": sum(r[4] for r in mine), "exited": sum(r[5] for r in mine),
        "sizes": {r[1]: r[3] for r in mine if r[1] in fingerprints},
        "next_run_updated": next_run[0].isoformat() if next_run else None,
    }
