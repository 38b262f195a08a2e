"""Privacy pieces that need no lake: identifier hashing, payload screening, suppression in the ingest
validation, statistics excluded for PII columns, Kafka retention, the queue, no credentials in the repo."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from touchpoint.core.privacy import (
    Suppression, payload_identifiers, request_identifier, withheld_payload,
)

REPO = Path(__file__).resolve().parents[1]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_request_identifiers_are_normalised_as_silver_stores_them_then_hashed():
    assert request_identifier("email", "  Ann.Lee@Example.COM ") == ("email", sha("ann.lee@example.com"))
    assert request_identifier("phone", "+44 7700 900123") == ("phone", sha("+447700900123"))
    assert request_identifier("user_id", " U-42 ") == ("user_id", sha("U-42"))  # case kept
    assert request_identifier("customer_id", "c-1") == ("customer_id", sha("c-1"))
    with pytest.raises(ValueError, match="international"):
        request_identifier("phone", "07700 900123")  # no country: cannot be normalised
    with pytest.raises(ValueError):
        request_identifier("email", "   ")


def test_payload_identifiers_follow_the_silver_normalisation_even_for_invalid_events():
    payload = json.dumps({"event_type": "bogus", "email": " A@B.example ", "phone": "020 7946 0958",
                          "context": {"country": "gb"}, "user_id": " u1 ", "anonymous_id": ""}).encode()
    assert payload_identifiers(payload) == [("email", "a@b.example"), ("phone", "+442079460958"), ("user_id", "u1")]
    assert payload_identifiers(b"not json") == []
    assert payload_identifiers(b"[1, 2]") == []
    assert payload_identifiers(None) == []


def test_suppression_matches_by_type_and_hash_only():
    suppression = Suppression(frozenset({("user_id", sha("abc"))}))
    assert suppression.matches_payload(b'{"user_id": "abc"}')
    assert not suppression.matches_payload(b'{"anonymous_id": "abc"}')  # another namespace
    assert not Suppression().matches_payload(b'{"user_id": "abc"}')
    assert withheld_payload(b"x") == b"erased-subject-payload-sha256:" + hashlib.sha256(b"x").hexdigest().encode()


@pytest.mark.parametrize("payload", [
    b'{"event_id": "e1", "email": "Ann@X.io", "note": "\xff"}',  # not UTF-8
    b'{"event_id": "e1", "email": "Ann@X.io", "event_ty',  # truncated
    b'\xef\xbb\xbf{"email": "Ann@X.io"}',  # a byte order mark
    b'{"email": ["Ann@X.io"]}',  # the wrong JSON type
    b'{"event_id": "e1", "email": ["Ann@X.io"], "user_id": ["u9"]}',  # no identifier that can be read
    b'{"user_id": "u9", "phone": "07700 900123", "context": {"country": "GB"}, "x": [',  # a national phone
    b'{"anonymous_id": "d1", "context": {"page_url": "https://x/?tel=%2B447700900123"}} +44 7700 900123',
    # a readable identifier beside one of the wrong JSON type (session 47: the readable one used to
    # decide alone, and these kept Ann's raw email or phone through her erasure)
    b'{"anonymous_id": "d9", "email": ["Ann@X.io"]}',
    b'{"anonymous_id": "d9", "phone": 447700900123}',
])
def test_the_suppression_finds_raw_identifiers_in_payloads_that_do_not_parse_as_silver_reads_them(payload):
    """Before, only the four identifier fields of a payload that parsed were compared: every one of
    these was stored with the erased person's raw email or phone (in quarantine, or in bronze)."""
    suppression = Suppression(frozenset({("email", sha("ann@x.io")), ("phone", sha("+447700900123"))}))
    assert suppression.matches_payload(payload)
    assert not Suppression(frozenset({("email", sha("bo@x.io"))})).matches_payload(payload)


def test_a_readable_event_is_matched_by_its_own_identifiers_only():
    """Bob's event mentions Ann (a referrer, a nested key, a note): it is Bob's, and quarantining it
    when Ann is erased would lose Bob's data. The token scan reads whole addresses only."""
    ann = Suppression(frozenset({("email", sha("ann@x.io")), ("user_id", sha("42")), ("email", sha("brien@x.io"))}))
    for payload in (b'{"user_id": "bob", "context": {"referrer": "https://mail.example/?to=ann@x.io"}}',
                    b'{"user_id": "bob", "properties": {"seller": {"user_id": "42"}, "email": "ann@x.io"}}',
                    b'{"email": "o\'brien@x.io", "event_ty'):  # not the tail of another address
        assert not ann.matches_payload(payload), payload


def test_the_lenient_scan_reads_identifier_keys_and_escapes():
    from touchpoint.core.privacy import payload_tokens

    assert payload_tokens(b'{"user_id": "u\\u0031", "anonymous_id": " d-1 ", "event_ty') == {
        ("user_id", "u1"), ("anonymous_id", "d-1")}
    assert payload_tokens(b"no identifiers here, +1 2") == set()
    assert payload_tokens(None) == set()


def test_pii_columns_are_excluded_from_statistics_on_every_restricted_table(spark, settings):
    """Create every restricted table through ensure_table with a schema holding its PII columns and
    check the Delta property names none of them (so _delta_log never holds their values)."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StringType, StructField, StructType

    from touchpoint.core.catalog import TABLES
    from touchpoint.core.delta import ensure_table

    restricted = [t for t in TABLES.values() if t.restricted]
    assert {"bronze.events", "silver.events", "silver.quarantine", "gold.identity_map"} <= {t.name for t in restricted}
    for table in restricted:
        assert table.pii_columns, table.name
        schema = StructType([StructField(c, StringType()) for c in (*table.pii_columns, "harmless")])
        path = table.path(settings)
        ensure_table(spark, path, schema, catalog_name=table.name)
        properties = DeltaTable.forPath(spark, path).detail().first()["properties"]
        stats_columns = properties["delta.dataSkippingStatsColumns"]
        assert stats_columns == "`harmless`", table.name
    # raw identifiers in silver are PII for the erasure proof: no min/max statistics for them either
    assert {"email", "phone", "ip", "user_id", "anonymous_id"} <= set(TABLES["silver.events"].pii_columns)


def test_every_table_with_raw_identifiers_declares_where_a_subject_appears():
    from touchpoint.core.catalog import TABLES, describe_tables

    for table in TABLES.values():
        if table.restricted:
            assert table.subject_columns, table.name
    described = {t["name"]: t for t in describe_tables()}
    assert described["gold.identity_map"]["subject_columns"] == [
        ["identifier_value", "identifier:identifier_type"], ["customer_id", "customer_id"]]
    assert described["privacy.suppression"]["restricted"] is False


def test_kafka_topics_get_bounded_retention_from_config():
    from touchpoint.core.config import RetentionSettings, load_settings
    from touchpoint.infra.kafka import topic_configs

    settings = load_settings(retention=RetentionSettings(kafka_retention_hours=48, kafka_retention_bytes=1000))
    assert topic_configs(settings) == {"retention.ms": str(48 * 3600 * 1000), "retention.bytes": "1000",
                                       "segment.ms": str(3600 * 1000)}  # the active segment rolls within an hour


def test_the_queue_holds_hashes_only_and_is_emptied_by_the_job(spark, settings):
    from touchpoint.jobs.privacy import enqueue, queued_requests, run

    request_id = enqueue(spark, settings, "email", "Queued.Person@Example.com",
                         requested_at=dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
    queued = queued_requests(settings)
    assert [(r["request_id"], r["identifier_type"], r["identifier_sha256"]) for r in queued] == [
        (request_id, "email", sha("queued.person@example.com"))]
    summary = run(spark, settings, dt.date(2026, 3, 1))
    assert summary == {"processed": 1, "requests": [{"request_id": request_id, "status": "not_found",
                                                     "rows_removed": {}}]}
    assert queued_requests(settings) == []
    lake = Path(settings.lake_uri)
    for path in lake.rglob("*"):
        if path.is_file():
            assert b"queued.person" not in path.read_bytes().lower(), path


# Assignments of a literal to a secret-looking name, and well-known key formats.
_SECRET_PATTERNS = [
    re.compile(r"""(?i)(password|passwd|secret|api[_-]?key|access[_-]?key|token)\s*[:=]\s*["'][^"'\s]{8,}["']"""),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+]{30,}"),
]
# Values that say they are not real: fixtures of tests and local benchmarks, documentation examples.
_DUMMY = re.compile(r"(?i)(example|dummy|fake|placeholder|changeme|bench|test|not-a-real|x{8})")


def test_no_credentials_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if not path.is_file() or path.suffix in (".jar", ".parquet", ".png") or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for pattern in _SECRET_PATTERNS:
            found += [f"{name}: {m.group(0)[:40]}" for m in pattern.finditer(text) if not _DUMMY.search(m.group(0))]
    assert found == []


def test_the_secret_scan_finds_a_real_looking_key():
    leaked = "aws_access_key = " + '"' + "AKIA" + "QWERTYUIOPASDFGH" + '"'  # assembled: not a literal here
    assert [p for p in _SECRET_PATTERNS if p.search(leaked) and not _DUMMY.search(p.search(leaked).group(0))]


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_an_erasure_finds_every_staging_namespace_on_any_file_system(spark, settings, tmp_path, scheme):
    """Gold tables are erased in the published namespace and in every staging namespace present,
    listed through Hadoop's file system when the lake is a URI (s3a://; file:// here)."""
    from touchpoint.core.catalog import TABLES
    from touchpoint.jobs.privacy import namespace_paths

    lake = settings.model_copy(update={"lake_root": f"{scheme}{tmp_path / 'lake'}"})
    identity_map = TABLES["gold.identity_map"]
    assert namespace_paths(spark, identity_map, lake) == [identity_map.path(lake)]
    for day in ("d20260305", "d20260304"):
        (tmp_path / "lake" / "staging" / day).mkdir(parents=True)
    (tmp_path / "lake" / "staging" / "notes.txt").write_text("not a namespace")
    staged = [identity_map.path(lake.model_copy(update={"gold_namespace": f"staging/{day}"}))
              for day in ("d20260304", "d20260305")]
    assert namespace_paths(spark, identity_map, lake) == [identity_map.path(lake), *staged]
    assert staged[0] == f"{scheme}{tmp_path}/lake/staging/d20260304/identity_map"
    silver = TABLES["silver.events"]
    assert namespace_paths(spark, silver, lake) == [silver.path(lake)]  # staging holds gold only


SILVER_AT = dt.datetime(2026, 3, 1, 10, tzinfo=dt.timezone.utc)


def silver_row(event_id, **identifiers):
    from touchpoint.schemas.lake import SILVER_SCHEMA

    row = dict.fromkeys(SILVER_SCHEMA.fieldNames())
    row.update(event_id=event_id, event_type="page_view", event_ts=SILVER_AT, event_date=SILVER_AT.date(),
               channel="direct", source_ts=SILVER_AT, ingest_ts=SILVER_AT, source_topic="t", source_partition=0,
               source_offset=0, **identifiers)
    return tuple(row[f] for f in SILVER_SCHEMA.fieldNames())


def test_a_device_shared_since_the_last_identity_run_does_not_carry_an_erasure_to_its_other_users(spark, settings):
    """dev-1 was the person's alone at the last identity run (no guardrail holds it); since, four
    other users came through it: more than N = 3, a shared device, which links nothing. Before, the
    erasure followed it to u2..u5 and erased four other people (and quarantined them for good)."""
    from touchpoint.core.catalog import table_path
    from touchpoint.jobs.privacy import erase
    from touchpoint.schemas.lake import SILVER_SCHEMA

    rows = [silver_row("e1", user_id="u1", anonymous_id="dev-1", email="ann@x.io"),
            *[silver_row(f"e{i}", user_id=f"u{i}", anonymous_id="dev-1") for i in range(2, 6)],
            silver_row("e9", anonymous_id="dev-9", email="ann@x.io")]
    path = table_path("silver.events", settings)
    spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").save(path)

    result = erase(spark, settings, "user_id", sha("u1"))

    assert (result["status"], result["rows_removed"]["silver.events"]) == ("erased", 2)
    assert sorted(r["event_id"] for r in spark.read.format("delta").load(path).collect()) == [
        "e2", "e3", "e4", "e5"]


def test_an_erasure_asked_for_a_shared_device_erases_its_rows_but_not_its_other_users(spark, settings):
    """Forgetting the shared device itself: every row carrying it goes (no value may keep it), and
    the device-only customer with it; its other users are other people, not the subject."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.privacy import load_suppression
    from touchpoint.jobs.privacy import erase
    from touchpoint.schemas.lake import SILVER_SCHEMA

    rows = [*[silver_row(f"e{i}", user_id=f"u{i}", anonymous_id="dev-1") for i in range(1, 6)],
            silver_row("e6", anonymous_id="dev-1"), silver_row("e7", user_id="u2", email="bo@x.io"),
            silver_row("e8", email="ann@x.io")]
    path = table_path("silver.events", settings)
    spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").save(path)
    # the last identity run saw dev-1 with u1 only: the map still files it under u1's customer
    at = SILVER_AT.replace(tzinfo=None)
    spark.createDataFrame([(t, v, "cus_u1", at, at) for t, v in (("anonymous_id", "dev-1"), ("user_id", "u1"),
                                                                 ("email", "ann@x.io"))],
                          "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, "
                          "last_seen timestamp").write.format("delta").save(table_path("gold.identity_map", settings))

    result = erase(spark, settings, "anonymous_id", sha("dev-1"))

    assert sorted(r["event_id"] for r in spark.read.format("delta").load(path).collect()) == ["e7", "e8"]
    assert result["customer_ids"] == [] and len(
        spark.read.format("delta").load(table_path("gold.identity_map", settings)).collect()) == 2
    assert load_suppression(table_path("privacy.suppression", settings)).hashes == {("anonymous_id", sha("dev-1"))}


def test_an_erasure_removes_the_speed_rows_filed_under_a_provisional_id(spark, settings):
    """A person first seen after the last batch: the speed layer files them under a provisional id
    (no customer id of the identity map). Before, the erasure resolved none and left those rows."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.serving import SCHEMAS
    from touchpoint.jobs.privacy import erase
    from touchpoint.schemas.lake import SILVER_SCHEMA

    at = SILVER_AT
    silver = silver_row
    spark.createDataFrame([silver("e1", email="ann@x.io", anonymous_id="dev-a"), silver("e2", email="bo@x.io")],
                          SILVER_SCHEMA).write.format("delta").save(table_path("silver.events", settings))

    def provisional(kind, value):  # the formula of docs/SERVING.md, computed here independently
        return "p-" + sha(f"touchpoint-provisional-v1:{kind}:{value}")[:32]

    activity = [(provisional(k, v), at, at, "page_view", 1, 1, None, None, False, 3)
                for k, v in (("anonymous_id", "dev-a"), ("email", "ann@x.io"), ("email", "bo@x.io"))]
    path = table_path("speed.customer_activity", settings)
    spark.createDataFrame(activity, SCHEMAS["speed.customer_activity"]).write.format("delta").save(path)

    result = erase(spark, settings, "email", sha("ann@x.io"))

    assert result["status"] == "erased" and result["rows_removed"]["speed.customer_activity"] == 2
    assert [r["customer_id"] for r in spark.read.format("delta").load(path).collect()] == [provisional("email", "bo@x.io")]


def test_an_erasure_finds_a_person_that_only_a_staged_run_knows(spark, settings):
    """A pipeline run staged D before the erasure: its identity map and profiles know a person new
    since the last publish, under an id the published map lacks. Before, the erasure resolved no id,
    the staged profile stayed, and the publish put it (with its email hash) into gold."""
    from touchpoint.core.catalog import table_path
    from touchpoint.jobs.pipeline import staging_settings
    from touchpoint.jobs.privacy import erase

    staged = staging_settings(settings, dt.date(2026, 3, 1))
    at = SILVER_AT.replace(tzinfo=None)
    map_schema = "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, " \
                 "last_seen timestamp"
    spark.createDataFrame([("email", "bo@x.io", "cus_bo", at, at)], map_schema).write.format("delta").save(
        table_path("gold.identity_map", settings))
    spark.createDataFrame([("email", "bo@x.io", "cus_bo", at, at), ("email", "ann@x.io", "cus_ann", at, at)],
                          map_schema).write.format("delta").save(table_path("gold.identity_map", staged))
    profiles = "customer_id string, email_sha256 string, phone_sha256 string"
    spark.createDataFrame([("cus_bo", sha("bo@x.io"), None), ("cus_ann", sha("ann@x.io"), None),
                           ("cus_zed", sha("zed@x.io"), sha("+447700900123"))], profiles) \
        .write.format("delta").save(table_path("gold.customer_profiles", staged))
    # the run's kept changed-customer scope (jobs.changed_scope) holds her resolved events
    kept_scope = f"{settings.lake_uri}/staging/d20260301/_scope"
    spark.createDataFrame([("cus_ann",)], "customer_id string").write.parquet(f"{kept_scope}/k/customers")

    result = erase(spark, settings, "email", sha("ann@x.io"))

    assert result["customer_ids"] == ["cus_ann"]
    assert not os.path.exists(kept_scope)
    left = spark.read.format("delta").load(table_path("gold.customer_profiles", staged))
    assert sorted(r["customer_id"] for r in left.collect()) == ["cus_bo", "cus_zed"]
    # a profile is also found by its identifiers' hashes, whatever its id
    assert erase(spark, settings, "phone", sha("+447700900123"))["rows_removed"] == {
        "gold.customer_profiles@d20260301": 1}


def test_an_erasure_removes_a_quarantined_payload_that_does_not_parse(spark, settings):
    """The person is in no table but the quarantine, in a truncated payload. Before, nothing resolved
    them (no identifiers to search by substring) and the raw email stayed: status not_found."""
    from touchpoint.core.catalog import table_path
    from touchpoint.jobs.privacy import erase
    from touchpoint.schemas.lake import QUARANTINE_SCHEMA

    rows = [(b'{"event_id": "q1", "email": "Ann@X.io", "event_ty', "truncated_json", "JSON ends early", None, "1.0.0",
             "events.raw", 0, 1, SILVER_AT, SILVER_AT, SILVER_AT.date()),
            (b'{"event_id": "q2", "email": "bo@x.io", "event_ty', "truncated_json", "JSON ends early", None, "1.0.0",
             "events.raw", 0, 2, SILVER_AT, SILVER_AT, SILVER_AT.date())]
    path = table_path("silver.quarantine", settings)
    spark.createDataFrame(rows, QUARANTINE_SCHEMA).write.format("delta").save(path)

    result = erase(spark, settings, "email", sha("ann@x.io"))

    assert (result["status"], result["rows_removed"]) == ("erased", {"silver.quarantine": 1})
    assert [bytes(r["payload"]) for r in spark.read.format("delta").load(path).collect()] == [
        b'{"event_id": "q2", "email": "bo@x.io", "event_ty']
