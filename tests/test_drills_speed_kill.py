"""Drill: the speed layer (and ingestion once) are SIGKILLed at seeded random moments while the
generator produces. Once both have caught up, every serving total (per campaign per day:
impressions, clicks, orders, revenue, last-touch orders and revenue) equals a full batch
recomputation over all ingested events (identity + campaign_metrics for the last day, run on a
byte copy of the lake, where the batch then holds every event).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import time

import pytest

from bench.faults import (
    BackgroundGenerator, ChildProcess, JARS, committed_batches, ingest_args, lake_table, speed_args,
    subprocess_env, valid_event_ids, wait_for,
)
from touchpoint.core.config import load_settings
from touchpoint.generator import GeneratorConfig

pytestmark = [pytest.mark.timeout(1800), pytest.mark.drill, pytest.mark.kafka]

pytest.importorskip("touchpoint.streaming.speed")

TRAFFIC = GeneratorConfig(seed=71, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.02, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 10
SPEED_KILLS = 2
KILL_SEED = 20260302
MEASURES = ("impressions", "clicks", "orders", "revenue", "last_touch_orders", "last_touch_revenue")


def speed_batches(settings) -> int:
    return len(lake_table(settings, "speed.freshness", ["batch_id"]))


def serving_totals(settings) -> list[tuple]:
    from touchpoint.core.serving import query

    rows = query(settings, "select * from serving.campaign_daily").to_pylist()
    return sorted(((r["date"], r["campaign"], *(r[m] for m in MEASURES)) for r in rows),
                  key=lambda r: (r[0], r[1] or ""))


def test_killed_speed_and_ingest_serve_what_a_batch_recomputes(spark, tmp_path, kafka_topic):
    from touchpoint.jobs.runner import run_job

    lake = tmp_path / "lake"
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS), spark_shuffle_partitions=2)
    env = subprocess_env(lake, STREAM__MAX_OFFSETS_PER_TRIGGER="300", STREAM__TRIGGER_SECONDS="1")
    generator = BackgroundGenerator(kafka_topic, settings.kafka_bootstrap, TRAFFIC, rate=RATE)
    generator.start()
    moments = random.Random(KILL_SEED)
    ingest = ChildProcess(ingest_args(kafka_topic), env, tmp_path / "ingest-0.log")
    speed = None
    try:
        wait_for(lambda: committed_batches(settings) > 0 or not ingest.alive(), timeout=900, what="ingestion")
        for round_number in range(SPEED_KILLS):
            speed = ChildProcess(speed_args(), env, tmp_path / f"speed-{round_number}.log")
            before = speed_batches(settings)
            wait_for(lambda: speed_batches(settings) > before or not speed.alive(), timeout=900,
                     what="a speed batch after the restart")
            time.sleep(moments.uniform(0, 4))
            assert speed.alive(), speed.log_tail()
            speed.kill()
            if round_number == 0:  # ingestion too, at a random moment of its run
                assert ingest.alive(), ingest.log_tail()
                ingest.kill()
                ingest = ChildProcess(ingest_args(kafka_topic), env, tmp_path / "ingest-1.log")
    finally:
        generator.stop()
        ingest.kill()
        if speed is not None and speed.alive():
            speed.kill()
    report = generator.result(timeout=120)

    for name, args in (("drain-ingest", ingest_args(kafka_topic, available_now=True)),
                       ("drain-speed", speed_args(available_now=True))):
        drain = ChildProcess(args, {**env, "TOUCHPOINT_STREAM__MAX_OFFSETS_PER_TRIGGER": "100000"},
                             tmp_path / f"{name}.log")
        assert drain.wait(900) == 0, drain.log_tail()

    silver = lake_table(settings, "silver.events", ["event_id", "event_date"])
    assert sorted(r["event_id"] for r in silver) == sorted(valid_event_ids(TRAFFIC, report["lines"]))
    served = serving_totals(settings)
    assert served and any(row[3] for row in served), "no orders served: the drill measured nothing"

    # The batch recomputation: a copy of the lake where identity and campaign_metrics run for the
    # last event day, so every event is below the high-water mark and read by the batch.
    copy = tmp_path / "recomputed" / "lake"
    shutil.copytree(lake, copy)
    recomputed_settings = load_settings(lake_root=str(copy), jars_dir=str(JARS), spark_shuffle_partitions=2)
    last_day = max(r["event_date"] for r in silver)
    assert isinstance(last_day, dt.date)
    run_job("identity", last_day, settings=recomputed_settings, spark=spark)
    run_job("campaign_metrics", last_day, settings=recomputed_settings, spark=spark)
    assert served == serving_totals(recomputed_settings)
