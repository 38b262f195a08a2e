"""What the platform's librdkafka producers (confluent-kafka) share: the generator's
(`touchpoint.generator.KafkaSink`) and the HTTP collector's (`touchpoint.collector.KafkaSink`).

Both are idempotent with acks=all, so a retried batch is neither lost nor doubled by the broker,
and accept records up to the broker's 2 MiB batch limit (malformed payloads of ~1.1 MB are
produced for quarantine like any other). librdkafka does the batching, compression and checksums
in C: the generator spends 7 µs of CPU a line in it against 38 µs in kafka-python
(bench/generator_producer.py).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
DEFAULT_COMPRESSION = "lz4"
MAX_MESSAGE_BYTES = 2_000_000


def compression_codec(name: str) -> str:
    """A codec librdkafka knows; "auto" is the default (lz4: cheap in CPU, about 2x on JSON)."""
    if name == "auto":
        return DEFAULT_COMPRESSION
    if name not in COMPRESSION_CODECS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSION_CODECS)} or auto, got {name!r}")
    return name


def producer_config(bootstrap: str, compression: str = "auto", **overrides) -> dict:
    """librdkafka settings of an idempotent, acks=all producer; `overrides` are librdkafka
    property names with dots as underscores (linger_ms=20 -> linger.ms)."""
    config = {
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
        "compression.type": compression_codec(compression), "message.max.bytes": MAX_MESSAGE_BYTES,
        "logger": log,  # librdkafka's connection notices go to logging, not raw stderr
        # A partition that lost its leader is looked up fast only until one metadata answer comes
        # back; a broker just restarted may still answer "no leader", and the next look was then the
        # periodic one, 5 minutes later by default: records waited that long and timed out (the
        # broker-restart drill, docs/DRILLS.md session 42). Every 10 s bounds the wait.
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    config.update({name.replace("_", "."): value for name, value in overrides.items()})
    return config


# How long a broker may call a topic unknown before it is taken as missing: a topic the admin API
# created a moment ago can be unknown to the broker until it applies the new metadata (milliseconds
# on an idle machine), and waiting the whole timeout made a mistyped topic name cost 20 s.
UNKNOWN_TOPIC_GRACE_SECONDS = 5.0


def topic_partitions(producer, topic: str, bootstrap: str, timeout: float) -> list[int]:
    """The topic's partitions, through `producer`'s metadata. A topic created a moment ago may not
    have leaders yet (its metadata carries an error), so the question is asked again until
    `timeout`, as kafka-python's `partitions_for` waited; a topic the broker keeps calling unknown
    for UNKNOWN_TOPIC_GRACE_SECONDS, or still without partitions at `timeout`, is reported as
    missing (the broker does not create topics on first use), an unreachable broker as such."""
    from confluent_kafka import KafkaError, KafkaException

    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            described = producer.list_topics(topic, timeout=max(1.0, deadline - time.monotonic())).topics.get(topic)
        except KafkaException as error:
            raise RuntimeError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s: {error}") from None
        if described is not None and described.error is None and described.partitions:
            return sorted(described.partitions)
        now = time.monotonic()
        unknown = described is not None and described.error is not None and \
            described.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        if now >= deadline or (unknown and now - start >= UNKNOWN_TOPIC_GRACE_SECONDS):
            break
        time.sleep(0.2)
    reason = described.error if described is not None and described.error is not None else "no partitions"
    raise RuntimeError(f"Kafka topic {topic!r} does not exist; create it first (touchpoint up creates the "
                       f"default one). The broker said: {reason}")
