"""Great Expectations suites and the audit runner (write–audit–publish, issue 8).

Real GX 1.x on real Spark. Every Spark test runs one audit over all suites (GX runs several
Spark jobs per expectation, so audits are few and frames tiny): correct frames pass every suite;
frames with injected defects fail exactly the expectations that guard against them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from touchpoint.expectations.audit import AuditFailed, audit, results_path
from touchpoint.expectations.suites import SUITES_DIR, SuiteError, load_suites, parse_suite
from touchpoint.schemas import event_types
from touchpoint.schemas.lake import QUARANTINE_SCHEMA, SILVER_SCHEMA

UTC = dt.timezone.utc
D = dt.date(2024, 5, 1)
AS_OF = dt.datetime(2024, 5, 2, tzinfo=UTC)
MODELS = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov", "shapley")
SUITE_TABLES = {"silver.events", "silver.quarantine", "gold.identity_map", "gold.customer_profiles",
                "gold.attribution_credits", "gold.segment_membership", "exports", "gold.campaign_minute",
                "gold.campaign_daily", "gold.campaign_conversions", "gold.customer_activity"}
EXPECTATIONS = 95  # 52 in the seven original suites, 43 in the four serving-layer tables


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- suite files (no Spark)


def test_every_suite_file_loads_into_a_gx_suite_with_severities():
    import great_expectations as gx

    suites = load_suites()
    assert set(suites) == SUITE_TABLES
    assert {t: s.inputs for t, s in suites.items() if s.inputs} == {
        "gold.attribution_credits": ("gold.attribution_conversions",), "exports": ("erased_customers",)}
    for path in sorted(SUITES_DIR.glob("*.json")):
        document = json.loads(path.read_text())
        gx_suite = gx.ExpectationSuite(**document)  # GX's own format, as is
        assert gx_suite.name == document["meta"]["table"] == path.stem
        assert len(gx_suite.expectations) == len(document["expectations"])
        assert {e.meta["severity"] for e in gx_suite.expectations} <= {"critical", "warning"}


def test_suite_errors_name_the_file_and_the_expectation(tmp_path):
    path = tmp_path / "silver.events.json"
    good = {"name": "silver.events", "meta": {"table": "silver.events"},
            "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "event_id"},
                              "meta": {"severity": "critical"}}]}
    assert parse_suite(good, path).expectations[0].severity == "critical"

    def broken(**change):
        entry = {**good["expectations"][0], **change}
        return {**good, "expectations": [entry]}

    with pytest.raises(SuiteError, match=r"silver.events.json: expectations\[0\]: meta.severity"):
        parse_suite(broken(meta={"severity": "fatal"}), path)
    with pytest.raises(SuiteError, match=r"expectations\[0\]: unknown view 'nope'"):
        parse_suite(broken(meta={"severity": "warning", "view": "nope"}), path)
    with pytest.raises(SuiteError, match=r"expectations\[0\]: unknown \$PARAMETER \['event_kinds'\]"):
        parse_suite(broken(kwargs={"column": "event_type", "value_set": {"$PARAMETER": "event_kinds"}}), path)
    with pytest.raises(SuiteError, match="'name' must equal the file name"):
        parse_suite({**good, "name": "silver.other"}, path)


# ---------------------------------------------------------------- frames


def silver_rows(spark, rows):
    """Silver events with every column of the silver schema; unspecified columns are null."""
    full = []
    for row in rows:
        record = {f.name: None for f in SILVER_SCHEMA.fields}
        record.update(row, event_date=row["event_ts"].date())
        full.append(tuple(record[f.name] for f in SILVER_SCHEMA.fields))
    return spark.createDataFrame(full, SILVER_SCHEMA)


GOOD_EVENTS = [
    dict(event_id="e1", event_type="page_view", event_ts=dt.datetime(2024, 5, 1, 10, tzinfo=UTC), channel="direct"),
    dict(event_id="e2", event_type="order", event_ts=dt.datetime(2024, 5, 1, 11, tzinfo=UTC), channel="email",
         order_id="o1", revenue=20.0, currency="EUR", revenue_reporting=22.0, reporting_currency="USD"),
    # a day after the as-of is still within the bound as_of + 1 day (inclusive)
    dict(event_id="e3", event_type="ad_click", event_ts=dt.datetime(2024, 5, 3, tzinfo=UTC), channel="paid_search"),
]


def quarantine(spark, rows):
    return spark.createDataFrame(
        [(payload, code, reason, None, "1.0.0", "events.raw", 0, offset, AS_OF, AS_OF, D)
         for offset, (payload, code, reason) in enumerate(rows)], QUARANTINE_SCHEMA)


def identity_map(spark, rows):
    """(identifier_type, identifier_value, customer_id[, first_seen]) rows, first seen at AS_OF unless given."""
    return spark.createDataFrame([(*r[:3], r[3] if len(r) > 3 else AS_OF, AS_OF) for r in rows],
                                 "identifier_type string, identifier_value string, customer_id string, "
                                 "first_seen timestamp, last_seen timestamp")


PROFILE_COLUMNS = ("customer_id string, rfm_recency int, rfm_frequency int, rfm_monetary int, "
                   "lifetime_revenue double, email_sha256 string, phone_sha256 string, country string")
GOOD_PROFILES = [("c1", 5, 4, 1, 120.0, sha("a@x.com"), None, "DE"),
                 ("c2", None, None, None, 0.0, None, sha("+4930123456"), None)]


def conversions(spark):
    return spark.createDataFrame([("o1", "e2", "c1", AS_OF, 100.0), ("o2", "e9", "c2", AS_OF, 50.0)],
                                 "conversion_id string, conversion_event_id string, customer_id string, "
                                 "conversion_ts timestamp, revenue double")


def credit_rows(revenue_credit_of_o2_under_markov: float = 50.0):
    """Credits of o1 (100.0, three touchpoints) and o2 (50.0, empty path) under the seven models."""
    rows = []
    for model in MODELS:
        shares = [1 / 3, 1 / 3, 1 / 3] if model == "linear" else [0.25, 0.5, 0.25]
        for n, share in enumerate(shares):
            rows.append((model, "o1", "c1", AS_OF, f"t{n}", AS_OF, "email", "spring", share, share * 100.0))
        o2_revenue = revenue_credit_of_o2_under_markov if model == "markov" else 50.0
        rows.append((model, "o2", "c2", AS_OF, None, None, "direct", None, 1.0, o2_revenue))
    return rows


CREDIT_COLUMNS = ("model string, conversion_id string, customer_id string, conversion_ts timestamp, "
                  "touch_event_id string, touch_ts timestamp, channel string, campaign string, credit double, "
                  "revenue_credit double")


def membership(spark, rows):
    return spark.createDataFrame(rows, "segment string, customer_id string, entered_at timestamp, exited_at timestamp")


T1, T2, T3 = (dt.datetime(2024, 4, d, tzinfo=UTC) for d in (1, 2, 3))
GOOD_MEMBERSHIP = [("s1", "c1", T1, T2), ("s1", "c1", T3, None), ("s1", "c2", T1, None), ("s2", "c1", T1, T1)]

EXPORT_COLUMNS = "destination string, customer_id string, consent_ads_personalization boolean, consent_email_marketing boolean"
GOOD_EXPORTS = [("google_customer_match", "c1", True, False), ("meta_custom_audience", "c1", True, None),
                ("esp", "c2", None, True), ("jsonl", "c3", None, None)]


def serving_tables(spark, defects: bool) -> dict:
    """The batch halves of the serving views, typed by their one schema (touchpoint.core.serving)."""
    from decimal import Decimal

    from touchpoint.core.serving import SCHEMAS

    cut = (AS_OF, 7)
    money = Decimal("20.000000000")
    minute = [(dt.datetime(2024, 5, 1, 11, 0, tzinfo=UTC), "spring", 3, 1, 1, money, 1, money, *cut)]
    daily = [(D, "spring", 3, 1, 1, money, 1, money, *cut), (D, None, 1, 0, 0, Decimal(0), 0, Decimal(0), *cut)]
    converted = [("o1", AS_OF, "c1", money, "e1", AS_OF, "email", "spring", *cut)]
    activity = [("c1", AS_OF, AS_OF, "order", 2, 1, Decimal(0), None, False, *cut)]
    if defects:
        daily.append((D, "summer", 1, -1, 0, Decimal(0), 0, Decimal(0), *cut))  # negative clicks
        converted.append(("o1", AS_OF, "c1", money, "e2", AS_OF, "email", "spring", *cut))  # o1 twice
        activity.append(("c2", AS_OF, None, None, 0, 0, Decimal(0), None, False, *cut))  # no last event
    return {"gold.campaign_minute": spark.createDataFrame(minute, SCHEMAS["gold.campaign_minute"]),
            "gold.campaign_daily": spark.createDataFrame(daily, SCHEMAS["gold.campaign_daily"]),
            "gold.campaign_conversions": spark.createDataFrame(converted, SCHEMAS["gold.campaign_conversions"]),
            "gold.customer_activity": spark.createDataFrame(activity, SCHEMAS["gold.customer_activity"])}


def frames(spark, defects: bool) -> dict:
    """All audited tables; with defects, each carries the defect its test expects to be named."""
    events = GOOD_EVENTS + ([dict(GOOD_EVENTS[1])] if defects else [])  # a resent order: duplicated event_id
    rejected = [(b"{", "truncated_json", "payload ends early"), (b"[]", "not_object", "not a JSON object"),
                (None, "null_value", "a Kafka tombstone")]  # the one record without a payload
    if defects:
        rejected.append((b"x", None, "no code"))
        rejected.append((None, "not_json", "a payload lost"))
    identities = [("email", "a@x.com", "c1"), ("anonymous_id", "d1", "c1"), ("user_id", "u2", "c2")]
    if defects:
        identities.append(("email", "a@x.com", "c2"))  # one identifier mapped to two customers
        identities.append(("phone", "+4930123456", "c2", None))  # never seen
    profiles = spark.createDataFrame(GOOD_PROFILES, PROFILE_COLUMNS)
    if defects:
        profiles = profiles.withColumn("email", profiles["customer_id"])  # a raw PII column
    credits = credit_rows(49.0 if defects else 50.0)  # o2 under markov: revenue credit 49 of 50
    if defects:
        credits.append(("linear", "o1", "c1", AS_OF, "t9", AS_OF, "email", None, 0.1, 0.0))  # o1 sums to 1.1
    members = GOOD_MEMBERSHIP + ([("s1", "c2", T2, None)] if defects else [])  # a second open membership
    exported = GOOD_EXPORTS + ([("esp", "c1", True, False), ("jsonl", "c9", None, None)] if defects else [])
    return {
        "silver.events": silver_rows(spark, events),
        "silver.quarantine": quarantine(spark, rejected),
        "gold.identity_map": identity_map(spark, identities),
        "gold.customer_profiles": profiles,
        "gold.attribution_credits": spark.createDataFrame(credits, CREDIT_COLUMNS),
        "gold.attribution_conversions": conversions(spark),
        "gold.segment_membership": membership(spark, members),
        "exports": spark.createDataFrame(exported, EXPORT_COLUMNS),
        "erased_customers": ["c9"],
        **serving_tables(spark, defects),
    }


def key(outcome) -> tuple:
    return outcome.table, outcome.view, outcome.expectation_type, outcome.columns


def stored(spark, settings, run_id):
    return spark.read.format("delta").load(results_path(settings)).where(f"run_id = '{run_id}'")


@pytest.fixture
def audit_settings(settings, tmp_path):
    return settings.model_copy(update={"reports_dir": tmp_path / "reports"})


# ---------------------------------------------------------------- audits


def validation_pages(settings, run_id: str) -> set[str]:
    """Suites with a Data Docs validation page for the run (pages live under validations/<suite path>/<run>/)."""
    root = settings.reports_dir / "data_docs" / "validations"
    return {".".join(p.relative_to(root).parts[:p.relative_to(root).parts.index(run_id)])
            for p in root.glob(f"**/{run_id}/**/*.html")}


def test_correct_frames_pass_every_suite_and_results_and_docs_are_written(spark, audit_settings):
    given = frames(spark, defects=False)
    # a click a second past as_of + 1 day: only a warning, the audit still passes
    late = dict(event_id="e4", event_type="ad_click", event_ts=dt.datetime(2024, 5, 3, 0, 0, 1, tzinfo=UTC),
                channel="paid_social")
    given["silver.events"] = silver_rows(spark, GOOD_EVENTS + [late])
    given["gold.attribution_daily"] = spark.createDataFrame([(D,)], "date date")  # no suite, no view uses it
    result = audit(spark, audit_settings, given, "good-run", D)

    assert [(o.label, o.severity, o.kwargs.get("max_value")) for o in result.outcomes if not o.success] == [
        ("silver.events: expect_column_values_to_be_between(event_ts)", "warning", "2024-05-03T00:00:00+00:00")]
    assert result.success and result.critical_failures == () and len(result.warnings) == 1
    assert set(result.tables) == SUITE_TABLES
    assert len(result.outcomes) == sum(len(s.expectations) for s in load_suites().values()) == EXPECTATIONS
    assert result.unaudited == ("gold.attribution_daily",)
    event_type_check = next(o for o in result.outcomes
                            if o.table == "silver.events" and o.columns == ("event_type",))
    assert event_type_check.kwargs["value_set"] == list(event_types())  # filled from the schema

    rows = stored(spark, audit_settings, "good-run").collect()
    assert len(rows) == EXPECTATIONS
    assert [(r.table_name, r.severity) for r in rows if not r.success] == [("silver.events", "warning")]
    assert {r.validated_at.replace(tzinfo=UTC) for r in rows} == {AS_OF}
    assert {r.logical_date for r in rows} == {D}
    assert {(r.table_name, r.view) for r in rows if r.view} == {
        ("gold.attribution_credits", "credit_sums_per_conversion"), ("gold.attribution_credits", "revenue_per_model"),
        ("gold.customer_profiles", "table_columns"), ("exports", "erasure_flags")}

    index = audit_settings.reports_dir / "data_docs" / "index.html"
    assert result.data_docs_index == index.resolve() and index.is_file()
    assert validation_pages(audit_settings, "good-run") == {
        s.gx_suite_name(v) for s in load_suites().values() for v in s.views}


def test_injected_defects_fail_exactly_their_expectations_and_reruns_replace_rows(spark, audit_settings):
    result = audit(spark, audit_settings, frames(spark, defects=True), "bad-run", D)

    expected_failures = {
        ("silver.events", None, "expect_column_values_to_be_unique", ("event_id",)),
        ("silver.quarantine", None, "expect_column_values_to_not_be_null", ("error_code",)),
        ("silver.quarantine", None, "expect_column_values_to_not_be_null", ("payload",)),
        ("gold.identity_map", None, "expect_compound_columns_to_be_unique", ("identifier_type", "identifier_value")),
        ("gold.identity_map", None, "expect_column_values_to_not_be_null", ("first_seen",)),
        ("gold.customer_profiles", "table_columns", "expect_column_values_to_not_be_in_set", ("column_name",)),
        ("gold.attribution_credits", "credit_sums_per_conversion", "expect_column_values_to_be_between",
         ("credit_error",)),
        ("gold.attribution_credits", "credit_sums_per_conversion", "expect_column_values_to_be_between",
         ("revenue_error",)),
        ("gold.attribution_credits", "revenue_per_model", "expect_column_values_to_be_between", ("revenue_error",)),
        ("gold.segment_membership", None, "expect_compound_columns_to_be_unique", ("segment", "customer_id")),
        ("exports", None, "expect_column_values_to_be_in_set", ("consent_email_marketing",)),
        ("exports", "erasure_flags", "expect_column_values_to_be_in_set", ("erased",)),
        ("gold.campaign_daily", None, "expect_column_values_to_be_between", ("clicks",)),
        ("gold.campaign_conversions", None, "expect_column_values_to_be_unique", ("conversion_id",)),
        ("gold.customer_activity", None, "expect_column_values_to_not_be_null", ("last_event_ts",)),
    }
    assert {key(o) for o in result.outcomes if not o.success} == expected_failures
    assert not result.success and {key(o) for o in result.critical_failures} == expected_failures
    observed = {key(o): o.observed for o in result.outcomes}
    credit_sum_check = ("gold.attribution_credits", "credit_sums_per_conversion",
                        "expect_column_values_to_be_between", ("credit_error",))
    assert observed[credit_sum_check]["unexpected_count"] == 1  # only (linear, o1)
    assert observed[("exports", "erasure_flags", "expect_column_values_to_be_in_set", ("erased",))][
        "partial_unexpected_list"] == [True]
    # a suite with unexpected values is validated again to sample them: its stored result is replaced
    suite_views = {s.gx_suite_name(v) for s in load_suites().values() for v in s.views}
    stored_results = list((audit_settings.reports_dir / "gx_validations").glob("**/bad-run/**/*.json"))
    assert len(stored_results) == len(suite_views)
    # restricted tables keep no sample values, not even on failure
    assert observed[("gold.identity_map", None, "expect_compound_columns_to_be_unique",
                     ("identifier_type", "identifier_value"))]["partial_unexpected_list"] == []
    with pytest.raises(AuditFailed, match=r"silver.events: expect_column_values_to_be_unique\(event_id\)"):
        result.raise_if_failed()

    rows = stored(spark, audit_settings, "bad-run").collect()
    assert len(rows) == EXPECTATIONS
    assert {(r.table_name, r.view, r.expectation_type, r.kwargs_json) for r in rows if not r.success} == {
        (o.table, o.view, o.expectation_type, json.dumps(o.kwargs, sort_keys=True))
        for o in result.critical_failures}

    # Re-run two tables under the same run id: the quarantine is fixed; the exports come without the
    # erased_customers frame, so the erasure check cannot run and fails closed.
    fixed = frames(spark, defects=False)
    rerun = audit(spark, audit_settings, {"silver.quarantine": fixed["silver.quarantine"], "exports": fixed["exports"]},
                  "bad-run", D)
    assert [(o.label, o.exception) for o in rerun.outcomes if not o.success] == [
        ("exports.erasure_flags: expect_column_values_to_be_in_set(erased)",
         "missing input frame(s) for view erasure_flags: erased_customers")]

    rows = stored(spark, audit_settings, "bad-run").collect()
    assert len(rows) == EXPECTATIONS  # replaced, not appended
    assert {(r.table_name, r.view) for r in rows if not r.success} == (
        {(t, v) for t, v, _, _ in expected_failures if t not in ("silver.quarantine", "exports")}
        | {("exports", "erasure_flags")})
    assert sum(1 for r in rows if r.table_name == "exports") == 7
    # the Data Docs still show the tables of the first call next to those of the re-run
    assert validation_pages(audit_settings, "bad-run") == {
        s.gx_suite_name(v) for s in load_suites().values() for v in s.views}
