"""Kafka -> bronze/silver/quarantine with the real broker: dedup across batches, orders, reconciliation."""

import json
import os
import signal
import subprocess
import sys
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


def test_killed_stream_restarts_without_loss_or_doubles(tmp_path, kafka_topic):
    lake = tmp_path / "lake"
    env = {**os.environ, "TOUCHPOINT_LAKE_ROOT": str(lake), "TOUCHPOINT_STREAM__MAX_OFFSETS_PER_TRIGGER": "40",
           "TOUCHPOINT_STREAM__TRIGGER_SECONDS": "0.5", "TOUCHPOINT_SPARK_SHUFFLE_PARTITIONS": "2"}
    settings = load_settings(lake_root=str(lake))
    payloads = [page_view(i) for i in range(400)]
    produce(settings, kafka_topic, payloads[:200])
    command = [sys.executable, "-m", "touchpoint", "stream", "ingest", "--topic", kafka_topic]
    log = open(tmp_path / "stream.log", "wb")
    stream = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        reconciliation = table_path("silver.reconciliation", settings)
        while time.monotonic() < deadline:
            try:
                if len(DeltaTable(reconciliation).to_pyarrow_table()) >= 2:
                    break
            except Exception:  # table not created yet
                pass
            time.sleep(0.5)
        else:
            pytest.fail("stream made no progress: " + (tmp_path / "stream.log").read_text()[-3000:])
        produce(settings, kafka_topic, payloads[200:] + payloads[:50])  # more, including re-sends
        time.sleep(1.5)
    finally:
        os.killpg(stream.pid, signal.SIGKILL)  # abrupt: Python driver and its JVM together
        stream.wait(30)
    landed_before = len(DeltaTable(table_path("silver.events", settings)).to_pyarrow_table())
    assert landed_before < 400  # it really was killed mid-stream

    # drain the rest in one micro-batch: the point is what the checkpoint and txn versions recover
    drain_env = {**env, "TOUCHPOINT_STREAM__MAX_OFFSETS_PER_TRIGGER": "100000"}
    restarted = subprocess.run(command + ["--available-now"], env=drain_env, capture_output=True, timeout=900)
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    silver_ids = [r["event_id"] for r in rows(settings, "silver.events")]
    assert sorted(silver_ids) == sorted(f"pv-{i}" for i in range(400))
    batches = rows(settings, "silver.reconciliation")
    totals = {k: sum(b[k] for b in batches) for k in ("bronze", "silver", "quarantine", "duplicates")}
    assert totals == {"bronze": 450, "silver": 400, "quarantine": 0, "duplicates": 50}
