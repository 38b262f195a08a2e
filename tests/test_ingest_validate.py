"""The ingest sink's validation transform (streaming.ingest.validate) around the per-record validator."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

UTC = dt.timezone.utc
ARRIVAL = dt.datetime(2026, 3, 2, 12, tzinfo=UTC)


def test_without_erased_subjects_only_rejected_records_keep_their_payload(spark):
    """Bronze is then written from the raw rows; the quarantine needs the rejected payloads only
    (with erased subjects every payload is kept: tests/test_privacy.py)."""
    from touchpoint.schemas.lake import BRONZE_SCHEMA
    from touchpoint.streaming.ingest import validate

    accepted = b'{"event_id": "e1", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "a@y.z"}'
    rejected = b'{"event_id": "e2", "event_type": "nope", "event_ts": "2026-03-02T10:00:00Z", "email": "b@y.z"}'
    garbage = b"{not json"
    bronze = spark.createDataFrame(
        [(p, "t", 0, i, ARRIVAL, ARRIVAL, ARRIVAL.date()) for i, p in enumerate((accepted, rejected, garbage))],
        BRONZE_SCHEMA)
    rows = (bronze.transform(validate("USD"))
            .select("payload", "error_code", "email", "event_ts", "rejected_event_id").orderBy("source_offset").collect())
    assert [tuple(r) for r in rows] == [
        (None, None, "a@y.z", dt.datetime(2026, 3, 2, 10), None),
        (rejected, "unknown_event_type", None, None, "e2"),
        (garbage, "truncated_json", None, None, None),
    ]


def test_arrival_instants_are_the_arrow_timestamps_as_utc_datetimes():
    from touchpoint.streaming.ingest import arrival_instants

    later = dt.datetime(2026, 3, 2, 12, 0, 0, 123_000, tzinfo=UTC)
    micros = pa.array([ARRIVAL, None, later, ARRIVAL], pa.timestamp("us", "UTC"))
    assert arrival_instants(micros) == [ARRIVAL, None, later, ARRIVAL]
    assert arrival_instants(pa.array([1_500], pa.timestamp("ms", "UTC"))) == [
        dt.datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)]
    assert [instant.tzinfo for instant in arrival_instants(micros) if instant] == [UTC] * 3
