"""The sink's dedup plan on hand-built frames: the first copy to arrive wins within a batch, ids
already in silver are dropped, and an order id keeps its earliest order event (BRIEF §2)."""

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql.types import StructType

from touchpoint.core.spark import local_checkpoint
from touchpoint.schemas.lake import SILVER_SCHEMA
from touchpoint.streaming.ingest import ACCEPTED_COLUMNS, plan_silver_changes, silver_orders_sharing_an_id

ACCEPTED_SCHEMA = StructType([SILVER_SCHEMA[name] for name in ACCEPTED_COLUMNS])
DAY = dt.date(2026, 3, 1)


def at(hour, minute=0, second=0):
    return dt.datetime(2026, 3, 1, hour, minute, second)


def event(event_id, hour, partition=0, offset=0, arrived=None, order_id=None):
    row = {name: None for name in ACCEPTED_COLUMNS}
    row.update(event_id=event_id, event_type="order" if order_id else "page_view", event_ts=at(hour),
               event_date=DAY, anonymous_id="a1", order_id=order_id, source_topic="events.raw",
               source_partition=partition, source_offset=offset, source_ts=arrived or at(20))
    return row


def broadcast_hints(frame):
    return frame._jdf.queryExecution().analyzed().toString().count("strategy=broadcast")


# broadcast=False is the plan of a batch over the sink's broadcast bound: same rows, no hints.
@pytest.mark.parametrize("broadcast", [True, False])
def test_first_arrival_wins_silver_ids_are_dropped_and_orders_keep_the_earliest(spark, broadcast):
    silver = spark.createDataFrame([
        {**event("in-silver", 8), "channel": "direct"},
        {**event("order-late", 11, order_id="o1"), "channel": "direct"},
        {**event("order-early", 9, order_id="o2"), "channel": "direct"},
    ], SILVER_SCHEMA)
    batch = spark.createDataFrame([
        event("twice-by-time", 10, partition=0, offset=5, arrived=at(20, 0, 2)),
        event("twice-by-time", 10, partition=1, offset=7, arrived=at(20, 0, 1)),  # arrived first
        event("twice-by-offset", 10, partition=1, offset=3),
        event("twice-by-offset", 10, partition=0, offset=9),  # same time: lower partition first
        event("in-silver", 8, partition=0, offset=11),
        event("new", 12, partition=0, offset=12),
        event("order-new-earlier", 10, partition=0, offset=13, order_id="o1"),  # displaces order-late
        event("order-new-later", 12, partition=0, offset=14, order_id="o2"),  # loses to order-early
        event("order-b", 8, partition=1, offset=15, order_id="o3"),
        event("order-a", 7, partition=1, offset=16, order_id="o3"),  # the earlier of the batch's two
    ], ACCEPTED_SCHEMA)

    changes = plan_silver_changes(batch, silver, [DAY], broadcast=broadcast)

    expected = spark.createDataFrame([
        event("new", 12, partition=0, offset=12),
        event("order-a", 7, partition=1, offset=16, order_id="o3"),
        event("order-new-earlier", 10, partition=0, offset=13, order_id="o1"),
        event("twice-by-offset", 10, partition=0, offset=9),
        event("twice-by-time", 10, partition=1, offset=7, arrived=at(20, 0, 1)),
    ], ACCEPTED_SCHEMA)
    assert_df_equality(changes.inserts.orderBy("event_id"), expected, ignore_nullable=True)
    assert [tuple(r) for r in changes.displaced.collect()] == [("order-late", DAY)]
    # the hints are there, or none at all
    assert (broadcast_hints(changes.inserts) > 0, broadcast_hints(changes.displaced) > 0) == (broadcast, broadcast)


@pytest.mark.parametrize("broadcast", [True, False])
def test_without_orders_only_ids_are_deduplicated(spark, broadcast):
    silver = spark.createDataFrame([{**event("old", 8), "channel": "direct"}], SILVER_SCHEMA)
    batch = spark.createDataFrame([event("old", 8, offset=1), event("a", 9, offset=2), event("a", 9, offset=3),
                                   event("b", 9, offset=4)], ACCEPTED_SCHEMA)

    changes = plan_silver_changes(batch, silver, [DAY], with_orders=False, broadcast=broadcast)

    assert sorted((r["event_id"], r["source_offset"]) for r in changes.inserts.collect()) == [("a", 2), ("b", 4)]
    assert changes.displaced.count() == 0


def test_silver_orders_of_the_batch_span_every_date_and_stand_in_for_silver_in_the_plan(spark):
    """The sink scans silver's orders once per batch and keeps them: the plan given that frame
    inserts and displaces exactly what it does reading silver itself."""
    earlier_day = dt.date(2026, 2, 27)
    silver = spark.createDataFrame([
        {**event("o1-today", 11, order_id="o1"), "channel": "direct"},
        {**event("o1-before", 9, order_id="o1"), "event_ts": dt.datetime(2026, 2, 27, 9), "event_date": earlier_day,
         "channel": "direct"},
        {**event("o9", 8, order_id="o9"), "channel": "direct"},  # no order of the batch has o9
        {**event("view", 8), "channel": "direct"},
    ], SILVER_SCHEMA)
    batch = spark.createDataFrame([
        event("o1-new", 7, offset=1, order_id="o1"),  # later than o1-before, two days earlier
        event("o2-new", 7, offset=2, order_id="o2"),
        event("view-new", 7, offset=3),
    ], ACCEPTED_SCHEMA)

    orders = silver_orders_sharing_an_id(silver, batch)

    assert sorted(tuple(row) for row in orders.collect()) == [
        ("o1", dt.datetime(2026, 2, 27, 9), "o1-before", earlier_day),
        ("o1", at(11), "o1-today", DAY),
    ]
    read = plan_silver_changes(batch, silver, [DAY])
    with local_checkpoint(orders) as kept_orders:
        kept = plan_silver_changes(batch, silver, [DAY], silver_orders=kept_orders)
        assert sorted(r.event_id for r in kept.inserts.collect()) == ["o2-new", "view-new"]  # o1-before stays
        assert_df_equality(kept.inserts.orderBy("event_id"), read.inserts.orderBy("event_id"))
        assert kept.displaced.count() == read.displaced.count() == 0


def test_an_earlier_order_displaces_its_silver_orders_on_every_date(spark):
    later_day = dt.date(2026, 3, 2)
    silver = spark.createDataFrame([
        {**event("o1-today", 11, order_id="o1"), "channel": "direct"},
        {**event("o1-tomorrow", 9, order_id="o1"), "event_ts": dt.datetime(2026, 3, 2, 9), "event_date": later_day,
         "channel": "direct"},
    ], SILVER_SCHEMA)
    batch = spark.createDataFrame([event("o1-first", 7, offset=1, order_id="o1")], ACCEPTED_SCHEMA)

    with local_checkpoint(silver_orders_sharing_an_id(silver, batch)) as orders:
        changes = plan_silver_changes(batch, silver, [DAY], silver_orders=orders)

        assert [r.event_id for r in changes.inserts.collect()] == ["o1-first"]
        assert sorted(tuple(r) for r in changes.displaced.collect()) == [("o1-today", DAY),
                                                                          ("o1-tomorrow", later_day)]


def test_the_sink_frees_every_frame_it_kept_for_a_batch(spark, tmp_path):
    """A stream runs for weeks: the frames a batch reads more than once (bronze, validated rows,
    inserts, displaced orders) must be freed when it ends, or every batch leaves its blocks behind."""
    import json

    from touchpoint.core.config import load_settings
    from touchpoint.streaming.ingest import IngestSink, file_batches, file_bronze_rows, scan_file

    def order(event_id, hour):
        return json.dumps({"event_id": event_id, "event_type": "order", "event_ts": f"2026-03-01T{hour}:00:00Z",
                           "user_id": "u-1", "properties": {"order_id": "A-1", "revenue": 10.0, "currency": "USD"}})

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    sink = IngestSink(settings, source_id="test:frees")
    files = {"first": [order("order-late", 12), "not json"], "second": [order("order-early", 11)]}
    counts = {}
    jsc = spark.sparkContext._jsc
    for batch_id, (name, lines) in enumerate(files.items()):
        file = tmp_path / f"{name}.jsonl"
        file.write_text("\n".join(lines) + "\n")
        [ranges] = file_batches(file, scan_file(file), 0)
        kept_before = set(jsc.getPersistentRDDs().keys())
        counts[name] = sink(file_bronze_rows(spark, file, ranges), batch_id)
        # only what this batch kept counts: the context cleaner may free other tests' frames meanwhile
        assert set(jsc.getPersistentRDDs().keys()) - kept_before == set()
    assert counts == {
        "first": {"bronze": 2, "quarantine": 1, "accepted": 1, "inserted": 1, "displaced": 0, "phones_dropped": 0,
                  "silver": 1, "duplicates": 0},
        # the earlier order event displaces the later one: silver keeps one row for A-1
        "second": {"bronze": 1, "quarantine": 0, "accepted": 1, "inserted": 1, "displaced": 1, "phones_dropped": 0,
                   "silver": 0, "duplicates": 1},
    }
    silver = spark.read.format("delta").load(sink.paths["silver.events"])
    assert [row.event_id for row in silver.collect()] == ["order-early"]


def test_two_writers_at_once_insert_an_event_id_both_carry_once(spark, tmp_path):
    """The stream and a file ingest at the same moment, both carrying event `same`: writer B plans
    its batch while writer A has planned and not yet committed. B waits for the silver write lock
    until A's silver commit, then finds `same` in silver: one row. (Before session 47 B planned
    against silver without A's row, and both inserted it.)"""
    import json
    import threading
    import time

    from touchpoint.core.config import load_settings
    from touchpoint.streaming.ingest import IngestSink, file_batches, file_bronze_rows, scan_file

    from lock_waiters import in_thread, waits_for_lock

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    a_planned = threading.Event()

    def bronze(name, *ids):
        file = tmp_path / f"{name}.jsonl"
        file.write_text("".join(json.dumps({"event_id": i, "event_type": "page_view", "user_id": "u-1",
                                            "event_ts": "2026-03-01T10:00:00Z"}) + "\n" for i in ids))
        [ranges] = file_batches(file, scan_file(file), 0)
        return file_bronze_rows(spark, file, ranges)

    with waits_for_lock("silver") as b_waits:
        b: threading.Thread | None = None

        class HeldBeforeSilver(IngestSink):
            """Writer A: planned, then holds its silver commit until B waits for the lock or is done."""
            def _append(self, frame, table, batch_id):
                if table == "silver.events":
                    a_planned.set()
                    deadline = time.monotonic() + 300
                    while not (b_waits.is_set() or (b is not None and not b.is_alive())):
                        assert time.monotonic() < deadline, "writer B neither waited for the lock nor finished"
                        time.sleep(0.05)
                super()._append(frame, table, batch_id)

        writer_a, writer_b = HeldBeforeSilver(settings, "test:a"), IngestSink(settings, "test:b")
        writer_a.ensure_tables(spark)
        a, finish_a = in_thread(lambda: writer_a(bronze("a", "same", "a-only"), 0))
        assert a_planned.wait(300) or not a.is_alive(), "writer A never reached its silver commit"
        b, finish_b = in_thread(lambda: writer_b(bronze("b", "same", "b-only"), 0))
        counts = {"a": finish_a(), "b": finish_b()}
    silver = spark.read.format("delta").load(writer_a.paths["silver.events"])
    assert sorted(row.event_id for row in silver.collect()) == ["a-only", "b-only", "same"]
    assert (counts["a"]["silver"], counts["a"]["duplicates"]) == (2, 0)
    assert (counts["b"]["silver"], counts["b"]["duplicates"]) == (1, 1)
    assert b_waits.is_set()  # B waited for A's commit (rather than planning after it by chance)
