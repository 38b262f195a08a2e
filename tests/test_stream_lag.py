"""`touchpoint status`'s lag behind Kafka: the broker's end offsets minus what the ingest query committed."""

import json

from kafka import KafkaProducer

from touchpoint.core.config import load_settings


def _produce(settings, topic, count, start=0):
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for i in range(start, start + count):
        event = {"event_id": f"lag-{i}", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z",
                 "anonymous_id": f"a{i}"}
        producer.send(topic, value=json.dumps(event).encode(), partition=i % 2)
    producer.flush()
    producer.close()


def test_kafka_lag_counts_what_ingest_has_not_committed(spark, tmp_path, kafka_topic):
    from touchpoint.streaming.ingest import start_stream
    from touchpoint.streaming.progress import kafka_lag

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2, kafka_topic=kafka_topic)
    _produce(settings, kafka_topic, 6)
    # before the query ever ran, everything is behind
    assert kafka_lag(settings) == {"topic": kafka_topic, "messages_behind": 6, "per_partition": {0: 3, 1: 3}}

    query = start_stream(spark, settings, topic=kafka_topic, query_name="ingest", trigger_once=True)
    query.awaitTermination(600)
    assert query.exception() is None
    assert kafka_lag(settings) == {"topic": kafka_topic, "messages_behind": 0, "per_partition": {0: 0, 1: 0}}

    _produce(settings, kafka_topic, 3, start=6)  # partitions 0, 1, 0
    assert kafka_lag(settings) == {"topic": kafka_topic, "messages_behind": 3, "per_partition": {0: 2, 1: 1}}
