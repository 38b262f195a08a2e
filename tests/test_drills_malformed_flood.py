"""Drill: a flood in which half the lines are garbage (every malformed kind, oversize payloads
included), produced as fast as the producer goes. Valid events still land exactly once, every
garbage line is quarantined under its own error code, and the reconciliation is exact.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.faults import lake_settings, lake_table, reconciliation_totals, valid_event_ids
from touchpoint.generator import GeneratorConfig, generate_kafka

pytestmark = [pytest.mark.drill, pytest.mark.kafka]

# malformed_rate 1.0 = one garbage line per valid event: 50 % of the traffic.
FLOOD = GeneratorConfig(seed=59, customers=90, days=2, start_date="2026-03-02", events_per_customer=14,
                        late_rate=0.05, duplicate_rate=0.03, malformed_rate=1.0)


def test_half_garbage_flood_is_quarantined_and_reconciles(spark, tmp_path, kafka_topic):
    from touchpoint.streaming.ingest import start_stream

    settings = lake_settings(tmp_path / "lake", stream={"max_offsets_per_trigger": 1500})
    report = generate_kafka(kafka_topic, settings.kafka_bootstrap, FLOOD)  # unpaced: full producer speed
    malformed = {code: n for code, n in report["malformed"].items() if n}
    assert report["malformed_total"] == report["valid_unique_events"]
    assert len(malformed) == 19, "every malformed kind is in the flood"

    query = start_stream(spark, settings, topic=kafka_topic, trigger_once=True)
    query.awaitTermination(900)
    assert query.exception() is None, query.exception()

    silver_ids = [row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])]
    assert len(silver_ids) == len(set(silver_ids))
    assert sorted(silver_ids) == sorted(valid_event_ids(FLOOD))
    quarantine = lake_table(settings, "silver.quarantine", ["error_code", "payload", "reason"])
    assert Counter(row["error_code"] for row in quarantine) == Counter(malformed)
    assert all(row["payload"] and row["reason"] for row in quarantine)
    assert reconciliation_totals(settings) == {
        "bronze": report["lines"], "silver": report["expected_silver"],
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"],
    }
