"""Customer profiles (BRIEF §5): every column on hand-built customers, RFM quintiles and segments."""

from __future__ import annotations

import hashlib
import random
import shutil

import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from test_identity_support import (
    append_silver, date, expected_customer_id, read_table, restore_delta_state, rows_of, small_delta_state, ts,
)


@pytest.fixture(autouse=True, scope="module")
def _small_delta_state(spark):
    previous = small_delta_state(spark)
    yield
    restore_delta_state(spark, previous)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# The classic R+F grid, rows R = 1..5, columns F = 1..5, written out by hand.
GRID = [
    ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose"],
    ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose"],
    ["about_to_sleep", "about_to_sleep", "need_attention", "loyal_customers", "loyal_customers"],
    ["promising", "potential_loyalists", "potential_loyalists", "loyal_customers", "loyal_customers"],
    ["new_customers", "potential_loyalists", "potential_loyalists", "champions", "champions"],
]


def test_rfm_segment_map_covers_each_of_the_25_pairs_once(spark):
    import re

    from touchpoint.core.rfm import RFM_SEGMENTS, rfm_segment

    for r in range(1, 6):
        for f in range(1, 6):
            matching = [name for name, pattern in RFM_SEGMENTS if re.match(pattern, f"{r}{f}")]
            assert matching == [GRID[r - 1][f - 1]], (r, f)
    assert all(pattern.startswith("^") and pattern.endswith("$") for _, pattern in RFM_SEGMENTS)
    pairs = spark.createDataFrame([(r, f) for r in range(1, 6) for f in range(1, 6)] + [(None, 3)], "r int, f int")
    got = {(row.r, row.f): row.segment for row in
           pairs.select("r", "f", rfm_segment(F.col("r"), F.col("f")).alias("segment")).collect()}
    assert got == {**{(r, f): GRID[r - 1][f - 1] for r in range(1, 6) for f in range(1, 6)}, (None, 3): None}


def _scores(spark, tmp_path, rows):
    from touchpoint.core.rfm import rfm_scores
    from touchpoint.core.identity_graph import LakeCheckpointer

    frame = spark.createDataFrame(rows, "customer_id string, recency long, orders long, revenue double")
    with LakeCheckpointer(spark, str(tmp_path / "scratch"), local=True) as checkpoint:
        scored = rfm_scores(frame, checkpoint, partitions=3)
        return {r.customer_id: (r.rfm_recency, r.rfm_frequency, r.rfm_monetary) for r in scored.collect()}


def test_rfm_quintile_edges_on_a_known_distribution(spark, tmp_path):
    # Values 1..10: edges 2.8, 4.6, 6.4, 8.2 (linear interpolation), bins closed on the right.
    rows = [(f"c{v:02d}", 11 - v, v, float(v)) for v in range(1, 11)]
    got = _scores(spark, tmp_path, rows)
    expected_bins = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [got[f"c{v:02d}"] for v in range(1, 11)] == [(b, b, b) for b in expected_bins]
    # Values 1..6: the edges 2, 3, 4, 5 fall on values, which belong to the lower bin.
    on_edges = _scores(spark, tmp_path, [(f"e{v}", v, 1, float(v)) for v in range(1, 7)])
    assert [on_edges[f"e{v}"][2] for v in range(1, 7)] == [1, 1, 2, 3, 4, 5]


def test_rfm_scores_match_pandas_qcut(spark, tmp_path):
    rng = random.Random(7)
    rows = [(f"cust-{i:03d}", rng.randrange(10**6, 10**9), rng.choice((1, 1, 1, 2, 2, 3, 5, 8)),
             round(rng.uniform(5, 500), 2)) for i in range(57)]
    got = _scores(spark, tmp_path, rows)

    frame = pd.DataFrame(rows, columns=["customer_id", "recency", "orders", "revenue"]).sort_values("customer_id")
    expected_r = pd.qcut(frame["recency"], 5, labels=[5, 4, 3, 2, 1]).astype(int)
    expected_f = pd.qcut(frame["orders"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5]).astype(int)
    expected_m = pd.qcut(frame["revenue"], 5, labels=[1, 2, 3, 4, 5]).astype(int)
    expected = {cid: (r, f, m) for cid, r, f, m in zip(frame["customer_id"], expected_r, expected_f, expected_m)}
    assert got == expected


PROFILE_EVENTS = [
    # customer A: a visit, an identify, two orders (one order id sent twice), consent changes
    dict(event_id="p1", event_ts=ts(1, 9), anonymous_id="pa-a", channel="organic_search", country="GB"),
    dict(event_id="p2", event_ts=ts(1, 9, 5), event_type="identify", anonymous_id="pa-a", user_id="pa-u",
         email="old@x.io"),
    dict(event_id="p3", event_ts=ts(1, 10), event_type="order", user_id="pa-u", order_id="o-1",
         revenue_reporting=30.0),
    dict(event_id="p4", event_ts=ts(1, 10, 5), event_type="order", user_id="pa-u", order_id="o-1",
         revenue_reporting=30.0),
    dict(event_id="p5", event_ts=ts(1, 11), event_type="consent", user_id="pa-u", consent_email_marketing=True,
         consent_ads_personalization=False),
    dict(event_id="p6", event_ts=ts(2, 9), event_type="consent", anonymous_id="pa-a",
         consent_email_marketing=False),
    dict(event_id="p7", event_ts=ts(2, 10), event_type="email_click", user_id="pa-u", email="new@x.io",
         channel="email", country="FR"),
    dict(event_id="p8", event_ts=ts(2, 11), event_type="order", user_id="pa-u", phone="+447900000001",
         order_id="o-2", revenue_reporting=12.5, channel="paid_search"),
    # customer B: visits only
    dict(event_id="p9", event_ts=ts(2, 12), anonymous_id="pb-a", channel="referral"),
    # customer C: one old, large order
    dict(event_id="p10", event_ts=ts(1, 8), event_type="order", user_id="pc-u", order_id="o-3",
         revenue_reporting=100.0),
    # a shared device: its events with users belong to those users; the event with only it is its own
    *[dict(event_id=f"q{i}", event_ts=ts(1, 13, i), anonymous_id="sd", user_id=f"sd-u{i}", channel="display")
      for i in range(1, 5)],
    dict(event_id="q5", event_ts=ts(1, 14), anonymous_id="sd", channel="affiliate", country="DE"),
    # nothing usable: no customer, not counted anywhere
    dict(event_id="p11", event_ts=ts(2, 13), event_type="order", user_id="null", order_id="o-4",
         revenue_reporting=7.0),
    # after the as-of of day 2: ignored
    dict(event_id="p12", event_ts=ts(3, 0), event_type="order", user_id="pa-u", order_id="o-5",
         revenue_reporting=1000.0),
]


def test_profiles_of_hand_built_customers(spark, settings):
    from touchpoint.jobs import identity, profiles

    append_silver(spark, settings, PROFILE_EVENTS)
    identity.run(spark, settings, date(2))
    summary = profiles.run(spark, settings, date(2))
    assert summary["customers"] == 8

    table = read_table(spark, settings, "gold.customer_profiles")
    assert "email" not in table.columns and "phone" not in table.columns
    by_id = {row[0]: row for row in rows_of(table)}
    columns = table.columns
    cid = expected_customer_id

    def profile(customer_id):
        return dict(zip(columns, by_id[customer_id]))

    a = profile(cid("anonymous_id", "pa-a"))
    assert a == {
        "customer_id": cid("anonymous_id", "pa-a"),
        "first_seen": ts(1, 9), "last_seen": ts(2, 11),
        "anonymous_ids": 1, "user_ids": 1, "emails": 2, "phones": 1,
        "email_sha256": sha("new@x.io"), "phone_sha256": sha("+447900000001"),
        "country": "FR",
        "consent_email_marketing": False, "consent_ads_personalization": False, "consent_analytics": None,
        "consent_updated_at": ts(2, 9),
        "lifetime_orders": 2, "lifetime_revenue": 42.5, "average_order_value": 21.25,
        "first_order_ts": ts(1, 10), "last_order_ts": ts(2, 11), "days_since_last_order": 13 / 24,
        "first_channel": "organic_search", "last_channel": "paid_search",
        "channels_engaged": ["direct", "email", "organic_search", "paid_search"],
        # two customers with orders: A is the most recent, has more orders, less revenue than C
        "rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 1, "rfm_segment": "champions",
        "as_of": ts(3),
    }
    c = profile(cid("user_id", "pc-u"))
    assert (c["lifetime_orders"], c["lifetime_revenue"], c["days_since_last_order"], c["rfm_recency"],
            c["rfm_frequency"], c["rfm_monetary"], c["rfm_segment"]) == (1, 100.0, 40 / 24, 1, 1, 5, "hibernating")
    b = profile(cid("anonymous_id", "pb-a"))
    assert (b["lifetime_orders"], b["lifetime_revenue"], b["average_order_value"], b["last_order_ts"],
            b["rfm_recency"], b["rfm_segment"], b["channels_engaged"], b["email_sha256"]) == \
        (0, 0.0, None, None, None, None, ["referral"], None)
    device = profile(cid("anonymous_id", "sd"))
    assert (device["first_seen"], device["last_seen"], device["channels_engaged"], device["first_channel"],
            device["country"], device["anonymous_ids"], device["user_ids"]) == \
        (ts(1, 13, 1), ts(1, 14), ["affiliate"], "affiliate", "DE", 1, 0)
    user = profile(cid("user_id", "sd-u1"))
    assert (user["channels_engaged"], user["first_seen"], user["anonymous_ids"]) == (["display"], ts(1, 13, 1), 0)
    assert set(by_id) == {cid("anonymous_id", "pa-a"), cid("user_id", "pc-u"), cid("anonymous_id", "pb-a"),
                          cid("anonymous_id", "sd"), *[cid("user_id", f"sd-u{i}") for i in range(1, 5)]}


def _full_recompute(spark, settings, logical_date, summary):
    """The profiles build_profiles derives from scratch from the inputs an incremental run read."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.dates import as_of_for
    from touchpoint.core.delta import read_version
    from touchpoint.jobs.profiles import PROFILE_SCHEMA, build_profiles

    as_of = as_of_for(logical_date)
    events = read_version(spark, table_path("silver.events", settings), summary["silver_version"])
    identity_map = read_version(spark, table_path("gold.identity_map", settings), summary["identity_map_version"])
    built = build_profiles(events.where(F.col("event_ts") < F.lit(as_of)), identity_map, as_of,
                           lambda frame: frame.localCheckpoint(), 2)
    return built.select(*[F.col(f.name).cast(f.dataType) for f in PROFILE_SCHEMA.fields])


def _written(spark, settings, summary):
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import read_version

    return read_version(spark, table_path("gold.customer_profiles", settings), summary["customer_profiles_version"])


def _assert_same_profiles(incremental, full):
    assert_df_equality(incremental.orderBy("customer_id"), full.orderBy("customer_id"), ignore_nullable=True)


@pytest.mark.slow
def test_incremental_profiles_equal_a_full_recompute(spark, settings):
    """Day by day, incremental runs re-derive only the changed customers' event summaries and still
    equal a full recompute: through a late event, a merge, an order id won by another customer's
    earlier order event, a new customer, an event crossing the as-of and an erased event."""
    from delta.tables import DeltaTable

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.jobs import identity, profiles

    # incremental however small the lake (by default a lake this small is derived in full)
    default_settings = settings
    settings = load_settings(lake_root=settings.lake_root, spark_shuffle_partitions=2, jars_dir=str(settings.jars_dir),
                             profiles={"incremental_min_events": 0})
    cid = expected_customer_id
    a, b, c, d, e, f = (cid("anonymous_id", "a-a"), cid("anonymous_id", "b-a"), cid("user_id", "c-u"),
                        cid("anonymous_id", "d-a"), cid("anonymous_id", "e-a"), cid("anonymous_id", "f-a"))
    append_silver(spark, settings, [
        dict(event_id="e1", event_ts=ts(1, 9), anonymous_id="a-a", channel="organic_search", country="GB"),
        dict(event_id="e2", event_ts=ts(1, 10), event_type="identify", anonymous_id="a-a", user_id="a-u"),
        dict(event_id="e3", event_ts=ts(1, 11), anonymous_id="b-a", channel="referral"),
        dict(event_id="e4", event_ts=ts(1, 12), event_type="order", user_id="c-u", order_id="o-9",
             revenue_reporting=50.0),
        dict(event_id="e5", event_ts=ts(1, 13), event_type="consent", anonymous_id="d-a",
             consent_email_marketing=True),
        dict(event_id="e6", event_ts=ts(1, 14), anonymous_id="f-a", channel="display", country="DE"),
    ])
    identity.run(spark, settings, date(1))
    first = profiles.run(spark, settings, date(1))
    assert (first["mode"], first["derivation"], first["customers"]) == ("full", "all customers: first run", 5)

    append_silver(spark, settings, [
        dict(event_id="e7", event_ts=ts(1, 8), event_type="ad_click", anonymous_id="a-a", channel="paid_social"),
        dict(event_id="e8", event_ts=ts(2, 9), event_type="identify", anonymous_id="b-a", user_id="a-u"),
        dict(event_id="e9", event_ts=ts(1, 11), event_type="order", anonymous_id="d-a", order_id="o-9",
             revenue_reporting=40.0),  # earlier than C's order event of o-9: the order is D's now
        dict(event_id="e10", event_ts=ts(2, 10), event_type="order", anonymous_id="e-a", order_id="o-10",
             revenue_reporting=20.0),
        dict(event_id="e11", event_ts=ts(3, 1), anonymous_id="f-a", country="FR"),  # after day 2's as-of
    ])
    identity.run(spark, settings, date(2))
    second = profiles.run(spark, settings, date(2))
    # A (late event, b-a joined), B (b-a left it), D (order), E (new), F (an event not yet before the
    # as-of); C, whose order D won, is not among them: orders are recomputed for everyone.
    assert (second["mode"], second["derivation"], second["customers"]) == ("incremental", "changed customers: 5", 5)
    day_2 = _written(spark, settings, second)
    _assert_same_profiles(day_2, _full_recompute(spark, settings, date(2), second))
    assert sorted(rows_of(day_2, "customer_id", "first_channel", "lifetime_orders", "lifetime_revenue", "country")) \
        == sorted([(a, "paid_social", 0, 0.0, "GB"), (c, "direct", 0, 0.0, None), (d, "direct", 1, 40.0, None),
                   (e, "direct", 1, 20.0, None), (f, "display", 0, 0.0, "DE")])

    append_silver(spark, settings, [
        dict(event_id="e12", event_ts=ts(3, 9), event_type="consent", user_id="c-u",
             consent_ads_personalization=False),
    ])
    DeltaTable.forPath(spark, table_path("silver.events", settings)).delete("event_id = 'e3'")  # an erasure
    identity.run(spark, settings, date(3))
    third = profiles.run(spark, settings, date(3))
    # A (its event e3 erased), C (consent), F (e11 crossed the as-of)
    assert (third["mode"], third["derivation"]) == ("incremental", "changed customers: 3")
    day_3 = _written(spark, settings, third)
    _assert_same_profiles(day_3, _full_recompute(spark, settings, date(3), third))
    assert sorted(rows_of(day_3, "customer_id", "channels_engaged", "consent_ads_personalization", "country")) \
        == sorted([(a, ["direct", "organic_search", "paid_social"], None, "GB"), (c, ["direct"], False, None),
                   (d, ["direct"], None, None), (e, ["direct"], None, None), (f, ["direct", "display"], None, "FR")])
    assert b not in {row[0] for row in rows_of(day_3, "customer_id")}

    # By default a lake this small is derived in full: the same rows.
    rerun = profiles.run(spark, default_settings, date(3))
    assert (rerun["mode"], rerun["derivation"]) == ("full", "all customers: silver holds 11 events, fewer than 1,000,000")
    _assert_same_profiles(_written(spark, settings, rerun), day_3)

    # A commit of someone else's hides the state: the rerun derives everyone, and writes the same rows.
    spark.sql(f"ALTER TABLE delta.`{table_path('gold.customer_profiles', settings)}` "
              "SET TBLPROPERTIES ('touchpoint.test' = 'x')")
    rerun = profiles.run(spark, settings, date(3))
    assert (rerun["mode"], rerun["derivation"]) == (
        "full", "all customers: the last commit of gold.customer_profiles is not a profiles run")
    _assert_same_profiles(_written(spark, settings, rerun), day_3)


@pytest.mark.slow
def test_in_a_pipeline_run_attribution_reads_the_scope_profiles_kept(spark, settings):
    """In a pipeline run's staging namespace profiles keeps its changed-customer scope, and
    attribution reads it instead of diffing the maps and scanning silver again; both write what full
    recomputes write. A kept scope whose write did not finish is not read, and an erasure's discard
    removes kept scopes."""
    from pathlib import Path

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.jobs import attribution, identity, profiles
    from touchpoint.jobs.changed_scope import SCOPE_FOLDER, _read_kept, discard_kept_scopes
    from touchpoint.jobs.pipeline import prepare_staging, staging_settings

    settings = load_settings(lake_root=settings.lake_root, spark_shuffle_partitions=2, jars_dir=str(settings.jars_dir),
                             profiles={"incremental_min_events": 0})
    cid = expected_customer_id
    a, c, d = cid("anonymous_id", "a-a"), cid("user_id", "c-u"), cid("anonymous_id", "d-a")
    append_silver(spark, settings, [
        dict(event_id="e1", event_ts=ts(1, 9), event_type="ad_click", anonymous_id="a-a", channel="paid_search",
             campaign_name="spring"),
        dict(event_id="e2", event_ts=ts(1, 10), event_type="order", anonymous_id="a-a", order_id="o-1",
             revenue_reporting=30.0),
        dict(event_id="e3", event_ts=ts(1, 11), event_type="ad_click", user_id="c-u", channel="paid_social"),
        dict(event_id="e4", event_ts=ts(1, 12), event_type="order", user_id="c-u", order_id="o-2",
             revenue_reporting=50.0),
        dict(event_id="e5", event_ts=ts(1, 13), event_type="ad_click", anonymous_id="d-a", channel="display"),
    ])
    identity.run(spark, settings, date(1))
    profiles.run(spark, settings, date(1))
    attribution.run(spark, settings, date(1))
    append_silver(spark, settings, [
        dict(event_id="e6", event_ts=ts(2, 8), event_type="email_click", anonymous_id="a-a", channel="email"),
        dict(event_id="e7", event_ts=ts(2, 9), event_type="order", anonymous_id="a-a", order_id="o-3",
             revenue_reporting=20.0),
        dict(event_id="e8", event_ts=ts(1, 10, 30), event_type="order", anonymous_id="d-a", order_id="o-2",
             revenue_reporting=45.0),  # earlier than C's event of o-2: the order is D's now
    ])
    identity.run(spark, settings, date(2))
    staged = staging_settings(settings, date(2))
    kept = Path(table_path("gold.customer_profiles", staged)).parent / SCOPE_FOLDER

    prepare_staging(spark, settings, date(2))
    staged_profiles = profiles.run(spark, staged, date(2))
    staged_attribution = attribution.run(spark, staged, date(2))
    # A (new events), D (an order event): C lost o-2 through an order event that is not its own
    assert (staged_profiles["derivation"], staged_profiles["scope"]) == ("changed customers: 2", "derived")
    assert (staged_attribution["derivation"], staged_attribution["scope"]) == ("changed customers: 2", "kept by profiles")
    assert (staged_attribution["conversions_recomputed"], staged_attribution["conversions_removed"]) == (2, 0)

    # Full recomputes, without any scope, write the same tables.
    assert profiles.run(spark, settings, date(2), mode="full")["scope"] is None
    assert attribution.run(spark, settings, date(2), mode="full")["scope"] is None
    for name in ("gold.customer_profiles", "gold.attribution_conversions", "gold.attribution_touchpoints",
                 "gold.attribution_credits"):
        assert_df_equality(read_table(spark, staged, name), read_table(spark, settings, name),
                           ignore_row_order=True, ignore_nullable=True)
    assert rows_of(read_table(spark, staged, "gold.customer_profiles"), "customer_id", "lifetime_orders",
                   "lifetime_revenue") == sorted([(a, 2, 50.0), (c, 0, 0.0), (d, 1, 45.0)])
    conversions = read_table(spark, staged, "gold.attribution_conversions")
    assert rows_of(conversions.select("conversion_id", "customer_id", F.col("path.channel"))) == [
        ("o-1", a, ["paid_search"]), ("o-2", d, []), ("o-3", a, ["paid_search", "email"])]

    # Without its completion mark (a crashed write) a kept scope is not read, so it is derived again.
    (scope_folder,) = kept.iterdir()
    assert _read_kept(spark, str(scope_folder)).kept_by == "profiles"
    shutil.rmtree(scope_folder / "_COMPLETE")
    assert _read_kept(spark, str(scope_folder)) is None

    assert discard_kept_scopes(spark, settings) == [str(kept)]
    assert not kept.exists()


def test_hashing_helpers_match_hashlib(spark):
    from touchpoint.core.hashing import (
        hashed_country, hashed_email, hashed_phone_digits, hashed_phone_e164, sha256_hex,
    )

    frame = spark.createDataFrame([(" Ana@Example.COM ", "+44 7900 000001", "GB"), ("", None, None)],
                                  "email string, phone string, country string")
    rows = frame.select(hashed_email(F.col("email")).alias("e"), hashed_phone_e164(F.col("phone")).alias("p"),
                        hashed_phone_digits(F.col("phone")).alias("d"), hashed_country(F.col("country")).alias("c"),
                        sha256_hex(F.col("email")).alias("raw")).collect()
    assert tuple(rows[0]) == (sha("ana@example.com"), sha("+447900000001"), sha("447900000001"), sha("gb"),
                              sha(" Ana@Example.COM "))
    assert tuple(rows[1]) == (None, None, None, None, None)
