"""A multi-partition events.raw is consumed completely when Spark splits the partitions across more
read tasks (stream.min_partitions) and caps each micro-batch (stream.max_offsets_per_trigger)."""

import json
import uuid

import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings

pytestmark = pytest.mark.kafka

PER_PARTITION = {0: 4, 1: 9, 2: 6}


@pytest.fixture
def three_partition_topic(kafka_broker, settings):
    from touchpoint.infra import kafka

    name = f"test.partitions.{uuid.uuid4().hex[:8]}"
    kafka.ensure_topic(name, partitions=len(PER_PARTITION), settings=settings)
    yield name
    kafka.delete_topic(name, settings=settings)


def test_every_partition_is_read_completely_with_split_read_tasks(spark, tmp_path, three_partition_topic):
    from touchpoint.streaming.ingest import start_stream

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2,
                             kafka_partitions=len(PER_PARTITION),
                             stream={"min_partitions": 5, "max_offsets_per_trigger": 7})
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for partition, count in PER_PARTITION.items():
        for i in range(count):
            event = {"event_id": f"p{partition}-{i}", "event_type": "page_view",
                     "event_ts": f"2026-03-01T10:{i:02d}:00Z", "anonymous_id": f"anon-{partition}"}
            producer.send(three_partition_topic, value=json.dumps(event).encode(), partition=partition)
    producer.flush()
    producer.close()

    query = start_stream(spark, settings, topic=three_partition_topic, query_name="ingest", trigger_once=True)
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()

    bronze = DeltaTable(table_path("bronze.events", settings)).to_pyarrow_table().to_pylist()
    offsets = {}
    for row in bronze:
        offsets.setdefault(row["source_partition"], []).append(row["source_offset"])
    assert {p: sorted(o) for p, o in offsets.items()} == {p: list(range(n)) for p, n in PER_PARTITION.items()}
    silver = DeltaTable(table_path("silver.events", settings)).to_pyarrow_table().to_pylist()
    assert sorted(r["event_id"] for r in silver) == sorted(
        f"p{p}-{i}" for p, n in PER_PARTITION.items() for i in range(n))
    batches = DeltaTable(table_path("silver.reconciliation", settings)).to_pyarrow_table().to_pylist()
    assert len(batches) == 3  # 19 offsets at 7 per trigger
