"""Drill: the ingest stream and the speed query are SIGKILLed at seeded random moments while the
generator produces. `make test` kills each once, at a random moment after it committed a batch; the
larger version (`make drills`) first also kills both in start-up or their first batch. After both
have drained what Kafka holds:
- silver holds every valid event_id of the generator exactly once, bronze every Kafka record once,
  quarantine every malformed line, and the per-batch reconciliation adds up to what was sent;
- every serving total (per campaign per day: impressions, clicks, orders, revenue, last-touch
  orders and revenue) equals a full batch recomputation (identity + campaign_metrics for the last
  event day, run on a byte copy of the lake, where the batch then holds every event).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import time

import pytest

from bench.faults import (
    BackgroundGenerator, ChildProcess, committed_batches, ingest_args, lake_settings, lake_table,
    reconciliation_totals, speed_args, subprocess_env, valid_event_ids, wait_for,
)
from touchpoint.generator import GeneratorConfig

pytestmark = [pytest.mark.timeout(1800), pytest.mark.drill, pytest.mark.slow, pytest.mark.kafka]
# The `make test` size kills each process once; the larger one adds a round of start-up kills.
ROUNDS = [pytest.param(False, id="one-kill-each"),
          pytest.param(True, id="with-start-up-kills", marks=pytest.mark.long_drill)]

# More simulated traffic than a run ever sends: the generator produces in real time until the
# last kill, then stops (what it sent is a prefix of this seeded sequence).
TRAFFIC = GeneratorConfig(seed=71, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.02, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 12
KILL_SEED = 20260301  # the kill moments are random, but reproducible
MEASURES = ("impressions", "clicks", "orders", "revenue", "last_touch_orders", "last_touch_revenue")


def speed_batches(settings) -> int:
    return len(lake_table(settings, "speed.freshness", ["batch_id"]))


def serving_totals(settings) -> list[tuple]:
    from touchpoint.core.serving import query

    rows = query(settings, "select * from serving.campaign_daily").to_pylist()
    return sorted(((r["date"], r["campaign"], *(r[m] for m in MEASURES)) for r in rows),
                  key=lambda r: (r[0], r[1] or ""))


def kill_after_next_commit(process: ChildProcess, progress, before: int, moments: random.Random, what: str) -> None:
    """SIGKILL `process` at a random moment (0-4 s) once its progress passed `before` (counted when
    it started: a batch it committed meanwhile counts too)."""
    wait_for(lambda: progress() > before or not process.alive(), timeout=900, what=what)
    time.sleep(moments.uniform(0, 4))
    assert process.alive(), f"{what}: the process died on its own:\n{process.log_tail()}"
    process.kill()


@pytest.mark.parametrize("start_up_kills", ROUNDS)
def test_sigkilled_ingest_and_speed_lose_nothing_and_serve_the_batch_totals(spark, tmp_path, kafka_topic,
                                                                             start_up_kills):
    from touchpoint.jobs.runner import run_job
    from touchpoint.streaming import ingest as ingest_stream
    from touchpoint.streaming import speed as speed_stream

    lake = tmp_path / "lake"
    settings = lake_settings(lake)
    # The lake's tables exist before two processes race to create them.
    ingest_stream.IngestSink(settings, source_id="stream:ingest").ensure_tables(spark)
    speed_stream.enable_change_feed(spark, settings)
    # Small micro-batches so that a kill lands between, inside and before batches.
    env = subprocess_env(lake, STREAM__MAX_OFFSETS_PER_TRIGGER="250", STREAM__TRIGGER_SECONDS="0.5",
                         STREAM__CUSTOMER_TRIGGER_SECONDS="2")
    generator = BackgroundGenerator(kafka_topic, settings.kafka_bootstrap, TRAFFIC, rate=RATE)
    generator.start()
    moments = random.Random(KILL_SEED)
    processes: list[ChildProcess] = []

    def start(args, name):
        processes.append(ChildProcess(args, env, tmp_path / f"{name}.log"))
        return processes[-1]

    try:
        if start_up_kills:  # round 1: both are killed at random moments of their start-up or first batch
            ingest, speed = start(ingest_args(kafka_topic), "ingest-1"), start(speed_args(), "speed-1")
            for process, moment in sorted(((ingest, moments.uniform(3, 20)), (speed, moments.uniform(3, 30))),
                                          key=lambda pair: pair[1]):
                time.sleep(max(0.0, moment - (time.monotonic() - process.started)))
                assert process.alive(), f"{process.args} died on its own:\n{process.log_tail()}"
                process.kill()
        # Round 2: each is killed at a random moment after it committed a batch.
        ingested, sped = committed_batches(settings), speed_batches(settings)
        ingest, speed = start(ingest_args(kafka_topic), "ingest-2"), start(speed_args(), "speed-2")
        kill_after_next_commit(ingest, lambda: committed_batches(settings), ingested, moments, "an ingest batch")
        kill_after_next_commit(speed, lambda: speed_batches(settings), sped, moments, "a speed batch")
    finally:
        generator.stop()
        for process in processes:
            if process.alive():
                process.kill()
    report = generator.result(timeout=120)
    landed_before_drain = len(lake_table(settings, "silver.events", ["event_id"]))

    # Ingestion drains in this test's Spark application (a child process here cost 50 s of the suite's
    # budget), the speed layer as one more child process (a restarted `touchpoint stream speed`).
    drain = ingest_stream.start_stream(spark, lake_settings(lake, stream={"max_offsets_per_trigger": 100_000}),
                                       topic=kafka_topic, trigger_once=True)
    drain.awaitTermination(900)
    assert drain.exception() is None, drain.exception()
    speed_drain = ChildProcess(speed_args(available_now=True), env, tmp_path / "speed-drain.log")
    assert speed_drain.wait(900) == 0, speed_drain.log_tail()

    # The kills left work behind for the restart: what Kafka held was not all in silver yet.
    assert landed_before_drain < report["expected_silver"]

    silver = lake_table(settings, "silver.events", ["event_id", "event_date"])
    silver_ids = [row["event_id"] for row in silver]
    assert len(silver_ids) == len(set(silver_ids)), "an event landed twice"
    expected_ids = valid_event_ids(TRAFFIC, report["lines"])
    assert sorted(silver_ids) == sorted(expected_ids)
    assert len(expected_ids) == report["expected_silver"]
    assert len(lake_table(settings, "silver.quarantine", ["error_code"])) == report["expected_quarantine"] > 0
    assert reconciliation_totals(settings) == {
        "bronze": report["lines"], "silver": report["expected_silver"],
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"],
    }
    # bronze keeps each Kafka record once, however often its batch was replayed
    coordinates = [(r["source_partition"], r["source_offset"])
                   for r in lake_table(settings, "bronze.events", ["source_partition", "source_offset"])]
    assert len(coordinates) == len(set(coordinates)) == report["lines"]

    served = serving_totals(settings)
    assert served and any(row[3] for row in served), "no orders served: the drill measured nothing"
    # The batch recomputation: a copy of the lake where identity and campaign_metrics run for the
    # last event day, so every event is below the high-water mark and read by the batch.
    copy = tmp_path / "recomputed" / "lake"
    shutil.copytree(lake, copy)
    recomputed_settings = lake_settings(copy)
    last_day = max(row["event_date"] for row in silver)
    assert isinstance(last_day, dt.date)
    run_job("identity", last_day, settings=recomputed_settings, spark=spark)
    run_job("campaign_metrics", last_day, settings=recomputed_settings, spark=spark)
    assert served == serving_totals(recomputed_settings)
