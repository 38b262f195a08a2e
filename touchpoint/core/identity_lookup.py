"""Resolve events to customers through gold.identity_map (BRIEF §4, §5).

Shared by every batch job and the speed layer. All non-held-back identifiers of one event
belong to one component, so any of them gives the same customer; a shared device is held
back from linking and has its own customer, so it is consulted last: an event carrying it
plus other identifiers belongs to the customer of those others.
"""

from __future__ import annotations

from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# Precedence of identifier types when resolving an event's customer.
IDENTIFIER_PRECEDENCE = ("user_id", "email", "phone", "anonymous_id")


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


def attach_customer_id(identity_map: DataFrame, key: str = "event_id") -> Callable[[DataFrame], DataFrame]:
    """Add `customer_id` (null when no identifier is in the map) to a DataFrame of events."""

    def transform(events: DataFrame) -> DataFrame:
        lookup = identity_map.select("identifier_type", "identifier_value", "customer_id")
        resolved = (
            event_identifiers(events, key)
            .join(lookup, ["identifier_type", "identifier_value"])
            .groupBy(key)
            .agg(F.min_by("customer_id", "precedence").alias("customer_id"))
        )
        return events.join(resolved, key, "left")

    return transform


def is_present(value: Column) -> Column:
    return value.isNotNull() & (F.length(value) > 0)
