"""`touchpoint run attribution --date D`: multi-touch attribution over silver events (BRIEF §4, issue 5).

A run for D computes, as of D+1 00:00Z, the touchpoints and conversions of every customer, the path
of every conversion, the Markov chain of the training window and the credits under all seven
models. After the run the attribution tables equal a full recompute as of D; see docs/ATTRIBUTION.md.

Incremental by default: the touchpoints and conversions of the customers that changed since the
previous run (jobs.attribution_scope: silver's change feed, the identity map's changes, the as-of's
move) are re-derived from silver and compared with the stored ones (gold.attribution_touchpoints /
gold.attribution_conversions); only conversions that are new or changed, or whose lookback window
holds a touchpoint that appeared, disappeared or moved (late events, identity merges, new landing
clicks), get their path rebuilt. Markov credits of every conversion follow the latest removal effects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from contextlib import ExitStack
from typing import Callable, Iterable, Mapping

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, IntegerType, LongType, StringType, StructField, StructType, TimestampType

from touchpoint.core.catalog import table_path
from touchpoint.core.config import AttributionSettings, Settings
from touchpoint.core.dates import as_of_for, epoch_micros
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.core.spark import local_checkpoint
from touchpoint.jobs.attribution_checks import assert_attribution_invariants
from touchpoint.jobs.attribution_scope import conversions_in_scope, events_in_scope, scope_conversion_ids
from touchpoint.jobs.changed_scope import before_as_of, changed_scope, scope_source
from touchpoint.jobs.attribution_models import (
    CLICK_TYPES, CONVERSION_COLUMNS, CREDIT_COLUMNS, HEURISTIC_MODELS, MODELS, TOUCHPOINT_COLUMNS, conversions,
    credits, daily, lookback_micros, micros, touchpoint_types, touchpoints, training_paths, with_paths,
)
from touchpoint.core.delta import (
    commit_metadata, is_delta, latest_version, newest_mark, read_version, rs_table, snapshot_fingerprint,
)
from touchpoint.jobs.identity_state import inputs_of_date, lookup_by_broadcast, snapshot_rows
from touchpoint.jobs.markov import fit_chain
from touchpoint.jobs.steps import step_timer

EVENT_COLUMNS = ("event_id", "event_type", "event_ts", "event_date", "channel", "campaign_name", "order_id",
                 "revenue_reporting", "anonymous_id", "user_id", "email", "phone")

REMOVAL_EFFECTS_SCHEMA = StructType([
    StructField("as_of", TimestampType()), StructField("order", IntegerType()),
    StructField("channel", StringType()), StructField("removal_effect", DoubleType()),
])

RUNS_SCHEMA = StructType([
    StructField("run_id", LongType()), StructField("logical_date", DateType()), StructField("as_of", TimestampType()),
    StructField("mode", StringType()), StructField("settings_fingerprint", StringType()),
    StructField("conversions_version", LongType()), StructField("touchpoints_version", LongType()),
    StructField("credits_version", LongType()), StructField("conversions_recomputed", LongType()),
    StructField("conversions_removed", LongType()),
    StructField("conversions_rows", LongType()), StructField("touchpoints_rows", LongType()),
    StructField("credits_rows", LongType()),
    # The inputs a run read: the next run re-derives only what changed since (jobs.attribution_scope).
    StructField("silver_version", LongType()), StructField("identity_map_version", LongType()),
    StructField("identity_map_fingerprint", StringType()), StructField("derivation", StringType()),
])

log = logging.getLogger(__name__)

# The state tables one run hands to the next: the run log records each one's Delta version and row
# count. Write-audit-publish on an object store re-creates them (a copy in staging, an overwrite on
# publish) under other version numbers, so the state is also found at the current version when its
# row count still matches, unless a later run wrote to it (RUN_MARK). (On a local lake publish
# exchanges folders: the versions stay.)
STATE_TABLES = {
    "conversions_version": "gold.attribution_conversions",
    "touchpoints_version": "gold.attribution_touchpoints",
    "credits_version": "gold.attribution_credits",
}
STATE_ROWS = {"conversions_version": "conversions_rows", "touchpoints_version": "touchpoints_rows",
              "credits_version": "credits_rows"}


# Every commit of a run to a state table carries {RUN_MARK: run_id} as its userMetadata. A run that
# died between its commits left some tables written and no run record; the next run finds its marks
# and recomputes everything: the row counts alone can match (a conversion added, another removed)
# while the credits still belong to the older paths. Every run writes the credits (the Markov
# partition at least), so their newest mark also names the last run whose credits they hold.
RUN_MARK = "touchpoint_attribution_run"


def run_mark(run_id: int) -> str:
    return json.dumps({RUN_MARK: run_id})


def marked_run(commit: Mapping) -> int | None:
    """The attribution run a commit (a history entry) belongs to, None for any other commit."""
    try:
        run_id = json.loads(commit.get("userMetadata") or "")[RUN_MARK]
    except (ValueError, TypeError, KeyError):  # no mark, or someone else's metadata
        return None
    return run_id if type(run_id) is int else None  # not a bool


def unfinished_run(path: str, recorded_version: int, run_id: int) -> int | None:
    """The id of a run after `run_id` whose marked commits the table holds since `recorded_version`
    (all of its history when it was re-created with fewer versions), None if there is none."""
    table = rs_table(path)
    commits = table.history(table.version() - recorded_version) if table.version() > recorded_version \
        else table.history()
    later = [marked for marked in map(marked_run, commits) if marked is not None and marked > run_id]
    return max(later, default=None)


def settings_fingerprint(settings: AttributionSettings) -> str:
    """Changing any attribution setting invalidates the stored paths: the next run is full."""
    text = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- pure transforms


def relevant_types(settings: AttributionSettings) -> list[str]:
    """The event types attribution looks at: touchpoints, clicks and orders."""
    return sorted(set(touchpoint_types(settings)) | set(CLICK_TYPES) | {"order"})


def relevant_events(settings: AttributionSettings, as_of: dt.datetime) -> Callable[[DataFrame], DataFrame]:
    """silver.events -> the events attribution looks at, before the as-of."""
    def transform(silver: DataFrame) -> DataFrame:
        return (silver.transform(before_as_of(as_of)).where(F.col("event_type").isin(*relevant_types(settings)))
                .select(*EVENT_COLUMNS))

    return transform


def _differs(columns: Iterable[str], left: str, right: str):
    same = F.lit(True)
    for name in columns:
        same = same & F.col(f"{left}.{name}").eqNullSafe(F.col(f"{right}.{name}"))
    return ~same


def touchpoint_changes(previous: DataFrame, current: DataFrame) -> DataFrame:
    """Touchpoints that appeared, disappeared or changed (customer, time, channel, campaign).

    Columns: the current values (null when gone), `deleted`, and the previous customer_id/touch_ts
    as `previous_customer_id` / `previous_touch_ts`.
    """
    joined = previous.alias("prev").join(
        current.alias("cur"), F.col("prev.touch_event_id") == F.col("cur.touch_event_id"), "full")
    return joined.where(_differs(TOUCHPOINT_COLUMNS, "prev", "cur")).select(
        F.coalesce("cur.touch_event_id", "prev.touch_event_id").alias("touch_event_id"),
        *[F.col(f"cur.{c}").alias(c) for c in TOUCHPOINT_COLUMNS if c != "touch_event_id"],
        F.col("cur.touch_event_id").isNull().alias("deleted"),
        F.col("prev.customer_id").alias("previous_customer_id"),
        F.col("prev.touch_ts").alias("previous_touch_ts"),
    )


def conversions_to_rebuild(
    previous: DataFrame, current: DataFrame, touch_changes: DataFrame, settings: AttributionSettings
) -> DataFrame:
    """conversion_id of every current conversion that is new, changed, or whose lookback window
    holds a changed touchpoint (before or after the change)."""
    lookback_us = lookback_micros(settings)
    changed_conversions = (
        current.alias("cur")
        .join(previous.alias("prev"), "conversion_id", "left")
        .where(_differs(CONVERSION_COLUMNS[1:], "prev", "cur"))
        .select("conversion_id")
    )
    marks = (
        touch_changes.select("customer_id", "touch_ts")
        .unionByName(touch_changes.select(F.col("previous_customer_id").alias("customer_id"),
                                          F.col("previous_touch_ts").alias("touch_ts")))
        .where(F.col("customer_id").isNotNull())
        .distinct()
        .select("customer_id", micros("touch_ts").alias("mark_us"))
    )
    conv_us = micros(F.col("conv.conversion_ts"))
    touched_windows = (
        current.alias("conv")
        .join(marks.alias("mark"), (F.col("conv.customer_id") == F.col("mark.customer_id"))
              & F.col("mark.mark_us").between(conv_us - lookback_us, conv_us), "left_semi")
        .select("conversion_id")
    )
    return changed_conversions.unionByName(touched_windows).distinct()


def removed_conversions(previous: DataFrame, current: DataFrame) -> DataFrame:
    return previous.select("conversion_id").join(current.select("conversion_id"), "conversion_id", "left_anti")


def credit_merge_source(new_rows: DataFrame, stale_rows: DataFrame) -> DataFrame:
    """Rows to upsert (deleted = false) plus the keys of stale rows that have no successor."""
    key = (F.col("stale.model") == F.col("new.model")) & (F.col("stale.conversion_id") == F.col("new.conversion_id")) \
        & F.col("stale.touch_event_id").eqNullSafe(F.col("new.touch_event_id"))
    gone = stale_rows.alias("stale").join(new_rows.alias("new"), key, "left_anti").select(
        *[F.col(c) if c in ("model", "conversion_id", "touch_event_id") else F.lit(None).alias(c)
          for c in CREDIT_COLUMNS]
    )
    typed_gone = gone.select(*[F.col(c).cast(new_rows.schema[c].dataType).alias(c) for c in CREDIT_COLUMNS])
    return new_rows.withColumn("deleted", F.lit(False)).unionByName(typed_gone.withColumn("deleted", F.lit(True)))


# ---------------------------------------------------------------- lake edge


def _overwrite(frame: DataFrame, path: str, partition_by: tuple[str, ...] = ()) -> None:
    writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


def _replace_where(frame: DataFrame, path: str, predicate: str) -> None:
    """Replace the rows matching `predicate` (a SQL condition) by `frame`'s, in one commit."""
    frame.write.format("delta").mode("overwrite").option("replaceWhere", predicate).save(path)


def _merge(spark: SparkSession, path: str, source: DataFrame, keys: str, columns: Iterable[str]) -> None:
    """Upsert the source rows with deleted = false, delete the target rows whose key comes with
    deleted = true; one atomic Delta commit."""
    values = {c: f"s.`{c}`" for c in columns}
    (
        DeltaTable.forPath(spark, path).alias("t")
        .merge(source.alias("s"), keys)
        .whenMatchedDelete(condition="s.deleted")
        .whenMatchedUpdate(set=values)
        .whenNotMatchedInsert(condition="NOT s.deleted", values=values)
        .execute()
    )


def _previous_run(spark: SparkSession, settings: Settings) -> tuple[dict | None, str | None]:
    """The last run's record when its state can seed an incremental run, else (record, reason)."""
    runs_path = table_path("gold.attribution_runs", settings)
    if not is_delta(spark, runs_path):
        return None, "first run"
    last = spark.read.format("delta").load(runs_path).orderBy(F.col("run_id").desc()).first()
    if last is None:
        return None, "first run"
    record = last.asDict()
    if record["settings_fingerprint"] != settings_fingerprint(settings.attribution):
        return record, "attribution settings changed"
    for column, name in STATE_TABLES.items():
        path = table_path(name, settings)
        rows = record.get(STATE_ROWS[column])
        if rows is None or not is_delta(spark, path):
            return record, f"{name} has no state recorded by the last run"
        current = latest_version(spark, path)
        if current != record[column]:
            unfinished = unfinished_run(path, record[column], record["run_id"])
            if unfinished is not None:
                return record, f"{name} holds writes of attribution run {unfinished}, which did not finish"
            # On a local lake a table keeps its versions (publish exchanges folders): an older one is
            # another table, e.g. left behind by a publish that crashed half way.
            if current < record[column] and "://" not in path:
                return record, f"{name} is at version {current}, before the last run's {record[column]}"
            if snapshot_rows(path, current) != rows:
                return record, f"{name} changed since the last run"
        record[column] = current
    credits_path = table_path("gold.attribution_credits", settings)
    newest = newest_mark(rs_table(credits_path), marked_run)
    if newest is not None and newest != record["run_id"]:  # None: a copy, or tables older than marks
        return record, (f"gold.attribution_credits holds the writes of attribution run {newest}, "
                        f"not of run {record['run_id']}, the last one recorded")
    return record, None


def conversions_of_date(spark: SparkSession, settings: Settings, logical_date: dt.date, silver_version: int,
                        map_version: int) -> tuple[int | None, str]:
    """(the version of gold.attribution_conversions that holds D's conversions with their paths, "")
    when the last attribution run was for D, read silver at `silver_version` and the identity map at
    `map_version` with today's settings, and its state tables are intact; else (None, why not)."""
    record, reason = _previous_run(spark, settings)
    if record is None or reason:
        return None, reason or "no attribution run"
    if record["logical_date"] != logical_date:
        return None, f"the last attribution run was for {record['logical_date']}"
    if (record["silver_version"], record["identity_map_version"]) != (silver_version, map_version):
        return None, (f"the last attribution run read silver.events {record['silver_version']} and "
                      f"gold.identity_map {record['identity_map_version']}, not {silver_version} and {map_version}")
    map_path = table_path("gold.identity_map", settings)
    try:
        same_map = snapshot_fingerprint(map_path, map_version) == record["identity_map_fingerprint"]
    except Exception as unreadable:  # the log of that version is gone
        return None, f"gold.identity_map version {map_version} cannot be read ({type(unreadable).__name__})"
    if not same_map:
        return None, f"gold.identity_map version {map_version} is not the snapshot the last attribution run read"
    return record["conversions_version"], ""


def run(spark: SparkSession, settings: Settings, logical_date: dt.date, mode: str = "auto") -> dict:
    """Attribute every conversion before D+1 00:00Z. mode: 'auto' (incremental when the previous
    run's state is intact) or 'full'."""
    if mode not in ("auto", "full"):
        raise ValueError(f"mode must be 'auto' or 'full', got {mode!r}")
    cfg = settings.attribution
    as_of = as_of_for(logical_date)
    as_of_us = epoch_micros(as_of)
    lookback_us = lookback_micros(cfg)
    paths = {name: table_path(f"gold.{name}", settings) for name in (
        "attribution_touchpoints", "attribution_conversions", "attribution_credits", "attribution_daily",
        "attribution_paths", "markov_removal_effects", "attribution_runs")}

    inputs, input_paths = {}, {}
    for name in ("silver.events", "gold.identity_map"):
        path = input_paths[name] = table_path(name, settings)
        if not is_delta(spark, path):
            raise FileNotFoundError(f"attribution needs {name}, which has no Delta table at {path}")
    # Pinned: one consistent snapshot of each input, however often Spark re-evaluates a plan; the
    # snapshot identity of D read and wrote, so every event read has its identifiers in the map.
    snapshot = inputs_of_date(spark, settings, logical_date, "attribution")
    input_versions = {"silver.events": snapshot.silver_version, "gold.identity_map": snapshot.map_version}
    for name, path in input_paths.items():
        inputs[name] = read_version(spark, path, input_versions[name])

    previous, full_reason = _previous_run(spark, settings)
    run_id = (previous["run_id"] + 1) if previous else 1
    if mode == "full":
        full_reason = "full recompute requested"
    checkpoints = ExitStack()  # every kept frame is freed when the run ends
    step = step_timer(log, "attribution", logical_date)

    def keep(frame: DataFrame) -> DataFrame:
        return checkpoints.enter_context(local_checkpoint(frame))

    with checkpoints:
        current_map = inputs["gold.identity_map"]
        resolve = attach_customer_id(current_map, broadcast=lookup_by_broadcast(
            input_paths["gold.identity_map"], input_versions["gold.identity_map"]))
        relevant = inputs["silver.events"].transform(relevant_events(cfg, as_of))
        scope, all_reason = (None, full_reason) if full_reason else changed_scope(
            spark, settings, "attribution", previous, inputs, input_versions, input_paths, as_of, resolve, keep)
        if scope is None:
            # every customer: the touchpoints and conversions of all of silver
            events = keep(relevant.transform(resolve))
            touches = keep(events.transform(touchpoints(cfg)))
            convs = keep(events.transform(conversions))
            derivation = f"all customers: {all_reason}"
        else:
            customers, seeds = scope.customers, scope.seeds
            # the scope's candidates are resolved already, and of every event type
            events = keep(scope.candidates.where(F.col("event_type").isin(*relevant_types(cfg)))
                          .transform(events_in_scope(seeds)))
            # The changed customers' touchpoints; an order event in scope only for its order id
            # may belong to a customer whose touchpoints did not change.
            touches = keep(events.join(customers, "customer_id", "left_semi").transform(touchpoints(cfg)))
            convs = keep(events.transform(conversions))
            derivation = f"changed customers: {customers.count()}"
        step(f"derivation ({derivation})")

        # 1. Touchpoints and conversions with paths: all of them, or only what changed.
        if full_reason:
            rebuilt = keep(convs.transform(with_paths(touches, cfg)))
            all_convs, all_touches = rebuilt, touches
            touch_changes = removed = affected = previous_credits = None
        else:
            previous_touches = read_version(spark, paths["attribution_touchpoints"], previous["touchpoints_version"])
            previous_convs = read_version(spark, paths["attribution_conversions"], previous["conversions_version"])
            previous_credits = read_version(spark, paths["attribution_credits"], previous["credits_version"])
            compared_touches, compared_convs, all_touches = previous_touches, previous_convs, touches
            if scope is not None:
                compared_touches = previous_touches.join(customers, "customer_id", "left_semi")
                compared_convs = previous_convs.transform(conversions_in_scope(scope_conversion_ids(seeds), customers))
                # Every other customer's touchpoints are those stored.
                all_touches = keep(previous_touches.join(customers, "customer_id", "left_anti")
                                   .select(*TOUCHPOINT_COLUMNS).unionByName(touches))
            touch_changes = keep(touchpoint_changes(compared_touches, touches))
            to_rebuild = keep(conversions_to_rebuild(
                compared_convs.select(*CONVERSION_COLUMNS), convs, touch_changes, cfg))
            removed = keep(removed_conversions(compared_convs, convs))
            affected = to_rebuild.unionByName(removed)
            rebuilt = keep(convs.join(to_rebuild, "conversion_id", "left_semi")
                           .transform(with_paths(all_touches, cfg)))
            all_convs = keep(previous_convs.join(affected, "conversion_id", "left_anti").unionByName(rebuilt))
        recomputed = rebuilt.count()
        removed_count = removed.count() if removed is not None else 0
        step(f"paths ({'full: ' + full_reason if full_reason else 'incremental'})")

        # 2. The Markov chain, trained on the paths table of this as-of.
        training = keep(training_paths(all_convs, all_touches, as_of_us, cfg))
        chain = fit_chain(training, cfg.markov_order)
        removal_effects = chain.removal_effects()
        effects_rows = spark.createDataFrame(
            [(as_of, cfg.markov_order, c, re) for c, re in sorted(removal_effects.items())],
            REMOVAL_EFFECTS_SCHEMA)
        step("markov chain")

        # 3. Credits: every model for rebuilt conversions, Markov for all (it follows the latest chain).
        if affected is None:
            new_rows = keep(all_convs.transform(credits(cfg, removal_effects, MODELS)))
            final_credits = new_rows
        else:
            markov_rows = keep(all_convs.transform(credits(cfg, removal_effects, ["markov"])))
            heuristic_rows = keep(rebuilt.transform(credits(cfg, removal_effects, HEURISTIC_MODELS)))
            new_rows = heuristic_rows.unionByName(markov_rows)
            kept = previous_credits.where(F.col("model") != "markov").join(affected, "conversion_id", "left_anti")
            final_credits = kept.select(*CREDIT_COLUMNS).unionByName(new_rows)
        assert_attribution_invariants(final_credits, all_convs, lookback_us)
        step("credits and invariants")

        # 4. Publish. Versions are recorded last: a run that dies half way leaves them stale, and
        # the next run then finds this run's marks on the tables it wrote and recomputes everything.
        with commit_metadata(spark, run_mark(run_id)):
            if affected is None:
                _overwrite(rebuilt, paths["attribution_conversions"])
                _overwrite(touches, paths["attribution_touchpoints"])
                _overwrite(new_rows, paths["attribution_credits"], partition_by=("model",))
            else:
                # A MERGE with nothing to change still costs its jobs and a commit: skipped.
                if recomputed or removed_count:
                    conversion_source = rebuilt.withColumn("deleted", F.lit(False)).unionByName(
                        removed.withColumn("deleted", F.lit(True)), allowMissingColumns=True)
                    _merge(spark, paths["attribution_conversions"], conversion_source,
                           "t.conversion_id = s.conversion_id", list(CONVERSION_COLUMNS) + ["path"])
                if not touch_changes.isEmpty():
                    _merge(spark, paths["attribution_touchpoints"], touch_changes,
                           "t.touch_event_id = s.touch_event_id", TOUCHPOINT_COLUMNS)
                # Markov credits follow the latest chain, so their partition is replaced whole: a MERGE
                # matched every row of it and rewrote nearly every file of the table (bench/README.md).
                _replace_where(markov_rows, paths["attribution_credits"], "model = 'markov'")
                if recomputed or removed_count:  # the heuristic credits of the conversions rebuilt or gone
                    stale = (previous_credits.where(F.col("model") != "markov")
                             .join(affected, "conversion_id", "left_semi").select(*CREDIT_COLUMNS))
                    _merge(spark, paths["attribution_credits"], credit_merge_source(heuristic_rows, stale),
                           "t.model = s.model AND t.conversion_id = s.conversion_id "
                           "AND t.touch_event_id <=> s.touch_event_id", CREDIT_COLUMNS)
        step("state tables and credits written")
        _overwrite(daily(final_credits), paths["attribution_daily"])
        _overwrite(training, paths["attribution_paths"])
        _write_removal_effects(spark, effects_rows, paths["markov_removal_effects"], as_of)

        step("daily, paths and removal effects written")
        versions = {column: latest_version(spark, table_path(name, settings)) for column, name in STATE_TABLES.items()}
        state_rows = {STATE_ROWS[column]: snapshot_rows(table_path(name, settings), versions[column])
                      for column, name in STATE_TABLES.items()}
        run_mode = "full" if full_reason else "incremental"
        record = (
            run_id, logical_date, as_of, run_mode,
            settings_fingerprint(cfg), versions["conversions_version"], versions["touchpoints_version"],
            versions["credits_version"], recomputed, removed_count,
            state_rows["conversions_rows"], state_rows["touchpoints_rows"], state_rows["credits_rows"],
            input_versions["silver.events"], input_versions["gold.identity_map"],
            snapshot_fingerprint(input_paths["gold.identity_map"], input_versions["gold.identity_map"]), derivation,
        )
        (spark.createDataFrame([record], RUNS_SCHEMA).write.format("delta").mode("append")
         .option("mergeSchema", "true").save(paths["attribution_runs"]))
        step("run recorded")
        return {
            "as_of": as_of.isoformat(),
            "mode": run_mode,
            "full_reason": full_reason,
            "derivation": derivation,
            "scope": scope_source(scope),
            "conversions_recomputed": recomputed,
            "conversions_removed": removed_count,
            "markov_order": cfg.markov_order,
            "conversion_probability": chain.conversion_probability(),
            "removal_effects": removal_effects,
        }


def _write_removal_effects(spark: SparkSession, rows: DataFrame, path: str, as_of: dt.datetime) -> None:
    """Replace this as-of's rows; the removal effects of other as-ofs are history."""
    if is_delta(spark, path):
        _replace_where(rows, path, f"as_of = TIMESTAMP '{as_of.strftime('%Y-%m-%d %H:%M:%S')}'")
    else:
        rows.write.format("delta").mode("overwrite").save(path)
