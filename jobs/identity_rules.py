"""Pure transforms of identity resolution (BRIEF §5): guardrails, graph facts, components, stable ids.

Nothing here reads or writes a table; jobs/identity.py wires these to the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from touchpoint.core.identity_lookup import customer_id_of, held_back_reason, is_present

# Sorted in code-point order: the order of (first_seen, identifier_type, identifier_value) tie-breaks
# and of the two ends of a stored edge.
IDENTIFIER_TYPES = ("anonymous_id", "email", "phone", "user_id")
DEVICE_TYPE, USER_TYPE = "anonymous_id", "user_id"

REASON_SHARED_DEVICE = "shared_device"


@dataclass(frozen=True)
class Guardrails:
    blocklist: tuple[str, ...]
    shared_device_max_user_ids: int

    @classmethod
    def from_settings(cls, identity_settings) -> "Guardrails":
        listed = tuple(sorted({value.strip().lower() for value in identity_settings.blocklist}))
        return cls(listed, identity_settings.shared_device_max_user_ids)


def anchor_order(first_seen: Column, identifier_type: Column, identifier_value: Column) -> Column:
    """The component's anchor is its smallest identifier by (first_seen, identifier_type, identifier_value)."""
    return F.struct(first_seen.alias("first_seen"), identifier_type.alias("identifier_type"),
                    identifier_value.alias("identifier_value"))


# ---- facts from events -------------------------------------------------------------------------

FACT_COLUMNS = ("kind", "a_type", "a_value", "b_type", "b_value", "reason", "first_ts", "first_event_id", "last_ts")


def identity_facts(guardrails: Guardrails) -> Callable[[DataFrame], DataFrame]:
    """Events -> one row per identifier ('node') and per co-occurring usable pair ('edge').

    Nodes carry `reason` when blocklisted; edges link only usable (not blocklisted) identifiers,
    with a_type < b_type. Each fact has its first event (by event_ts, event_id) and last event_ts.
    One pass over the events, one shuffle.
    """

    def transform(events: DataFrame) -> DataFrame:
        reasons = {t: held_back_reason(F.col(t), guardrails.blocklist) for t in IDENTIFIER_TYPES}
        usable = {t: F.when(is_present(F.col(t)) & reasons[t].isNull(), F.col(t)) for t in IDENTIFIER_TYPES}
        none = F.lit(None).cast("string")
        facts = [
            F.when(is_present(F.col(t)), F.struct(F.lit("node").alias("kind"), F.lit(t).alias("a_type"),
                                                  F.col(t).alias("a_value"), none.alias("b_type"),
                                                  none.alias("b_value"), reasons[t].alias("reason")))
            for t in IDENTIFIER_TYPES
        ] + [
            F.when(usable[a].isNotNull() & usable[b].isNotNull(),
                   F.struct(F.lit("edge").alias("kind"), F.lit(a).alias("a_type"), usable[a].alias("a_value"),
                            F.lit(b).alias("b_type"), usable[b].alias("b_value"), none.alias("reason")))
            for a, b in combinations(IDENTIFIER_TYPES, 2)
        ]
        exploded = events.select(
            "event_id", "event_ts", F.explode(F.filter(F.array(*facts), lambda fact: fact.isNotNull())).alias("fact")
        ).select("event_id", "event_ts", "fact.*")
        return (
            exploded.groupBy("kind", "a_type", "a_value", "b_type", "b_value", "reason")
            .agg(F.min(F.struct("event_ts", "event_id")).alias("first"), F.max("event_ts").alias("last_ts"))
            .select("kind", "a_type", "a_value", "b_type", "b_value", "reason",
                    F.col("first.event_ts").alias("first_ts"), F.col("first.event_id").alias("first_event_id"),
                    "last_ts")
        )

    return transform


def nodes_from_facts(facts: DataFrame) -> DataFrame:
    """(identifier_type, identifier_value, first_seen, last_seen, first_event_id) of usable identifiers."""
    return facts.where((F.col("kind") == "node") & F.col("reason").isNull()).select(
        F.col("a_type").alias("identifier_type"), F.col("a_value").alias("identifier_value"),
        F.col("first_ts").alias("first_seen"), F.col("last_ts").alias("last_seen"), "first_event_id",
    )


def blocked_from_facts(facts: DataFrame) -> DataFrame:
    """(identifier_type, identifier_value, reason, first_seen, last_seen) of blocklisted values."""
    return facts.where((F.col("kind") == "node") & F.col("reason").isNotNull()).select(
        F.col("a_type").alias("identifier_type"), F.col("a_value").alias("identifier_value"), "reason",
        F.col("first_ts").alias("first_seen"), F.col("last_ts").alias("last_seen"),
    )


def edges_from_facts(facts: DataFrame) -> DataFrame:
    """(a_type, a_value, b_type, b_value, first_event_ts, first_event_id) of co-occurring usable pairs."""
    return facts.where(F.col("kind") == "edge").select(
        "a_type", "a_value", "b_type", "b_value", F.col("first_ts").alias("first_event_ts"), "first_event_id",
    )


# ---- merging state -----------------------------------------------------------------------------

def merge_seen(*frames: DataFrame) -> DataFrame:
    """Union of (identifier_type, identifier_value, first_seen, last_seen[, reason]) rows, min/max per identifier."""
    keys = ["identifier_type", "identifier_value"] + (["reason"] if "reason" in frames[0].columns else [])
    union = frames[0].select(*keys, "first_seen", "last_seen")
    for frame in frames[1:]:
        union = union.unionByName(frame.select(*keys, "first_seen", "last_seen"))
    return union.groupBy(*keys).agg(F.min("first_seen").alias("first_seen"), F.max("last_seen").alias("last_seen"))


def merge_edges(*frames: DataFrame) -> DataFrame:
    """Union of edge rows, keeping each pair's earliest (first_event_ts, first_event_id)."""
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return (
        union.groupBy("a_type", "a_value", "b_type", "b_value")
        .agg(F.min(F.struct("first_event_ts", "first_event_id")).alias("first"))
        .select("a_type", "a_value", "b_type", "b_value", "first.first_event_ts", "first.first_event_id")
    )


def shared_devices(edges: DataFrame, max_user_ids: int) -> DataFrame:
    """(identifier_value, distinct_user_ids) of anonymous_ids linked to more than N distinct user_ids."""
    return (
        edges.where((F.col("a_type") == DEVICE_TYPE) & (F.col("b_type") == USER_TYPE))
        .groupBy(F.col("a_value").alias("identifier_value"))
        .agg(F.count(F.lit(1)).alias("distinct_user_ids"))  # edges are distinct pairs
        .where(F.col("distinct_user_ids") > max_user_ids)
    )


def linking_edges(edges: DataFrame, devices: DataFrame) -> DataFrame:
    """Edges that link: those not touching a shared device."""
    device_keys = devices.select(F.lit(DEVICE_TYPE).alias("t"), F.col("identifier_value").alias("v"))
    return (
        edges.join(device_keys, (F.col("a_type") == F.col("t")) & (F.col("a_value") == F.col("v")), "left_anti")
        .join(device_keys, (F.col("b_type") == F.col("t")) & (F.col("b_value") == F.col("v")), "left_anti")
    )


# ---- components and ids ------------------------------------------------------------------------

def assign_customer_ids(members: DataFrame, previous_map: DataFrame | None = None) -> DataFrame:
    """(identifier_type, identifier_value, first_seen, last_seen, component) -> identity_map rows.

    An id is minted from one identifier, its origin: "cus_" + a hash of it (customer_id_of). With no
    previous map, each component's id is minted from its anchor: its identifier with the smallest
    (first_seen, identifier_type, identifier_value). With `previous_map` (the rows of the previous
    run's map for the identifiers of `members`, whole previous customers), a component keeps a
    previous id whose origin it holds, so an id stays while its component only grows, late data
    included (BRIEF §5); when it holds several (a merge), the oldest survives: the customer first
    seen first (its first_seen in the previous map), ties by its origin. A component holding no
    origin (new, or the part of a split without it) takes its anchor's id.
    """
    anchors = members.groupBy("component").agg(
        F.min(anchor_order(F.col("first_seen"), F.col("identifier_type"), F.col("identifier_value"))).alias("anchor")
    ).select("component", customer_id_of(F.col("anchor.identifier_type"), F.col("anchor.identifier_value"))
             .alias("anchor_id"))
    if previous_map is None:
        ids = anchors.select("component", F.col("anchor_id").alias("customer_id"))
    else:
        since = previous_map.groupBy(F.col("customer_id").alias("previous_id")).agg(F.min("first_seen").alias("since"))
        survivors = (
            members.join(id_origins(previous_map), ["identifier_type", "identifier_value"])
            .join(since, "previous_id")
            .groupBy("component")
            .agg(F.min(F.struct("since", "identifier_type", "identifier_value", "previous_id")).alias("oldest"))
            .select("component", F.col("oldest.previous_id").alias("survivor_id"))
        )
        ids = anchors.join(survivors, "component", "left").select(
            "component", F.coalesce("survivor_id", "anchor_id").alias("customer_id"))
    return members.join(ids, "component").select(
        "identifier_type", "identifier_value", "customer_id", "first_seen", "last_seen"
    )


def id_origins(identity_map: DataFrame) -> DataFrame:
    """(identifier_type, identifier_value, previous_id): each id's origin, the identifier it was minted from."""
    return identity_map.where(
        customer_id_of(F.col("identifier_type"), F.col("identifier_value")) == F.col("customer_id")
    ).select("identifier_type", "identifier_value", F.col("customer_id").alias("previous_id"))


def identifier_key(identifier_type: Column, identifier_value: Column) -> Column:
    return F.concat(F.lit("i:"), identifier_type, F.lit(":"), identifier_value)


def customer_key(customer_id: Column) -> Column:
    return F.concat(F.lit("c:"), customer_id)


# ---- what changed since the previous map ---------------------------------------------------------

def id_changes(previous_map: DataFrame, new_map: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Compare the previous identity map (or the part of it that may have changed) with the new one.

    Returns (retired, splits):
    - retired: (old_customer_id, new_customer_id, kind) for every previous id that no longer
      exists. kind 'merge': it follows its origin (the identifier it was minted from) to the
      origin's new customer; a new map assigned from this previous map (assign_customer_ids) drops
      an id whose origin it still holds only when the origin's component kept an older one.
      kind 'origin_removed': its origin is no longer in the map (a blocklist that now names it, or
      every event of it deleted from silver), so no component can keep the id; one row for each new
      customer of its remaining identifiers, none when nothing of it remains (a person forgotten whole).
      (Before ids were kept, late data could move an id without a merge: kind 'rekey' in old logs.)
    - splits: (old_customer_id, new_customer_id) for each part of a previous customer that no longer
      holds its origin (a device became shared and stopped linking) while the id lives on.
    """
    joined = previous_map.select(
        "identifier_type", "identifier_value", F.col("customer_id").alias("old_customer_id")
    ).join(new_map.select("identifier_type", "identifier_value", F.col("customer_id").alias("new_customer_id")),
           ["identifier_type", "identifier_value"])
    # where each previous id's origin is now
    origin_now = id_origins(previous_map).join(
        joined.select("identifier_type", "identifier_value", F.col("new_customer_id").alias("origin_customer_id")),
        ["identifier_type", "identifier_value"],
    ).select(F.col("previous_id").alias("old_customer_id"), "origin_customer_id")
    merged = origin_now.where(F.col("origin_customer_id") != F.col("old_customer_id")).select(
        "old_customer_id", F.col("origin_customer_id").alias("new_customer_id"), F.lit("merge").alias("kind"))
    origin_removed = (
        joined.join(origin_now, "old_customer_id", "left_anti")
        .where(F.col("new_customer_id") != F.col("old_customer_id"))
        .select("old_customer_id", "new_customer_id", F.lit("origin_removed").alias("kind")).distinct()
    )
    retired = merged.unionByName(origin_removed)
    splits = (
        joined.select("old_customer_id", "new_customer_id").distinct()
        .join(origin_now, "old_customer_id")
        .where(F.col("new_customer_id") != F.col("origin_customer_id"))
        .select("old_customer_id", "new_customer_id")
    )
    return retired, splits


def linking_events(retired: DataFrame, previous_map: DataFrame, new_map: DataFrame, new_edges: DataFrame,
                   new_nodes: DataFrame) -> DataFrame:
    """Add (merged_at, linking_event_id) to retired ids.

    The linking event of a retired id is the earliest (event_ts, event_id) edge of this run that
    links one of its identifiers to an identifier outside it in its new component. A rekey without
    such an edge is caused by an earlier sighting of an identifier: its linking event is the first
    event of the new anchor.
    """
    old_of = previous_map.select("identifier_type", "identifier_value", F.col("customer_id").alias("old"))
    new_of = new_map.select("identifier_type", "identifier_value", F.col("customer_id").alias("new"))

    def ends(side: str) -> DataFrame:
        cols = {"identifier_type": f"{side}_type", "identifier_value": f"{side}_value"}
        return (old_of.join(new_of, ["identifier_type", "identifier_value"], "right")
                .select(*[F.col(k).alias(v) for k, v in cols.items()], F.col("old").alias(f"{side}_old"),
                        F.col("new").alias(f"{side}_new")))

    crossing = (
        new_edges.join(ends("a"), ["a_type", "a_value"]).join(ends("b"), ["b_type", "b_value"])
        .where((F.col("a_new") == F.col("b_new")) & ~F.col("a_old").eqNullSafe(F.col("b_old")))
    )
    first_crossing = (
        crossing.select(F.col("a_old").alias("old_customer_id"), "first_event_ts", "first_event_id")
        .unionByName(crossing.select(F.col("b_old").alias("old_customer_id"), "first_event_ts", "first_event_id"))
        .where(F.col("old_customer_id").isNotNull())
        .groupBy("old_customer_id").agg(F.min(F.struct("first_event_ts", "first_event_id")).alias("edge"))
    )
    anchor_first = (
        new_map.groupBy("customer_id").agg(
            F.min(anchor_order(F.col("first_seen"), F.col("identifier_type"), F.col("identifier_value"))).alias("a"))
        .join(new_nodes.select(
            F.col("identifier_type").alias("t"), F.col("identifier_value").alias("v"),
            F.struct(F.col("first_seen").alias("first_event_ts"), "first_event_id").alias("sighting")),
              (F.col("a.identifier_type") == F.col("t")) & (F.col("a.identifier_value") == F.col("v")))
        .select(F.col("customer_id").alias("new_customer_id"), "sighting")
    )
    linked = (
        retired.join(first_crossing, "old_customer_id", "left").join(anchor_first, "new_customer_id", "left")
        .withColumn("link", F.coalesce("edge", "sighting"))
    )
    return linked.select("old_customer_id", "new_customer_id", F.col("link.first_event_ts").alias("merged_at"),
                         F.col("link.first_event_id").alias("linking_event_id"), "kind")
