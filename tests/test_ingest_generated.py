"""Generated traffic end to end: Kafka stream and file ingest both reconcile with the generator's report."""

import hashlib
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
    from touchpoint.streaming.ingest import (IngestSink, file_batches, file_bronze_rows, ingest_files, scan_file,
                                             start_stream)

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

    # The same lines through `touchpoint ingest --file`, with a CRLF line and a blank line added, give
    # the same silver rows; here in three batches, the first committed by a run that then died (what it
    # leaves behind), the others by a run that resumes after it.
    file = tmp_path / "events.jsonl"
    generate_jsonl(str(file), CONFIG)
    lines = file.read_bytes().split(b"\n")
    content = b"\n".join([*lines[:5], lines[5] + b"\r", b"", *lines[6:]])
    file.write_bytes(content)
    file_settings = load_settings(lake_root=str(tmp_path / "file_lake"), spark_shuffle_partitions=2)
    # 20 KB ranges in batches of up to 200 KB; the generator's 1.1 MB payload (quarantined as too
    # large) makes a range and a batch of its own
    split_bytes, batch_bytes = 20_000, 200_000
    batches = file_batches(file, scan_file(file, split_bytes), 0, batch_bytes)
    assert len(batches) == 3 and len(batches[0]) > 1 and len(batches[2]) > 1
    assert len(batches[1]) == 1 and batches[1][0].end - batches[1][0].start > 1_000_000
    sink = IngestSink(file_settings, source_id=f"file:{hashlib.sha256(content).hexdigest()[:32]}",
                      txn_versions=True)
    sink.broadcast_records_max = 0  # the dedup plan of a batch over the broadcast bound
    first = sink(file_bronze_rows(spark, file, batches[0]), batches[0][-1].end)
    [rest] = ingest_files(spark, file_settings, file, batch_bytes=batch_bytes, split_bytes=split_bytes)
    assert (rest["resumed_at_byte"], rest["batches"]) == (batches[0][-1].end, len(batches) - 1)
    assert tuple(first[k] + rest[k] for k in ("silver", "quarantine", "duplicates")) == (
        report["expected_silver"], report["expected_quarantine"], report["expected_duplicates"])
    assert _silver_content(file_settings) == _silver_content(stream_settings)
    # every non-blank line once in bronze, under its line number, CR dropped
    bronze = sorted((r["source_offset"], r["payload"]) for r in _table(file_settings, "bronze.events"))
    assert bronze == [(n, line.rstrip(b"\r")) for n, line in enumerate(content.split(b"\n"), 1) if line.strip()]
    assert len(bronze) == report["lines"] and bronze[5] == (6, lines[5])
    # one reconciliation row per batch, keyed by the byte offset the batch ends at
    assert sorted(b["batch_id"] for b in _table(file_settings, "silver.reconciliation")) == [
        batch[-1].end for batch in batches]
    # Re-ingesting the same file adds nothing.
    [again] = ingest_files(spark, file_settings, file)
    assert again == {"file": str(file), "skipped": "already ingested (same content)"}
    assert len(_table(file_settings, "bronze.events")) == report["lines"]
