"""A single-node Apache Kafka 4 broker in KRaft mode, run from the project's jars.

State lives in <state_dir>/kafka: server.properties, data/, logs/, broker.pid.
Starting twice is fine; stopping a stopped broker is fine.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from touchpoint.core.config import Settings, get_settings
from touchpoint.infra import jars
from touchpoint.core.process import port_open, read_pid, spawn, stop_pid, wait_until

CONF_DIR = Path(__file__).parent / "conf"
HEAP = "-Xms256m -Xmx768m"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool


def _home(settings: Settings) -> Path:
    return settings.state_path / "kafka"


def _host_port(settings: Settings) -> tuple[str, int]:
    host, port = settings.kafka_bootstrap.split(",")[0].strip().rsplit(":", 1)
    return host, int(port)


def _server_properties(settings: Settings) -> str:
    host, port = _host_port(settings)
    cport = settings.kafka_controller_port
    data = _home(settings) / "data"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{cport}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={settings.kafka_partitions}",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Bounded retention (BRIEF §8): topics the project creates also set retention.ms.
            f"log.retention.hours={settings.retention.kafka_retention_hours}",
            f"log.retention.bytes={settings.retention.kafka_retention_bytes}",
            f"log.roll.ms={SEGMENT_MS}",  # as the project's topics (topic_configs): retention + 1 h at most
            "message.max.bytes=2097152",
            "",
        ]
    )


def _java(settings: Settings, main_class: str, *args: str) -> list[str]:
    home = _home(settings)
    return [
        "java", *HEAP.split(),
        f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka-log4j2.yaml'}",
        f"-Dkafka.logs.dir={home / 'logs'}",
        "-Djava.net.preferIPv4Stack=true",
        "-cp", str(settings.jars_dir.resolve() / "kafka" / "*"),
        main_class, *args,
    ]


def status(settings: Settings | None = None) -> BrokerStatus:
    settings = settings or get_settings()
    pid = read_pid(_home(settings) / "broker.pid")
    host, port = _host_port(settings)
    return BrokerStatus(pid is not None, pid, settings.kafka_bootstrap, port_open(host, port))


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 without padding. Like Kafka's own
    Uuid.randomUuid, never one starting with '-': the storage tool would read it as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        if not cluster_id.startswith("-"):
            return cluster_id


def start(settings: Settings | None = None, timeout: float = 90.0) -> BrokerStatus:
    settings = settings or get_settings()
    current = status(settings)
    if current.running and current.answering:
        return current
    if current.answering and not current.running:
        raise RuntimeError(
            f"port of {settings.kafka_bootstrap} is taken by a process touchpoint did not start; "
            "stop it or set TOUCHPOINT_KAFKA_BOOTSTRAP to a free port"
        )
    jars.resolve("kafka", settings)
    home = _home(settings)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(_server_properties(settings))
    if not (home / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        fmt = subprocess.run(
            _java(settings, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed: {fmt.stdout}{fmt.stderr}")
    if current.running:  # alive but not answering yet: just wait for it
        pid = current.pid
    else:
        pid = spawn(_java(settings, "kafka.Kafka", str(props)), home / "logs" / "stdout.log", home / "broker.pid")
    if not wait_until(lambda: _answers(settings), timeout):
        stop_pid(home / "broker.pid")
        raise RuntimeError(f"Kafka broker (pid {pid}) did not answer in {timeout:.0f}s; see {home / 'logs'}")
    return status(settings)


def _answers(settings: Settings) -> bool:
    host, port = _host_port(settings)
    if not port_open(host, port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def stop(settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    return stop_pid(_home(settings) / "broker.pid", timeout=30)


# Kafka deletes whole segments, and the one being written only once it rolls: segments of at most an
# hour bound a record's stay by the retention plus an hour (and the broker's 5-minute check), where
# Kafka's default roll (7 days) let a quiet topic keep a record for twice the retention.
SEGMENT_MS = 3600 * 1000


def topic_configs(settings: Settings) -> dict[str, str]:
    """Bounded retention of every topic the project creates (BRIEF §8, docs/PRIVACY.md): raw events,
    PII included, leave Kafka after retention.kafka_retention_hours or retention.kafka_retention_bytes
    per partition, whichever comes first (give or take one segment of at most an hour)."""
    retention_ms = settings.retention.kafka_retention_hours * 3600 * 1000
    return {"retention.ms": str(retention_ms),
            "retention.bytes": str(settings.retention.kafka_retention_bytes),
            "segment.ms": str(min(SEGMENT_MS, retention_ms))}


def ensure_topic(name: str, partitions: int | None = None, settings: Settings | None = None) -> bool:
    """Create a topic with the project's bounded retention; True if it was created. A topic that
    exists gets the retention of the settings too (a lowered retention.kafka_retention_hours applies
    to the topic already there)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    settings = settings or get_settings()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000,
                             bootstrap_timeout_ms=5000)
    try:
        if name in admin.list_topics():
            # Incremental: only these keys are set, any other topic config an operator set stays.
            altered = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                          configs=topic_configs(settings))])
            outcome = altered.get("topic", {}).get(name)
            if outcome != "OK":  # kafka-python reports a refusal (ACLs, a policy) here instead of raising
                raise RuntimeError(f"Kafka refused the retention configs of topic {name!r}: {outcome}; the topic "
                                   "keeps its old retention (docs/PRIVACY.md)")
            return False
        topic = NewTopic(
            name=name,
            num_partitions=partitions or settings.kafka_partitions,
            replication_factor=1,
            topic_configs=topic_configs(settings),
        )
        try:
            admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def delete_topic(name: str, settings: Settings | None = None) -> None:
    from kafka import KafkaAdminClient

    settings = settings or get_settings()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000,
                             bootstrap_timeout_ms=5000)
    try:
        if name in admin.list_topics():
            admin.delete_topics([name])
    finally:
        admin.close()
