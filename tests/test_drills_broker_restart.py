"""Drill: the Kafka broker is stopped and restarted while the generator produces and the ingest
stream consumes. The idempotent producer's retries deliver every record exactly once, the stream
carries on, and silver/quarantine/reconciliation match what the generator sent.

It runs its own broker on free ports with its own state folder: the shared broker on 9092 is never
touched.
"""

from __future__ import annotations

import time

import pytest

from bench.faults import (
    BackgroundGenerator, broker_pid, committed_batches, ingested_all, lake_settings, lake_table, private_broker,
    reconciliation_totals, valid_event_ids, wait_for,
)
from touchpoint.generator import GeneratorConfig
from touchpoint.infra import kafka

pytestmark = [pytest.mark.drill, pytest.mark.kafka]

# Produced in real time until a while after the restart (a prefix of this seeded sequence).
TRAFFIC = GeneratorConfig(seed=23, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.05, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 20
AFTER_RESTART_SECONDS = 10
OUTAGE_SECONDS = 8
TOPIC = "drill.broker-restart"


def test_broker_restart_loses_and_doubles_nothing(spark, tmp_path):
    from touchpoint.streaming.ingest import start_stream

    lake = tmp_path / "lake"
    with private_broker(tmp_path / "broker-state") as broker:
        kafka.ensure_topic(TOPIC, partitions=2, settings=broker)
        settings = lake_settings(lake, kafka_bootstrap=broker.kafka_bootstrap,
                                 stream={"max_offsets_per_trigger": 400, "trigger_seconds": 0.5})
        generator = BackgroundGenerator(TOPIC, broker.kafka_bootstrap, TRAFFIC, rate=RATE)
        generator.start()
        # The stream runs in this test's Spark application: what must survive is its Kafka consumer.
        stream = start_stream(spark, settings, topic=TOPIC, query_name="ingest")
        try:
            wait_for(lambda: committed_batches(settings) > 0 or not stream.isActive, timeout=600,
                     what="the first committed batch")
            assert stream.isActive, stream.exception()

            old_pid = broker_pid(broker)
            assert kafka.stop(broker)  # SIGTERM by the private broker's PID file
            time.sleep(OUTAGE_SECONDS)
            restarted = kafka.start(broker, timeout=180)
            assert restarted.answering and restarted.pid != old_pid

            time.sleep(AFTER_RESTART_SECONDS)
            generator.stop()
            report = generator.result(timeout=600)  # raises if any record was not delivered
            wait_for(lambda: ingested_all(settings, report["lines"]) or not stream.isActive,
                     timeout=600, what="the stream catching up after the restart")
            assert stream.isActive, f"the stream did not survive the broker restart: {stream.exception()}"
        finally:
            generator.stop()
            stream.stop()

    expected_ids = valid_event_ids(TRAFFIC, report["lines"])
    silver_ids = [row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])]
    assert len(silver_ids) == len(set(silver_ids))
    assert sorted(silver_ids) == sorted(expected_ids)
    assert reconciliation_totals(settings) == {
        "bronze": report["lines"], "silver": report["expected_silver"],
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"],
    }
    # No record was written to Kafka twice by the producer's retries: bronze holds each line once.
    assert len(lake_table(settings, "bronze.events", ["source_offset"])) == report["lines"]
