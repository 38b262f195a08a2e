"""The speed layer's identity: the map the batch layer published, plus the links seen since.

Events the published gold.identity_map does not cover (those after its high-water mark, or that
arrived after the silver version it read) may carry new identifiers or link two known customers.
`extend_identity_map` returns a map covering them too, built like the batch graph: identifiers
that co-occur in an event are linked, blocklisted values (BRIEF §5) link nothing, and identifiers
the batch held back as shared devices link nothing. Each distinct set of identifier values is
resolved once, and only the distinct sets of two or more nodes (known customers, or provisional
ids of new identifiers) link anything. A kept map's micro-batch has few of them, and even a map
rebuilt from 4.9M events has 317,000 (776,000 nodes), so their components are found on the
driver by union-find, each labelled with its least node key. A larger graph is labelled the same
way by the batch job's connected components (core/identity_graph.py), in Spark. A node's key ranks
published customers first, the one first seen first (ties by its origin identifier: the batch's
survivor rule, BRIEF §5 "the older id survives"), then provisional ids; a component's label is the
node of its least key. The key is a property of the node alone, so a map extended batch by batch
equals one rebuilt from every uncovered row. A new component gets a provisional id
`p-<sha256 of an identifier>`. The next batch run replaces all of this with the real graph
(docs/SERVING.md lists the limits: a device that becomes shared inside the stream is not detected
until then).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from touchpoint.core.identity_graph import components_by_key, least_labels
from touchpoint.core.identity_lookup import IDENTIFIER_PRECEDENCE, customer_id_of, event_identifiers, held_back_reason
from touchpoint.core.spark import checkpoint_with_own_size, release_checkpoint

PROVISIONAL_PREFIX = "p-"
# A node key: "0" + first seen (20 digits: µs since 0001-01-01, never negative) + origin type NUL
# origin value NUL id for a published customer; "0~" NUL id for one whose origin identifier is gone
# (the batch lets only an id whose origin the component holds survive); "1" NUL id otherwise. NUL
# sorts before any other character, so comparing keys compares (first seen, origin type, origin
# value) as the batch's survivor rule does, and the id is the key's last NUL-separated part.
KEY_SEPARATOR = "\x00"
UNRANKED_KEY_PREFIX = "1" + KEY_SEPARATOR
ORIGINLESS_KEY_PREFIX = "0~" + KEY_SEPARATOR
MICROS_BEFORE_1970 = 62_135_596_800_000_000  # 0001-01-01 to 1970-01-01
# Nodes in the linking node sets (counted once per set) up to which the components are found on
# the driver, above which in Spark. At the bound: 1.7 s of the driver's Python and 380 MB at its
# peak (session 35).
DRIVER_LABELS_MAX_NODES = 1_000_000


def is_blocklisted(value: Column, blocklist: Iterable[str]) -> Column:
    """The batch guardrails' rule (BRIEF §5): a listed value or an all-zero id links nothing."""
    return held_back_reason(value, sorted({v.strip().lower() for v in blocklist})).isNotNull()


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
    lookup = with_survivor_keys(identity_map)
    # Events with the same identifiers link the same nodes, so each distinct set of identifier
    # values is resolved once, however many events carry it: the 5M drain's rebuild read 4.9M events
    # and 693,330 sets (bench/README.md, session 36).
    identifier_sets = (events.select(*IDENTIFIER_PRECEDENCE).distinct()
                       .withColumn("identifier_set", F.struct(*IDENTIFIER_PRECEDENCE)))
    ids = (event_identifiers(identifier_sets, key="identifier_set")
           .where(~is_blocklisted(F.col("identifier_value"), blocklist)))
    if held_back is not None:
        ids = ids.join(held_back.select("identifier_type", "identifier_value"),
                       ["identifier_type", "identifier_value"], "left_anti")

    def kept(frame: DataFrame) -> DataFrame:
        frame = frame.localCheckpoint()
        if checkpoints is not None:
            checkpoints.callback(release_checkpoint, frame)
        return frame

    nodes = kept(ids.join(lookup, ["identifier_type", "identifier_value"], "left")
                 .select("identifier_set", "identifier_type", "identifier_value",
                         F.coalesce("customer_id", provisional_id(F.col("identifier_type"), F.col("identifier_value")))
                         .alias("node"), "survivor_key"))
    # Only sets with two or more distinct nodes link anything. Once the map knows a customer's
    # identifiers, their new events resolve to that one node, so in a kept map's micro-batch these
    # are the few events that bring a new identifier or join two customers (bench/README.md,
    # session 35); the labels are computed over them alone, on the nodes' keys.
    keyed = nodes.select("identifier_set", F.coalesce("survivor_key", F.concat(F.lit(UNRANKED_KEY_PREFIX), "node"))
                         .alias("node"))
    linking = linking_node_sets(keyed).localCheckpoint()
    # One union-find over a few hundred thousand strings takes the driver well under a second, where
    # Spark pays a few seconds of jobs for any graph (bench/README.md, session 35).
    linking_nodes = linking.agg(F.sum(F.size("nodes"))).first()[0] or 0
    if linking_nodes <= DRIVER_LABELS_MAX_NODES:
        keyed_labels = _driver_labels(linking)
    else:
        keyed_labels = _component_labels(linking)
    release_checkpoint(linking)  # the labels are computed
    labels = keyed_labels.select(
        _id_of(F.col("node")).alias("node"), _id_of(F.col("label")).alias("label"),
        F.when(~F.col("label").startswith(UNRANKED_KEY_PREFIX), F.col("label")).alias("label_key"))
    if checkpoints is not None:
        checkpoints.callback(release_checkpoint, keyed_labels)
    # Published identifiers whose customer joined a component keep the component's label (and key).
    published = (lookup.join(labels.withColumnRenamed("node", "customer_id"), "customer_id", "left")
                 .select("identifier_type", "identifier_value", F.coalesce("label", "customer_id").alias("customer_id"),
                         F.when(F.col("label").isNotNull(), F.col("label_key")).otherwise(F.col("survivor_key"))
                         .alias("survivor_key")))
    # A node that links nothing has no label from the components: it is a component of its own.
    new = (nodes.where(F.col("node").startswith(PROVISIONAL_PREFIX)).join(labels, "node", "left")
           .select("identifier_type", "identifier_value", F.coalesce("label", "node").alias("customer_id"),
                   F.col("label_key").alias("survivor_key")).distinct()
           .join(lookup.select("identifier_type", "identifier_value"), ["identifier_type", "identifier_value"],
                 "left_anti"))
    return published.unionByName(new)


def with_survivor_keys(identity_map: DataFrame) -> DataFrame:
    """(identifier_type, identifier_value, customer_id, survivor_key): the map with each published
    customer's node key (module docstring). A map this module extended carries its keys; the
    published gold.identity_map gets them from its first_seen and the ids' origins; any other map
    (an empty one) has none."""
    if "survivor_key" in identity_map.columns:
        return identity_map.select("identifier_type", "identifier_value", "customer_id", "survivor_key")
    plain = identity_map.select("identifier_type", "identifier_value", "customer_id")
    if "first_seen" not in identity_map.columns:
        return plain.withColumn("survivor_key", F.lit(None).cast("string"))
    since = identity_map.groupBy("customer_id").agg(F.min("first_seen").alias("since"))
    origins = identity_map.where(
        customer_id_of(F.col("identifier_type"), F.col("identifier_value")) == F.col("customer_id")
    ).select("customer_id", F.col("identifier_type").alias("origin_type"),
             F.col("identifier_value").alias("origin_value"))
    micros = (F.unix_micros("since") + F.lit(MICROS_BEFORE_1970)).cast("string")
    keys = since.join(origins, "customer_id", "left").select("customer_id", F.when(
        F.col("origin_type").isNull(), F.concat(F.lit(ORIGINLESS_KEY_PREFIX), "customer_id"),
    ).otherwise(F.concat(
        F.lit("0"), F.lpad(micros, 20, "0"), "origin_type", F.lit(KEY_SEPARATOR), "origin_value",
        F.lit(KEY_SEPARATOR), "customer_id",
    )).alias("survivor_key"))
    return plain.join(keys, "customer_id", "left").select(
        "identifier_type", "identifier_value", "customer_id", "survivor_key")


def _id_of(key: Column) -> Column:
    return F.substring_index(key, KEY_SEPARATOR, -1)


def linking_node_sets(nodes: DataFrame) -> DataFrame:
    """(identifier_set, node) -> (nodes): the distinct sets of two or more nodes that identifier sets
    resolve to (each sorted, once however many sets resolve to it). Only these link anything, and
    the same nodes link the same way wherever they come from."""
    return (nodes.groupBy("identifier_set").agg(F.array_sort(F.array_distinct(F.collect_list("node"))).alias("nodes"))
            .where(F.size("nodes") > 1).select("nodes").distinct())


def _driver_labels(linking: DataFrame) -> DataFrame:
    """Linking node sets (nodes) -> (node, label) for each of their nodes, label the least node of its
    component, as a local checkpoint: union-find on the driver, for a graph small enough to collect."""
    import pyarrow as pa

    collected = linking.select("nodes").toArrow()
    least = least_labels(collected.column("nodes").to_pylist())
    nodes = list(least)
    labels = pa.table({"node": pa.array(nodes, pa.string()), "label": pa.array([least[n] for n in nodes], pa.string())})
    return linking.sparkSession.createDataFrame(labels, "node string, label string").localCheckpoint()


def _component_labels(linking: DataFrame) -> DataFrame:
    """Linking node sets (nodes) -> (node, label) for every node that links another, label the least
    node of its component."""
    with ExitStack() as scratch:
        def scratch_checkpoint(frame: DataFrame) -> DataFrame:
            # Own size estimates: the graph's rounds read each other, so inherited join estimates
            # would compound (core.spark).
            frame = checkpoint_with_own_size(frame)
            scratch.callback(release_checkpoint, frame)
            return frame

        # A set links its nodes: a star from its least node to each other one; the graph holds the
        # distinct links.
        links = scratch_checkpoint(
            linking.select(F.array_min("nodes").alias("dst_key"), F.explode("nodes").alias("src_key"))
            .where(F.col("src_key") != F.col("dst_key")).distinct())
        linked = links.select(F.col("src_key").alias("key")).unionByName(links.select(F.col("dst_key").alias("key")))
        # Beyond the driver's bound: the rounds on the executors.
        components, _ = components_by_key(linked, links, scratch_checkpoint, driver_max_edges=0)
        # A component's label is its least node key: a published customer before any provisional id,
        # the one first seen first of two. Checkpointed now, so the graph's checkpoints can go.
        return checkpoint_with_own_size(
            components.join(components.groupBy("component").agg(F.min("key").alias("label")), "component")
            .select(F.col("key").alias("node"), "label"))
