"""Activation destinations (BRIEF §6): who may be sent, and each destination's rows, normalised and
hashed by the project before anything leaves the lake. docs/EXPORTS.md documents every format.

Every builder is a pure transform from the audience (the eligible customers' profile rows) and their
raw identifiers (gold.identity_map rows of type email / phone) to the destination's rows. An export
is a set of rows: diffs are set differences of whole rows, so a changed row is a remove plus an add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from touchpoint.core.hashing import (
    hashed_country, hashed_email, hashed_phone_digits, hashed_phone_e164, normalised_email,
)

RowBuilder = Callable[[DataFrame, DataFrame], DataFrame]


@dataclass(frozen=True)
class Destination:
    name: str
    file_format: str  # "csv" (with a header line) or "jsonl"
    columns: tuple[str, ...]
    consent: str | None  # profile column that must be true (opt-in); None: no consent flag required
    build: RowBuilder  # (audience, identifiers) -> rows with exactly `columns`
    schema_version: str = "1"

    @property
    def extension(self) -> str:
        return "csv" if self.file_format == "csv" else "jsonl"


def _of_type(identifiers: DataFrame, kind: str, audience: DataFrame) -> DataFrame:
    """The audience's raw identifiers of one type (all of them: ad platforms match on any)."""
    return (identifiers.where(F.col("identifier_type") == kind)
            .join(audience.select("customer_id"), "customer_id", "left_semi"))


def _google_rows(audience: DataFrame, identifiers: DataFrame) -> DataFrame:
    """Customer Match: one row per identifier. Email trimmed + lowercased, phone E.164 with its +,
    each SHA-256 hex."""
    none = F.lit(None).cast("string")
    emails = _of_type(identifiers, "email", audience).select(
        hashed_email(F.col("identifier_value")).alias("Email"), none.alias("Phone"))
    phones = _of_type(identifiers, "phone", audience).select(
        none.alias("Email"), hashed_phone_e164(F.col("identifier_value")).alias("Phone"))
    return emails.unionByName(phones).where(F.coalesce("Email", "Phone").isNotNull()).distinct()


def _meta_rows(audience: DataFrame, identifiers: DataFrame) -> DataFrame:
    """Custom Audiences: one row per identifier, with the customer's country as an extra key.
    Email as for Google; phone digits only with the country code and no +; country lowercase
    ISO alpha-2; each SHA-256 hex."""
    none = F.lit(None).cast("string")
    country = audience.select("customer_id", hashed_country(F.col("country")).alias("country"))
    emails = (_of_type(identifiers, "email", audience).join(country, "customer_id")
              .select(hashed_email(F.col("identifier_value")).alias("email"), none.alias("phone"), "country"))
    phones = (_of_type(identifiers, "phone", audience).join(country, "customer_id")
              .select(none.alias("email"), hashed_phone_digits(F.col("identifier_value")).alias("phone"), "country"))
    return emails.unionByName(phones).where(F.coalesce("email", "phone").isNotNull()).distinct()


def _esp_rows(audience: DataFrame, identifiers: DataFrame) -> DataFrame:
    """ESP: the plain, normalised email a customer used most recently (latest last_seen; ties go to
    the smallest address), with the customer id as the ESP's external id."""
    latest = Window.partitionBy("customer_id").orderBy(F.col("last_seen").desc_nulls_last(), "identifier_value")
    return (
        _of_type(identifiers, "email", audience)
        .withColumn("email", normalised_email(F.col("identifier_value")))
        .where(F.col("email").isNotNull())
        .withColumn("rank", F.row_number().over(latest))
        .where(F.col("rank") == 1)
        .select("email", "customer_id")
    )


def _jsonl_rows(audience: DataFrame, identifiers: DataFrame) -> DataFrame:
    """Generic JSON lines: the customer id with the hashed identifiers of the profile, no raw PII."""
    return audience.select("customer_id", "email_sha256", "phone_sha256", "country")


DESTINATIONS: dict[str, Destination] = {
    d.name: d for d in (
        Destination("google_customer_match", "csv", ("Email", "Phone"), "consent_ads_personalization", _google_rows),
        Destination("meta_custom_audience", "csv", ("email", "phone", "country"), "consent_ads_personalization",
                    _meta_rows),
        Destination("esp", "csv", ("email", "customer_id"), "consent_email_marketing", _esp_rows),
        Destination("jsonl", "jsonl", ("customer_id", "email_sha256", "phone_sha256", "country"), None, _jsonl_rows),
    )
}


def destination(name: str) -> Destination:
    try:
        return DESTINATIONS[name]
    except KeyError:
        raise ValueError(f"unknown destination {name!r}; use one of: {', '.join(DESTINATIONS)}") from None


def eligible(target: Destination, members: DataFrame, erased: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """Profiles -> the profile rows of the segment's members that may go to `target`: consent of the
    destination given (true; null means never stated, so no) and never erased."""

    def transform(profiles: DataFrame) -> DataFrame:
        audience = profiles.join(members.select("customer_id").distinct(), "customer_id", "left_semi")
        if target.consent is not None:
            audience = audience.where(F.col(target.consent).eqNullSafe(F.lit(True)))
        if erased is not None:
            audience = audience.join(erased.select("customer_id"), "customer_id", "left_anti")
        return audience

    return transform


def destination_rows(target: Destination, identifiers: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Audience -> the destination's rows, columns in the documented order."""
    return lambda audience: target.build(audience, identifiers).select(*target.columns)
