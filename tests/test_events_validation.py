"""Validation and normalisation of single payloads (BRIEF §2): every bad-input case, exact values."""

import datetime as dt
import json

import jsonschema
import pytest

from touchpoint.core.events import (
    MAX_PAYLOAD_BYTES, JsonTypes, Rejected, campaign_fields, normalise_email, normalise_phone, parse_timestamp, validate_payload,
)
from touchpoint.schemas import envelope_schema

ARRIVAL = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.timezone.utc)


def event(**overrides):
    base = {"event_id": "e-1", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z", "anonymous_id": "a1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def order(**properties):
    props = {"order_id": "o-1", "revenue": 20.0, "currency": "EUR", **properties}
    return event(event_type="order", properties={k: v for k, v in props.items() if v is not ...})


BAD_INPUTS = [
    ("null value (a Kafka tombstone)", None, "null_value"),
    ("not json", b"hello world", "not_json"),
    ("truncated", b'{"event_id": "e-1", "event_type": "page_vi', "truncated_json"),
    ("not an object", b"[1, 2, 3]", "not_object"),
    ("a number", b"42", "not_object"),
    ("invalid utf-8", b'{"event_id": "\xff\xfe"}', "invalid_utf8"),
    ("integer of 5,000 digits", b'{"event_id": "e-1", "quantity": ' + b"9" * 5000 + b"}", "not_json"),
    ("missing event_id", encode(event(event_id=...)), "missing_event_id"),
    ("blank event_id", encode(event(event_id="   ")), "missing_event_id"),
    ("missing event_type", encode(event(event_type=...)), "missing_event_type"),
    ("missing event_ts", encode(event(event_ts=...)), "missing_event_ts"),
    ("unknown event_type", encode(event(event_type="purchase")), "unknown_event_type"),
    ("revenue not a number", encode(order(revenue="twelve")), "wrong_type"),
    ("id as object", encode(event(user_id={"id": 1})), "wrong_type"),
    ("context not object", encode(event(context="x")), "wrong_type"),
    ("no identifier", encode(event(anonymous_id=..., user_id="  ", email="")), "no_identifier"),
    ("unparseable ts", encode(event(event_ts="yesterday")), "bad_timestamp"),
    ("impossible date", encode(event(event_ts="2026-02-30T10:00:00Z")), "bad_timestamp"),
    ("ts without offset", encode(event(event_ts="2026-03-01T10:00:00")), "timestamp_without_offset"),
    ("ts before 2000", encode(event(event_ts="1999-12-31T23:59:59Z")), "timestamp_too_old"),
    ("ts a day after arrival", encode(event(event_ts="2026-03-03T12:00:00.000001Z")), "timestamp_in_future"),
    ("negative revenue", encode(order(revenue=-1)), "negative_revenue"),
    ("non-finite revenue", b'{"event_id":"e","event_type":"order","event_ts":"2026-03-01T10:00:00Z",'
                           b'"user_id":"u","properties":{"order_id":"o","revenue":NaN,"currency":"USD"}}',
     "invalid_revenue"),
    ("unknown currency", encode(order(currency="XYZ")), "unknown_currency"),
    ("order without order_id", encode(order(order_id=...)), "order_missing_fields"),
    ("order without currency", encode(order(currency=...)), "order_missing_fields"),
    ("payload over 1 MiB", encode(event(context={"page_url": "x" * MAX_PAYLOAD_BYTES})), "payload_too_large"),
    ("consent without flags", encode(event(event_type="consent", consent={})), "consent_without_flags"),
    ("consent flags not boolean", encode(event(event_type="consent", consent={"analytics": "yes"})), "wrong_type"),
    ("country not alpha-2", encode(event(context={"country": "GBR"})), "invalid_country"),
]


@pytest.mark.parametrize("payload, code", [(p, c) for _, p, c in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_each_bad_input_has_its_own_code(payload, code):
    outcome = validate_payload(payload, ARRIVAL)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.code == code, outcome.reason
    assert outcome.reason


def test_of_two_wrong_fields_the_first_in_the_schema_is_named_whatever_the_payload_order():
    payload = json.dumps({"properties": {"revenue": "x"}, "consent": {"analytics": 1}, "user_id": 5,
                          "event_id": "e-1", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z"}).encode()
    outcome = validate_payload(payload, ARRIVAL)
    assert (outcome.code, outcome.reason, outcome.event_id) == ("wrong_type", "'user_id' must be string, got 5", "e-1")


@pytest.mark.parametrize("payload, code, reason", [
    (encode(order(revenue=10**400)), "invalid_revenue", "'properties.revenue' is too large for a number: 1" + "0" * 56 + "..."),
    # finite, but beyond what the lake's DECIMAL(38,9) sums hold: quarantined, not a job failing on every run
    (encode(order(revenue=1e30, currency="USD")), "invalid_revenue",
     "properties.revenue must be at most 1e+15 (also once converted to USD), got 1e+30 USD: the lake sums money as "
     "DECIMAL(38,9)"),
    (encode(order(revenue=10**15 + 1, currency="USD")), "invalid_revenue",
     "properties.revenue must be at most 1e+15 (also once converted to USD), got 1000000000000001.0 USD: the lake "
     "sums money as DECIMAL(38,9)"),
    (encode(event(properties={"revenue": 10**400})), "invalid_revenue",
     "'properties.revenue' is too large for a number: 1" + "0" * 56 + "..."),
    (encode(event(properties={"price": -(10**309)})), "wrong_type",
     "'properties.price' is too large for a number: -1" + "0" * 55 + "..."),
    (encode(event(properties={"quantity": 2**63})), "wrong_type",
     "'properties.quantity' must fit a 64-bit integer, got 9223372036854775808"),
], ids=["order revenue", "order revenue beyond DECIMAL(38,9) sums", "order revenue just above 1e15",
        "revenue of another event", "price", "quantity"])
def test_numbers_json_allows_but_silver_cannot_hold_are_rejected_not_raised(payload, code, reason):
    """JSON integers have no bound: one too large for a double or a long used to raise out of the
    validator and fail the whole micro-batch, again at every restart."""
    outcome = validate_payload(payload, ARRIVAL)
    assert (type(outcome), outcome.code, outcome.reason, outcome.event_id) == (Rejected, code, reason, "e-1")
    assert isinstance(validate_payload(encode(event(properties={"quantity": 2**63 - 1, "price": 10**300})), ARRIVAL),
                      dict)


@pytest.mark.parametrize("field, text", [("event_ts", "9999-12-31T23:59:59-14:00"),
                                         ("sent_ts", "0001-01-01T00:00:00+14:00")])
def test_a_local_time_outside_years_1_to_9999_in_utc_is_a_bad_timestamp_not_a_crash(field, text):
    outcome = validate_payload(encode(event(**{field: text})), ARRIVAL)
    assert (type(outcome), outcome.code, outcome.reason, outcome.event_id) == (
        Rejected, "bad_timestamp", f"'{field}' is outside years 1-9999 in UTC: \"{text}\"", "e-1")


def test_a_payload_the_rules_did_not_foresee_is_quarantined_with_the_exception_not_raised(monkeypatch):
    import touchpoint.core.events as events

    def fails(user_agent):
        raise RuntimeError(f"cannot read {user_agent}")

    monkeypatch.setattr(events, "parse_user_agent", fails)  # fault injection into our own code
    outcome = validate_payload(encode(event(context={"user_agent": "odd/1.0"})), ARRIVAL)
    assert (type(outcome), outcome.code, outcome.reason) == (
        Rejected, "validator_error", "the validator failed on this payload: RuntimeError: cannot read odd/1.0")


def test_structural_rejections_agree_with_the_json_schema():
    """The hand-rolled structural checks must reject exactly what the published schema rejects."""
    validator = jsonschema.Draft202012Validator(envelope_schema())
    structural = {"missing_event_id", "missing_event_type", "missing_event_ts", "unknown_event_type", "wrong_type"}
    for name, payload, code in BAD_INPUTS:
        if code in structural and name != "blank event_id":
            assert not validator.is_valid(json.loads(payload)), name
    assert validator.is_valid(order())
    assert validator.is_valid(event(context={"country": "GB"}, campaign={"source": "x"}))


def test_valid_order_is_normalised():
    payload = encode({
        "event_id": "  o-9 ", "event_type": "order", "event_ts": "2026-03-01T11:30:00.1234567+01:00",
        "sent_ts": "2026-03-01T10:31:00Z", "user_id": " U-1 ", "email": "  Jane.Doe@Example.COM ",
        "phone": "020 7946 0018", "context": {"country": "gb", "page_url": "https://shop.example/checkout"},
        "properties": {"order_id": 1234, "revenue": 100, "currency": "eur"}, "extra": {"kept": "in bronze"},
    })
    row = validate_payload(payload, ARRIVAL, "USD")
    assert not isinstance(row, Rejected), row
    assert row["event_id"] == "o-9"
    assert row["event_ts"] == dt.datetime(2026, 3, 1, 10, 30, 0, 123456, tzinfo=dt.timezone.utc)
    assert row["event_date"] == dt.date(2026, 3, 1)
    assert row["sent_ts"] == dt.datetime(2026, 3, 1, 10, 31, tzinfo=dt.timezone.utc)
    assert (row["user_id"], row["email"], row["phone"], row["country"]) == ("U-1", "jane.doe@example.com",
                                                                          "+442079460018", "GB")
    assert (row["order_id"], row["revenue"], row["currency"]) == ("1234", 100.0, "EUR")
    assert row["revenue_reporting"] == pytest.approx(108.0)
    assert row["reporting_currency"] == "USD"
    assert row["schema_version"] == "1.0.0"


def test_reporting_currency_conversion_between_two_non_usd():
    row = validate_payload(encode(order(revenue=127.0, currency="GBP")), ARRIVAL, "EUR")
    assert row["revenue_reporting"] == pytest.approx(127.0 * 1.27 / 1.08)


def test_exactly_one_day_after_arrival_is_accepted():
    row = validate_payload(encode(event(event_ts="2026-03-03T12:00:00Z")), ARRIVAL)
    assert not isinstance(row, Rejected)
    assert not isinstance(validate_payload(encode(event(event_ts="2000-01-01T00:00:00Z")), ARRIVAL), Rejected)


@pytest.mark.parametrize("raw, country, expected", [
    ("+1 (415) 555-2671", None, "+14155552671"),
    ("415-555-2671", "US", "+14155552671"),
    ("020 7946 0018", "GB", "+442079460018"),
    ("030 1234567", "DE", "+49301234567"),
    ("01 23 45 67 89", "FR", "+33123456789"),
    ("98765 43210", "IN", "+919876543210"),
])
def test_phones_become_e164(raw, country, expected):
    assert normalise_phone(raw, country) == (expected, False)


@pytest.mark.parametrize("raw, country", [("12", "US"), ("not a phone", "GB"), ("555-2671", None)])
def test_impossible_phones_are_dropped_but_the_event_stays(raw, country):
    assert normalise_phone(raw, country) == (None, True)
    row = validate_payload(encode(event(phone=raw, anonymous_id=..., context={"country": country})), ARRIVAL)
    assert not isinstance(row, Rejected)
    assert (row["phone"], row["phone_dropped"]) == (None, True)


def test_email_is_trimmed_and_lowercased_only():
    assert normalise_email("  First.Last+Tag@GMail.com ") == "first.last+tag@gmail.com"
    assert normalise_email("   ") is None


def test_campaign_object_wins_without_field_merge():
    fields, origin = campaign_fields({"source": " News ", "medium": ""},
                                     "https://x.example/?utm_source=google&utm_medium=cpc&utm_campaign=a")
    assert origin == "campaign"
    assert fields == {"campaign_source": "News", "campaign_medium": None, "campaign_name": None,
                      "campaign_term": None, "campaign_content": None}


def test_utm_parameters_case_insensitive_and_decoded():
    fields, origin = campaign_fields(
        {"source": "  ", "name": None},
        "https://shop.example/p?UTM_Source=Google&utm_MEDIUM=cpc&utm_campaign=Spring%20Sale%2B&utm_term=red+shoes"
        "&utm_content=a%26b",
    )
    assert origin == "utm"
    assert fields == {"campaign_source": "Google", "campaign_medium": "cpc", "campaign_name": "Spring Sale+",
                      "campaign_term": "red shoes", "campaign_content": "a&b"}
    assert campaign_fields(None, "https://shop.example/p?q=1") == (dict.fromkeys(fields), None)


def test_timestamp_offsets_are_exact_instants():
    assert parse_timestamp("2026-03-01T00:30:00-05:00", "event_ts") == dt.datetime(2026, 3, 1, 5, 30,
                                                                                  tzinfo=dt.timezone.utc)


UTC = dt.timezone.utc


@pytest.mark.parametrize(("text", "instant"), [
    ("2026-03-01T10:00:00Z", dt.datetime(2026, 3, 1, 10, tzinfo=UTC)),
    ("2026-03-01T10:00:00.1Z", dt.datetime(2026, 3, 1, 10, 0, 0, 100_000, tzinfo=UTC)),
    ("2026-03-01T10:00:00.123456Z", dt.datetime(2026, 3, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
    ("2026-03-01T10:00:00.1234567Z", dt.datetime(2026, 3, 1, 10, 0, 0, 123_456, tzinfo=UTC)),  # truncated
    ("2026-03-01T10:00:00.999999999+01:30", dt.datetime(2026, 3, 1, 8, 30, 0, 999_999, tzinfo=UTC)),
    ("2026-03-01t10:00:00z", dt.datetime(2026, 3, 1, 10, tzinfo=UTC)),
    ("2026-03-01 10:00:00.5-00:00", dt.datetime(2026, 3, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
    ("  2026-03-01T23:30:00-01:00 ", dt.datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1, tzinfo=UTC)),
    # RFC 3339 allows any number of fraction digits: kept to microseconds, truncated
    ("2026-03-01T10:00:00.123456789012-00:30", dt.datetime(2026, 3, 1, 10, 30, 0, 123_456, tzinfo=UTC)),
    ("2026-03-01T10:00:00+23:59", dt.datetime(2026, 3, 1, 10, 1, tzinfo=UTC) - dt.timedelta(days=1)),
    # a leap second (RFC 3339 5.6, at 23:59:60 UTC) is the last microsecond of its minute, on its own day
    ("2016-12-31T23:59:60Z", dt.datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
    ("2016-12-31T18:59:60.25-05:00", dt.datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
])
def test_timestamps_in_every_accepted_shape(text, instant):
    parsed = parse_timestamp(text, "event_ts")
    assert (parsed, parsed.tzinfo) == (instant, UTC)


@pytest.mark.parametrize(("text", "reason"), [
    ("2026-03-01T24:00:00Z", "'event_ts' is not a valid instant (hour must be in 0..23): \"2026-03-01T24:00:00Z\""),
    ("2026-02-29T10:00:00Z", "'event_ts' is not a valid instant (day is out of range for month): "
                             "\"2026-02-29T10:00:00Z\""),
    ("2026-03-01T10:00:60Z", "'event_ts' has second 60, which only a leap second at 23:59:60 UTC has: "
                             "\"2026-03-01T10:00:60Z\""),
    ("2016-12-31T23:59:60+01:00", "'event_ts' has second 60, which only a leap second at 23:59:60 UTC has: "
                                  "\"2016-12-31T23:59:60+01:00\""),
    ("2016-12-31T23:59:61Z", "'event_ts' is not a valid instant (second must be in 0..59): \"2016-12-31T23:59:61Z\""),
    ("2026-03-01T10:00:00+24:00", "'event_ts' has an offset outside -23:59..+23:59: \"2026-03-01T10:00:00+24:00\""),
    ("2026-03-01T10:00:00+05:60", "'event_ts' has an offset outside -23:59..+23:59: \"2026-03-01T10:00:00+05:60\""),
    # RFC 3339's DIGIT is ASCII: other Unicode digits are not a timestamp
    ("٢٠٢٦-03-01T10:00:00Z", "'event_ts' is not an RFC 3339 timestamp: \"\\u0662\\u0660\\u0662\\u0666-03-01T10:00:00Z\""),
])
def test_impossible_instants_name_the_problem(text, reason):
    with pytest.raises(Rejected) as rejected:
        parse_timestamp(text, "event_ts")
    assert (rejected.value.code, rejected.value.reason) == ("bad_timestamp", reason)


def test_deeply_nested_json_is_rejected_not_a_crash():
    from touchpoint.core.events import decode

    with pytest.raises(Rejected) as rejected:
        decode(b"[" * 20_000 + b"]" * 20_000)
    assert (rejected.value.code, rejected.value.reason) == ("not_json", "JSON nests too deeply to parse")


@pytest.mark.parametrize(("json_types", "value", "accepted"), [
    (("integer",), 3, True), (("integer",), 3.0, False), (("integer",), True, False),
    (("number",), 3, True), (("number",), 2.5, True), (("number",), False, False), (("number",), "2.5", False),
    (("boolean",), True, True), (("boolean",), 1, False), (("boolean", "null"), None, True),
    (("string",), "x", True), (("string",), None, False), (("string", "null"), None, True), (("string",), ["x"], False),
    (("object",), {}, True), (("object",), [], False), (("object", "null"), True, False),
])
def test_json_types_accept_what_json_schema_accepts(json_types, value, accepted):
    assert JsonTypes.of(json_types).accepts(value) is accepted
    # One deliberate difference: JSON Schema counts 3.0 as an integer; silver stores a long, so a
    # float is refused rather than silently truncated.
    schema_accepts = accepted or (json_types == ("integer",) and value == 3.0)
    assert jsonschema.Draft202012Validator({"type": list(json_types)}).is_valid(value) is schema_accepts


def test_an_unsupported_json_type_is_named():
    with pytest.raises(ValueError, match="unsupported JSON Schema type 'array'"):
        JsonTypes.of(("string", "array"))


def test_the_largest_revenue_accepted_is_1e15_in_both_currencies():
    assert validate_payload(encode(order(revenue=10**15, currency="USD")), ARRIVAL)["revenue_reporting"] == 1e15
    # below the bound in its own currency, above it once converted (1 EUR is more than 1 USD)
    assert validate_payload(encode(order(revenue=9.9e14, currency="EUR")), ARRIVAL).code == "invalid_revenue"
