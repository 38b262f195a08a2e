"""Drill: the ingest stream process is SIGKILLed at seeded random moments, several times, while the
generator keeps producing. Afterwards silver holds every valid event_id exactly once, garbage is
all in quarantine, and the per-batch reconciliation adds up to what the generator sent.
"""

from __future__ import annotations

import random
import time

import pytest

from bench.faults import (
    JARS, BackgroundGenerator, ChildProcess, committed_batches, ingest_args, lake_table, reconciliation_totals,
    subprocess_env, valid_event_ids, wait_for,
)
from touchpoint.core.config import load_settings
from touchpoint.generator import GeneratorConfig

pytestmark = [pytest.mark.timeout(1800), pytest.mark.drill, pytest.mark.kafka]

# More simulated traffic than a run ever sends: the generator produces in real time until the
# last kill, then stops (what it sent is a prefix of this seeded sequence).
TRAFFIC = GeneratorConfig(seed=11, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.05, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 12
KILLS = 3
KILL_SEED = 20260301  # the kill moments are random, but reproducible


def test_sigkilled_ingest_loses_and_doubles_nothing(tmp_path, kafka_topic):
    lake = tmp_path / "lake"
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS))
    # Small micro-batches so that a kill lands between, inside and before batches.
    env = subprocess_env(lake, STREAM__MAX_OFFSETS_PER_TRIGGER="250", STREAM__TRIGGER_SECONDS="0.5")
    generator = BackgroundGenerator(kafka_topic, settings.kafka_bootstrap, TRAFFIC, rate=RATE)
    generator.start()

    moments = random.Random(KILL_SEED)
    kills = []
    for round_number in range(KILLS):
        stream = ChildProcess(ingest_args(kafka_topic), env, tmp_path / f"ingest-{round_number}.log")
        if round_number == 0:
            # the first kill lands anywhere in start-up or the first batch
            time.sleep(moments.uniform(3, 20))
        else:
            # later kills land at a random moment after the restarted stream committed a batch
            before = committed_batches(settings)
            wait_for(lambda: committed_batches(settings) > before or not stream.alive(), timeout=600,
                     what="a committed batch after the restart")
            time.sleep(moments.uniform(0, 4))
        assert stream.alive(), f"ingest died on its own:\n{stream.log_tail()}"
        stream.kill()
        kills.append(committed_batches(settings))

    generator.stop()
    report = generator.result(timeout=120)
    expected_ids = valid_event_ids(TRAFFIC, report["lines"])
    landed_before_drain = len(lake_table(settings, "silver.events", ["event_id"]))
    drain = ChildProcess(ingest_args(kafka_topic, available_now=True),
                         {**env, "TOUCHPOINT_STREAM__MAX_OFFSETS_PER_TRIGGER": "100000"}, tmp_path / "drain.log")
    assert drain.wait(900) == 0, drain.log_tail()

    # The kills left work behind for the restart: what Kafka held was not all in silver yet.
    assert landed_before_drain < report["expected_silver"], f"batches committed at each kill: {kills}"

    silver_ids = [row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])]
    assert len(silver_ids) == len(set(silver_ids)), "an event landed twice"
    assert sorted(silver_ids) == sorted(expected_ids)
    assert len(expected_ids) == report["expected_silver"]
    quarantine = lake_table(settings, "silver.quarantine", ["error_code"])
    assert len(quarantine) == report["expected_quarantine"] > 0
    assert reconciliation_totals(settings) == {
        "bronze": report["lines"], "silver": report["expected_silver"],
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"],
    }
    # bronze keeps each Kafka record once, however often its batch was replayed
    coordinates = [(r["source_partition"], r["source_offset"])
                   for r in lake_table(settings, "bronze.events", ["source_partition", "source_offset"])]
    assert len(coordinates) == len(set(coordinates)) == report["lines"]
