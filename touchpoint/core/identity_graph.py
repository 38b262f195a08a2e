"""Connected components on Spark: alternating large-star / small-star (Kiveris et al., SoCC 2014).

Shared by the batch identity job (jobs/identity.py) and the speed layer's identity extension
(core/stream_identity.py: for linking graphs too large for its union-find on the driver;
docs/SERVING.md, "Identity in the speed layer"); jobs/profiles.py uses its checkpointers.

GraphFrames, the maintained library for this, publishes no build for Spark 4.2 on Maven Central
(checked io.graphframes and graphframes groups), so the algorithm is written here with DataFrames.

Edges are kept as (hi, lo) with hi > lo. One round is a large-star step followed by a small-star
step; both keep every node's component and the pair needs O(log^2 n) rounds whatever the
labelling (the paper's bound). After each round the stars that are already whole components are
set aside (see flag_finished_stars) and the rest is checkpointed, so the plan stays one round
deep however long a chain is, and later rounds only carry unfinished components. The loop stops
when no edge is left: the edge set has become a star forest, each star rooted at the smallest
label of its component. The rounds collect nothing to the driver.

A graph of at most `driver_max_edges` edges is labelled on the driver instead (`least_labels`, one
collect of the edges): the same labels without the rounds' jobs, which take seconds whatever the
graph's size. Most daily increments and small lakes are such graphs.
"""

from __future__ import annotations

import uuid
from typing import Callable, Hashable, Iterable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.spark import checkpoint_with_own_size

# Far above the O(log^2 n) rounds any real graph needs; reaching it means a bug, not a big graph.
MAX_ROUNDS = 100
# Up to this many edges a graph is labelled by union-find on the driver. At the bound: 16 MB of
# collected longs, and 1.05 s and 226 MB of Python for 1M edges among 1.33M nodes (measured in
# session 37), against a few seconds of jobs per round on the executors.
DRIVER_LABELS_MAX_EDGES = 1_000_000

Checkpoint = Callable[[DataFrame], DataFrame]


def local_checkpoints(spark: SparkSession, mode: str) -> bool:
    """Whether `identity.checkpoint = mode` means localCheckpoint for this session. `auto` picks it on
    a local master, where the executor is the driver: scratch files would survive nothing more."""
    return mode == "local" or (mode == "auto" and spark.sparkContext.master.startswith("local"))


class LakeCheckpointer:
    """Cuts lineage by writing to a scratch folder and reading back (survives executor loss).

    `local=True` uses `localCheckpoint` instead (core.spark.checkpoint_with_own_size): faster, but
    lost with an executor.
    """

    def __init__(self, spark: SparkSession, scratch_root: str, local: bool = False):
        self.spark = spark
        self.local = local
        self.folder = f"{scratch_root.rstrip('/')}/{uuid.uuid4().hex}"  # scratch only: never part of a result
        self._count = 0

    def __call__(self, frame: DataFrame) -> DataFrame:
        if self.local:
            return checkpoint_with_own_size(frame)  # rounds read each other: keep estimates flat
        self._count += 1
        path = f"{self.folder}/{self._count:05d}"
        frame.write.mode("overwrite").parquet(path)
        return self.spark.read.parquet(path)

    def cleanup(self) -> None:
        if self.local or self._count == 0:
            return
        jvm = self.spark.sparkContext._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(self.folder)
        hadoop_path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)

    def __enter__(self) -> "LakeCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def oriented_edges(edges: DataFrame) -> DataFrame:
    """(src, dst) pairs -> distinct (hi, lo) with hi > lo; self-loops dropped."""
    return (
        edges.where(F.col("src") != F.col("dst"))
        .select(F.greatest("src", "dst").alias("hi"), F.least("src", "dst").alias("lo"))
        .distinct()
    )


def large_star(edges: DataFrame) -> DataFrame:
    """Connect every neighbour v > u of each node u to m(u), the smallest of u and its neighbours."""
    both_ways = edges.select(F.col("hi").alias("u"), F.col("lo").alias("v")).unionByName(
        edges.select(F.col("lo").alias("u"), F.col("hi").alias("v"))
    )
    smallest = both_ways.groupBy("u").agg(F.least(F.col("u"), F.min("v")).alias("m"))
    return (
        both_ways.where(F.col("v") > F.col("u"))
        .join(smallest, "u")
        .select(F.col("v").alias("hi"), F.col("m").alias("lo"))
        .distinct()
    )


def small_star(edges: DataFrame) -> DataFrame:
    """Connect each node u and its smaller neighbours to the smallest of them."""
    smallest = edges.groupBy("hi").agg(F.min("lo").alias("m"))
    to_smallest = (
        edges.join(smallest, "hi")
        .where(F.col("lo") != F.col("m"))
        .select(F.col("lo").alias("hi"), F.col("m").alias("lo"))
    )
    return to_smallest.unionByName(smallest.select("hi", F.col("m").alias("lo"))).distinct()


def flag_finished_stars(edges: DataFrame) -> DataFrame:
    """Add `finished`: the edge belongs to a star that is a whole component.

    A root r is finished when it has no parent and each of its children has r as its only
    parent and no child of its own: then no other edge touches the star, so the star is a
    whole component and its root (smaller than every child) is the component's minimum.
    Setting finished stars aside each round keeps later rounds on the few unfinished components;
    the loop ends when no edge is left, i.e. when the edge set has become a star forest.
    """
    roles = edges.select(F.col("hi").alias("node"), F.lit(1).alias("as_hi"), F.lit(0).alias("as_lo")).unionByName(
        edges.select(F.col("lo").alias("node"), F.lit(0).alias("as_hi"), F.lit(1).alias("as_lo"))
    ).groupBy("node").agg(F.sum("as_hi").alias("parents"), F.max("as_lo").alias("has_children"))
    child = roles.select(F.col("node").alias("hi"), F.col("parents").alias("child_parents"),
                         F.col("has_children").alias("child_has_children"))
    root = roles.select(F.col("node").alias("lo"), F.col("parents").alias("root_parents"))
    leaf_ok = (F.col("child_parents") == 1) & (F.col("child_has_children") == 0) & (F.col("root_parents") == 0)
    finished_roots = (
        edges.join(child, "hi").join(root, "lo")
        .groupBy("lo").agg(F.min(leaf_ok.cast("int")).alias("all_leaves_ok"))
        .where(F.col("all_leaves_ok") == 1).select("lo", F.lit(True).alias("finished"))
    )
    return edges.join(finished_roots, "lo", "left").select(
        "hi", "lo", F.coalesce("finished", F.lit(False)).alias("finished"))


def least_labels(groups: Iterable[Sequence[Hashable]]) -> dict:
    """Union-find on the driver: each value of `groups` (non-empty sequences of values linked together) ->
    the least value of its component. Values must be of one ordered type (str compares by code
    point, as Spark's min compares UTF-8 bytes: the same order)."""
    parent: dict = {}

    def root(node):
        top = node
        while parent[top] != top:
            top = parent[top]
        while parent[node] != top:  # path compression
            parent[node], node = top, parent[node]
        return top

    for group in groups:
        first = group[0]
        parent.setdefault(first, first)
        for node in group[1:]:
            parent.setdefault(node, node)
            a, b = root(first), root(node)
            if a != b:  # the smaller root stays the root, so a root is always its component's least value
                parent[max(a, b)] = min(a, b)
    return {node: root(node) for node in parent}


def connected_components(edges: DataFrame, nodes: DataFrame | None, checkpoint: Checkpoint,
                         max_rounds: int = MAX_ROUNDS,
                         driver_max_edges: int = DRIVER_LABELS_MAX_EDGES) -> tuple[DataFrame, int]:
    """Label every node with the smallest node id of its component.

    edges: (src long, dst long), undirected, duplicates and self-loops allowed.
    nodes: (id long) of nodes that may have no edge, or None.
    Returns ((id, component), rounds); rounds is 0 when the driver labelled the graph.
    """
    working = checkpoint(oriented_edges(edges))
    if working.count() <= driver_max_edges:
        import pyarrow as pa

        pairs = working.select("hi", "lo").toArrow()
        least = least_labels(zip(pairs.column("hi").to_pylist(), pairs.column("lo").to_pylist()))
        labelled = list(least)
        labels = pa.table({"id": pa.array(labelled, pa.int64()),
                           "component": pa.array([least[node] for node in labelled], pa.int64())})
        return _with_isolated(checkpoint(working.sparkSession.createDataFrame(labels, "id long, component long")),
                              nodes), 0
    finished_parts = []
    rounds = 0
    while True:
        # One checkpoint per round: the star steps and the finished flags are written together.
        flagged = checkpoint(working.transform(flag_finished_stars))
        finished_parts.append(flagged.where("finished").select("hi", "lo"))
        working = flagged.where(~F.col("finished")).select("hi", "lo")
        if working.isEmpty():
            break
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
        working = small_star(large_star(working))
    stars = finished_parts[0]
    for part in finished_parts[1:]:
        stars = stars.unionByName(part)
    labels = stars.select(F.col("hi").alias("id"), F.col("lo").alias("component")).unionByName(
        stars.select(F.col("lo").alias("id"), F.col("lo").alias("component")).distinct()
    )
    return _with_isolated(labels, nodes), rounds


def _with_isolated(labels: DataFrame, nodes: DataFrame | None) -> DataFrame:
    """A node without an edge is a component of its own."""
    if nodes is None:
        return labels
    isolated = nodes.select("id").distinct().join(labels, "id", "left_anti")
    return labels.unionByName(isolated.select("id", F.col("id").alias("component")))


def components_by_key(keyed_nodes: DataFrame, keyed_edges: DataFrame, checkpoint: Checkpoint,
                      driver_max_edges: int = DRIVER_LABELS_MAX_EDGES) -> tuple[DataFrame, int]:
    """Connected components over string keys.

    keyed_nodes: (key) of every node; keyed_edges: (src_key, dst_key).
    Returns ((key, component) with component a long label, rounds).
    """
    ids = checkpoint(keyed_nodes.select("key").distinct().withColumn("id", F.monotonically_increasing_id()))
    edges = (
        keyed_edges.join(ids.select(F.col("key").alias("src_key"), F.col("id").alias("src")), "src_key")
        .join(ids.select(F.col("key").alias("dst_key"), F.col("id").alias("dst")), "dst_key")
        .select("src", "dst")
    )
    labels, rounds = connected_components(edges, ids.select("id"), checkpoint,
                                          driver_max_edges=driver_max_edges)
    return ids.join(labels, "id").select("key", "component"), rounds
