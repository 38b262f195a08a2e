"""Drill: the lake root stops accepting writes while the ingest stream runs: first permission denied,
then disk full. Each time the stream stops with the OS error in its log (no half-applied batch),
and once the fault is fixed a restarted stream carries on with nothing lost or doubled.

We run as root, and chmod does not stop root. What does:
- permission denied: `chattr -R +i` (immutable) on the lake: even root gets EPERM
  ("Operation not permitted") creating, renaming or writing files there;
- disk full: the lake lives on a small tmpfs mount, and a filler file takes its free space (ENOSPC,
  "No space left on device").
Both need CAP_LINUX_IMMUTABLE / CAP_SYS_ADMIN; without them the drill is skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.faults import (
    BackgroundGenerator, committed_batches, lake_settings, lake_table, reconciliation_totals, valid_event_ids,
    wait_for,
)
from touchpoint.generator import GeneratorConfig

pytestmark = [pytest.mark.drill, pytest.mark.kafka]

# Produced in real time through both faults, then stopped (a prefix of this seeded sequence).
TRAFFIC = GeneratorConfig(seed=47, customers=3000, days=2, start_date="2026-03-02", events_per_customer=14,
                          late_rate=0.05, duplicate_rate=0.05, malformed_rate=0.03)
RATE = 10
TMPFS_MB = 256


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs mounted under tmp_path for the lake; unmounted (after clearing attributes) at the end."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the drill needs CAP_SYS_ADMIN")
    probe = mount_point / "probe"
    probe.touch()
    immutable = _run("chattr", "+i", str(probe))
    if immutable.returncode != 0:
        _run("umount", str(mount_point))
        pytest.skip(f"chattr +i unsupported here ({immutable.stderr.strip()})")
    _run("chattr", "-i", str(probe))
    probe.unlink()
    try:
        yield mount_point
    finally:
        _run("chattr", "-R", "-i", str(mount_point))
        _run("umount", "-l", str(mount_point))


def fill(path: Path) -> None:
    """Write zeros until the filesystem refuses: ENOSPC."""
    with open(path, "wb") as filler:
        block = b"\0" * (1 << 20)
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError:
            pass


def test_permission_denied_then_disk_full_stop_the_stream_safely(spark, tmp_path, kafka_topic, small_filesystem):
    from touchpoint.streaming.ingest import start_stream

    lake = small_filesystem / "lake"
    settings = lake_settings(lake, stream={"max_offsets_per_trigger": 200, "trigger_seconds": 0.5})
    generator = BackgroundGenerator(kafka_topic, settings.kafka_bootstrap, TRAFFIC, rate=RATE)
    generator.start()
    filler = small_filesystem / "filler"
    # fault -> (how to break the lake, how to fix it, what the stream's error must say)
    faults = {
        "permission denied": (lambda: _run("chattr", "-R", "+i", str(lake)),
                              lambda: _run("chattr", "-R", "-i", str(lake)),
                              # Hadoop reports a refused mkdir as "Mkdirs failed", a refused file as EPERM
                              ("Operation not permitted", "Mkdirs failed to create")),
        "disk full": (lambda: fill(filler), lambda: filler.unlink(), ("No space left on device",)),
    }
    # The streams run in this test's Spark application (`touchpoint stream ingest` exits non-zero
    # with the query's exception; here the exception itself is checked).
    for fault, (break_lake, fix_lake, messages) in faults.items():
        stream = start_stream(spark, settings, topic=kafka_topic, query_name="ingest")
        try:
            before = committed_batches(settings)
            wait_for(lambda: committed_batches(settings) > before or not stream.isActive, timeout=600,
                     what="a committed batch")
            assert stream.isActive, stream.exception()
            break_lake()
            # The stream must stop by itself, naming the OS error.
            wait_for(lambda: not stream.isActive, timeout=600, what=f"the stream stopping on {fault}")
            error = str(stream.exception())
            assert any(message in error for message in messages), f"{fault}: {error[-4000:]}"
        finally:
            stream.stop()
            fix_lake()

    generator.stop()
    report = generator.result(timeout=120)
    expected_ids = valid_event_ids(TRAFFIC, report["lines"])
    drain_settings = lake_settings(lake, stream={"max_offsets_per_trigger": 100_000})
    drain = start_stream(spark, drain_settings, topic=kafka_topic, query_name="ingest", trigger_once=True)
    drain.awaitTermination(900)
    assert drain.exception() is None, drain.exception()

    silver_ids = [row["event_id"] for row in lake_table(settings, "silver.events", ["event_id"])]
    assert len(silver_ids) == len(set(silver_ids))
    assert sorted(silver_ids) == sorted(expected_ids)
    assert reconciliation_totals(settings) == {
        "bronze": report["lines"], "silver": report["expected_silver"],
        "quarantine": report["expected_quarantine"], "duplicates": report["expected_duplicates"],
    }
    assert not os.path.exists(filler)
