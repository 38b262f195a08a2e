"""An erasure while an ingest batch is in flight (BRIEF §8: the person is removed from every table).
A batch validates against the suppression list it read when it started; the erasure extends the
list, deletes, and deletes once more from the stream's tables. The lake's silver write lock orders
the two: a batch reads the list again once it holds the lock, and the erasure's last pass holds
it, so no row of the person is committed after that pass."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import pytest

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.core.delta import silver_write_lock
from touchpoint.core.privacy import withheld_payload

from lock_waiters import in_thread, waits_for_lock

ERASED = json.dumps({"event_id": "p-1", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z",
                     "email": "Pat@X.io"}).encode()
OTHER = json.dumps({"event_id": "o-1", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z",
                    "email": "olu@x.io"}).encode()
ARRIVED = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def lake_settings(tmp_path):
    return load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)


def test_a_batch_that_validated_before_the_list_grew_withholds_the_person(spark, lake_settings, tmp_path):
    """The batch validated with an empty list, then waited for the lock while the erasure added the
    person: it validates again and commits nothing of theirs (before session 47 their raw payload
    reached bronze and their event silver, after the erasure's last pass)."""
    from touchpoint.jobs.privacy import _add_to_suppression
    from touchpoint.streaming.ingest import IngestSink, file_batches, file_bronze_rows, scan_file

    file = tmp_path / "batch.jsonl"
    file.write_bytes(ERASED + b"\n" + OTHER + b"\n")
    [ranges] = file_batches(file, scan_file(file), 0)
    sink = IngestSink(lake_settings, "test:erasure-race")
    sink.ensure_tables(spark)
    with waits_for_lock("silver") as waiting:
        with silver_write_lock(lake_settings.lake_uri):
            batch, finish = in_thread(lambda: sink(file_bronze_rows(spark, file, ranges), 0))
            assert waiting.wait(300), "the batch never reached the silver write lock"
            # what an erasure does first: the person's hashed identifiers go to the suppression list
            _add_to_suppression(spark, lake_settings, {("email", sha("pat@x.io"))}, "req-1", ARRIVED)
            time.sleep(0.5)
            assert batch.is_alive()
        counts = finish()

    assert (counts["bronze"], counts["quarantine"], counts["silver"]) == (2, 1, 1)

    def rows(name, *columns):
        frame = spark.read.format("delta").load(table_path(name, lake_settings))
        return sorted(tuple(row) for row in frame.select(*columns).collect())

    assert rows("silver.events", "event_id", "email") == [("o-1", "olu@x.io")]
    assert rows("silver.quarantine", "error_code", "payload") == [("erased_subject", withheld_payload(ERASED))]
    assert rows("bronze.events", "payload") == sorted([(OTHER,), (withheld_payload(ERASED),)])


def test_the_erasures_last_pass_waits_for_a_batch_holding_the_silver_lock(spark, lake_settings):
    from touchpoint.jobs.privacy import erase

    with waits_for_lock("silver") as waiting:
        with silver_write_lock(lake_settings.lake_uri):  # as an ingest batch between its plan and commit
            erasure, finish = in_thread(lambda: erase(spark, lake_settings, "email", sha("pat@x.io")))
            assert waiting.wait(600), "the erasure never asked for the silver write lock"
            time.sleep(0.5)
            assert erasure.is_alive()
        result = finish()
    assert result["status"] == "not_found"


def test_a_file_uri_lake_is_locked_as_its_folder_and_an_object_store_is_not(tmp_path):
    """A `file://` lake is a local folder: the same lock file as its plain path (before session 47
    every URI skipped the lock, so a file:// lake ran erasures and ingest unordered)."""
    for held, asked in ((str(tmp_path), f"file://{tmp_path}"), (f"file://{tmp_path}", str(tmp_path))):
        with silver_write_lock(held):
            with pytest.raises(TimeoutError, match="silver.lock"):
                with silver_write_lock(asked, timeout_seconds=0.3):
                    pass
    with silver_write_lock("s3a://bucket/lake"), silver_write_lock("s3a://bucket/lake", timeout_seconds=0.3):
        pass  # no lock file on an object store: both are entered


def test_a_purge_that_falls_back_to_a_full_vacuum_waits_for_the_ingests_commit(spark, lake_settings):
    """VACUUM LITE refuses once the log lost a table's early commits (log clean-up before any VACUUM);
    the full VACUUM that follows would also delete the files of an ingest commit in flight, so on the
    ingest's tables it waits for the silver write lock (before session 47 it ran at once, 0 hours)."""
    from pathlib import Path

    from touchpoint.jobs.privacy import full_vacuum_guard, purge_files

    path = table_path("silver.quarantine", lake_settings)
    for day in range(12):  # the tenth commit writes a checkpoint
        spark.range(day, day + 1).write.format("delta").mode("append").save(path)
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id < 3")
    for early in sorted(Path(path, "_delta_log").glob("0000000000000000000[0-5].json")):
        early.unlink()
    data_files = lambda: sorted(f.name for f in Path(path).glob("*.parquet"))  # noqa: E731
    before = data_files()
    assert full_vacuum_guard("speed.customer_activity", lake_settings)[1] == 1  # the speed writer holds no lock
    with waits_for_lock("silver") as waiting:
        with silver_write_lock(lake_settings.lake_uri):
            purge, finish = in_thread(lambda: purge_files(spark, path, 0,
                                                          full_vacuum_guard("silver.quarantine", lake_settings)))
            assert waiting.wait(300), "the full VACUUM did not ask for the silver write lock"
            time.sleep(0.5)
            assert purge.is_alive() and data_files() == before
        finish()
    table = spark.read.format("delta").load(path)
    live = sorted(uri.rsplit("/", 1)[1] for uri in table.inputFiles())
    assert data_files() == live and len(live) < len(before)  # what the log no longer refers to is gone
    assert sorted(row.id for row in table.collect()) == list(range(3, 12))
