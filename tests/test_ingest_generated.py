"""Generated traffic end to end: Kafka stream and file ingest both reconcile with the generator's report."""

from collections import Counter

import pytest
from deltalake import DeltaTable

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.generator import GeneratorConfig, generate_jsonl, generate_kafka

pytestmark = pytest.mark.kafka

CONFIG = GeneratorConfig(seed=7, customers=40, days=2, start_date="2026-03-02", events_per_customer=10,
                         late_rate=0.05, duplicate_rate=0.05, malformed_rate=0.06)
LINEAGE = {"source_topic", "source_partition", "source_offset", "source_ts", "ingest_ts"}


def _table(settings, name):
    return DeltaTable(table_path(name, settings)).to_pyarrow_table().to_pylist()


def _silver_content(settings):
    return sorted(tuple(sorted((k, repr(v)) for k, v in row.items() if k not in LINEAGE))
                  for row in _table(settings, "silver.events"))


def test_generated_traffic_reconciles_exactly_via_kafka_and_via_files(spark, tmp_path, kafka_topic):
    from touchpoint.streaming.ingest import ingest_files, start_stream

    stream_settings = load_settings(lake_root=str(tmp_path / "stream_lake"), spark_shuffle_partitions=2)
    report = generate_kafka(kafka_topic, stream_settings.kafka_bootstrap, CONFIG)
    assert report["malformed_total"] > 0 and report["duplicates_injected"] > 0 and report["late_events"] > 0

    query = start_stream(spark, stream_settings, topic=kafka_topic, trigger_once=True)
    query.awaitTermination(600)
    assert query.exception() is None

    silver = _table(stream_settings, "silver.events")
    quarantine = _table(stream_settings, "silver.quarantine")
    assert len(silver) == report["expected_silver"]
    assert len({r["event_id"] for r in silver}) == len(silver)
    assert Counter(r["error_code"] for r in quarantine) == Counter(
        {code: n for code, n in report["malformed"].items() if n})
    assert all(r["payload"] and r["reason"] for r in quarantine)
    batches = _table(stream_settings, "silver.reconciliation")
    assert sum(b["duplicates"] for b in batches) == report["expected_duplicates"]
    assert sum(b["bronze"] for b in batches) == report["lines"]
    assert sum(b["phones_dropped"] for b in batches) == report["impossible_phone_events"]
    assert Counter(r["event_type"] for r in silver) == Counter(
        {t: n for t, n in report["events_by_type"].items() if n})

    # The same lines through `touchpoint ingest --file` give the same silver rows.
    file = tmp_path / "events.jsonl"
    generate_jsonl(str(file), CONFIG)
    file_settings = load_settings(lake_root=str(tmp_path / "file_lake"), spark_shuffle_partitions=2)
    [result] = ingest_files(spark, file_settings, file)
    assert (result["silver"], result["quarantine"], result["duplicates"]) == (
        report["expected_silver"], report["expected_quarantine"], report["expected_duplicates"])
    assert _silver_content(file_settings) == _silver_content(stream_settings)
    # Re-ingesting the same file adds nothing.
    [again] = ingest_files(spark, file_settings, file)
    assert "skipped" in again
    assert len(_table(file_settings, "bronze.events")) == report["lines"]
