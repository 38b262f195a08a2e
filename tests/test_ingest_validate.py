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


def test_unpaired_surrogates_and_deep_nesting_are_quarantined_not_a_failed_batch(spark):
    """`\ud800` is valid JSON that no UTF-8 column can store: before, the record passed the validator
    and failed its micro-batch at every restart (and, once someone was erased, so did a payload
    nested too deep for the suppression check). In an id it is refused; elsewhere replaced by U+FFFD.
    A pair of escapes is one character and is kept."""
    lone = rb'{"event_id": "e\ud800", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "anonymous_id": "a"}'
    lone_email = rb'{"event_id": "e2", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "\udc00@y.z"}'
    pair = rb'{"event_id": "e3", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "\ud83d\ude00@y.z"}'
    # a title cut mid-emoji by a browser: not an id, so the event is kept with U+FFFD in its place
    cut = (rb'{"event_id": "e4", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "c@y.z", '
           rb'"context": {"page_url": "https://shop.example/?utm_source=news&utm_medium=email&utm_campaign=Sale%20"},'
           rb' "campaign": {"name": "Sale \ud83d"}}')
    deep = b"[" * 100_000 + b"]" * 100_000
    suppression = Suppression(frozenset({("email", hashlib.sha256(b"x@y.z").hexdigest())}))
    for erased in (Suppression(), suppression):
        assert validated(spark, [lone, lone_email, pair, cut, deep], erased) == [
            (lone, "invalid_unicode", None, None, None),
            (lone_email, "invalid_unicode", None, None, "e2"),
            (pair if erased else None, None, "\U0001F600@y.z", dt.datetime(2026, 3, 2, 10), None),
            (cut if erased else None, None, "c@y.z", dt.datetime(2026, 3, 2, 10), None),
            (deep, "not_json", None, None, None),
        ]
    from touchpoint.core.events import validate_payload

    assert validate_payload(cut, ARRIVAL)["campaign_name"] == "Sale \ufffd"


def test_a_validated_record_arrow_cannot_hold_is_quarantined_with_its_payload(monkeypatch):
    """The safety net behind the validator: a silver row no rule foresaw that the batch cannot
    store (here a validator gap simulated by a string with a lone surrogate) is quarantined as
    validator_error with its payload; the other records of the batch are stored as they were."""
    import touchpoint.streaming.ingest as ingest
    from touchpoint.core.events import validate_payload
    from touchpoint.schemas.lake import BRONZE_SCHEMA

    def with_a_gap(payload, arrival, currency="USD"):
        row = validate_payload(payload, arrival, currency)
        return {**row, "browser": "\ud800"} if b'"gap"' in payload else row

    monkeypatch.setattr(ingest, "validate_payload", with_a_gap)
    good = b'{"event_id": "e1", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "a@y.z"}'
    gap = b'{"event_id": "gap", "event_type": "page_view", "event_ts": "2026-03-02T10:00:00Z", "email": "b@y.z"}'
    bronze = pa.RecordBatch.from_pydict(
        {"payload": [good, gap], "source_topic": ["t", "t"], "source_partition": [0, 0], "source_offset": [0, 1],
         "source_ts": [ARRIVAL, ARRIVAL], "ingest_ts": [ARRIVAL, ARRIVAL], "ingest_date": [ARRIVAL.date()] * 2},
        schema=ingest.to_arrow_schema(BRONZE_SCHEMA, timezone="UTC", prefers_large_types=False))
    [out] = list(ingest.validated_batches("USD")(iter([bronze])))
    rows = out.select(["payload", "event_id", "email", "error_code", "reason"]).to_pylist()
    assert rows == [
        {"payload": None, "event_id": "e1", "email": "a@y.z", "error_code": None, "reason": None},
        {"payload": gap, "event_id": None, "email": None, "error_code": "validator_error",
         "reason": "the validated record cannot be stored: UnicodeEncodeError: 'utf-8' codec can't encode character "
                   "'\\ud800' in position 0: surrogates not allowed"},  # the message quotes it escaped
    ]


def test_arrival_instants_are_the_arrow_timestamps_as_utc_datetimes():
    from touchpoint.streaming.ingest import arrival_instants

    later = dt.datetime(2026, 3, 2, 12, 0, 0, 123_000, tzinfo=UTC)
    micros = pa.array([ARRIVAL, None, later, ARRIVAL], pa.timestamp("us", "UTC"))
    assert arrival_instants(micros) == [ARRIVAL, None, later, ARRIVAL]
    assert arrival_instants(pa.array([1_500], pa.timestamp("ms", "UTC"))) == [
        dt.datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)]
    assert [instant.tzinfo for instant in arrival_instants(micros) if instant] == [UTC] * 3
