"""Stream freshness for `touchpoint status`, without a JVM (delta-rs, kafka-python, checkpoint files).

- freshness: the speed layer's last micro-batch from speed.freshness (when it committed, its
  event-to-visible lag, the event-time clock);
- kafka_lag: per partition of the ingest topic, the broker's end offset minus the next offset the
  ingest query has committed to process (read from its checkpoint's offsets log).
"""

from __future__ import annotations

from pathlib import Path

from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.delta import rs_table
from touchpoint.core.spark import committed_source_offsets


def last_speed_batch(settings: Settings) -> dict | None:
    from deltalake.exceptions import TableNotFoundError

    try:
        rows = rs_table(table_path("speed.freshness", settings)).to_pyarrow_table().to_pylist()
    except TableNotFoundError:
        return None
    if not rows:
        return None
    last = max(rows, key=lambda r: (r["processed_at"], r["batch_id"]))
    return {"query": last["query"], "batch_id": last["batch_id"], "processed_at": str(last["processed_at"]),
            "lag_seconds": last["lag_seconds"], "event_time_clock": str(last["clock"]),
            "silver_version": last["last_version"]}


def committed_offsets(checkpoint: Path) -> dict[str, dict[int, int]]:
    """topic -> partition -> next offset to read, as of the last committed micro-batch."""
    for source in committed_source_offsets(str(checkpoint)) or []:
        if isinstance(source, dict) and source and all(isinstance(v, dict) for v in source.values()):
            return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in source.items()}
    return {}


def kafka_lag(settings: Settings, query_name: str = "ingest") -> dict | None:
    from kafka import KafkaConsumer, TopicPartition

    checkpoint_root = settings.checkpoint_root
    if "://" in checkpoint_root:
        return None
    processed = committed_offsets(Path(checkpoint_root) / query_name)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
    try:
        partitions = consumer.partitions_for_topic(settings.kafka_topic) or set()
        wanted = [TopicPartition(settings.kafka_topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(wanted) if wanted else {}
    finally:
        consumer.close()
    done = processed.get(settings.kafka_topic, {})
    per_partition = {tp.partition: end - done.get(tp.partition, 0) for tp, end in ends.items()}
    return {"topic": settings.kafka_topic, "messages_behind": sum(per_partition.values()),
            "per_partition": per_partition}


def freshness_report(settings: Settings, kafka_answering: bool = True) -> dict:
    """The speed layer's last micro-batch and the ingest stream's lag behind the topic. With the
    broker known to be down the lag is not asked for: the consumer would wait 30 s for metadata."""
    report: dict = {"freshness": last_speed_batch(settings) or "no speed micro-batch yet"}
    if not kafka_answering:
        report["kafka_lag"] = "unavailable (broker not answering)"
        return report
    try:
        report["kafka_lag"] = kafka_lag(settings) or "unknown"
    except Exception as error:  # broker down meanwhile: status still prints
        report["kafka_lag"] = f"unavailable ({error.__class__.__name__})"
    return report
