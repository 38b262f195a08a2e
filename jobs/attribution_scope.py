"""Which customers an incremental attribution run has to re-derive, as pure transforms.

Between two runs a customer's touchpoints, and a conversion, can change only through:
- a silver event that was inserted, deleted or updated (silver's change data feed), or that crossed
  the as-of (event_ts between the previous run's as-of and this one's): the *changed events*;
- an identifier whose customer changed, appeared or disappeared in gold.identity_map.

The *changed customers* are the customers of the changed events (under the current map) and the
old and new customers of the changed identifiers. Every other customer has the same events and the
same identifiers as at the last run, hence the same touchpoints, so the run re-derives only the
*events in scope*: every event of a changed customer, every changed event, every event carrying a
changed identifier, and every order event sharing an order id with one of those (a conversion is
the earliest of all the events of its order id, whoever's they are). docs/ATTRIBUTION.md has the
argument in full.
"""

from __future__ import annotations

from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from touchpoint.core.identity_lookup import IDENTIFIER_PRECEDENCE, carrier_flag

IDENTIFIER_KEY = ["identifier_type", "identifier_value"]
# What a changed event must carry to find its customer and its order id.
CHANGED_EVENT_COLUMNS = ("event_id", "event_type", "order_id", *IDENTIFIER_PRECEDENCE)


def identity_changes(previous_map: DataFrame, current_map: DataFrame) -> DataFrame:
    """Identifiers whose customer differs between two versions of gold.identity_map (appeared and
    disappeared identifiers included): identifier_type, identifier_value, previous_customer_id,
    customer_id."""
    previous = previous_map.select(*IDENTIFIER_KEY, F.col("customer_id").alias("previous_customer_id"))
    current = current_map.select(*IDENTIFIER_KEY, "customer_id")
    return (previous.join(current, IDENTIFIER_KEY, "full")
            .where(~F.col("previous_customer_id").eqNullSafe(F.col("customer_id"))))


def changed_customers(changes: DataFrame, changed_events_resolved: DataFrame) -> DataFrame:
    """customer_id of every customer an identifier left or joined, or a changed event belongs to."""
    return (
        changes.select(F.col("previous_customer_id").alias("customer_id"))
        .unionByName(changes.select("customer_id"))
        .unionByName(changed_events_resolved.select("customer_id"))
        .where(F.col("customer_id").isNotNull())
        .distinct()
    )


def scope_identifiers(current_map: DataFrame, customers: DataFrame, changes: DataFrame) -> DataFrame:
    """The identifiers whose events are in scope: all of the changed customers' (current map) and
    the changed identifiers themselves (a disappeared one is in no customer's)."""
    return (
        current_map.join(customers, "customer_id", "left_semi").select(*IDENTIFIER_KEY)
        .unionByName(changes.select(*IDENTIFIER_KEY))
        .distinct()
    )


def order_key() -> Column:
    """The conversion_id an event is an order of (its trimmed order id, as
    attribution_models.conversions keys them), null for any other event."""
    order_id = F.trim(F.col("order_id"))
    return F.when((F.col("event_type") == "order") & (F.length(order_id) > 0), order_id)


# Set on a scope candidate that is in scope by itself (scope_candidates).
SEED_FLAG = "_scope_seed"


def scope_candidates(identifiers: DataFrame, changed_events: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Relevant silver events -> every event that can be in scope, with a boolean `SEED_FLAG`: true
    for those in scope by themselves (carrying an identifier in `identifiers`, or changed). The others
    are order events with an order id: whether theirs is in scope is known only from the seeds.

    One scan of the events, by broadcast probes (`identifiers` and the changed events must fit a
    broadcast); scope_seeds and events_in_scope read the kept result, not silver again."""

    def transform(events: DataFrame) -> DataFrame:
        changed_ids = F.broadcast(changed_events.select("event_id", F.lit(True).alias("_changed")).distinct())
        return (events.transform(carrier_flag(identifiers, SEED_FLAG))
                .join(changed_ids, "event_id", "left")
                .withColumn(SEED_FLAG, F.col(SEED_FLAG) | F.col("_changed").isNotNull())
                .where(F.col(SEED_FLAG) | order_key().isNotNull())
                .drop("_changed"))

    return transform


def scope_seeds(changed_events: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Scope candidates -> (event_id, conversion_id) of the events in scope by themselves: the
    flagged candidates and the changed events (deleted ones included). The result is small."""

    def transform(candidates: DataFrame) -> DataFrame:
        return (candidates.where(F.col(SEED_FLAG)).select("event_id", order_key().alias("conversion_id"))
                .unionByName(changed_events.select("event_id", order_key().alias("conversion_id"))).distinct())

    return transform


def scope_conversion_ids(seeds: DataFrame) -> DataFrame:
    """conversion_id of every order id in scope."""
    return seeds.where(F.col("conversion_id").isNotNull()).select("conversion_id").distinct()


def events_in_scope(seeds: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Scope candidates -> the events in scope, without the flag: the seeds, and every order event of
    an order id in scope (a conversion is the earliest of all its order id's events)."""

    def transform(candidates: DataFrame) -> DataFrame:
        order_ids = scope_conversion_ids(seeds).select(F.col("conversion_id").alias("_order_key"),
                                                       F.lit(True).alias("_same_order"))
        return (candidates.withColumn("_order_key", order_key())
                .join(F.broadcast(order_ids), "_order_key", "left")
                .where(F.col(SEED_FLAG) | F.col("_same_order").isNotNull())
                .select(*[c for c in candidates.columns if c != SEED_FLAG]))

    return transform


def conversions_in_scope(scope_conversion_ids: DataFrame, customers: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Stored conversions -> those an incremental run compares: of an order id in scope (a deleted
    order's included) or of a changed customer."""

    def transform(stored: DataFrame) -> DataFrame:
        ids = (stored.join(customers, "customer_id", "left_semi").select("conversion_id")
               .unionByName(scope_conversion_ids.select("conversion_id")).distinct())
        return stored.join(ids, "conversion_id", "left_semi")

    return transform
