"""Data subjects and the suppression list, shared by ingestion and the erasure job (BRIEF §8).

A data subject is known by hashed identifiers only: (identifier_type, SHA-256 hex of the value
normalised as silver stores it). Email and phone hashes are the same as the profiles' and Google
Customer Match's (trimmed lowercased email; E.164 phone with its `+`); user_id and anonymous_id
are trimmed, case kept. The type is kept beside the hash because the types are separate namespaces.

- `request_identifier` normalises what a person asks to be forgotten by and hashes it at once, so a
  raw identifier never needs to be stored;
- `payload_identifiers` reads the identifiers of a raw event payload exactly as the silver
  validation normalises them (even when the event is otherwise invalid);
- `Suppression` decides whether a payload belongs to an erased subject; the ingest validation
  quarantines such events as `erased_subject` and keeps only a hash of their payload.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable

from pyspark.sql import Column
from pyspark.sql import functions as F

from touchpoint.core.events import clean_id, normalise_email, normalise_phone

IDENTIFIER_TYPES = ("email", "phone", "user_id", "anonymous_id")
REQUEST_TYPES = (*IDENTIFIER_TYPES, "customer_id")
ERASED_SUBJECT = "erased_subject"
WITHHELD_PREFIX = b"erased-subject-payload-sha256:"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalise_identifier(identifier_type: str, value: str | None, country: str | None = None) -> str | None:
    """A raw identifier as silver stores it, or None when it is blank or (phone) not a possible number."""
    if identifier_type == "email":
        return normalise_email(value)
    if identifier_type == "phone":
        return normalise_phone(value, country)[0]
    if identifier_type in ("user_id", "anonymous_id", "customer_id"):
        return clean_id(value)
    raise ValueError(f"unknown identifier type {identifier_type!r}; use one of {', '.join(REQUEST_TYPES)}")


def request_identifier(identifier_type: str, value: str) -> tuple[str, str]:
    """(type, sha256) of what a person asked to be forgotten by. A phone must be international (+...)."""
    normalised = normalise_identifier(identifier_type, value)
    if normalised is None:
        hint = " (give it in international format, e.g. +447700900123)" if identifier_type == "phone" else ""
        raise ValueError(f"the {identifier_type} to forget is empty or not valid{hint}")
    return identifier_type, sha256_hex(normalised)


def payload_identifiers(payload: bytes | None) -> list[tuple[str, str]]:
    """(type, normalised value) of the identifiers of a raw event, [] when it is not a JSON object."""
    return read_identifiers(payload)[0]


def read_identifiers(payload: bytes | None) -> tuple[list[tuple[str, str]], bool]:
    """(`payload_identifiers`, whether every identifier field present is a string or null). An
    identifier field of another JSON type (a list, a number, an object) is unreadable as silver
    reads it, so such a payload is also scanned leniently (`payload_tokens`)."""
    if payload is None:
        return [], False
    try:
        event = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # the validator quarantines these
        return [], False
    if not isinstance(event, dict):
        return [], False
    context = event.get("context")
    country = context.get("country") if isinstance(context, dict) else None
    country = clean_id(country).upper() if isinstance(country, str) and clean_id(country) else None
    found, readable = [], True
    for kind in IDENTIFIER_TYPES:
        raw = event.get(kind)
        if raw is None:
            continue
        if not isinstance(raw, str):
            readable = False
            if isinstance(raw, (dict, list)):
                continue
        try:
            value = normalise_identifier(kind, str(raw), country)
            if value is not None:
                value.encode("utf-8")  # raises on an unpaired surrogate: the validator quarantines that
        except Exception:  # phonenumbers on odd input: the identifier is unusable, not the payload
            value = None
        if value is not None:
            found.append((kind, value))
    return found, readable


# The lenient scan, for payloads whose identifier fields cannot all be read (truncated, not UTF-8, an
# id of the wrong JSON type). The local part takes every character an address may hold (RFC 5322 atext,
# and any non-ASCII byte), so a token is a whole address, never the tail of another one; the bounds
# and the look-behind keep the scan linear on a hostile megabyte of letters.
_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\x80-\xff"
_EMAIL_TOKEN = re.compile(rb"(?<![" + _ATEXT + rb"])[" + _ATEXT + rb"]{1,64}"
                          rb"@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){1,8}")
_KEYED_VALUE = re.compile(rb'"(anonymous_id|user_id|email|phone)"\s*:\s*\[?\s*"((?:[^"\\]|\\.){1,512})"')
_COUNTRY_VALUE = re.compile(rb'"country"\s*:\s*"\s*([A-Za-z]{2})\s*"')
_INTERNATIONAL_PHONE = re.compile(rb"\+\d[\d \t().\-]{5,24}\d")
# An identifier given as a JSON number (or the first of a list of numbers): "phone": 447700900123.
_KEYED_NUMBER = re.compile(rb'"(anonymous_id|user_id|phone)"\s*:\s*\[?\s*(\d{1,30})(?![\d.eE])')


def payload_tokens(payload: bytes | None) -> set[tuple[str, str]]:
    """(type, normalised value) of every identifier-looking token of a raw payload, read leniently:
    emails anywhere, the values of the four identifier keys, international phone numbers."""
    if not payload:
        return set()
    found: set[tuple[str, str]] = set()

    def add(kind: str, raw: bytes, country: str | None = None) -> None:
        text = raw.decode("utf-8", "replace")
        try:
            text = json.loads(f'"{text}"')  # JSON escapes, as a parser would read them
        except ValueError:
            pass
        try:
            value = normalise_identifier(kind, text, country)
            if value is not None:
                value.encode("utf-8")
                found.add((kind, value))
        except Exception:  # an odd token is no identifier, not a failed batch
            pass

    country = _COUNTRY_VALUE.search(payload)
    region = country.group(1).decode("ascii").upper() if country else None
    for match in _EMAIL_TOKEN.finditer(payload):
        add("email", match.group(0))
    for match in _KEYED_VALUE.finditer(payload):
        add(match.group(1).decode("ascii"), match.group(2), region)
    for match in _INTERNATIONAL_PHONE.finditer(payload):
        add("phone", match.group(0))
    for match in _KEYED_NUMBER.finditer(payload):
        kind, digits = match.group(1).decode("ascii"), match.group(2)
        add(kind, digits, region)
        if kind == "phone":  # digits of an international number without its +
            add(kind, b"+" + digits)
    return found


def hashed_identifiers(identifiers: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(kind, sha256_hex(value)) for kind, value in identifiers}


@dataclass(frozen=True)
class Suppression:
    """Hashed identifiers of erased subjects. Small: one entry per identifier of an erased person."""

    hashes: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def matches_identifiers(self, identifiers: Iterable[tuple[str, str]]) -> bool:
        return any(pair in self.hashes for pair in hashed_identifiers(identifiers))

    def matches_payload(self, payload: bytes | None) -> bool:
        """By the payload's identifiers as silver reads them; when it has none, or one of its
        identifier fields cannot be read (it does not parse, or a field is of the wrong JSON type,
        e.g. an email in a list beside a readable anonymous_id), also by the identifier-looking
        tokens in it (`payload_tokens`). A readable event is matched by its own identifiers only: another
        person's email in its referrer must not make it theirs."""
        if not self.hashes:
            return False
        identifiers, readable = read_identifiers(payload)
        if self.matches_identifiers(identifiers):
            return True
        return (not readable or not identifiers) and self.matches_identifiers(payload_tokens(payload))


def withheld_payload(payload: bytes | None) -> bytes:
    """What bronze and quarantine keep of an erased subject's event: a hash of it, never its content."""
    return WITHHELD_PREFIX + hashlib.sha256(payload or b"").hexdigest().encode("ascii")


def erased_reason(payload: bytes | None) -> str:
    return "event of an erased data subject: payload withheld, " + withheld_payload(payload).decode("ascii")


def load_suppression(path: str) -> Suppression:
    """The suppression list at `path` (a Delta table, read with delta-rs on the driver: it holds one
    row per identifier of an erased person, so it stays small). Empty when the table does not exist."""
    from deltalake.exceptions import TableNotFoundError

    from touchpoint.core.delta import rs_table

    try:
        table = rs_table(path)
    except TableNotFoundError:
        return Suppression()
    rows = table.to_pyarrow_table(columns=["identifier_type", "identifier_sha256"]).to_pylist()
    return Suppression(frozenset((r["identifier_type"], r["identifier_sha256"]) for r in rows))


# ---- Spark column logic: rows of a subject, by hash, so no raw value reaches a query plan or _delta_log

def hashed_value_in(value: Column, hashes: Iterable[str]) -> Column:
    """True when sha256(value) is one of `hashes` (null-safe: a null value is never a match)."""
    hashes = sorted(set(hashes))
    if not hashes:
        return F.lit(False)
    return F.coalesce(F.sha2(value, 256).isin(hashes), F.lit(False))
