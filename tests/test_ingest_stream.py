"""Kafka -> bronze/silver/quarantine with the real broker: dedup across batches, orders, reconciliation."""

import json
import time

import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings

pytestmark = pytest.mark.kafka


def page_view(i, **extra):
    return {"event_id": f"pv-{i}", "event_type": "page_view", "event_ts": f"2026-03-01T10:{i % 60:02d}:00Z",
            "anonymous_id": f"anon-{i % 7}", "context": {"page_url": "https://shop.example/"}, **extra}


def order(event_id, order_id, ts, revenue=10.0):
    return {"event_id": event_id, "event_type": "order", "event_ts": ts, "user_id": "u-1",
            "properties": {"order_id": order_id, "revenue": revenue, "currency": "USD"}}


def produce(settings, topic, payloads):
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    for payload in payloads:
        producer.send(topic, value=payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    producer.flush()
    producer.close()


def rows(settings, table):
    return DeltaTable(table_path(table, settings)).to_pyarrow_table().to_pylist()


def drain(spark, settings, topic):
    from touchpoint.streaming.ingest import start_stream

    query = start_stream(spark, settings, topic=topic, query_name="ingest", trigger_once=True)
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()


def test_stream_dedups_across_batches_and_reconciles(spark, tmp_path, kafka_topic):
    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2,
                             stream={"max_offsets_per_trigger": 8, "trigger_seconds": 0.5})
    first = [page_view(i) for i in range(10)] + [b"not json", order("o-late", "A-1", "2026-03-01T12:00:00Z")]
    produce(settings, kafka_topic, first)
    drain(spark, settings, kafka_topic)

    second = ([page_view(i) for i in range(5)]  # re-sent copies, a later batch
              + [page_view(100), b'{"event_id": "x"', order("o-early", "A-1", "2026-03-01T11:00:00Z"),
                 order("o-other", "A-2", "2026-03-01T11:00:00Z"), order("o-other", "A-2", "2026-03-01T11:00:00Z")])
    produce(settings, kafka_topic, second)
    drain(spark, settings, kafka_topic)

    silver_ids = sorted(r["event_id"] for r in rows(settings, "silver.events"))
    assert silver_ids == sorted([f"pv-{i}" for i in range(10)] + ["pv-100", "o-early", "o-other"])
    assert sorted(r["error_code"] for r in rows(settings, "silver.quarantine")) == ["not_json", "truncated_json"]
    bronze = rows(settings, "bronze.events")
    assert len(bronze) == len(first) + len(second)
    assert {(r["source_topic"], r["source_partition"], r["source_offset"]) for r in bronze}.__len__() == len(bronze)

    batches = rows(settings, "silver.reconciliation")
    assert len(batches) >= 3  # 8 offsets per trigger forced several micro-batches
    totals = {k: sum(b[k] for b in batches) for k in ("bronze", "silver", "quarantine", "duplicates")}
    # duplicates: 5 re-sent page views, o-late displaced by o-early, one re-sent o-other
    assert totals == {"bronze": 22, "silver": 13, "quarantine": 2, "duplicates": 7}
    for b in batches:
        assert b["bronze"] == b["silver"] + b["quarantine"] + b["duplicates"]


def test_a_lost_checkpoint_is_refused_instead_of_dropping_the_batches_it_numbered(spark, tmp_path, kafka_topic):
    """A new checkpoint numbers batches from 0 again, and the sink skips every id silver already holds
    as written: the records of those batches were dropped without a trace. The stream now refuses to
    start, and under a new query name it reads the topic again, the copies dropped by event id."""
    import shutil

    from touchpoint.streaming.ingest import start_stream

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    produce(settings, kafka_topic, [page_view(i) for i in range(3)])
    drain(spark, settings, kafka_topic)
    shutil.rmtree(f"{settings.checkpoint_root}/ingest")
    produce(settings, kafka_topic, [page_view(i) for i in range(3, 6)])
    with pytest.raises(RuntimeError) as error:
        start_stream(spark, settings, topic=kafka_topic, query_name="ingest", trigger_once=True)
    assert str(error.value) == (
        f"ingest query 'ingest': its checkpoint {settings.checkpoint_root}/ingest is missing, but silver holds "
        "its batches up to 0; restore the checkpoint, or start the stream under a new query name (--query-name) to "
        "read the topic again from stream.starting_offsets (events already in silver are dropped as duplicates by "
        "event_id)")
    query = start_stream(spark, settings, topic=kafka_topic, query_name="ingest-again", trigger_once=True)
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()
    assert sorted(r["event_id"] for r in rows(settings, "silver.events")) == [f"pv-{i}" for i in range(6)]


def test_silver_has_its_change_feed_from_creation_so_the_speed_layer_commits_nothing(spark, tmp_path, kafka_topic):
    from touchpoint.streaming.speed import change_feed_start, enable_change_feed

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    produce(settings, kafka_topic, [page_view(i) for i in range(3)])
    drain(spark, settings, kafka_topic)
    silver = DeltaTable(table_path("silver.events", settings))
    assert silver.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    before = silver.version()
    # Switching the feed on later would be a metadata commit racing the stream's appends.
    assert enable_change_feed(spark, settings) == 0
    assert DeltaTable(table_path("silver.events", settings)).version() == before
    assert change_feed_start(silver.history()) == 0  # what bench/freshness reads through delta-rs


def test_an_older_silver_gets_its_change_feed_from_the_commit_that_switched_it_on(spark, tmp_path):
    from touchpoint.schemas.lake import SILVER_SCHEMA
    from touchpoint.streaming.speed import change_feed_start, enable_change_feed

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    path = table_path("silver.events", settings)
    spark.createDataFrame([], SILVER_SCHEMA).write.format("delta").partitionBy("event_date").save(path)  # no feed
    before = DeltaTable(path).version()
    assert enable_change_feed(spark, settings) == before + 1  # the commit that switched it on
    assert enable_change_feed(spark, settings) == before + 1  # already on: no new commit, the same start
    assert DeltaTable(path).version() == before + 1
    assert change_feed_start(DeltaTable(path).history()) == before + 1


def test_an_append_that_loses_a_race_to_a_metadata_commit_is_written_again_once(spark, tmp_path):
    """In an older lake silver has no change feed, and the speed layer switching it on commits
    metadata while the stream appends. The append's snapshot predates that commit, so Delta refuses
    it; the sink writes it again, and it lands once. The race is forced: the appended frame is
    computed by a UDF that waits until the metadata commit has happened (only on the first try)."""
    import datetime as dt
    import threading

    from pyspark.sql import functions as F

    from touchpoint.schemas.lake import RECONCILIATION_SCHEMA
    from touchpoint.streaming.ingest import IngestSink

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    sink = IngestSink(settings, source_id="test:race")
    sink.ensure_tables(spark)
    path = table_path("silver.reconciliation", settings)
    computing, altered = tmp_path / "computing", tmp_path / "altered"

    @F.udf("long")
    def bronze_count_after_the_race(value):
        import os
        import time as clock

        if not os.path.exists(altered):
            open(computing, "w").close()
            deadline = clock.monotonic() + 120
            while not os.path.exists(altered) and clock.monotonic() < deadline:
                clock.sleep(0.1)
        return value

    row = ("stream:test", 0, 5, 3, 1, 1, 0, dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
    batch = spark.createDataFrame([row], RECONCILIATION_SCHEMA).coalesce(1)
    batch = batch.withColumn("bronze", bronze_count_after_the_race("bronze")).select(*RECONCILIATION_SCHEMA.fieldNames())
    errors = []

    def append():
        try:
            sink._append(batch, "silver.reconciliation", 0)
        except Exception as error:  # surfaced below
            errors.append(error)

    writer = threading.Thread(target=append)
    writer.start()
    deadline = time.monotonic() + 120
    while not computing.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert computing.exists(), "the append never started computing"
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('touchpoint.test.flag' = 'true')")
    altered.touch()
    writer.join(300)
    assert errors == []
    # Replays: the sink knows its commit; a restarted sink reads the batch's mark from the log.
    sink._append(batch, "silver.reconciliation", 0)
    IngestSink(settings, source_id="test:race")._append(batch, "silver.reconciliation", 0)
    landed = rows(settings, "silver.reconciliation")
    assert [(r["source"], r["batch_id"], r["bronze"]) for r in landed] == [("stream:test", 0, 5)]
    operations = [h["operation"] for h in DeltaTable(path).history()]
    assert operations == ["WRITE", "SET TBLPROPERTIES", "CREATE TABLE"]
