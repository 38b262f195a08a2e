"""Real broker + real Spark: batch read, and an exactly-once Structured Streaming landing."""

import pytest
from kafka import KafkaProducer

pytestmark = pytest.mark.kafka


def _produce(settings, topic, keys):
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    for key in keys:
        producer.send(topic, key=key.encode(), value=f'{{"id": "{key}"}}'.encode())
    producer.flush()
    producer.close()


def _kafka_reader(spark, settings, topic):
    return (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic).option("startingOffsets", "earliest").option("endingOffsets", "latest"))


def _land(spark, settings, topic, target, checkpoint):
    query = (
        spark.readStream.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic).option("startingOffsets", "earliest").load()
        .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "partition", "offset")
        .writeStream.format("delta").option("checkpointLocation", checkpoint).trigger(availableNow=True)
        .start(target)
    )
    query.awaitTermination(180)
    assert query.exception() is None


def test_batch_read_and_streaming_land_exactly_once(spark, settings, kafka_topic, tmp_path):
    keys = [f"k{i:03d}" for i in range(120)]
    _produce(settings, kafka_topic, keys)

    batch = _kafka_reader(spark, settings, kafka_topic).load()
    assert sorted(r.key.decode() for r in batch.select("key").collect()) == keys

    target, checkpoint = str(tmp_path / "landed"), str(tmp_path / "checkpoint")
    _land(spark, settings, kafka_topic, target, checkpoint)
    assert spark.read.format("delta").load(target).count() == 120

    _land(spark, settings, kafka_topic, target, checkpoint)  # restart, nothing new: nothing twice
    assert spark.read.format("delta").load(target).count() == 120

    more = [f"m{i:03d}" for i in range(30)]
    _produce(settings, kafka_topic, more)
    _land(spark, settings, kafka_topic, target, checkpoint)
    landed = spark.read.format("delta").load(target)
    assert landed.count() == 150
    assert sorted(r.key for r in landed.select("key").collect()) == sorted(keys + more)
