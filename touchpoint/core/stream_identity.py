"""The speed layer's identity: the map the batch layer published, plus the links seen since.

Events the published gold.identity_map does not cover (those after its high-water mark, or that
arrived after the silver version it read) may carry new identifiers or link two known customers.
`extend_identity_map` returns a map covering them too, built like the batch graph: identifiers
that co-occur in an event are linked, blocklisted values (BRIEF §5) link nothing, and identifiers
the batch held back as shared devices link nothing. Components are found by min-label propagation
over (published customer ids, new identifiers): a micro-batch's links rarely chain, so a few rounds
converge. When 16 rounds have not, or the input is large (a map rebuilt from every uncovered row,
a micro-batch of well over 100,000 events), the batch job's connected components
(core/identity_graph.py) label them instead, each with its least node. A new component gets a
provisional id `p-<sha256 of its anchor>`; two published customers linked by a new event take the
smaller id.
The next batch run replaces all of this with the real graph (docs/SERVING.md lists the limits:
a device that becomes shared inside the stream is not detected until then).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from touchpoint.core.identity_graph import components_by_key
from touchpoint.core.identity_lookup import event_identifiers
from touchpoint.core.spark import checkpoint_with_own_size, release_checkpoint

# Same rule as the batch guardrails (BRIEF §5): only 0 - + _ and spaces, with at least one 0.
ALL_ZERO_PATTERN = r"^[0\-+_ ]*0[0\-+_ ]*$"
PROVISIONAL_PREFIX = "p-"
MAX_ITERATIONS = 16
ROUNDS_PER_CHECK = 2
# (event, identifier) pairs above which the components run without propagation first.
COMPONENTS_FROM_NODES = 200_000


def is_blocklisted(value: Column, blocklist: Iterable[str]) -> Column:
    listed = sorted({v.strip().lower() for v in blocklist})
    in_list = F.lower(F.trim(value)).isin(listed) if listed else F.lit(False)
    return in_list | value.rlike(ALL_ZERO_PATTERN)


def provisional_id(identifier_type: Column, identifier_value: Column) -> Column:
    """A stable id for a component the batch has not seen yet (no raw identifier in it)."""
    digest = F.sha2(F.concat_ws(":", F.lit("touchpoint-provisional-v1"), identifier_type, identifier_value), 256)
    return F.concat(F.lit(PROVISIONAL_PREFIX), F.substring(digest, 1, 32))


def extend_identity_map(identity_map: DataFrame, events: DataFrame, blocklist: Iterable[str],
                        held_back: DataFrame | None = None, checkpoints: ExitStack | None = None) -> DataFrame:
    """(identifier_type, identifier_value, customer_id) for every identifier of the published map and
    of `events`, with customers linked by `events` merged. `held_back`: (identifier_type,
    identifier_value) pairs that must not link (shared devices).

    The returned frame reads two local checkpoints. With `checkpoints`, they are freed when that
    stack closes (after the caller is done with the frame); otherwise when the driver collects them."""
    lookup = identity_map.select("identifier_type", "identifier_value", "customer_id")
    ids = event_identifiers(events).where(~is_blocklisted(F.col("identifier_value"), blocklist))
    if held_back is not None:
        ids = ids.join(held_back.select("identifier_type", "identifier_value"),
                       ["identifier_type", "identifier_value"], "left_anti")

    def kept(frame: DataFrame) -> DataFrame:
        frame = frame.localCheckpoint()
        if checkpoints is not None:
            checkpoints.callback(release_checkpoint, frame)
        return frame

    nodes = kept(ids.join(lookup, ["identifier_type", "identifier_value"], "left")
                 .select("event_id", "identifier_type", "identifier_value",
                         F.coalesce("customer_id", provisional_id(F.col("identifier_type"), F.col("identifier_value")))
                         .alias("node")))
    # Propagation joins every event twice a round; the components pay checkpoints and rounds of a
    # graph whatever its size. Small inputs (a micro-batch of tens of thousands of events) favour
    # propagation, large ones (a rebuilt map, a large micro-batch) the components (bench/README.md,
    # session 32).
    large = nodes.count() > COMPONENTS_FROM_NODES
    labels = None if large else _propagated_labels(nodes)
    if labels is None:  # a large input, or a long chain in this micro-batch
        labels = _component_labels(nodes)
    if checkpoints is not None:
        checkpoints.callback(release_checkpoint, labels)
    # Published identifiers whose customer joined a component keep the component's label.
    published = (lookup.join(labels.withColumnRenamed("node", "customer_id"), "customer_id", "left")
                 .select("identifier_type", "identifier_value", F.coalesce("label", "customer_id").alias("customer_id")))
    # A node that links nothing has no label from the components: it is a component of its own.
    new = (nodes.where(F.col("node").startswith(PROVISIONAL_PREFIX)).join(labels, "node", "left")
           .select("identifier_type", "identifier_value", F.coalesce("label", "node").alias("customer_id")).distinct()
           .join(lookup.select("identifier_type", "identifier_value"), ["identifier_type", "identifier_value"],
                 "left_anti"))
    return published.unionByName(new)


def _propagated_labels(nodes: DataFrame) -> DataFrame | None:
    """(node, label): the least node of each component as a local checkpoint, or None when
    MAX_ITERATIONS rounds of min-label propagation have not converged."""
    membership = nodes.select("event_id", "node").distinct()
    labels = membership.select("node").distinct().withColumn("label", F.col("node"))

    def propagate(current: DataFrame) -> DataFrame:
        per_event = membership.join(current, "node").groupBy("event_id").agg(F.min("label").alias("label"))
        return membership.join(per_event, "event_id").groupBy("node").agg(F.min("label").alias("label"))

    # A few rounds per Spark action, then one convergence check: most micro-batches need one check.
    started_from = None  # the checkpoint a group of rounds starts from; the first group has none
    for _ in range(MAX_ITERATIONS // ROUNDS_PER_CHECK):
        previous = labels
        for _ in range(ROUNDS_PER_CHECK - 1):
            previous = propagate(previous)
        labels = propagate(previous).localCheckpoint()
        # converged when the last round changed nothing
        converged = labels.alias("u").join(previous.alias("l"), "node").where(
            F.col("u.label") != F.col("l.label")).isEmpty()
        if started_from is not None:  # only the check read it; the new labels are computed
            release_checkpoint(started_from)
        started_from = labels
        if converged:
            return labels
    release_checkpoint(labels)
    return None


def _component_labels(nodes: DataFrame) -> DataFrame:
    """(node, label) for every node that links another, label the least node of its component."""
    with ExitStack() as scratch:
        def scratch_checkpoint(frame: DataFrame) -> DataFrame:
            # Own size estimates: the graph's rounds read each other, so inherited join estimates
            # would compound (core.spark).
            frame = checkpoint_with_own_size(frame)
            scratch.callback(release_checkpoint, frame)
            return frame

        # An event links its nodes: a star from its least node to each other one. Events with one
        # node link nothing, so the graph holds the distinct links, not every event.
        per_event = (nodes.groupBy("event_id").agg(F.array_distinct(F.collect_list("node")).alias("nodes"))
                     .where(F.size("nodes") > 1))
        links = scratch_checkpoint(
            per_event.select(F.array_min("nodes").alias("dst_key"), F.explode("nodes").alias("src_key"))
            .where(F.col("src_key") != F.col("dst_key")).distinct())
        linked = links.select(F.col("src_key").alias("key")).unionByName(links.select(F.col("dst_key").alias("key")))
        components, _ = components_by_key(linked, links, scratch_checkpoint)
        # A component's label is its least node: a published id before any provisional one, and the
        # smaller of two published ids. Checkpointed now, so the graph's checkpoints can go.
        return checkpoint_with_own_size(
            components.join(components.groupBy("component").agg(F.min("key").alias("label")), "component")
            .select(F.col("key").alias("node"), "label"))
