"""`touchpoint run identity --date D`: the identity graph, its components and stable customer ids (BRIEF §5).

Reads silver.events (event_ts < D+1 00:00Z), writes:
- gold.identity_map        identifier -> customer_id with first/last seen (also the speed layer's lookup);
- gold.identity_edges      the graph's distinct co-occurring pairs (state for the next run);
- gold.identity_guardrails identifiers held back and why;
- gold.identity_merges     ids retired this run and the id that replaced them;
- gold.identity_splits     parts split off a customer when a device became shared;
- gold.identity_runs       the run log: mode, silver version read, state versions written.

Incremental by default: a run starts from the state of the previous run and reads only the silver
partitions that are new or received late rows (see identity_state). Only the components those
rows touch are recomputed, each previous component shrunk to one node unless a device inside it
has just become shared. The result equals a full rebuild exactly; docs/IDENTITY.md has the proof sketch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, DateType, IntegerType, LongType, StringType, StructField, StructType, TimestampType,
)

from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.identity_graph import (
    DRIVER_LABELS_MAX_EDGES, Checkpoint, LakeCheckpointer, components_by_key, local_checkpoints,
)
from touchpoint.jobs.identity_rules import (
    DEVICE_TYPE, REASON_SHARED_DEVICE, Guardrails, assign_customer_ids, blocked_from_facts,
    customer_key, edges_from_facts, id_changes, identifier_key, identity_facts, linking_edges, linking_events,
    merge_edges, merge_seen, nodes_from_facts, shared_devices,
)
from touchpoint.core.dates import as_of_for
from touchpoint.core.delta import is_delta, latest_version, read_version
from touchpoint.jobs.identity_state import (
    BaseRun, Increment, config_fingerprint, locate_state, plan_increment, previous_run, run_log, write_slice,
    write_snapshot,
)


def _schema(*fields: tuple[str, object]) -> StructType:
    return StructType([StructField(name, kind, True) for name, kind in fields])


_S, _TS = StringType(), TimestampType()
IDENTITY_MAP_SCHEMA = _schema(("identifier_type", _S), ("identifier_value", _S), ("customer_id", _S),
                              ("first_seen", _TS), ("last_seen", _TS))
EDGES_SCHEMA = _schema(("a_type", _S), ("a_value", _S), ("b_type", _S), ("b_value", _S),
                       ("first_event_ts", _TS), ("first_event_id", _S), ("as_of", _TS))
GUARDRAILS_SCHEMA = _schema(("identifier_type", _S), ("identifier_value", _S), ("reason", _S),
                            ("distinct_user_ids", LongType()), ("first_seen", _TS), ("last_seen", _TS), ("as_of", _TS))
MERGES_SCHEMA = _schema(("old_customer_id", _S), ("new_customer_id", _S), ("merged_at", _TS),
                        ("linking_event_id", _S), ("kind", _S), ("as_of", _TS))
SPLITS_SCHEMA = _schema(("old_customer_id", _S), ("new_customer_id", _S), ("as_of", _TS))
RUNS_SCHEMA = _schema(
    ("logical_date", DateType()), ("as_of", _TS), ("mode", _S), ("reason", _S), ("silver_version", LongType()),
    ("config_fingerprint", _S), ("identity_map_version", LongType()), ("identity_edges_version", LongType()),
    ("identity_guardrails_version", LongType()), ("partitions_read", ArrayType(DateType())),
    ("identifiers", LongType()), ("customers", LongType()), ("edges", LongType()), ("shared_devices", LongType()),
    ("blocklisted", LongType()), ("merges", LongType()), ("splits", LongType()), ("cc_rounds", IntegerType()),
)

TABLES = ("silver.events", "gold.identity_map", "gold.identity_edges", "gold.identity_guardrails",
          "gold.identity_merges", "gold.identity_splits", "gold.identity_runs")


@dataclass
class State:
    """The identity tables as one run left them."""

    identity_map: DataFrame
    edges: DataFrame
    guardrails: DataFrame


@dataclass
class Resolution:
    identity_map: DataFrame
    edges: DataFrame
    guardrails: DataFrame  # without as_of
    devices: DataFrame  # shared devices (identifier_value, distinct_user_ids)
    compare_previous: DataFrame | None  # the previous map rows whose ids may have changed
    compare_new: DataFrame  # the new map rows to compare them with
    new_nodes: DataFrame
    new_linking_edges: DataFrame
    rounds: int


# ---- the resolution itself (pure: DataFrames in, DataFrames out) --------------------------------

def resolve(events: DataFrame, base: State | None, guardrails: Guardrails, checkpoint: Checkpoint,
            driver_max_edges: int = DRIVER_LABELS_MAX_EDGES, previous_map: DataFrame | None = None) -> Resolution:
    """New events (+ the previous state, if incremental) -> the new identity state.

    With `base`, `events` are the rows not yet seen by the base run (re-reading some old ones is
    harmless: every fact is a min, max or distinct pair). Without it, all events, and the ids of
    `previous_map` (the previous run's map, or the map as it stands when that run's state is gone)
    are kept as an incremental run keeps them (assign_customer_ids). A linking graph of at most
    `driver_max_edges` edges is labelled on the driver (core.identity_graph): the same labels.
    """
    facts = checkpoint(events.transform(identity_facts(guardrails)))
    new_nodes = nodes_from_facts(facts)
    new_edges = edges_from_facts(facts)
    if base is None:
        edges = new_edges
        blocked = blocked_from_facts(facts)
    else:
        edges = checkpoint(merge_edges(base.edges, new_edges))
        blocked = merge_seen(base.guardrails.where(F.col("reason") != REASON_SHARED_DEVICE), blocked_from_facts(facts))
    devices = checkpoint(shared_devices(edges, guardrails.shared_device_max_user_ids))
    new_linking = linking_edges(new_edges, devices)

    if base is None:
        keyed = new_nodes.withColumn("key", identifier_key(F.col("identifier_type"), F.col("identifier_value")))
        keyed_edges = new_linking.select(identifier_key(F.col("a_type"), F.col("a_value")).alias("src_key"),
                                         identifier_key(F.col("b_type"), F.col("b_value")).alias("dst_key"))
        components, rounds = components_by_key(keyed.select("key"), keyed_edges, checkpoint, driver_max_edges)
        identity_map = checkpoint(assign_customer_ids(keyed.join(components, "key"), previous_map))
        compare_previous = None
        compare_new = identity_map
    else:
        identity_map, compare_previous, compare_new, rounds = _resolve_incrementally(
            base, new_nodes, new_linking, devices, checkpoint, driver_max_edges)

    device_seen = identity_map.where(F.col("identifier_type") == DEVICE_TYPE).join(
        devices, "identifier_value").select(
        "identifier_type", "identifier_value", F.lit(REASON_SHARED_DEVICE).alias("reason"), "distinct_user_ids",
        "first_seen", "last_seen")
    guardrail_rows = blocked.select(
        "identifier_type", "identifier_value", "reason", F.lit(None).cast("long").alias("distinct_user_ids"),
        "first_seen", "last_seen",
    ).unionByName(device_seen)
    return Resolution(identity_map, edges, guardrail_rows, devices, compare_previous, compare_new, new_nodes,
                      new_linking, rounds)


def _resolve_incrementally(base: State, new_nodes: DataFrame, new_linking: DataFrame, devices: DataFrame,
                           checkpoint: Checkpoint, driver_max_edges: int
                           ) -> tuple[DataFrame, DataFrame, DataFrame, int]:
    """Recompute only the components the new rows touch.

    A previous component becomes one node ("c:<customer_id>"): it is still connected, because
    its linking edges remain (edges only disappear when a device inside it becomes shared). A
    component holding a device that has just become shared is split back into its identifiers
    with their stored edges, minus the device's. New identifiers are nodes of their own.
    """
    known_devices = base.guardrails.where(F.col("reason") == REASON_SHARED_DEVICE).select("identifier_value")
    newly_shared = devices.select("identifier_value").join(known_devices, "identifier_value", "left_anti").select(
        F.lit(DEVICE_TYPE).alias("identifier_type"), "identifier_value", F.lit(True).alias("newly_shared"))
    sightings = new_nodes.select("identifier_type", "identifier_value", F.col("first_seen").alias("new_first"),
                                 F.col("last_seen").alias("new_last"))
    own_key = identifier_key(F.col("identifier_type"), F.col("identifier_value"))
    # One pass over the previous map with the new sightings beside it. A previous customer is
    # touched when one of its identifiers was seen again or a device in it has just become shared;
    # a brand-new identifier (no customer yet) is touched and its own group.
    component = Window.partitionBy(F.coalesce(F.col("customer_id"), own_key))
    annotated = checkpoint(
        base.identity_map.join(sightings, ["identifier_type", "identifier_value"], "full_outer")
        .join(F.broadcast(newly_shared), ["identifier_type", "identifier_value"], "left")
        .withColumn("split", F.max(F.coalesce("newly_shared", F.lit(False))).over(component))
        .withColumn("touched", F.col("split") | F.max(F.col("new_first").isNotNull()).over(component))
    )
    # own_node: the identifier is a node of its own (new, or in a component being split); the others
    # stand for their whole previous component.
    affected = checkpoint(
        annotated.where("touched").select(
            "identifier_type", "identifier_value",
            F.when(F.col("customer_id").isNull() | F.col("split"), own_key)
            .otherwise(customer_key(F.col("customer_id"))).alias("key"),
            (F.col("customer_id").isNull() | F.col("split")).alias("own_node"),
            F.least("first_seen", "new_first").alias("first_seen"),
            F.greatest("last_seen", "new_last").alias("last_seen"),
        )
    )

    def keyed(edges: DataFrame) -> DataFrame:
        key_of = affected.select("identifier_type", "identifier_value", "key")
        return (
            edges.join(key_of.withColumnsRenamed({"identifier_type": "a_type", "identifier_value": "a_value",
                                                  "key": "src_key"}), ["a_type", "a_value"])
            .join(key_of.withColumnsRenamed({"identifier_type": "b_type", "identifier_value": "b_value",
                                             "key": "dst_key"}), ["b_type", "b_value"])
            .select("src_key", "dst_key")
        )

    graph_edges = keyed(new_linking)
    if not annotated.where("split").isEmpty():
        split_members = affected.where("own_node").select(F.col("identifier_type").alias("a_type"),
                                                          F.col("identifier_value").alias("a_value"))
        kept_inside = linking_edges(base.edges, devices).join(split_members, ["a_type", "a_value"], "left_semi")
        graph_edges = graph_edges.unionByName(keyed(kept_inside))
    components, rounds = components_by_key(affected.select("key"), graph_edges, checkpoint, driver_max_edges)
    # The touched previous customers, whole: the ids the changed components may keep.
    compare_previous = annotated.where(F.col("touched") & F.col("customer_id").isNotNull()).select(
        *IDENTITY_MAP_SCHEMA.fieldNames())
    changed = checkpoint(assign_customer_ids(affected.join(components, "key"), compare_previous))
    unchanged = annotated.where(~F.col("touched")).select(*IDENTITY_MAP_SCHEMA.fieldNames())
    return unchanged.unionByName(changed), compare_previous, changed, rounds


# ---- the job -------------------------------------------------------------------------------------

def _read_state(spark: SparkSession, paths: dict[str, str], versions: dict[str, int]) -> State:
    edges = read_version(spark, paths["gold.identity_edges"], versions["gold.identity_edges"])
    return State(
        read_version(spark, paths["gold.identity_map"], versions["gold.identity_map"]),
        edges.select(*[c for c in EDGES_SCHEMA.fieldNames() if c != "as_of"]),
        read_version(spark, paths["gold.identity_guardrails"], versions["gold.identity_guardrails"]),
    )


def _choose_mode(spark: SparkSession, paths: dict[str, str], base: BaseRun | None, fingerprint: str,
                 silver_version: int, logical_date: dt.date, full_rebuild: bool) -> Increment:
    if full_rebuild:
        return Increment(None, "full rebuild requested")
    if base is None:
        return Increment(None, "no previous run")
    if base.config_fingerprint != fingerprint:
        return Increment(None, "guardrail settings or state version changed")
    return plan_increment(spark, paths["silver.events"], base, silver_version, logical_date)


def run(spark: SparkSession, settings: Settings, logical_date: dt.date, full_rebuild: bool = False) -> dict:
    paths = {name: table_path(name, settings) for name in TABLES}
    if not is_delta(spark, paths["silver.events"]):
        raise RuntimeError(f"silver.events not found at {paths['silver.events']}: run the ingest first")
    guardrails = Guardrails.from_settings(settings.identity)
    fingerprint = config_fingerprint(guardrails)
    as_of = as_of_for(logical_date)
    # Pinned: a concurrent ingest commit is never half-read, and the next run diffs from here.
    silver_version = latest_version(spark, paths["silver.events"])
    silver = read_version(spark, paths["silver.events"], silver_version).where(F.col("event_ts") < F.lit(as_of))

    runs = run_log(spark, paths["gold.identity_runs"])
    base = previous_run(runs, logical_date)
    increment = _choose_mode(spark, paths, base, fingerprint, silver_version, logical_date,
                             full_rebuild or settings.identity.full_rebuild)
    previous_state = None
    if base is not None:
        versions = locate_state(paths, base)
        if versions is not None:
            previous_state = _read_state(spark, paths, versions)
        else:  # vacuumed, replaced, or written by a run that did not finish: rebuild from silver
            increment = Increment(None, "previous state not found")
    # The ids to keep: the previous run's map; without its state, the map as it stands (a rerun
    # after an erasure's VACUUM, a date re-staged on an object store), so that no id is minted
    # anew because the history it came from is gone. None only before any map exists.
    if previous_state is not None:
        previous_map = previous_state.identity_map
    elif is_delta(spark, paths["gold.identity_map"]):
        previous_map = read_version(spark, paths["gold.identity_map"], latest_version(spark, paths["gold.identity_map"]))
    else:
        previous_map = None

    events = silver if increment.full else silver.where(F.col("event_date").isin(increment.dates))
    scratch = f"{settings.lake_uri}/_scratch/identity"
    with LakeCheckpointer(spark, scratch, local=local_checkpoints(spark, settings.identity.checkpoint)) as checkpoint:
        result = resolve(events, None if increment.full else previous_state, guardrails, checkpoint,
                         settings.identity.driver_labels_max_edges, previous_map)
        guardrail_rows = result.guardrails.withColumn("as_of", F.lit(as_of))
        this_run = f"as_of = TIMESTAMP'{as_of:%Y-%m-%d %H:%M:%S}'"

        changes = {"merges": 0, "splits": 0}
        # A rerun of D whose previous state is gone (VACUUM; a re-staged object-store lake) has only
        # the map as it stands to compare with. The slices D's earlier run logged against D-1's
        # state stay; when the state as it stands is D's own earlier output (its rows and as-of, as
        # the run log recorded them), what the rerun changes against it (a late event's merge) is
        # logged beside them. Against another date's map the diff would be that date's: none then.
        rerun_without_state = (base is not None and previous_state is None
                               and any(row["logical_date"] == logical_date for row in runs))
        own_output = rerun_without_state and locate_state(
            paths, previous_run(runs, logical_date + dt.timedelta(days=1)), current_only=True) is not None
        diff = previous_map is not None and (not rerun_without_state or own_output)
        frames = {}
        if diff:
            compare_previous = result.compare_previous
            if compare_previous is None:
                compare_previous = previous_map
            retired_ids, split_ids = id_changes(compare_previous, result.compare_new)
            frames["merges"] = (linking_events(retired_ids, compare_previous, result.compare_new,
                                               result.new_linking_edges, result.new_nodes)
                                .withColumn("as_of", F.lit(as_of)))
            frames["splits"] = split_ids.withColumn("as_of", F.lit(as_of))
        for name, schema in (("merges", MERGES_SCHEMA), ("splits", SPLITS_SCHEMA)):
            path = paths[f"gold.identity_{name}"]
            logged = (spark.read.format("delta").load(path).where(this_run).select(*schema.fieldNames())
                      if rerun_without_state and is_delta(spark, path) else None)
            if name not in frames:
                changes[name] = logged.count() if logged is not None else 0
                continue
            frame = frames[name].select(*schema.fieldNames())
            if logged is not None:
                frame = logged.unionByName(frame).dropDuplicates(["old_customer_id", "new_customer_id"])
            frame = checkpoint(frame)  # materialised before the slice it may read is replaced
            changes[name] = frame.count()
            if changes[name] or is_delta(spark, path):  # an empty slice still replaces a rerun's rows
                write_slice(frame, path, schema, f"gold.identity_{name}", this_run)

        edges = write_snapshot(result.edges.withColumn("as_of", F.lit(as_of)), paths["gold.identity_edges"],
                               EDGES_SCHEMA, "gold.identity_edges")
        identity_map = write_snapshot(result.identity_map, paths["gold.identity_map"], IDENTITY_MAP_SCHEMA,
                                      "gold.identity_map")
        guardrail_written = write_snapshot(guardrail_rows, paths["gold.identity_guardrails"], GUARDRAILS_SCHEMA,
                                           "gold.identity_guardrails")
        shared = result.devices.count()
        summary = {
            "mode": "full" if increment.full else "incremental",
            "reason": increment.reason,
            "silver_version": silver_version,
            "identifiers": identity_map.rows,
            "customers": result.identity_map.select("customer_id").distinct().count(),
            "edges": edges.rows,
            "shared_devices": shared,
            "blocklisted": guardrail_written.rows - shared,
            **changes,
            "cc_rounds": result.rounds,
            "identity_map_version": identity_map.version,
            "identity_edges_version": edges.version,
            "identity_guardrails_version": guardrail_written.version,
        }
    run_row = {"logical_date": logical_date, "as_of": as_of, "config_fingerprint": fingerprint,
               "partitions_read": increment.dates, **summary}
    write_slice(spark.createDataFrame([tuple(run_row[f] for f in RUNS_SCHEMA.fieldNames())], RUNS_SCHEMA),
                paths["gold.identity_runs"], RUNS_SCHEMA, "gold.identity_runs",
                f"logical_date = DATE'{logical_date.isoformat()}'")
    partitions = None if increment.full else [d.isoformat() for d in increment.dates]
    return {"as_of": as_of.isoformat(), "partitions_read": partitions, **summary}


def published_identity_map(spark: SparkSession, settings: Settings) -> DataFrame:
    """The speed layer's lookup: the current gold.identity_map (replaced atomically by each run or publish)."""
    path = table_path("gold.identity_map", settings)
    return read_version(spark, path, latest_version(spark, path))
