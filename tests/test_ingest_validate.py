"""The ingest sink's validation transform (streaming.ingest.validate) around the per-record validator."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa

from touchpoint.core.privacy import Suppression, withheld_payload

UTC = dt.timezone.utc
ARRIVAL = dt.datetime(2026, 3, 2, 12, tzinfo=UTC)


def validated(spark, payloads: list[bytes], suppression: Suppression = Suppression()) -> list[tuple]:
    """(payload, error_code, email, event_ts, rejected_event_id) of each payload, in arrival order."""
    from touchpoint.schemas.lake import BRONZE_SCHEMA
    from touchpoint.streaming.ingest import validate

    bronze = spark.createDataFrame(
        [(p, "t", 0, i, ARRIVAL, ARRIVAL, ARRIVAL.date()) for i, p in enumerate(payloads)], BRONZE_SCHEMA)
    return [tuple(r) for r in bronze.transform(validate("USD", suppression))
            .select("payload", "error_code", "email", "event_ts", "rejected_event_id")
            .orderBy("source_offset").collect()]


def test_erased_subjects_are_quarantined_before_any_other_check_with_their_payload_withheld(spark):
    erased = b'{"event_id": "e1", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "X@Y.Z"}'
    erased_and_invalid = b'{"event_id": "e2", "event_type": "nope", "email": "x@y.z"}'
    other = b'{"event_id": "e3", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "o@y.z"}'
    suppression = Suppression(frozenset({("email", hashlib.sha256(b"x@y.z").hexdigest())}))
    # With erased subjects bronze is written from these rows, so every record keeps a payload.
    assert validated(spark, [erased, erased_and_invalid, other], suppression) == [
        (withheld_payload(erased), "erased_subject", None, None, None),
        (withheld_payload(erased_and_invalid), "erased_subject", None, None, None),
        (other, None, "o@y.z", dt.datetime(2026, 3, 2, 10), None),
    ]


def test_without_erased_subjects_only_rejected_records_keep_their_payload(spark):
    """Bronze is then written from the raw rows; the quarantine needs the rejected payloads only."""
    accepted = b'{"event_id": "e1", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "a@y.z"}'
    rejected = b'{"event_id": "e2", "event_type": "nope", "event_ts": "2026-03-02T10:00:00Z", "email": "b@y.z"}'
    garbage = b"{not json"
    assert validated(spark, [accepted, rejected, garbage]) == [
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
