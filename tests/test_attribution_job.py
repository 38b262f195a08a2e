"""`touchpoint run attribution`: Delta in, Delta out; a daily incremental run equals a full recompute.

Two lakes hold the same silver events and identity map at each full recompute (the second gets
copies of the first's before each of its runs). The first is attributed incrementally every day,
the second from scratch; their tables must be identical, through late events, an identity merge,
a late click that turns a page view into a landing, and an erased order.
"""

import datetime as dt
import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.core.delta import ensure_table, latest_version
from touchpoint.jobs import attribution
from touchpoint.schemas.lake import SILVER_SCHEMA

UTC = dt.timezone.utc
D1, D2, D3 = (dt.date(2026, 3, d) for d in (1, 2, 3))

STATE_TABLES = ("gold.attribution_conversions", "gold.attribution_touchpoints", "gold.attribution_credits")
COMPARED_TABLES = ("gold.attribution_conversions", "gold.attribution_touchpoints", "gold.attribution_credits",
                   "gold.attribution_daily", "gold.attribution_paths")


def at(day, hour, minute=0):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=UTC)


def silver_row(event_id, kind, ts, channel="direct", campaign=None, anon=None, user=None, order_id=None,
               revenue=None):
    row = {f.name: None for f in SILVER_SCHEMA}
    row.update(event_id=event_id, event_type=kind, event_ts=ts, event_date=ts.date(), channel=channel,
               campaign_name=campaign, anonymous_id=anon, user_id=user, order_id=order_id, revenue=revenue,
               revenue_reporting=revenue, currency="USD" if revenue is not None else None)
    return row


def identity_rows(*links):
    return [(kind, value, customer, at(D1, 0), at(D3, 0)) for kind, value, customer in links]


class Lakes:
    """The same inputs in two lakes: `incremental` runs daily, `full` recomputes from scratch.
    Inputs are written to the incremental lake only; `full_inputs()` makes the full lake's
    silver.events and gold.identity_map copies of the incremental lake's before each recompute there
    (the same tables, without writing every change twice; the same files too, so a result that
    depends on the order files are listed in is not caught by comparing the two). Silver starts as
    a copy of `empty_silver` (the fixture: created as ingestion creates it, change data feed on);
    without it silver is created by the first append, without a change feed (or `root` holds a
    copied lake already).
    With `compared=False` the full lake is never used."""

    def __init__(self, spark, root, empty_silver=None, compared=True):
        self.spark = spark
        self.incremental = load_settings(lake_root=str(root / "incremental"), spark_shuffle_partitions=2)
        self.full = load_settings(lake_root=str(root / "full"), spark_shuffle_partitions=2)
        self.compared = compared
        if empty_silver is not None:
            shutil.copytree(empty_silver, table_path("silver.events", self.incremental))

    def add_events(self, rows):
        self.spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").mode("append").partitionBy(
            "event_date").save(table_path("silver.events", self.incremental))

    def delete_events(self, condition):
        from delta.tables import DeltaTable

        DeltaTable.forPath(self.spark, table_path("silver.events", self.incremental)).delete(condition)

    def set_identity(self, links):
        self.spark.createDataFrame(
            identity_rows(*links),
            "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, "
            "last_seen timestamp").write.format("delta").mode("overwrite").save(
            table_path("gold.identity_map", self.incremental))

    def full_inputs(self):
        """The full lake's settings, its silver.events and gold.identity_map now copies of the
        incremental lake's (their logs only ever grow there, so each copy extends the last one)."""
        assert self.compared, "Lakes(compared=False) has no full lake"
        for name in ("silver.events", "gold.identity_map"):
            target = table_path(name, self.full)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(table_path(name, self.incremental), target)
        return self.full

    def read(self, settings, name):
        return self.spark.read.format("delta").load(table_path(name, settings))

    def assert_same_tables(self, day):
        """Whole tables equal, read with delta-rs: columns, types and every row (no Spark job)."""
        assert self.compared, "Lakes(compared=False) has no full lake to compare with"
        as_of = attribution.as_of_for(day)
        for name in (*COMPARED_TABLES, "gold.markov_removal_effects"):
            tables = [DeltaTable(table_path(name, s)).to_pyarrow_table() for s in (self.incremental, self.full)]
            columns = [[(f.name, f.type) for f in table.schema] for table in tables]
            assert columns[0] == columns[1], name
            rows = [sorted((tuple(r.values()) for r in table.to_pylist()
                            if name != "gold.markov_removal_effects" or r["as_of"] == as_of), key=repr)
                    for table in tables]
            assert rows[0] == rows[1], name
            assert rows[0] or name != "gold.markov_removal_effects", f"no removal effects as of {as_of}"


@pytest.fixture(scope="module")
def empty_silver(spark, tmp_path_factory):
    """silver.events as ingestion creates it (change data feed on), empty: created once, each lake
    copies it (version 0, the creation, as ensure_table writes it)."""
    path = tmp_path_factory.mktemp("empty_silver") / "events"
    ensure_table(spark, str(path), SILVER_SCHEMA, ["event_date"], "silver.events")
    return path


def row_count(path):
    return DeltaTable(path).to_pyarrow_table().num_rows


def credits_of(lakes, conversion_id, model):
    """{touch_event_id: credit} of one conversion under one model, read with delta-rs (no Spark job)."""
    rows = DeltaTable(table_path("gold.attribution_credits", lakes.incremental)).to_pyarrow_table().to_pylist()
    return {r["touch_event_id"]: r["credit"] for r in rows
            if r["conversion_id"] == conversion_id and r["model"] == model}


def test_a_date_reads_the_silver_and_the_map_its_identity_run_read_and_wrote(spark, tmp_path, empty_silver):
    """BRIEF §4: a customer is resolved "from the identity graph as of the run". D's attribution (and
    campaign_metrics) read the silver snapshot D's identity run read and the map it wrote: not the
    events the stream appended after it (the map has not seen their identifiers: o9 became a
    conversion of nobody; D+1's run reads them, as the pipeline tests' daily runs over arriving data
    do) nor, run again after D+1, the map of D+1 (it links a1 to u1 after o1)."""
    from touchpoint.jobs import campaign_metrics, identity

    lakes = Lakes(spark, tmp_path, empty_silver, compared=False)
    lakes.add_events([silver_row("e1", "ad_click", at(D1, 9), "paid_search", "brand", anon="a1"),
                      silver_row("e2", "order", at(D1, 10), user="u1", order_id="o1", revenue=40.0)])
    identity.run(spark, lakes.incremental, D1)
    lakes.add_events([silver_row("e3", "ad_click", at(D1, 11), "display", "banner", user="u9"),  # late
                      silver_row("e4", "order", at(D1, 12), user="u9", order_id="o9", revenue=90.0),  # late
                      silver_row("e5", "identify", at(D2, 8), anon="a1", user="u1")])
    identity.run(spark, lakes.incremental, D2)

    attribution.run(spark, lakes.incremental, D1)  # D run again after D+1
    conversions = lakes.read(lakes.incremental, "gold.attribution_conversions").collect()
    assert sorted(r["conversion_id"] for r in conversions) == ["o1"]
    assert credits_of(lakes, "o1", "last_touch") == {None: 1.0}
    campaign_metrics.run(spark, lakes.incremental, D1)
    assert [(r["conversion_id"], r["customer_id"] is None, r["last_touch_event_id"]) for r in lakes.read(
        lakes.incremental, "gold.campaign_conversions").collect()] == [("o1", False, None)]

    # Compacted and vacuumed, silver no longer holds what D1's identity run read: D1 is refused,
    # naming the fix, rather than failing half way through a read (or reading another snapshot).
    from delta.tables import DeltaTable

    silver = DeltaTable.forPath(spark, table_path("silver.events", lakes.incremental))
    silver.optimize().executeCompaction()
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        silver.vacuum(0)
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    with pytest.raises(RuntimeError) as refused:
        attribution.run(spark, lakes.incremental, D1)
    assert str(refused.value) == (
        "silver.events no longer holds version 1, the snapshot the identity run for 2026-03-01 read (VACUUM "
        "removed its files): run `touchpoint run identity --date 2026-03-01` again")


def day_one_events():
    """D1 of the four-day test, also the start of the campaign_metrics test: a click and its landing
    before an order (o1), a page view and an email click of another customer, nobody's order (o2)."""
    return [
        silver_row("e01", "ad_click", at(D1, 7), "paid_social", "spring", anon="a3"),
        silver_row("e02", "ad_click", at(D1, 9), "paid_search", "brand", anon="a1"),
        silver_row("e03", "page_view", at(D1, 9, 10), "paid_search", "brand", anon="a1"),  # landing of e02
        silver_row("e04", "order", at(D1, 12), anon="a1", user="u1", order_id="o1", revenue=100.0),
        silver_row("e05", "page_view", at(D1, 8), "organic_search", anon="a2"),
        silver_row("e06", "email_click", at(D1, 10), "email", "news", anon="a2"),
        silver_row("e07", "order", at(D1, 15), anon="zz", order_id="o2", revenue=20.0),  # nobody's order
    ]


CAMPAIGN_TABLES = ("gold.campaign_conversions", "gold.campaign_minute", "gold.campaign_daily",
                   "gold.customer_activity")


def delta_rows(settings, name):
    table = DeltaTable(table_path(name, settings)).to_pyarrow_table()
    return [(f.name, f.type) for f in table.schema], sorted((tuple(r.values()) for r in table.to_pylist()), key=repr)


def test_campaign_metrics_takes_the_last_touch_from_the_paths_of_the_dates_attribution_run(spark, tmp_path,
                                                                                             empty_silver):
    """After D's attribution run, campaign_metrics reads each conversion's last touch as the last
    element of its stored path, and writes exactly what deriving it from silver writes; when the
    attribution run read another snapshot it derives it from silver."""
    from decimal import Decimal

    from touchpoint.jobs import campaign_metrics

    lakes = Lakes(spark, tmp_path, empty_silver)
    lakes.set_identity([("anonymous_id", "a1", "cust-1"), ("user_id", "u1", "cust-1"),
                        ("anonymous_id", "a2", "cust-2"), ("anonymous_id", "a3", "cust-3"),
                        ("anonymous_id", "a4", "cust-4"), ("anonymous_id", "a5", "cust-5")])
    old = at(D1 - dt.timedelta(days=40), 9)  # beyond the 30-day lookback and activity horizon
    lakes.add_events([
        *day_one_events(),
        silver_row("e08", "ad_click", at(D1, 11), "display", "z", anon="a2"),
        silver_row("e09", "ad_click", at(D1, 11), "display", "y", anon="a2"),  # same instant: e09 is last
        silver_row("e10", "ad_click", old, "paid_social", "old", anon="a3"),
        silver_row("e11", "ad_click", old, "paid_social", "old", anon="a4"),
        silver_row("e17", "add_to_cart", old, anon="a5"),  # cust-5's only event: no activity as of D2
        silver_row("e12", "ad_click", at(D2, 1), "display", "x", anon="a1"),  # after the as-of
        silver_row("e14", "order", at(D1, 11, 30), anon="a2", order_id="o3", revenue=30.0),
        silver_row("e15", "order", at(D1, 13), anon="a3", order_id="o4", revenue=40.0),
        silver_row("e16", "order", at(D1, 14), anon="a4", order_id="o5", revenue=50.0),  # only e11, too old
    ])
    attribution.run(spark, lakes.incremental, D1)
    from_paths = campaign_metrics.run(spark, lakes.incremental, D1)
    derived = campaign_metrics.run(spark, lakes.full_inputs(), D1, mode="full")
    assert from_paths["last_touch"].startswith("attribution paths (gold.attribution_conversions version ")
    assert derived["last_touch"] == "derived from silver: full recompute requested"
    for name in CAMPAIGN_TABLES:
        assert delta_rows(lakes.incremental, name) == delta_rows(lakes.full, name), name

    conversions = sorted((r["conversion_id"], r["customer_id"], r["revenue"], r["last_touch_event_id"],
                          r["last_touch_channel"], r["last_touch_campaign"])
                         for r in lakes.read(lakes.incremental, "gold.campaign_conversions").collect())
    assert conversions == [
        ("o1", "cust-1", Decimal(100), "e02", "paid_search", "brand"),
        ("o2", None, Decimal(20), None, "direct", None),
        ("o3", "cust-2", Decimal(30), "e09", "display", "y"),
        ("o4", "cust-3", Decimal(40), "e01", "paid_social", "spring"),
        ("o5", "cust-4", Decimal(50), None, "direct", None),
    ]
    daily = sorted((tuple(r) for r in lakes.read(lakes.incremental, "gold.campaign_daily").select(
        "date", "campaign", "impressions", "clicks", "orders", "revenue", "last_touch_orders",
        "last_touch_revenue").collect()), key=repr)
    assert daily == sorted([
        (old.date(), "old", 0, 2, 0, Decimal(0), 0, Decimal(0)),
        (D1, None, 0, 0, 5, Decimal(240), 2, Decimal(70)),
        (D1, "brand", 0, 1, 0, Decimal(0), 1, Decimal(100)),
        (D1, "news", 0, 1, 0, Decimal(0), 0, Decimal(0)),
        (D1, "spring", 0, 1, 0, Decimal(0), 1, Decimal(40)),
        (D1, "y", 0, 1, 0, Decimal(0), 1, Decimal(30)),
        (D1, "z", 0, 1, 0, Decimal(0), 0, Decimal(0)),
    ], key=repr)
    # activity covers the 30-day horizon: cust-5, whose only event is older, has no row
    assert sorted(tuple(r) for r in lakes.read(lakes.incremental, "gold.customer_activity").select(
        "customer_id", "last_event_ts", "last_event_type", "events_last_30m").collect()) == [
        (customer, at(D1, *hour_minute).replace(tzinfo=None), "order", 0)  # Spark gives naive UTC
        for customer, hour_minute in (("cust-1", (12,)), ("cust-2", (11, 30)), ("cust-3", (13,)), ("cust-4", (14,)))]

    # A late click lands after the attribution run: its paths are of an older silver, so the last
    # touch is derived from silver again (o1's is now e13).
    lakes.add_events([silver_row("e13", "ad_click", at(D1, 11), "display", "late", anon="a1")])
    silver_version = latest_version(spark, table_path("silver.events", lakes.incremental))
    map_version = latest_version(spark, table_path("gold.identity_map", lakes.incremental))
    stale = campaign_metrics.run(spark, lakes.incremental, D1)
    campaign_metrics.run(spark, lakes.full_inputs(), D1, mode="full")
    assert stale["last_touch"] == (
        f"derived from silver: the last attribution run read silver.events {silver_version - 1} and "
        f"gold.identity_map {map_version}, not {silver_version} and {map_version}")
    for name in CAMPAIGN_TABLES:
        assert delta_rows(lakes.incremental, name) == delta_rows(lakes.full, name), name
    assert lakes.read(lakes.incremental, "gold.campaign_conversions").where("conversion_id = 'o1'").select(
        "last_touch_event_id", "last_touch_campaign").collect() == [("e13", "late")]


IDENTITY_DAY_1 = [
    ("anonymous_id", "a1", "cust-1"), ("user_id", "u1", "cust-1"),
    ("anonymous_id", "a2", "cust-2"), ("anonymous_id", "a3", "cust-3"),
]


@pytest.mark.slow
def test_daily_incremental_runs_equal_a_full_recompute(spark, tmp_path, empty_silver):
    lakes = Lakes(spark, tmp_path, empty_silver)
    lakes.set_identity(IDENTITY_DAY_1)
    lakes.add_events([
        *day_one_events(),
    ])
    first = attribution.run(spark, lakes.incremental, D1)
    assert (first["mode"], first["full_reason"], first["conversions_recomputed"]) == ("full", "first run", 2)
    assert first["derivation"] == "all customers: first run"
    assert credits_of(lakes, "o1", "linear") == {"e02": 1.0}
    assert credits_of(lakes, "o2", "markov") == {None: 1.0}

    # Day 2: new conversions, a late click of day 1 for o1, an event of day 3 that must wait.
    lakes.add_events([
        silver_row("e08", "email_click", at(D1, 11), "email", "promo", anon="a1"),  # late for o1
        silver_row("e09", "page_view", at(D2, 9), "paid_social", "fall", anon="a2"),
        silver_row("e10", "order", at(D2, 10), anon="a2", order_id="o3", revenue=50.0),
        silver_row("e11", "ad_click", at(D2, 11), "display", "banner", anon="a1"),
        silver_row("e12", "order", at(D2, 12), user="u1", order_id="o4", revenue=30.0),
        silver_row("e13", "page_view", at(D3, 1), "referral", anon="a2"),
    ])
    second = attribution.run(spark, lakes.incremental, D2)
    assert (second["mode"], second["conversions_recomputed"], second["conversions_removed"]) == ("incremental", 3, 0)
    # The Markov partition is replaced whole, then the heuristic credits of the rebuilt conversions merged.
    assert [(c["operation"], c.get("operationParameters", {}).get("predicate")) for c in DeltaTable(
        table_path("gold.attribution_credits", lakes.incremental)).history(2)] == [
        ("MERGE", ANY), ("WRITE", "model = 'markov'")]
    # customers 1 and 2 have new events; customer 3 is not re-derived
    assert second["derivation"] == "changed customers: 2"
    assert credits_of(lakes, "o1", "linear") == {"e02": 0.5, "e08": 0.5}
    markov_o1_day_2 = credits_of(lakes, "o1", "markov")

    # Day 3: device a3 turns out to be customer 1's; a late click makes e09 the landing of a click;
    # the anonymous order is erased from silver; a brand-new customer converts.
    lakes.set_identity([("anonymous_id", "a1", "cust-1"), ("user_id", "u1", "cust-1"),
                        ("anonymous_id", "a2", "cust-2"), ("anonymous_id", "a3", "cust-1"),
                        ("anonymous_id", "a4", "cust-4")])
    lakes.delete_events("event_id = 'e07'")
    lakes.add_events([
        silver_row("e14", "ad_click", at(D2, 8, 55), "paid_social", "fall", anon="a2"),
        silver_row("e15", "order", at(D3, 10), anon="a1", order_id="o5", revenue=10.0),
        silver_row("e16", "ad_click", at(D3, 9), "affiliate", "partner", anon="a4"),
        silver_row("e17", "order", at(D3, 11), anon="a4", order_id="o6", revenue=70.0),
    ])
    third = attribution.run(spark, lakes.incremental, D3)
    # o1 and o4 (merged device), o3 (landing), o5 and o6 (new); o2 is gone
    assert (third["mode"], third["conversions_recomputed"], third["conversions_removed"]) == ("incremental", 5, 1)
    # a3 moved from customer 3 to 1, a4 is new (customer 4), customer 2 has a late click
    assert third["derivation"] == "changed customers: 4"
    assert credits_of(lakes, "o1", "first_touch") == {"e01": 1.0}
    assert sorted(credits_of(lakes, "o3", "linear")) == ["e05", "e06", "e14"]
    assert credits_of(lakes, "o2", "linear") == {}
    attribution.run(spark, lakes.full_inputs(), D3, mode="full")
    lakes.assert_same_tables(D3)

    # The Markov credits of an old conversion follow the latest removal effects.
    effects = third["removal_effects"]
    o1_channels = {"e01": "paid_social", "e02": "paid_search", "e08": "email"}
    markov_o1 = credits_of(lakes, "o1", "markov")
    total = effects["paid_social"] + effects["paid_search"] + effects["email"]
    assert markov_o1 == pytest.approx(
        {e: effects[c] / total for e, c in o1_channels.items() if effects[c] > 0}, abs=1e-12)
    assert markov_o1 != markov_o1_day_2
    runs = lakes.read(lakes.incremental, "gold.attribution_runs").orderBy("run_id").collect()
    assert [(r["run_id"], r["logical_date"], r["mode"]) for r in runs] == [
        (1, D1, "full"), (2, D2, "incremental"), (3, D3, "incremental")]

    # Re-running the same day changes nothing and recomputes nothing: no MERGE commits, one Markov write.
    versions = {name: latest_version(spark, table_path(name, lakes.incremental)) for name in STATE_TABLES}
    again = attribution.run(spark, lakes.incremental, D3)
    assert {name: latest_version(spark, table_path(name, lakes.incremental)) - versions[name]
            for name in STATE_TABLES} == {"gold.attribution_conversions": 0, "gold.attribution_touchpoints": 0,
                                          "gold.attribution_credits": 1}
    assert (again["mode"], again["conversions_recomputed"], again["conversions_removed"]) == ("incremental", 0, 0)
    assert again["derivation"] == "changed customers: 0"
    lakes.assert_same_tables(D3)

    # Re-running an earlier day: the events of D3 leave the as-of again.
    back = attribution.run(spark, lakes.incremental, D2)
    assert (back["mode"], back["derivation"], back["conversions_removed"]) == (
        "incremental", "changed customers: 3", 2)
    attribution.run(spark, lakes.full_inputs(), D2, mode="full")
    lakes.assert_same_tables(D2)
    runs = lakes.read(lakes.incremental, "gold.attribution_runs").orderBy("run_id").collect()
    assert [r["derivation"] for r in runs] == [
        "all customers: first run", "changed customers: 2", "changed customers: 4", "changed customers: 0",
        "changed customers: 3"]


def attribute_day_one_then_add_events(spark, lakes):
    """The start of every case of the unreadable-changes test: D1 attributed, then an email click of
    another device (a2) and its order (o3) arrive."""
    lakes.set_identity(IDENTITY_DAY_1)
    lakes.add_events([
        silver_row("e01", "ad_click", at(D1, 9), "paid_search", "brand", anon="a1"),
        silver_row("e02", "order", at(D1, 12), anon="a1", order_id="o1", revenue=100.0),
        silver_row("e03", "order", at(D1, 13), anon="a3", order_id="o2", revenue=5.0),
    ])
    attribution.run(spark, lakes.incremental, D1)
    lakes.add_events([
        silver_row("e04", "email_click", at(D1, 11), "email", "promo", anon="a2"),
        silver_row("e05", "order", at(D2, 10), anon="a2", order_id="o3", revenue=50.0),
    ])


@pytest.fixture(scope="module")
def day_one_attributed(spark, tmp_path_factory, empty_silver):
    """attribute_day_one_then_add_events over a lake whose silver has its change feed, not compared:
    the start of the "map vacuumed" and "map re-created" cases, built once. Read-only: the cases copy
    it (shutil.copytree)."""
    root = tmp_path_factory.mktemp("day_one_attributed")
    attribute_day_one_then_add_events(spark, Lakes(spark, root, empty_silver, compared=False))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no change feed", "map vacuumed", "map re-created"])
def test_when_the_changes_cannot_be_read_every_customer_is_re_derived(spark, tmp_path, case, request):
    if case == "no change feed":  # silver created by its first append, without a change feed
        lakes = Lakes(spark, tmp_path)
        attribute_day_one_then_add_events(spark, lakes)
    else:  # the same start in both cases: a copy of it
        shutil.copytree(request.getfixturevalue("day_one_attributed") / "incremental", tmp_path / "incremental")
        lakes = Lakes(spark, tmp_path, compared=False)
    if case == "map vacuumed":
        # A VACUUM with retention 0 (as an erasure's) removes the files of the map's old version.
        from delta.tables import DeltaTable

        lakes.delete_events("event_id = 'e03'")
        lakes.set_identity([("anonymous_id", "a1", "cust-1"), ("anonymous_id", "a2", "cust-1")])
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        try:
            DeltaTable.forPath(spark, table_path("gold.identity_map", lakes.incremental)).vacuum(0)
        finally:
            spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    if case == "map re-created":
        # The same version number (0) of a map written again from scratch: other rows, other files.
        shutil.rmtree(table_path("gold.identity_map", lakes.incremental))
        lakes.set_identity([("anonymous_id", "a1", "cust-1"), ("anonymous_id", "a2", "cust-1")])
    second = attribution.run(spark, lakes.incremental, D2)
    assert second["mode"] == "incremental"
    assert second["derivation"] == {
        "no change feed": "all customers: silver.events' change data feed since version 1 cannot be read "
                          "(AnalysisException)",
        "map vacuumed": "all customers: the changes since the last run cannot be read (Py4JJavaError)",
        "map re-created": "all customers: gold.identity_map version 0 is not the snapshot the last run read",
    }[case]
    if case == "no change feed":  # the other cases take the same path from here
        attribution.run(spark, lakes.full_inputs(), D2, mode="full")
        lakes.assert_same_tables(D2)
    else:  # a2 joined customer 1: o1's path gains e04, o3 is new; o2 was deleted, or lost its customer
        assert (second["conversions_recomputed"], second["conversions_removed"]) == {
            "map vacuumed": (2, 1), "map re-created": (3, 0)}[case]


@pytest.mark.slow
def test_a_run_that_died_between_its_state_writes_is_followed_by_a_full_recompute(spark, tmp_path, monkeypatch,
                                                                                   empty_silver):
    """A run dies after its conversions and touchpoints MERGEs, before the credits. Both tables keep
    their row counts (a touchpoint in, another erased; paths rebuilt in place), so only the dead
    run's commit marks tell the next run that the stored credits still follow the older paths."""
    lakes = Lakes(spark, tmp_path, empty_silver)
    lakes.set_identity(IDENTITY_DAY_1)
    lakes.add_events([
        silver_row("e02", "ad_click", at(D1, 9), "paid_search", "brand", anon="a1"),
        silver_row("e04", "order", at(D1, 12), anon="a1", user="u1", order_id="o1", revenue=100.0),
        silver_row("e05", "page_view", at(D1, 8), "organic_search", anon="a2"),
        silver_row("e06", "email_click", at(D1, 10), "email", "news", anon="a2"),
        silver_row("e10", "order", at(D1, 13), anon="a2", order_id="o3", revenue=50.0),
    ])
    assert attribution.run(spark, lakes.incremental, D1)["mode"] == "full"
    recorded = {name: (latest_version(spark, table_path(name, lakes.incremental)),
                       row_count(table_path(name, lakes.incremental))) for name in STATE_TABLES}
    # A late click for o1, and customer 2's page view erased: one touchpoint in, one out.
    lakes.add_events([silver_row("e08", "email_click", at(D1, 11), "email", "promo", anon="a1")])
    lakes.delete_events("event_id = 'e05'")

    def killed(*_args):
        raise RuntimeError("killed before the credits")

    with monkeypatch.context() as patch:  # the credits' first write: the Markov partition
        patch.setattr(attribution, "_replace_where", killed)
        with pytest.raises(RuntimeError, match="killed before the credits"):
            attribution.run(spark, lakes.incremental, D1)
    left = {name: (latest_version(spark, table_path(name, lakes.incremental)),
                   row_count(table_path(name, lakes.incremental)),
                   DeltaTable(table_path(name, lakes.incremental)).history(1)[0].get("userMetadata"))
            for name in STATE_TABLES}
    assert left == {
        "gold.attribution_conversions": (recorded["gold.attribution_conversions"][0] + 1, 2,
                                         '{"touchpoint_attribution_run": 2}'),
        "gold.attribution_touchpoints": (recorded["gold.attribution_touchpoints"][0] + 1, 3,
                                         '{"touchpoint_attribution_run": 2}'),
        "gold.attribution_credits": (*recorded["gold.attribution_credits"], '{"touchpoint_attribution_run": 1}')}
    assert {name: rows for name, (_, rows) in recorded.items() if name != "gold.attribution_credits"} == {
        "gold.attribution_conversions": 2, "gold.attribution_touchpoints": 3}

    rerun = attribution.run(spark, lakes.incremental, D1)
    reason = "gold.attribution_conversions holds writes of attribution run 2, which did not finish"
    assert (rerun["mode"], rerun["full_reason"], rerun["derivation"]) == ("full", reason, f"all customers: {reason}")
    assert credits_of(lakes, "o1", "linear") == {"e02": 0.5, "e08": 0.5}
    assert credits_of(lakes, "o3", "linear") == {"e06": 1.0}
    attribution.run(spark, lakes.full_inputs(), D1, mode="full")
    lakes.assert_same_tables(D1)

    # A publish that crashed half way leaves tables of different runs: here the credits of run 2
    # beside run 3's record and other tables. On a local lake that table is at an older version.
    credits_path = table_path("gold.attribution_credits", lakes.incremental)
    shutil.copytree(credits_path, tmp_path / "credits_of_run_2")
    before = latest_version(spark, credits_path)
    lakes.add_events([silver_row("e11", "ad_click", at(D1, 11, 30), "display", "banner", anon="a1")])
    assert attribution.run(spark, lakes.incremental, D1)["derivation"] == "changed customers: 1"
    after = latest_version(spark, credits_path)
    shutil.rmtree(credits_path)
    shutil.copytree(tmp_path / "credits_of_run_2", credits_path)
    record, reason = attribution._previous_run(spark, lakes.incremental)
    assert (record["run_id"], reason) == (3, f"gold.attribution_credits is at version {before}, before the last "
                                             f"run's {after}")
    # Wherever the version numbers land, the credits' newest mark must be the last run's (every run
    # writes credits): a record of run 4 naming these very versions is not taken either.
    runs = lakes.read(lakes.incremental, "gold.attribution_runs")
    runs.where("run_id = 3").withColumn("run_id", F.lit(4).cast("long")).withColumn(
        "credits_version", F.lit(before).cast("long")).withColumn(
        "credits_rows", F.lit(row_count(credits_path)).cast("long")).write.format("delta").mode("append").save(
        table_path("gold.attribution_runs", lakes.incremental))
    assert attribution._previous_run(spark, lakes.incremental)[1] == (
        "gold.attribution_credits holds the writes of attribution run 2, not of run 4, the last one recorded")
    # The credits' log: run 1's overwrite (version 0), then the full rerun's, as run 2 (version 1).
    assert [attribution.unfinished_run(credits_path, recorded_version, run_id)
            for recorded_version, run_id in ((0, 1), (0, 2), (5, 1), (5, 2))] == [2, None, 2, None]


@pytest.mark.slow
def test_run_on_its_own_a_job_waits_for_the_gold_write_lock_as_a_pipeline_step_it_does_not(spark, tmp_path,
                                                                                           empty_silver):
    import threading

    from lock_waiters import run_after_the_lock
    from touchpoint.core.delta import gold_write_lock
    from touchpoint.jobs.pipeline import staging_settings
    from touchpoint.jobs.runner import run_job

    lakes = Lakes(spark, tmp_path, empty_silver, compared=False)
    lakes.set_identity(IDENTITY_DAY_1)
    lakes.add_events([
        silver_row("e01", "ad_click", at(D1, 9), "paid_search", "brand", anon="a1"),
        silver_row("e02", "order", at(D1, 12), anon="a1", order_id="o1", revenue=100.0),
    ])
    published = lakes.incremental
    runs = table_path("gold.attribution_runs", published)
    # a publish holds the lock: the job waits, and writes nothing meanwhile
    alone = run_after_the_lock(published.lake_uri, lambda: run_job("attribution", D1, settings=published, spark=spark),
                               unchanged=lambda: not Path(runs).exists())
    assert (alone["mode"], alone["conversions_recomputed"]) == ("full", 1)
    # so does lake maintenance's VACUUM of gold tables
    from touchpoint.jobs import maintenance

    credits = table_path("gold.attribution_credits", published)
    credits_version = latest_version(spark, credits)
    vacuumed = run_after_the_lock(published.lake_uri, lambda: maintenance.vacuum(spark, published, D1),
                                  unchanged=lambda: latest_version(spark, credits) == credits_version)
    assert "gold.attribution_credits" in vacuumed["vacuumed"]

    # As a pipeline step it writes staging, which publish never exchanges mid-write: no lock.
    staged = staging_settings(published, D1)
    # seeded as prepare_staging seeds it: a copy of the published table
    shutil.copytree(table_path("gold.identity_map", published), table_path("gold.identity_map", staged))
    outcome = {}
    with gold_write_lock(published.lake_uri):
        step = threading.Thread(target=lambda: outcome.update(run_job("attribution", D1, settings=staged, spark=spark)))
        step.start()
        step.join(timeout=300)
        assert not step.is_alive(), "a staged job waited for the gold write lock"
    assert (outcome["mode"], outcome["conversions_recomputed"]) == ("full", 1)


def test_missing_inputs_fail_clearly(spark, settings):
    with pytest.raises(FileNotFoundError, match="silver.events"):
        attribution.run(spark, settings, D1)
