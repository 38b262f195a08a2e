"""Validate and normalise one raw event payload (BRIEF §2), in plain Python.

The structural rules (required fields, enum, JSON types) are read from the envelope JSON Schema;
the semantic rules of BRIEF §2 follow. The same function serves the Spark ingestion
(batched through Arrow), the file ingest and the HTTP collector, so a payload is judged the
same way whatever door it came through.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import phonenumbers

from touchpoint.schemas.envelope import (
    CAMPAIGN_COLUMNS, SCHEMA_FILE, envelope_fields, envelope_schema, event_types, identifier_columns,
    schema_version,
)

MAX_PAYLOAD_BYTES = 1024 * 1024
OLDEST_EVENT = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
MAX_FUTURE = dt.timedelta(days=1)
# The largest order revenue accepted, in its currency and in the reporting one: money is summed as
# DECIMAL(38,9) (at most about 1e29), so 1e14 such orders still sum without overflowing. A larger
# finite value would fail every job and speed micro-batch that sums it.
MAX_REVENUE = 1e15
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # silver's quantity is a long
FX_RATES_FILE = Path(__file__).parent / "fx_rates.csv"

# Every rejection code, in the order they are checked; docs/INGESTION.md explains each.
ERROR_CODES = (
    "null_value", "payload_too_large", "invalid_utf8", "truncated_json", "not_json", "not_object", "invalid_unicode",
    "missing_event_id", "missing_event_type", "missing_event_ts", "wrong_type", "unknown_event_type",
    "invalid_country", "bad_timestamp", "timestamp_without_offset", "timestamp_too_old", "timestamp_in_future",
    "no_identifier", "order_missing_fields", "invalid_revenue", "negative_revenue", "unknown_currency",
    "fx_rate_missing", "consent_without_flags", "erased_subject", "validator_error",
)

# RFC 3339 (§5.6): ASCII digits, any number of fraction digits (kept to microseconds, truncated).
_TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$",
    re.ASCII,
)
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")
_CONSENT_FLAGS = ("email_marketing", "ads_personalization", "analytics")
_CAMPAIGN_KEYS = tuple((column, column.removeprefix("campaign_")) for column in CAMPAIGN_COLUMNS)
_UTM_TO_FIELD = {"utm_source": "campaign_source", "utm_medium": "campaign_medium", "utm_campaign": "campaign_name",
                 "utm_term": "campaign_term", "utm_content": "campaign_content"}


class Rejected(Exception):
    """A payload that cannot enter silver: a stable code and a readable reason."""

    def __init__(self, code: str, reason: str, event_id: str | None = None):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.event_id = code, reason, event_id


@dataclass(frozen=True)
class Currencies:
    iso_codes: frozenset[str]
    usd_per_unit: dict[str, float]

    def to_reporting(self, amount: float, currency: str, reporting: str) -> float:
        return amount * self.usd_per_unit[currency] / self.usd_per_unit[reporting]


@lru_cache(maxsize=4)
def currencies(rates_file: str = str(FX_RATES_FILE)) -> Currencies:
    iso = json.loads((SCHEMA_FILE.parent / "iso4217.json").read_text())["codes"]
    rates: dict[str, float] = {}
    with open(rates_file, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["currency", "usd_per_unit"]:
            raise ValueError(f"{rates_file}:1: the header must be currency,usd_per_unit, got {reader.fieldnames}")
        for row in reader:
            where = f"{rates_file}:{reader.line_num}"
            code = (row["currency"] or "").strip().upper()
            try:
                rate = float(row["usd_per_unit"])
            except (TypeError, ValueError):
                rate = math.nan
            if code not in iso or code in rates or not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"{where}: {row} must be a distinct ISO 4217 code and a finite rate above 0 "
                                 "(US dollars per unit)")
            rates[code] = rate
    return Currencies(frozenset(iso), rates)


# ---- structure, derived from the JSON Schema -------------------------------------------------

# JSON Schema type -> the Python types json.loads gives for it (bool is checked apart: it is an int).
_PYTHON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "object": (dict,), "boolean": (),
                 "null": ()}


@dataclass(frozen=True)
class JsonTypes:
    """A value check for a JSON Schema `type` (one name or a list), built once per field: checking
    ~30 fields of every event is most of the validator's time."""

    python_types: tuple[type, ...]
    allows_null: bool
    allows_bool: bool
    expected: str  # for messages, e.g. "string"

    @classmethod
    @lru_cache(maxsize=None)
    def of(cls, json_types: tuple[str, ...]) -> "JsonTypes":
        unknown = [t for t in json_types if t not in _PYTHON_TYPES]
        if unknown:
            raise ValueError(f"unsupported JSON Schema type {unknown[0]!r}")
        python_types = tuple(dict.fromkeys(python_type for t in json_types for python_type in _PYTHON_TYPES[t]))
        return cls(python_types, "null" in json_types, "boolean" in json_types,
                   " or ".join(t for t in json_types if t != "null"))

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.allows_null
        if isinstance(value, bool):  # JSON true/false is never an integer or a number
            return self.allows_bool
        return isinstance(value, self.python_types)


def _types_of(spec: dict) -> tuple[str, ...]:
    return tuple(spec["type"]) if isinstance(spec["type"], list) else (spec["type"],)


@lru_cache(maxsize=1)
def _object_checks() -> tuple[tuple[str, JsonTypes], ...]:
    """(name, check) of the envelope's top-level object fields (context, properties, ...)."""
    return tuple((name, JsonTypes.of(_types_of(spec))) for name, spec in envelope_schema()["properties"].items()
                 if "object" in _types_of(spec))


@lru_cache(maxsize=1)
def _leaf_checks() -> tuple[tuple[tuple[str, ...], JsonTypes, bool], ...]:
    """(path, check, absent allowed) of every envelope leaf: an optional field may be null or missing."""
    return tuple((field.path, JsonTypes.of(field.json_types), not field.required) for field in envelope_fields())


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_structure(event: dict) -> None:
    """Required fields, JSON types and the event_type enum, as the envelope schema states them."""
    raw_id = event.get("event_id")
    event_id = raw_id.strip() if isinstance(raw_id, str) else None
    for name in envelope_schema()["required"]:
        if event.get(name) is None:
            raise Rejected(f"missing_{name}", f"required field '{name}' is missing or null", event_id)
    for name, check in _object_checks():
        if name in event and not check.accepts(event[name]):
            raise Rejected("wrong_type", f"'{name}' must be an object, got {_describe(event[name])}", event_id)
    if not _present_leaves_typed(event):
        for path, check, optional in _leaf_checks():  # schema order: the first wrong field is reported
            value = _lookup(event, path)
            if not check.accepts(value) and not (value is None and optional):
                raise Rejected("wrong_type", f"'{'.'.join(path)}' must be {check.expected}, got {_describe(value)}",
                               event_id)
    if event["event_type"] not in event_types():
        raise Rejected("unknown_event_type", f"event_type {event['event_type']!r} is not one of "
                       f"{', '.join(event_types())}", event_id)


@lru_cache(maxsize=1)
def _leaf_types_by_key() -> tuple[dict[str, frozenset], dict[str, dict[str, frozenset]]] | None:
    """The exact Python types each leaf takes, as {top-level key: types} and {object key: {key: types}};
    None when the envelope nests deeper than that."""
    top: dict[str, frozenset] = {}
    nested: dict[str, dict[str, frozenset]] = {}
    for path, check, _ in _leaf_checks():
        types = frozenset(t for t in check.python_types if t is not bool) | ({bool} if check.allows_bool else set())
        if len(path) > 2:
            return None
        if len(path) == 1:
            top[path[0]] = types
        else:
            nested.setdefault(path[0], {})[path[1]] = types
    return top, nested


def _present_leaves_typed(event: dict) -> bool:
    """True when every non-null leaf the event holds is of a JSON type its schema allows.

    A fast path for check_structure: it visits the keys the event has, not every leaf of the schema
    (most are absent), and compares exact types, as json.loads makes them. False sends the event to
    the full check in schema order, which names the wrong field (or passes a subclass it accepts).
    Null leaves pass: required ones were checked before, and optional ones may be null."""
    by_key = _leaf_types_by_key()
    if by_key is None:
        return False
    top, nested = by_key
    for key, value in event.items():
        if value is None:
            continue
        types = top.get(key)
        if types is not None:
            if type(value) not in types:
                return False
        elif key in nested:
            if type(value) is not dict:
                return False
            children = nested[key]
            for child_key, child_value in value.items():
                if child_value is not None and child_key in children and type(child_value) not in children[child_key]:
                    return False
    return True


def _lookup(event: dict, path: tuple[str, ...]) -> Any:
    node: Any = event
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


# ---- value normalisation (Python mirrors of BRIEF §2) -------------------------------------

def parse_timestamp(text: str, field: str) -> dt.datetime:
    """RFC 3339 with an offset -> aware UTC datetime, truncated to microseconds."""
    stripped = text.strip()
    match = _TS_RE.match(stripped)
    if not match:
        raise Rejected("bad_timestamp", f"'{field}' is not an RFC 3339 timestamp: {_describe(text)}")
    if match["offset"] is None:
        raise Rejected("timestamp_without_offset", f"'{field}' has no UTC offset: {_describe(text)}")
    year, month, day, hour, minute, second, fraction = match.groups()[:7]
    offset = match["offset"]
    # An offset is a time of day (time-numoffset: hours 00-23, minutes 00-59); fromisoformat and
    # timezone() take "+05:60" as 06:00.
    if offset not in ("Z", "z") and (int(offset[1:3]) > 23 or int(offset[4:6]) > 59):
        raise Rejected("bad_timestamp", f"'{field}' has an offset outside -23:59..+23:59: {_describe(text)}")
    # Fast path (two timestamps per event were a fifth of the validator's time): the common shape,
    # ASCII digits and at most microseconds, read by the C parser; anything it refuses takes the
    # path below, which names the problem.
    if (fraction is None or len(fraction) <= 6) and hour != "24":
        try:
            return dt.datetime.fromisoformat(stripped).astimezone(dt.timezone.utc)
        except (ValueError, OverflowError):
            pass
    leap = second == "60"
    try:
        tz = dt.timezone.utc if offset in ("Z", "z") else dt.timezone(
            (1 if offset[0] == "+" else -1) * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        )
        local = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), 59 if leap else int(second),
                            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=tz)
    except ValueError as error:
        raise Rejected("bad_timestamp", f"'{field}' is not a valid instant ({error}): {_describe(text)}") from None
    try:
        instant = local.astimezone(dt.timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00: a valid local time, but after year 9999 in UTC
        raise Rejected("bad_timestamp", f"'{field}' is outside years 1-9999 in UTC: {_describe(text)}") from None
    if leap:
        # RFC 3339 allows second 60 for a leap second, which is inserted at 23:59:60 UTC. A UTC instant
        # has no such second: it is read as the last microsecond of its minute, so it stays on its day.
        if (instant.hour, instant.minute) != (23, 59):
            raise Rejected("bad_timestamp", f"'{field}' has second 60, which only a leap second at 23:59:60 UTC "
                                            f"has: {_describe(text)}")
        return instant.replace(microsecond=999_999)
    return instant


def clean_id(value: Any) -> str | None:
    """Trimmed identifier, None when absent or blank (case is kept)."""
    if value is None:
        return None
    text = value.strip() if type(value) is str else str(value).strip()
    return text or None


def normalise_email(value: str | None) -> str | None:
    text = clean_id(value)
    return text.lower() if text else None


def normalise_phone(value: str | None, country: str | None) -> tuple[str | None, bool]:
    """(E.164 phone or None, dropped?) via phonenumbers with the event's country as region."""
    raw = clean_id(value)
    if raw is None:
        return None, False
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        return None, True
    if not phonenumbers.is_possible_number(number):
        return None, True
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), False


def campaign_fields(campaign: dict | None, page_url: str | None) -> tuple[dict[str, str | None], str | None]:
    """The five campaign fields and where they came from: the object, else utm_* of page_url (no merge)."""
    campaign = campaign or {}
    from_object = {column: clean_id(campaign.get(key)) for column, key in _CAMPAIGN_KEYS}
    if any(from_object.values()):
        return from_object, "campaign"
    from_url = dict.fromkeys(CAMPAIGN_COLUMNS)
    if page_url:
        try:
            query = urlsplit(page_url).query
        except ValueError:
            query = ""
        for key, value in parse_qsl(query, keep_blank_values=True):
            column = _UTM_TO_FIELD.get(key.strip().lower())
            if column and from_url[column] is None:
                from_url[column] = clean_id(value)
    if any(from_url.values()):
        return from_url, "utm"
    return from_url, None


@lru_cache(maxsize=4096)
def parse_user_agent(user_agent: str) -> tuple[str | None, str | None, str | None]:
    """(device_type, browser family, os family) with the ua-parser library."""
    from ua_parser import parse

    result = parse(user_agent)
    browser = result.user_agent.family if result.user_agent else None
    os_family = result.os.family if result.os else None
    device = result.device.family if result.device else None
    lowered = user_agent.lower()
    if any(bot in lowered for bot in ("bot", "crawler", "spider")):
        device_type = "bot"
    elif "ipad" in lowered or "tablet" in lowered:
        device_type = "tablet"
    elif "mobi" in lowered or os_family in ("iOS", "Android"):
        device_type = "mobile"
    elif device in (None, "Other") and os_family in ("Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS"):
        device_type = "desktop"
    else:
        device_type = "other"
    return device_type, browser, os_family


# ---- the whole record ----------------------------------------------------------------------------

def decode(payload: bytes | None) -> dict:
    """Raw bytes -> JSON object, or Rejected with the precise reason."""
    if payload is None:  # a Kafka tombstone, or a producer that sent no value: nothing to keep but the record
        raise Rejected("null_value", "the record has no value (null): a Kafka tombstone or an empty send")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected("payload_too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected("invalid_utf8", f"payload is not valid UTF-8 (byte {error.start})") from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as error:
        if _looks_truncated(text):
            raise Rejected("truncated_json", f"JSON ends early: {error.msg} at char {error.pos}") from None
        raise Rejected("not_json", f"not JSON: {error.msg} at char {error.pos}") from None
    except RecursionError:  # a hostile `[[[[...` must be quarantined, not crash the batch
        raise Rejected("not_json", "JSON nests too deeply to parse") from None
    except ValueError as error:  # an integer of more than 4,300 digits, which Python refuses to read
        raise Rejected("not_json", f"JSON that cannot be read: {str(error).split(';')[0]}") from None
    if not isinstance(event, dict):
        raise Rejected("not_object", f"JSON is a {type(event).__name__}, not an object")
    if _SURROGATE_ESCAPE.search(text):
        event = _without_lone_surrogates(event)
    return event


# A \uD800-\uDFFF escape. A pair of them is one character; an unpaired one parses into a Python
# str that no UTF-8 column can hold, so the batch writing it would fail at every restart.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads has already joined every valid pair
# Values kept exactly, as keys: a replaced character could make two of them one.
_EXACT_FIELDS = ("event_id", "anonymous_id", "user_id", "email", "phone")


def _without_lone_surrogates(event: dict) -> dict:
    """The event with each unpaired surrogate replaced by U+FFFD (a title cut mid-emoji by a browser
    is still a page view); in an id or identifier, or the order id, the event is rejected instead."""
    properties = event.get("properties")
    exact = [(name, event.get(name)) for name in _EXACT_FIELDS]
    exact.append(("properties.order_id", properties.get("order_id") if isinstance(properties, dict) else None))
    broken = [name for name, value in exact if isinstance(value, str) and _LONE_SURROGATE.search(value)]
    if broken:
        event_id = clean_id(event.get("event_id")) \
            if "event_id" not in broken and isinstance(event.get("event_id"), str) else None
        raise Rejected("invalid_unicode", f"'{broken[0]}' holds an unpaired UTF-16 surrogate escape "
                                          "(\\ud800-\\udfff), which is no character; ids are kept exactly", event_id)

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return _LONE_SURROGATE.sub("\ufffd", value)
        if isinstance(value, dict):
            return {clean(key): clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return clean(event)


def _looks_truncated(text: str) -> bool:
    """JSON that opens an object or array and ends while one is still open (or inside a string)."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return False
    depth, in_string, escaped = 0, False, False
    for char in stripped:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return in_string or depth > 0


def normalise(event: dict, arrival: dt.datetime, reporting_currency: str = "USD") -> dict[str, Any]:
    """Validate one decoded event and return its silver columns (channel is added in Spark)."""
    check_structure(event)
    event_id = clean_id(event["event_id"])
    if event_id is None:
        raise Rejected("missing_event_id", "event_id is blank")
    try:
        return _normalise(event, event_id, arrival, reporting_currency)
    except Rejected as rejected:
        rejected.event_id = event_id
        raise


def _normalise(event: dict, event_id: str, arrival: dt.datetime, reporting_currency: str) -> dict[str, Any]:
    context = event.get("context") or {}
    properties = event.get("properties") or {}
    consent = event.get("consent") or {}
    country = clean_id(context.get("country"))
    if country is not None and not _COUNTRY_RE.match(country):
        raise Rejected("invalid_country", f"'context.country' must be ISO 3166-1 alpha-2, got {_describe(country)}")
    country = country.upper() if country else None

    event_ts = parse_timestamp(event["event_ts"], "event_ts")
    if event_ts < OLDEST_EVENT:
        raise Rejected("timestamp_too_old", f"event_ts {event_ts.isoformat()} is before 2000-01-01T00:00:00Z")
    if event_ts > arrival + MAX_FUTURE:
        raise Rejected("timestamp_in_future",
                       f"event_ts {event_ts.isoformat()} is more than a day after arrival {arrival.isoformat()}")
    sent_ts = parse_timestamp(event["sent_ts"], "sent_ts") if event.get("sent_ts") is not None else None

    if not any(clean_id(event.get(column)) for column in identifier_columns()):
        raise Rejected("no_identifier", "none of anonymous_id, user_id, email, phone is present")

    event_type = event["event_type"]
    revenue, currency, revenue_reporting, order_id = None, None, None, None
    if event_type == "order":
        order_id = clean_id(properties.get("order_id"))
        missing = [name for name, value in (("order_id", order_id), ("revenue", properties.get("revenue")),
                                            ("currency", clean_id(properties.get("currency")))) if value is None]
        if missing:
            raise Rejected("order_missing_fields", f"order events need properties.{', properties.'.join(missing)}")
        revenue = _as_double(properties["revenue"], "properties.revenue", "invalid_revenue")
        if not math.isfinite(revenue):
            raise Rejected("invalid_revenue", f"properties.revenue must be a finite number, got {revenue}")
        if revenue < 0:
            raise Rejected("negative_revenue", f"properties.revenue must be >= 0, got {revenue}")
        currency = properties["currency"].strip().upper()
        fx = currencies()
        if currency not in fx.iso_codes:
            raise Rejected("unknown_currency", f"properties.currency {currency!r} is not an ISO 4217 code")
        if currency not in fx.usd_per_unit or reporting_currency not in fx.usd_per_unit:
            missing_rate = currency if currency not in fx.usd_per_unit else reporting_currency
            raise Rejected("fx_rate_missing", f"no exchange rate for {missing_rate} in the rates table")
        revenue_reporting = fx.to_reporting(revenue, currency, reporting_currency)
        if max(revenue, revenue_reporting) > MAX_REVENUE:
            raise Rejected("invalid_revenue", f"properties.revenue must be at most {MAX_REVENUE:.0e} (also once "
                           f"converted to {reporting_currency}), got {revenue!r} {currency}: the lake sums money as "
                           "DECIMAL(38,9)")
    elif properties.get("revenue") is not None:
        revenue = _as_double(properties["revenue"], "properties.revenue", "invalid_revenue")
        currency = clean_id(properties.get("currency"))

    if event_type == "consent" and not any(isinstance(consent.get(flag), bool) for flag in _CONSENT_FLAGS):
        raise Rejected("consent_without_flags", "consent events need at least one of "
                       "consent.email_marketing, consent.ads_personalization, consent.analytics")

    phone, phone_dropped = normalise_phone(event.get("phone"), country)
    page_url = clean_id(context.get("page_url"))
    campaign, campaign_origin = campaign_fields(event.get("campaign"), page_url)
    user_agent = clean_id(context.get("user_agent"))
    price = properties.get("price")
    price = _as_double(price, "properties.price", "wrong_type") if price is not None else None
    quantity = properties.get("quantity")
    if quantity is not None and not _INT64_MIN <= quantity <= _INT64_MAX:
        raise Rejected("wrong_type", f"'properties.quantity' must fit a 64-bit integer, got {_describe(quantity)}")
    device_type, browser, os_family = parse_user_agent(user_agent) if user_agent else (None, None, None)
    row = {
        "event_id": event_id,
        "event_type": event_type,
        "event_ts": event_ts,
        "sent_ts": sent_ts,
        "anonymous_id": clean_id(event.get("anonymous_id")),
        "user_id": clean_id(event.get("user_id")),
        "email": normalise_email(event.get("email")),
        "phone": phone,
        "page_url": page_url,
        "referrer": clean_id(context.get("referrer")),
        "user_agent": user_agent,
        "ip": clean_id(context.get("ip")),
        "country": country,
        **campaign,
        "order_id": order_id,
        "revenue": revenue,
        "currency": currency,
        "product_id": clean_id(properties.get("product_id")),
        "price": price,
        "quantity": quantity,
        "consent_email_marketing": consent.get("email_marketing"),
        "consent_ads_personalization": consent.get("ads_personalization"),
        "consent_analytics": consent.get("analytics"),
        "event_date": event_ts.date(),
        "campaign_origin": campaign_origin,
        "revenue_reporting": revenue_reporting,
        "reporting_currency": reporting_currency if revenue_reporting is not None else None,
        "device_type": device_type,
        "browser": browser,
        "os": os_family,
        "phone_dropped": phone_dropped,
        "schema_version": schema_version(),
    }
    return row


def _as_double(value: int | float, field: str, code: str) -> float:
    """A JSON number as a double; an integer too large for one (JSON allows any) is rejected, not a crash."""
    try:
        return float(value)
    except OverflowError:
        raise Rejected(code, f"'{field}' is too large for a number: {_describe(value)}") from None


def validate_payload(payload: bytes | None, arrival: dt.datetime,
                     reporting_currency: str = "USD") -> dict[str, Any] | Rejected:
    """Never raises for bad input: returns the silver row or the rejection."""
    try:
        return normalise(decode(payload), arrival, reporting_currency)
    except Rejected as rejected:
        return rejected
    except Exception as error:  # noqa: BLE001 - input no rule foresaw: quarantined, never a failed batch
        return Rejected("validator_error", f"the validator failed on this payload: {type(error).__name__}: "
                        f"{str(error)[:200]}")
