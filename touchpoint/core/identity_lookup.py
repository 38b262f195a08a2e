"""Resolve events to customers through gold.identity_map (BRIEF §4, §5).

Shared by every batch job and the speed layer. All non-held-back identifiers of one event
belong to one component, so any of them gives the same customer; a shared device is held
back from linking and has its own customer, so it is consulted last: an event carrying it
plus other identifiers belongs to the customer of those others.
"""

from __future__ import annotations

from typing import Callable, Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# Precedence of identifier types when resolving an event's customer.
IDENTIFIER_PRECEDENCE = ("user_id", "email", "phone", "anonymous_id")
CUSTOMER_ID_PREFIX = "cus_"
# "All-zero" ids (BRIEF §5): only 0 - + _ and spaces, with at least one 0.
ALL_ZERO_PATTERN = r"^[0\-+_ ]*0[0\-+_ ]*$"
REASON_BLOCKLIST, REASON_ALL_ZERO = "blocklist", "all_zero"
# Up to this many identifiers a batch job looks the map up broadcast (attach_customer_id): some
# 100-300 MB of hash tables on the driver and each executor.
BROADCAST_MAP_MAX_IDENTIFIERS = 2_000_000


def held_back_reason(value: Column, blocklist: Iterable[str]) -> Column:
    """'blocklist' / 'all_zero' for a value treated as absent, else null (case-insensitive, any type;
    `blocklist` holds trimmed lower-case values). One rule for the batch guardrails and the speed
    layer's links."""
    listed = list(blocklist)
    in_list = F.lower(F.trim(value)).isin(listed) if listed else F.lit(False)
    return F.when(in_list, F.lit(REASON_BLOCKLIST)).when(value.rlike(ALL_ZERO_PATTERN), F.lit(REASON_ALL_ZERO))


def customer_id_of(identifier_type: Column, identifier_value: Column) -> Column:
    """Deterministic customer id from a component's anchor identifier (128 bits of SHA-256): the
    batch identity mints ids with it; the speed layer finds a published customer's origin by it."""
    digest = F.sha2(F.concat_ws(":", F.lit("touchpoint-customer-v1"), identifier_type, identifier_value), 256)
    return F.concat(F.lit(CUSTOMER_ID_PREFIX), F.substring(digest, 1, 32))


def event_identifiers(events: DataFrame, key: str = "event_id") -> DataFrame:
    """(key, identifier_type, identifier_value, precedence) for every non-empty identifier of each event."""
    pairs = F.array(*[
        F.struct(F.lit(kind).alias("identifier_type"), F.col(kind).alias("identifier_value"),
                 F.lit(rank).alias("precedence"))
        for rank, kind in enumerate(IDENTIFIER_PRECEDENCE)
    ])
    return (
        events.select(F.col(key), F.explode(pairs).alias("identifier"))
        .select(key, "identifier.*")
        .where(F.col("identifier_value").isNotNull() & (F.length("identifier_value") > 0))
    )


def attach_customer_id(identity_map: DataFrame, key: str = "event_id",
                       broadcast: bool = False) -> Callable[[DataFrame], DataFrame]:
    """Add `customer_id` (null when no identifier is in the map) to a DataFrame of events.

    `broadcast=True` looks each identifier column up in the map broadcast (one hash probe per
    event and type, no shuffle): for a map small enough to hold in memory on every executor. By
    default the events' identifiers are joined with the map and grouped back per event (three
    shuffles of the events, any map size). Both give the same customer_id (the map holds each
    identifier once)."""

    def transform(events: DataFrame) -> DataFrame:
        lookup = identity_map.select("identifier_type", "identifier_value", "customer_id")
        if broadcast:
            return events.transform(_probe_each_type(lookup)).select(
                key, *[c for c in events.columns if c != key], "customer_id")
        resolved = (
            event_identifiers(events, key)
            .join(lookup, ["identifier_type", "identifier_value"])
            .groupBy(key)
            .agg(F.min_by("customer_id", "precedence").alias("customer_id"))
        )
        return events.join(resolved, key, "left")

    return transform


def carrier_flag(identifiers: DataFrame, flag: str) -> Callable[[DataFrame], DataFrame]:
    """Events -> events with a boolean column `flag`: whether the event carries (present) one of
    `identifiers` (identifier_type, identifier_value), each type probed in a broadcast slice as
    attach_customer_id's broadcast path does; `identifiers` must fit a broadcast.

    An event resolves to the customer of one of its identifiers, so every event of some customers
    carries one of those customers' identifiers: flagging by them narrows a scan to a superset of
    those customers' events before the costlier resolution, and resolving that superset loses none."""

    def transform(events: DataFrame) -> DataFrame:
        # Each identifier once: a repeated one would repeat the events carrying it.
        marks = (identifiers.select("identifier_type", "identifier_value")
                 .dropDuplicates(["identifier_type", "identifier_value"]).withColumn(flag, F.lit(True)))
        return events.transform(_probe_each_type(marks, flag)).withColumn(flag, F.col(flag).isNotNull())

    return transform


def _probe_each_type(lookup: DataFrame, value: str = "customer_id") -> Callable[[DataFrame], DataFrame]:
    """Events -> events with the lookup's `value` column (customer_id by default): the value of the
    first identifier, in precedence order, that is present and in the lookup; each type looked up
    in its own broadcast slice of the lookup."""
    def transform(events: DataFrame) -> DataFrame:
        found = events
        for kind in IDENTIFIER_PRECEDENCE:
            side = F.broadcast(lookup.where(F.col("identifier_type") == kind).select(
                F.col("identifier_value").alias(f"_{kind}_value"), F.col(value).alias(f"_{kind}_found")))
            found = found.join(side, is_present(found[kind]) & (found[kind] == side[f"_{kind}_value"]), "left")
        return found.select(*events.columns, F.coalesce(*[F.col(f"_{kind}_found") for kind in IDENTIFIER_PRECEDENCE])
                            .alias(value))

    return transform


def is_present(value: Column) -> Column:
    return value.isNotNull() & (F.length(value) > 0)
