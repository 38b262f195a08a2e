"""Drill: OPTIMIZE and VACUUM (the lake_maintenance steps) run over and over while the ingest stream
writes the same tables, including the stream's MERGE that deletes displaced orders from silver
(the write that can conflict with a compaction). Neither side fails, and the data is exactly what
an undisturbed ingest gives.
"""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from kafka import KafkaProducer

from bench.faults import (
    BackgroundGenerator, ingested_all, lake_settings, lake_table, reconciliation_totals, stream_diagnosis,
    valid_event_ids, wait_for,
)
from touchpoint.core.catalog import table_path
from touchpoint.generator import GeneratorConfig

pytestmark = [pytest.mark.timeout(1800), pytest.mark.drill, pytest.mark.slow, pytest.mark.kafka]

# Produced in real time while the order pairs go in, then stopped (a prefix of this seeded sequence).
TRAFFIC = GeneratorConfig(seed=31, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.05, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 5  # lines/s: the stream keeps up even while maintenance takes most of the 2 cores
# Order pairs (each: a later order, then an earlier order with the same order_id that displaces it)
# and the maintenance runs to wait for: `make test` size, and the larger one of `make drills`.
SIZES = [pytest.param(2, 2, id="2-pairs"), pytest.param(6, 5, id="6-pairs", marks=pytest.mark.long_drill)]


def order(event_id: str, order_id: str, minute: int) -> bytes:
    return json.dumps({"event_id": event_id, "event_type": "order", "event_ts": f"2026-03-02T09:{minute:02d}:00Z",
                       "user_id": f"drill-{order_id}",
                       "properties": {"order_id": order_id, "revenue": 12.5, "currency": "USD"}}).encode()


@pytest.mark.parametrize(("order_pairs", "maintenance_rounds"), SIZES)
def test_optimize_and_vacuum_beside_the_stream(spark, tmp_path, kafka_topic, order_pairs, maintenance_rounds):
    from delta.tables import DeltaTable

    from touchpoint.jobs import maintenance
    from touchpoint.streaming.ingest import start_stream

    settings = lake_settings(tmp_path / "lake", stream={"max_offsets_per_trigger": 1000, "trigger_seconds": 0.5})
    generator = BackgroundGenerator(kafka_topic, settings.kafka_bootstrap, TRAFFIC, rate=RATE)
    generator.start()
    query = start_stream(spark, settings, topic=kafka_topic, query_name="ingest")
    diagnose = stream_diagnosis(spark, query, tmp_path / "dumps")  # a wait that times out says where the stream is

    maintenance_runs, maintenance_errors, stop = [], [], threading.Event()

    def landed_ids() -> set[str]:
        return {row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])}

    def maintain() -> None:
        while not stop.wait(5.0):  # a pause between runs: on 2 cores back-to-back runs starve the stream
            try:
                compacted = maintenance.optimize(spark, settings, dt.date(2026, 3, 3))["files_compacted"]
                maintenance.vacuum(spark, settings, dt.date(2026, 3, 3))
                maintenance_runs.append(compacted)
            except Exception as error:  # a failed maintenance run is a drill failure
                maintenance_errors.append(repr(error))
                return

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        wait_for(lambda: reconciliation_totals(settings)["bronze"] > 0, timeout=600, what="the first batch",
                 diagnose=diagnose)
        worker = threading.Thread(target=maintain, daemon=True)
        worker.start()
        for pair in range(order_pairs):
            # The later order first; once it is in silver, the earlier one displaces it (a MERGE
            # delete in a later batch, never a dedup inside one batch).
            producer.send(kafka_topic, order(f"drill-late-{pair}", f"DRILL-{pair}", 40))
            producer.flush()
            wait_for(lambda: f"drill-late-{pair}" in landed_ids() or not query.isActive, timeout=600,
                     what=f"order pair {pair} landing", diagnose=diagnose)
            producer.send(kafka_topic, order(f"drill-early-{pair}", f"DRILL-{pair}", 10))
            producer.flush()
        generator.stop()
        report = generator.result(timeout=120)
        expected_lines = report["lines"] + 2 * order_pairs
        wait_for(lambda: ingested_all(settings, expected_lines) or not query.isActive,
                 timeout=600, what="the stream catching up",
                 diagnose=lambda: f"taken {reconciliation_totals(settings)} of {expected_lines} lines\n" + diagnose())
        wait_for(lambda: len(maintenance_runs) >= maintenance_rounds or maintenance_errors, timeout=600,
                 what=f"{maintenance_rounds} maintenance runs")
    finally:
        stop.set()
        producer.close()
    worker.join(600)
    assert query.exception() is None, query.exception()
    query.stop()
    assert maintenance_errors == []

    expected_ids = valid_event_ids(TRAFFIC, report["lines"]) + [f"drill-early-{pair}" for pair in range(order_pairs)]
    silver_ids = [row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])]
    assert len(silver_ids) == len(set(silver_ids))
    assert sorted(silver_ids) == sorted(expected_ids)
    assert reconciliation_totals(settings) == {
        "bronze": expected_lines, "silver": report["expected_silver"] + order_pairs,
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"] + order_pairs,
    }
    # Compaction really ran against the live table, and never changed data.
    history = DeltaTable.forPath(spark, table_path("silver.events", settings)).history().collect()
    optimizes = [h for h in history if h["operation"] == "OPTIMIZE"]
    assert optimizes and sum(int(h["operationMetrics"]["numRemovedFiles"]) for h in optimizes) > 0
    assert any(h["operation"] == "MERGE" for h in history), "no displaced order was deleted concurrently"
