"""Broker lifecycle on a private state folder and ports, so the suite's broker is untouched."""

from touchpoint.core.config import load_settings
from touchpoint.infra import kafka
from touchpoint.core.process import pid_alive


def topic_config(settings, name: str) -> dict[str, str]:
    """The topic's configs the project sets, as the broker reports them."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        admin.close()
    return {key: entry["value"] for key, entry in described["topic"][name].items()
            if entry["config_source"] == "DYNAMIC_TOPIC_CONFIG"}


def test_start_is_idempotent_stop_ends_process_status_reports_both(tmp_path, kafka_broker):
    from tests.conftest import REPO

    settings = load_settings(state_dir=str(tmp_path / "state"), jars_dir=str(REPO / ".state" / "jars"),
                             kafka_bootstrap="127.0.0.1:19192", kafka_controller_port=19193)
    assert kafka.status(settings).running is False
    first = kafka.start(settings)
    try:
        assert first.running and first.answering and first.pid
        second = kafka.start(settings)
        assert second.pid == first.pid
        assert kafka.ensure_topic("lifecycle", settings=settings) is True
        assert topic_config(settings, "lifecycle") == {"retention.ms": str(168 * 3600 * 1000),
                                                       "retention.bytes": str(1 << 30), "segment.ms": "3600000"}
        # a topic that exists takes a lowered retention too (before session 47 it kept its first one)
        shorter = settings.model_copy(update={"retention": settings.retention.model_copy(
            update={"kafka_retention_hours": 24})})
        assert kafka.ensure_topic("lifecycle", settings=shorter) is False
        assert topic_config(settings, "lifecycle")["retention.ms"] == str(24 * 3600 * 1000)
    finally:
        assert kafka.stop(settings) is True
    assert not pid_alive(first.pid)
    stopped = kafka.status(settings)
    assert (stopped.running, stopped.answering, stopped.pid) == (False, False, None)
    assert kafka.stop(settings) is False
    # restart keeps the formatted storage and the topic
    again = kafka.start(settings)
    try:
        assert again.pid != first.pid
        assert kafka.ensure_topic("lifecycle", settings=settings) is False
    finally:
        kafka.stop(settings)


def test_cluster_ids_never_start_with_a_dash_and_decode_to_16_bytes(monkeypatch):
    import base64
    import uuid

    from touchpoint.infra import kafka

    # 0xf8 as the first byte encodes to '-' first in URL-safe base64: such an id must be skipped.
    dash_first, plain = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))
    drawn = iter([dash_first, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(drawn))
    assert base64.urlsafe_b64encode(dash_first.bytes).decode().startswith("-")
    assert kafka.new_cluster_id() == base64.urlsafe_b64encode(plain.bytes).decode()[:22] == "AQAAAAAAAAAAAAAAAAAAAA"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_last_suite_process_out_stops_only_a_broker_the_suite_started(tmp_path):
    """The `kafka_broker` fixture's bookkeeping (tests/broker_users.py) on a private broker, with this
    process, its parent and a dead process as the pytest processes that use it."""
    import os
    import subprocess

    from tests.conftest import REPO

    import broker_users

    settings = load_settings(state_dir=str(tmp_path / "state"), jars_dir=str(REPO / ".state" / "jars"),
                             kafka_bootstrap=f"127.0.0.1:{_free_port()}", kafka_controller_port=_free_port())
    killed = subprocess.Popen(["true"])
    killed.wait()  # a run killed without leaving: its pid is no process any more
    me, parent = os.getpid(), os.getppid()
    assert kafka.status(settings).answering is False

    started = broker_users.join(settings, killed.pid)  # the killed run started the broker
    try:
        assert started.answering
        assert broker_users.join(settings, me).pid == started.pid
        assert broker_users.join(settings, parent).pid == started.pid
        assert broker_users.leave(settings, me) is False
        assert kafka.status(settings).answering
        # the last live user leaves: the dead one's entry does not keep the broker up, and the
        # broker the killed run started is stopped
        assert broker_users.leave(settings, parent) is True
        assert not pid_alive(started.pid) and kafka.status(settings).running is False
    finally:
        kafka.stop(settings)

    # A killed run's record no longer names the broker up now (stopped, then started by hand):
    # that broker is not the suite's, and the last user out leaves it up.
    killed_again = subprocess.Popen(["true"])
    killed_again.wait()
    recorded = broker_users.join(settings, killed_again.pid)
    kafka.stop(settings)
    already_up = kafka.start(settings)
    try:
        assert already_up.pid != recorded.pid
        assert broker_users.join(settings, me).pid == already_up.pid
        assert broker_users.leave(settings, me) is False
        assert pid_alive(already_up.pid) and kafka.status(settings).answering
    finally:
        kafka.stop(settings)
