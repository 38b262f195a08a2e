"""What a live ingest micro-batch pays whatever its size: the Delta commits' idempotency check, and
the dedup against silver's event ids: a scan that grows with the day's partition, or the keyed
mirror that replaced it.

    python -m bench.ingest_fixed_costs [--appends 20] [--partition-rows 500000,2000000,8000000]
                                       [--silver-rows 2000000,8000000] [--batch-rows 85000]
                                       [--repeat 3] [--seed 42]

1. Commits: one-row appends to a fresh Delta table (the reconciliation table's schema, the smallest
   write a batch makes), in turn: with `txnAppId`/`txnVersion` (as the ingest sink wrote every table
   until 2026-12-05), marked with the batch in `userMetadata` (`core.delta.batch_mark`, as it writes
   them since), and plain, so that machine noise hits all three alike. Reports the median seconds of
   each and the Spark jobs each one ran (counted by job group).
2. Dedup: a one-date silver of `--partition-rows` random event ids (the day's partition, in files of
   100,000 rows, change feed on), then `--repeat` rounds as a live stream's micro-batches: the last
   round's batch is appended (the inserts of the batch before), and a batch of `--batch-rows` new
   ids plus 1 % copies of silver's ids is deduplicated to its inserts both ways, alternating which
   goes first: by `streaming.ingest.plan_silver_changes` scanning the partition (every batch until
   2026-12-05), and by the ingest sink's keyed mirror of silver's keys (`streaming.silver_keys`,
   caught up with the change feed). Reports the median of each, their ratio, the mirror's first
   lookup (which loads the date), and checks the inserts are exactly the new ids.
3. Orders: a silver of `--silver-rows` rows over 90 dates, 1.3 % of them orders (the generator's
   share), then `--repeat` rounds as above, with batches of today's rows, 1.3 % orders, and 10
   orders that come back with an order id silver holds and an earlier time (the earliest order
   wins: each displaces a silver order). The batch is planned with its orders both ways, through
   the sink's steps (orders found, plan, inserts kept, displaced orders): by scanning every order
   of silver (`silver_orders_sharing_an_id`, every batch until 2026-12-05) and the day's event
   ids, and by the keyed mirror's event ids and orders. Checks both give the batch's rows plus the
   10 as inserts and the 10 silver orders as displaced. One step differs from the sink's: event
   ids are looked up on today's date only, where the sink would also look on the 10 orders' dates
   (their ids are new, so the answer is the same; the part measured is the orders').
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

EVENT_DATE = dt.date(2026, 11, 27)
EVENT_TS = dt.datetime(2026, 11, 27, 12, tzinfo=dt.timezone.utc)
FILE_ROWS = 100_000


def commit_costs(spark, path: str, appends: int) -> dict:
    from touchpoint.core.delta import batch_mark, ensure_table
    from touchpoint.schemas.lake import RECONCILIATION_SCHEMA

    ensure_table(spark, path, RECONCILIATION_SCHEMA, [], "bench.reconciliation")
    sc = spark.sparkContext
    kinds = ("with_txn", "marked", "plain")
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    jobs: dict[str, list[int]] = {kind: [] for kind in kinds}
    for number in range(len(kinds) * (appends + 2)):
        kind = kinds[number % len(kinds)]
        row = spark.createDataFrame([("bench", number, 1, 1, 0, 0, 0, dt.datetime.now(dt.timezone.utc))],
                                    RECONCILIATION_SCHEMA)
        group = f"bench-append-{number}"
        sc.setJobGroup(group, kind)
        writer = row.write.format("delta").mode("append")
        if kind == "with_txn":
            writer = writer.option("txnAppId", "bench").option("txnVersion", number)
        elif kind == "marked":
            writer = writer.option("userMetadata", batch_mark("bench", number))
        started = time.monotonic()
        writer.save(path)
        elapsed = time.monotonic() - started
        if number >= 2 * len(kinds):  # the first two of each: JVM warm-up
            seconds[kind].append(elapsed)
            jobs[kind].append(len(sc.statusTracker().getJobIdsForGroup(group)))
    sc.setJobGroup("bench", "")
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    return {"median_seconds": {kind: round(value, 3) for kind, value in median.items()},
            "median_jobs": {kind: statistics.median(values) for kind, values in jobs.items()},
            "txn_extra_seconds": round(median["with_txn"] - median["plain"], 3),
            "marked_extra_seconds": round(median["marked"] - median["plain"], 3),
            "all_seconds": {kind: [round(v, 3) for v in values] for kind, values in seconds.items()}}


def event_ids(spark, first: int, count: int, seed: int, days: int = 1, order_every: int = 0):
    """`count` distinct UUID-shaped ids (a hash of the row number and the seed), as silver's rows (the
    columns the dedup and the keyed mirror read): page views on EVENT_DATE, or with `days`, spread
    over the `days` dates up to it; with `order_every`, every such row is an order with an order id
    of its own (`order-<row number>`)."""
    from pyspark.sql import functions as F

    digest = F.sha2(F.concat_ws(":", F.lit(str(seed)), F.col("id").cast("string")), 256)
    uuid = F.concat_ws("-", *[F.substring(digest, start, length)
                              for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))])
    days_back = (F.col("id") % days).cast("int")
    is_order = (F.col("id") % order_every == 0) if order_every else F.lit(False)
    return spark.range(first, first + count).select(
        uuid.alias("event_id"), F.date_sub(F.lit(EVENT_DATE), days_back).alias("event_date"),
        F.when(is_order, "order").otherwise("page_view").alias("event_type"),
        F.when(is_order, F.concat(F.lit("order-"), F.col("id").cast("string"))).alias("order_id"),
        (F.lit(EVENT_TS) - F.make_dt_interval(days_back)).alias("event_ts"))


def batch_of(spark, first: int, batch_rows: int, copies: int, seed: int, order_every: int = 0, extra=None):
    """A micro-batch's accepted rows: `batch_rows` new ids from row `first` on (every `order_every`-th
    an order), then copies of the day's first `copies` ids (already in silver), and `extra` rows."""
    from pyspark.sql import functions as F

    rows = event_ids(spark, first, batch_rows, seed, order_every=order_every).unionByName(
        event_ids(spark, 0, copies, seed))
    if extra is not None:
        rows = rows.unionByName(extra)
    return (rows.withColumn("source_ts", F.lit(EVENT_TS)).withColumn("source_topic", F.lit("bench"))
            .withColumn("source_partition", F.lit(0)).withColumn("source_offset", F.monotonically_increasing_id())
            .localCheckpoint(eager=True))


def silver_with_mirror(spark, root: Path, name: str, source_id: str, rows):
    """A lake of its own under root/name whose silver.events holds `rows` (change feed on), and an
    ingest sink on it, as a live stream's: (sink, silver path)."""
    from touchpoint.streaming.ingest import IngestSink

    sink = IngestSink(lake_settings(root / name, state_dir=str(root / "state")), source_id=source_id)
    silver_path = sink.paths["silver.events"]
    rows.write.format("delta").partitionBy("event_date").save(silver_path)
    spark.sql(f"ALTER TABLE delta.`{silver_path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    return sink, silver_path


def first_lookup_seconds(spark, sink, batch, with_orders: bool) -> float:
    """The mirror's first lookup (it loads the keys), timed; raises when it fell back."""
    started = time.monotonic()
    if sink._looked_up_keys(spark, batch, [EVENT_DATE], with_orders) is None:
        raise RuntimeError("the keyed mirror failed (see the log)")
    return time.monotonic() - started


def alternating_rounds(spark, sink, silver_path: str, repeat: int, prepare, plan) -> dict[str, list[float]]:
    """`repeat` rounds: prepare(round) makes the round's batch, then plan(how, batch, silver) runs
    for "scan" and "keyed", in alternating order, on silver as it is then (read before the clock
    starts); the seconds of each plan, per way."""
    seconds: dict[str, list[float]] = {"scan": [], "keyed": []}
    for round_number in range(repeat):
        batch = prepare(round_number)
        for how in (("scan", "keyed") if round_number % 2 == 0 else ("keyed", "scan")):
            silver = spark.read.format("delta").load(silver_path)
            started = time.monotonic()
            plan(how, batch, silver)
            seconds[how].append(time.monotonic() - started)
    if sink.keyed_fallbacks:
        raise RuntimeError(f"the keyed mirror failed in {sink.keyed_fallbacks} rounds (see the log)")
    return seconds


def timings(seconds: dict[str, list[float]], first_lookup: float) -> dict:
    median = {how: statistics.median(values) for how, values in seconds.items()}
    return {"median_seconds": {how: round(value, 2) for how, value in median.items()},
            "keyed_to_scan": round(median["keyed"] / median["scan"], 2),
            "keyed_first_lookup_seconds": round(first_lookup, 2),
            "all_seconds": {how: [round(v, 2) for v in values] for how, values in seconds.items()}}


def dedup_lookups(spark, root: Path, partition_rows: int, batch_rows: int, repeat: int, seed: int) -> dict:
    """The day's partition of `partition_rows` ids, then `repeat` rounds, each as a live stream's next
    micro-batch: the last round's batch is appended to silver (the inserts of the batch before), and
    a new batch of `batch_rows` new ids plus 1 % copies is deduplicated both ways, in alternating
    order: by the scan of the partition, and by the sink's keyed mirror (`IngestSink._looked_up_keys`:
    catch up with the change feed, collect the batch's keys, look them up), each to the inserts."""
    from touchpoint.streaming.ingest import plan_silver_changes

    sink, silver_path = silver_with_mirror(
        spark, root, f"lake_{partition_rows}", "bench:keys",
        event_ids(spark, 0, partition_rows, seed).repartition(max(1, partition_rows // FILE_ROWS)))
    copies = batch_rows // 100
    next_id = partition_rows
    first_lookup = first_lookup_seconds(spark, sink, batch_of(spark, next_id, batch_rows, copies, seed), False)

    def prepare(_round: int):
        nonlocal next_id
        # the previous round's batch reached silver: the mirror reads it from the change feed
        event_ids(spark, next_id, batch_rows, seed).write.format("delta").mode("append").save(silver_path)
        next_id += batch_rows
        return batch_of(spark, next_id, batch_rows, copies, seed)

    def plan(how: str, accepted, silver) -> None:
        silver_ids = None if how == "scan" else sink._looked_up_keys(spark, accepted, [EVENT_DATE], False)[0]
        inserted = plan_silver_changes(accepted, silver, [EVENT_DATE], with_orders=False,
                                       silver_ids=silver_ids).inserts.count()
        if inserted != batch_rows:
            raise RuntimeError(f"{how}: {inserted:,} inserts from a batch of {batch_rows:,} new ids "
                               f"and {copies:,} copies")

    seconds = alternating_rounds(spark, sink, silver_path, repeat, prepare, plan)
    files = len(spark.read.format("delta").load(silver_path).inputFiles())
    mirror_ids = sink._keys.event_ids
    shutil.rmtree(root / f"lake_{partition_rows}", ignore_errors=True)
    return {"partition_rows": partition_rows, "files": files, **timings(seconds, first_lookup),
            "mirror_event_ids": mirror_ids}


ORDER_DAYS = 90
ORDER_EVERY = 77  # 1.3 % of the rows, the generator's share of orders
ORDERS_BACK = 10  # orders per batch that come back earlier with an order id silver holds


def orders_back(spark, silver_first: int, seed: int):
    """ORDERS_BACK orders with new event ids and the order ids of silver's orders from row
    `silver_first` on, each a day before the silver order (so the earliest-order rule keeps them)."""
    from pyspark.sql import functions as F

    rows = [silver_first + ORDER_EVERY * n for n in range(ORDERS_BACK)]
    return (event_ids(spark, 0, 1, seed).limit(0).unionByName(spark.createDataFrame(
        [(f"back-{seed}-{row}", f"order-{row}", row % ORDER_DAYS) for row in rows],
        "event_id string, order_id string, days_back int").select(
        "event_id", F.date_sub(F.lit(EVENT_DATE), F.col("days_back") + 1).alias("event_date"),
        F.lit("order").alias("event_type"), "order_id",
        (F.lit(EVENT_TS) - F.make_dt_interval(F.col("days_back") + 1)).alias("event_ts"))))


def order_lookups(spark, root: Path, silver_rows: int, batch_rows: int, repeat: int, seed: int) -> dict:
    """Silver of `silver_rows` rows over ORDER_DAYS dates (1.3 % orders), then `repeat` rounds: the
    previous batch's new rows are appended, and a batch of today's `batch_rows` new rows (1.3 %
    orders) plus ORDERS_BACK earlier orders reusing silver's order ids is planned with its orders,
    by the scans (every order of silver, the day's ids) and by the keyed mirror, alternating."""
    from pyspark.sql import functions as F

    from touchpoint.streaming.ingest import displaced_orders, plan_silver_changes, silver_orders_sharing_an_id

    sink, silver_path = silver_with_mirror(
        spark, root, f"orders_{silver_rows}", "bench:orders",
        event_ids(spark, 0, silver_rows, seed, days=ORDER_DAYS, order_every=ORDER_EVERY)
        .repartition(max(1, silver_rows // FILE_ROWS)))
    silver_orders = len(range(0, silver_rows, ORDER_EVERY))
    next_id = silver_rows
    first_lookup = first_lookup_seconds(spark, sink, batch_of(spark, next_id, batch_rows, 0, seed, ORDER_EVERY,
                                                              orders_back(spark, 0, seed)), True)

    def prepare(round_number: int):
        nonlocal next_id
        event_ids(spark, next_id, batch_rows, seed, order_every=ORDER_EVERY).write.format("delta").mode(
            "append").save(silver_path)
        next_id += batch_rows
        # Each round brings back other silver orders (ORDER_EVERY * ORDERS_BACK rows further on).
        return batch_of(spark, next_id, batch_rows, 0, seed, ORDER_EVERY,
                        orders_back(spark, (round_number + 1) * ORDER_EVERY * ORDERS_BACK, seed))

    def plan(how: str, accepted, silver) -> None:
        # The sink's steps (IngestSink._process): the orders found, kept; the plan; its inserts,
        # kept; the displaced orders among those found.
        if how == "scan":
            silver_ids = None
            found_orders = silver_orders_sharing_an_id(silver, accepted).localCheckpoint(eager=True)
        else:
            silver_ids, found_orders = sink._looked_up_keys(spark, accepted, [EVENT_DATE], True)
        changes = plan_silver_changes(accepted, silver, [EVENT_DATE], silver_orders=found_orders,
                                      silver_ids=silver_ids)
        inserts = changes.inserts.localCheckpoint(eager=True)
        inserted, displaced = inserts.count(), displaced_orders(found_orders, inserts).count()
        if (inserted, displaced) != (batch_rows + ORDERS_BACK, ORDERS_BACK):
            raise RuntimeError(f"{how}: {inserted:,} inserts and {displaced} displaced orders, expected "
                               f"{batch_rows + ORDERS_BACK:,} and {ORDERS_BACK}")

    seconds = alternating_rounds(spark, sink, silver_path, repeat, prepare, plan)
    mirror_orders = sink._keys.orders_held
    final_silver = spark.read.format("delta").load(silver_path)
    if mirror_orders != final_silver.where(F.col("event_type") == "order").count():
        raise RuntimeError(f"the mirror holds {mirror_orders:,} orders, silver another number")
    files = len(final_silver.inputFiles())
    shutil.rmtree(root / f"orders_{silver_rows}", ignore_errors=True)
    return {"silver_rows": silver_rows, "silver_orders": silver_orders, "dates": ORDER_DAYS, "files": files,
            **timings(seconds, first_lookup), "mirror_orders": mirror_orders}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=20, help="appends of each kind")
    parser.add_argument("--partition-rows", default="500000,2000000,8000000")
    parser.add_argument("--silver-rows", default="2000000,8000000",
                        help="silver sizes (over 90 dates, 1.3 %% orders) for the orders lookup")
    parser.add_argument("--batch-rows", type=int, default=85_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.partition_rows.split(",") if size]
    silver_sizes = [int(size) for size in args.silver_rows.split(",") if size]

    from touchpoint.core.spark import get_spark

    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-costs-"))
    settings = lake_settings(workdir / "lake", state_dir=str(workdir / "state"))
    spark = get_spark("bench-ingest-fixed-costs", settings=settings)
    with RssSampler(roots=lambda: [os.getpid()]) as sampler:
        commits = commit_costs(spark, str(workdir / "commits"), args.appends)
        progress("one-row append: " + ", ".join(
            f"{kind} {commits['median_seconds'][kind]}s ({commits['median_jobs'][kind]} jobs)"
            for kind in commits["median_seconds"]))
        lookups = []
        for size in sizes:
            lookups.append(dedup_lookups(spark, workdir, size, args.batch_rows, args.repeat, args.seed))
            progress(f"dedup of {args.batch_rows:,} new ids against a partition of {size:,} rows "
                     f"({lookups[-1]['files']} files), median s: {lookups[-1]['median_seconds']} "
                     f"(the mirror's first lookup, which loads the date: {lookups[-1]['keyed_first_lookup_seconds']} s)")
        orders = []
        for size in silver_sizes:
            orders.append(order_lookups(spark, workdir, size, args.batch_rows, args.repeat, args.seed))
            progress(f"a batch of {args.batch_rows:,} rows with orders against silver of {size:,} rows "
                     f"({orders[-1]['silver_orders']:,} orders over {ORDER_DAYS} dates, {orders[-1]['files']:,} files), median s: "
                     f"{orders[-1]['median_seconds']} (the mirror's first lookup, which loads the date and "
                     f"every order: {orders[-1]['keyed_first_lookup_seconds']} s)")
    spark.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    write_result("ingest_fixed_costs", {
        "parameters": {**vars(args), "file_rows": FILE_ROWS},
        "commits": commits,
        "dedup": lookups,
        "orders": orders,
        "peak_rss_mb": sampler.peaks_mb,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
