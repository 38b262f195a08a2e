"""SHA-256 hex Column helpers for identifiers (BRIEF §5 profiles, §6 exports, §8 privacy).

Every helper is null-safe: a null or empty input gives null, never the hash of "".
The normalisations follow the destinations of BRIEF §6:
- email: trimmed and lowercased;
- phone (Google, profiles): E.164 with its leading `+`;
- phone (Meta): digits only, country code included, no `+`;
- country: lowercase ISO 3166-1 alpha-2.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F


def _nullify_empty(value: Column) -> Column:
    return F.when(F.length(value) > 0, value)


def sha256_hex(value: Column) -> Column:
    """Lowercase hex SHA-256 of the UTF-8 bytes of a string; null for null or empty."""
    return F.sha2(_nullify_empty(value), 256)


def normalised_email(email: Column) -> Column:
    return _nullify_empty(F.lower(F.trim(email)))


def hashed_email(email: Column) -> Column:
    """SHA-256 hex of the trimmed, lowercased email."""
    return sha256_hex(normalised_email(email))


def phone_e164(phone: Column) -> Column:
    """E.164 with a leading `+` (silver already stores E.164; a missing `+` is added, spaces dropped)."""
    digits = F.regexp_replace(phone, r"[^0-9]", "")
    return _nullify_empty(F.when(F.length(digits) > 0, F.concat(F.lit("+"), digits)))


def hashed_phone_e164(phone: Column) -> Column:
    """SHA-256 hex of the E.164 phone with its `+` (Google Customer Match, customer profiles)."""
    return sha256_hex(phone_e164(phone))


def phone_digits(phone: Column) -> Column:
    """Digits only, country code included, no `+`."""
    return _nullify_empty(F.regexp_replace(phone, r"[^0-9]", ""))


def hashed_phone_digits(phone: Column) -> Column:
    """SHA-256 hex of the phone as digits only (Meta custom audiences)."""
    return sha256_hex(phone_digits(phone))


def hashed_country(country: Column) -> Column:
    """SHA-256 hex of the lowercase ISO alpha-2 country (Meta custom audiences)."""
    return sha256_hex(F.lower(F.trim(country)))
