"""Exactly-once micro-batch writes by batch marks (core.delta.BatchWrites): what a table holds is read
from its log, a replayed batch skips the tables that hold it, and a batch that failed part-way
through writes the rest once, whether the same sink or a restarted one replays it."""

import datetime as dt
import json

import pytest
from deltalake import DeltaTable

from touchpoint.core.config import load_settings
from touchpoint.core.delta import BatchWrites, batch_mark, committed_batch, marked_batch
from touchpoint.schemas.lake import BRONZE_SCHEMA

ARRIVED = dt.datetime(2026, 3, 1, 20, 0, tzinfo=dt.timezone.utc)


def write(spark, path, ids, **options):
    writer = spark.range(*ids).write.format("delta").mode("append")
    for key, value in options.items():
        writer = writer.option(key, value)
    writer.save(path)


def test_marks_name_their_writer_and_batch_and_other_metadata_is_ignored():
    mark = batch_mark("stream:ingest:bronze.events", 7)
    assert json.loads(mark) == {"touchpoint_batch": {"app": "stream:ingest:bronze.events", "batch": 7}}
    assert marked_batch({"userMetadata": mark}, "stream:ingest:bronze.events") == 7
    assert marked_batch({"userMetadata": mark}, "stream:ingest:silver.events") is None
    for other in (None, "", "touchpoint_batch was here", '{"touchpoint_batch": 3}', '["touchpoint_batch"]',
                  '{"touchpoint_batch": {"app": "stream:ingest:bronze.events", "batch": "7"}}'):
        assert marked_batch({"userMetadata": other}, "stream:ingest:bronze.events") is None, other
    assert marked_batch({}, "stream:ingest:bronze.events") is None


def test_the_committed_batch_is_the_newest_mark_of_its_writer_searched_back_through_the_log(
        spark, tmp_path, monkeypatch):
    import touchpoint.core.delta as delta

    path = str(tmp_path / "table")
    write(spark, path, (0, 1))
    write(spark, path, (1, 2), userMetadata=batch_mark("a:table", 4))
    write(spark, path, (2, 3), userMetadata=batch_mark("b:table", 9))
    for number in range(5):  # other writers' commits after the marks
        write(spark, path, (3 + number, 4 + number), userMetadata=f"backfill {number}")
    write(spark, path, (9, 10))
    # A first read of two commits finds no mark: they are found by the next, eight times longer read.
    monkeypatch.setattr(delta, "_HISTORY_FIRST_PAGE", 2)
    assert committed_batch(path, "a:table") == 4
    assert committed_batch(path, "b:table") == 9
    assert committed_batch(path, "c:table") is None
    write(spark, path, (10, 11), userMetadata=batch_mark("a:table", 5))
    assert committed_batch(path, "a:table") == 5


def test_a_table_written_before_marks_answers_with_its_txn_version(spark, tmp_path):
    path = str(tmp_path / "table")
    write(spark, path, (0, 1), txnAppId="a:table", txnVersion=3)
    write(spark, path, (1, 2))
    assert committed_batch(path, "a:table") == 3
    assert committed_batch(path, "b:table") is None


def test_batch_writes_skip_a_batch_the_table_holds_and_read_the_log_again_after_forget(spark, tmp_path):
    paths = {"t": str(tmp_path / "t")}
    writes = BatchWrites(paths, lambda table: f"w:{table}")
    assert writes.write(spark.range(2), "t", 0) is True
    assert writes.write(spark.range(2), "t", 0) is False
    assert writes.write(spark.range(3), "t", 1) is True
    # Another writer under the same name commits batch 2 (as a crashed run whose commit landed):
    # this one does not know until it reads the log again.
    BatchWrites(paths, lambda table: f"w:{table}").write(spark.range(4), "t", 2)
    assert writes.committed("t") == 1
    writes.forget()
    assert writes.committed("t") == 2
    assert writes.write(spark.range(4), "t", 2) is False
    assert spark.read.format("delta").load(paths["t"]).count() == 2 + 3 + 4
    history = DeltaTable(paths["t"]).history()
    assert [(h["operation"], h.get("userMetadata")) for h in history] == [
        ("WRITE", batch_mark("w:t", 2)), ("WRITE", batch_mark("w:t", 1)), ("WRITE", batch_mark("w:t", 0))]


def test_writes_with_txn_versions_stay_once_after_their_marks_are_gone(spark, tmp_path):
    """A file ingested again after the log kept no mark of it: Delta's txn version still skips it."""
    paths = {"t": str(tmp_path / "t")}
    BatchWrites(paths, lambda table: f"file:{table}", txn_versions=True).write(spark.range(2), "t", 100)
    assert DeltaTable(paths["t"]).transaction_version("file:t") == 100
    forgetful = BatchWrites(paths, lambda table: f"file:{table}", txn_versions=True)
    forgetful._committed["t"] = None  # as if log retention had removed the marked commit
    assert forgetful.write(spark.range(2), "t", 100) is True  # sent, and skipped by Delta
    assert spark.read.format("delta").load(paths["t"]).count() == 2
    assert [h["operation"] for h in DeltaTable(paths["t"]).history()] == ["WRITE"]


def bronze_batch(spark, payloads):
    rows = [(payload.encode(), "events.raw", 0, offset, ARRIVED, ARRIVED, ARRIVED.date())
            for offset, payload in enumerate(payloads)]
    return spark.createDataFrame(rows, BRONZE_SCHEMA)


def page_view(event_id, minute):
    return json.dumps({"event_id": event_id, "event_type": "page_view", "event_ts": f"2026-03-01T10:{minute:02d}:00Z",
                       "anonymous_id": "anon-1", "context": {"page_url": "https://shop.example/"}})


def fail_after_commit(monkeypatch, table):
    """The first commit to `table` lands, then its write raises: the writer never learns it committed."""
    import touchpoint.core.delta as delta

    commit = delta.retry_on_conflict
    failed = []

    def commit_then_fail(write, what, *args, **kwargs):
        commit(write, what, *args, **kwargs)
        if f": {table} " in what and not failed:
            failed.append(what)
            raise RuntimeError(f"injected failure after the {table} commit")

    monkeypatch.setattr(delta, "retry_on_conflict", commit_then_fail)


@pytest.mark.parametrize("replayed_by", ["the same sink", "a restarted sink"])
@pytest.mark.parametrize("failed_after", ["bronze.events", "silver.quarantine", "silver.reconciliation"])
def test_a_batch_that_failed_part_way_is_written_once_when_replayed(spark, tmp_path, monkeypatch, failed_after,
                                                                   replayed_by):
    from touchpoint.streaming.ingest import IngestSink

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    first = bronze_batch(spark, [page_view("pv-1", 1), page_view("pv-2", 2), page_view("pv-1", 1), "not json"])
    second = bronze_batch(spark, [page_view("pv-3", 3), page_view("pv-2", 2)])
    sink = IngestSink(settings, source_id="test:partial")
    fail_after_commit(monkeypatch, failed_after)
    with pytest.raises(RuntimeError, match=f"after the {failed_after} commit"):
        sink(first, 0)
    replaying = sink if replayed_by == "the same sink" else IngestSink(settings, source_id="test:partial")
    assert replaying(first, 0) == {"bronze": 4, "quarantine": 1, "accepted": 3, "inserted": 2, "displaced": 0,
                                   "phones_dropped": 0, "silver": 2, "duplicates": 1}
    assert replaying(first, 0) == {"skipped": 1}
    assert replaying(second, 1)["silver"] == 1

    def table(name, *columns):
        return sorted(tuple(row[c] for c in columns) for row in DeltaTable(sink.paths[name]).to_pyarrow_table().to_pylist())

    assert table("bronze.events", "source_offset", "ingest_date") == [
        (0, ARRIVED.date()), (0, ARRIVED.date()), (1, ARRIVED.date()), (1, ARRIVED.date()), (2, ARRIVED.date()),
        (3, ARRIVED.date())]
    assert table("silver.events", "event_id") == [("pv-1",), ("pv-2",), ("pv-3",)]
    assert table("silver.quarantine", "payload", "source_offset") == [(b"not json", 3)]
    assert table("silver.reconciliation", "batch_id", "bronze", "silver", "quarantine", "duplicates") == [
        (0, 4, 2, 1, 1), (1, 2, 1, 0, 1)]
    for name in ("bronze.events", "silver.events", "silver.reconciliation"):
        marks = [h.get("userMetadata") for h in DeltaTable(sink.paths[name]).history() if h["operation"] == "WRITE"]
        assert marks == [batch_mark(f"test:partial:{name}", 1), batch_mark(f"test:partial:{name}", 0)], name
