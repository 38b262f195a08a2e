"""Scale check of identity resolution: >= 1M identifiers and a chain of 1,000 resolve correctly.

    .venv/bin/python -m bench.identity_scale [--groups 300000] [--chain 1000] [--local-checkpoint]
        [--executor-labels | --repeat N] [--lake DIR]

Builds synthetic silver-like events with Spark (nothing on the driver): `groups` customers of 4
identifiers (a device, a user id, an email, a phone) linked by 3 events each, plus one chain of
`chain` devices and users alternating (device_i - user_i - device_{i+1} ...), runs the same resolver
as `touchpoint run identity` (full rebuild path) and checks with Spark aggregates that every
customer is exactly one generated group and the chain is one customer. Prints timings and rounds.

A graph of up to `identity.driver_labels_max_edges` edges (1,000,000 by default; this one has
about 3 per group) is labelled on the driver; `--executor-labels` forces the rounds. `--repeat N`
runs both, alternating in one session, N times each, checks that every run gave the same map, and
writes results/identity_scale.json (median seconds of each, their ratio, peak memory).

`--lake DIR` resolves all of that lake's silver.events instead (e.g. `DIR/lake` of
`bench.batch_pipeline --workdir DIR`; nothing is written there): the identity job's full rebuild
without its as-of bound and its writes. There is no generated truth to check, so `--repeat` checks
the two ways against each other and writes results/identity_scale_lake.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from bench.common import alternate_ways, frame_digest, progress, write_result
from bench.faults import RssSampler, lake_settings

START = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def synthetic_events(spark: SparkSession, groups: int, chain: int) -> DataFrame:
    """Events with a `group_id` column naming the component each event belongs to."""
    g = F.col("id")
    when = (F.lit(START).cast("long") + g % 86_400).cast("timestamp")
    per_group = spark.range(groups).select(
        F.explode(F.array(
            F.struct(F.lit(0).alias("k"), F.concat(F.lit("a"), g.cast("string")).alias("anonymous_id"),
                     F.concat(F.lit("u"), g.cast("string")).alias("user_id"), F.lit(None).cast("string").alias("email"),
                     F.lit(None).cast("string").alias("phone")),
            F.struct(F.lit(1).alias("k"), F.lit(None).cast("string").alias("anonymous_id"),
                     F.concat(F.lit("u"), g.cast("string")).alias("user_id"),
                     F.concat(F.lit("m"), g.cast("string"), F.lit("@x.io")).alias("email"),
                     F.lit(None).cast("string").alias("phone")),
            F.struct(F.lit(2).alias("k"), F.lit(None).cast("string").alias("anonymous_id"),
                     F.lit(None).cast("string").alias("user_id"),
                     F.concat(F.lit("m"), g.cast("string"), F.lit("@x.io")).alias("email"),
                     F.concat(F.lit("+1"), F.lpad(g.cast("string"), 10, "0")).alias("phone")),
        )).alias("e"), g.alias("group_id"), when.alias("event_ts"),
    ).select(F.concat(F.lit("g"), F.col("group_id").cast("string"), F.lit("-"), F.col("e.k").cast("string"))
             .alias("event_id"), "event_ts", "e.anonymous_id", "e.user_id", "e.email", "e.phone", "group_id")
    i = F.col("id")
    # chain: event i links chain device i with chain user i (even) or chain user i with device i+1 (odd)
    links = spark.range(2 * chain - 1).select(
        F.concat(F.lit("chain-"), i.cast("string")).alias("event_id"),
        (F.lit(START).cast("long") + i).cast("timestamp").alias("event_ts"),
        F.concat(F.lit("ca"), F.when(i % 2 == 0, i / 2).otherwise((i + 1) / 2).cast("long").cast("string"))
        .alias("anonymous_id"),
        F.concat(F.lit("cu"), (i / 2).cast("long").cast("string")).alias("user_id"),
        F.lit(None).cast("string").alias("email"), F.lit(None).cast("string").alias("phone"),
        F.lit(-1).cast("long").alias("group_id"),
    )
    return per_group.unionByName(links)


def timed_resolution(spark: SparkSession, events: DataFrame, settings, local_checkpoint: bool,
                     driver_max_edges: int, group_of: DataFrame | None = None, inspect=lambda resolved: {}) -> dict:
    """The job's full-rebuild resolution of `events`, timed until the map is materialised, with its
    size, rounds and digest; `group_of` joins each identifier's generated group on, and
    `inspect(resolved)` adds checks while the checkpointed map still exists."""
    from touchpoint.core.identity_graph import LakeCheckpointer
    from touchpoint.jobs.identity import resolve
    from touchpoint.jobs.identity_rules import Guardrails

    started = time.time()
    with tempfile.TemporaryDirectory() as scratch, LakeCheckpointer(spark, scratch, local=local_checkpoint) as cp:
        result = resolve(events, None, Guardrails.from_settings(settings.identity), cp, driver_max_edges)
        identity_map = result.identity_map
        resolved = cp(identity_map if group_of is None else identity_map.join(
            group_of, ["identifier_type", "identifier_value"]))
        identifiers = resolved.count()
        seconds = time.time() - started
        outcome = {"identifiers": identifiers, "customers": resolved.select("customer_id").distinct().count(),
                   "rounds": result.rounds, "resolve_seconds": round(seconds, 1),
                   "map_digest": frame_digest(resolved.drop("group_id")), **inspect(resolved)}
    return outcome


def check(spark: SparkSession, groups: int, chain: int, local_checkpoint: bool,
          driver_max_edges: int | None = None) -> dict:
    from touchpoint.core.config import load_settings

    settings = load_settings()
    events = synthetic_events(spark, groups, chain)
    group_of = events.select("group_id", F.explode(F.array(*[
        F.struct(F.lit(t).alias("identifier_type"), F.col(t).alias("identifier_value"))
        for t in ("anonymous_id", "user_id", "email", "phone")])).alias("i")).select(
        "group_id", "i.*").where(F.col("identifier_value").isNotNull()).distinct()

    def groups_are_customers(resolved: DataFrame) -> dict:
        ids_per_group = resolved.groupBy("group_id").agg(F.countDistinct("customer_id").alias("n"))
        groups_per_id = resolved.groupBy("customer_id").agg(F.countDistinct("group_id").alias("n"))
        return {"one_to_one": ids_per_group.where("n != 1").isEmpty() and groups_per_id.where("n != 1").isEmpty(),
                "chain_identifiers": resolved.where("group_id = -1").count()}

    outcome = timed_resolution(
        spark, events.drop("group_id"), settings, local_checkpoint,
        settings.identity.driver_labels_max_edges if driver_max_edges is None else driver_max_edges,
        group_of, groups_are_customers)
    one_to_one = outcome.pop("one_to_one")
    return {**outcome, "expected_customers": groups + 1, "expected_chain_identifiers": 2 * chain,
            "ok": one_to_one and outcome["customers"] == groups + 1 and outcome["chain_identifiers"] == 2 * chain}


def resolve_lake(spark: SparkSession, lake: str, local_checkpoint: bool, driver_max_edges: int) -> dict:
    """The full rebuild's resolution of all of a lake's silver.events (nothing written to the lake):
    no generated groups to check against, so the two ways are checked against each other."""
    from touchpoint.core.catalog import table_path

    settings = lake_settings(lake)
    events = spark.read.format("delta").load(table_path("silver.events", settings))
    return {**timed_resolution(spark, events, settings, local_checkpoint, driver_max_edges), "ok": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=300_000, help="4 identifiers each (default 1.2M in all)")
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--local-checkpoint", action="store_true")
    parser.add_argument("--lake", default=None,
                        help="resolve this lake's silver.events instead of generated groups (with --repeat: "
                             "results/identity_scale_lake.json)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="compare driver labels and executor rounds, N runs each, alternating")
    parser.add_argument("--executor-labels", action="store_true",
                        help="label on the executors whatever the graph's size (identity.driver_labels_max_edges = 0)")
    args = parser.parse_args()
    from touchpoint.core.config import load_settings
    from touchpoint.core.spark import get_spark

    spark = get_spark("identity-scale-bench", **{"spark.databricks.delta.snapshotPartitions": "2"})
    bounds = {"driver": load_settings().identity.driver_labels_max_edges, "executors": 0}

    def measure(driver_max_edges: int) -> dict:
        if args.lake:
            return resolve_lake(spark, args.lake, args.local_checkpoint, driver_max_edges)
        return check(spark, args.groups, args.chain, args.local_checkpoint, driver_max_edges)

    if not args.repeat:
        print(measure(bounds["executors" if args.executor_labels else "driver"]))
        return

    def run(way: str) -> tuple[float, dict, list]:
        outcome = measure(bounds[way])
        return outcome["resolve_seconds"], outcome, outcome["map_digest"]

    with RssSampler(lambda: [os.getpid()]) as memory:
        outcome = alternate_ways(tuple(bounds), args.repeat, run,
                                 lambda summary: f"{summary['rounds']} rounds, ok={summary['ok']}")
    spark.stop()
    runs = outcome["summaries"]
    if not all(run["ok"] for way_runs in runs.values() for run in way_runs):
        raise AssertionError(f"a run gave a wrong map: {runs}")
    medians = outcome["median_seconds"]
    progress(f"driver labels {medians['driver']} s, executor rounds {medians['executors']} s")
    write_result("identity_scale_lake" if args.lake else "identity_scale", {
        "parameters": {**vars(args)}, "identifiers": runs["driver"][0]["identifiers"],
        "customers": runs["driver"][0]["customers"], "rounds": {way: r[0]["rounds"] for way, r in runs.items()},
        "seconds": outcome["seconds"], "median_seconds": medians,
        "ratio_executors_to_driver": round(medians["executors"] / medians["driver"], 2),
        "map_digest": outcome["digest"], "identical_maps": True, "peak_rss_mb": dict(memory.peaks_mb)})


if __name__ == "__main__":
    main()
