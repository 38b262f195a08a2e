"""`touchpoint run segments`: membership history across days (enter, stay, exit, re-enter), reruns,
backfill of an older date, and identity merges (BRIEF §6)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from touchpoint.core.catalog import table_path
from touchpoint.core.dates import as_of_for
from touchpoint.core.segments import parse_segment
from touchpoint.jobs import segments as job
from touchpoint.schemas.lake import SILVER_SCHEMA

UTC = dt.timezone.utc
D1, D2, D3, D4 = (dt.date(2024, 3, d) for d in (1, 2, 3, 4))
T1, T2, T3, T4 = (dt.datetime(2024, 3, d, tzinfo=UTC) for d in (2, 3, 4, 5))  # as_of of D1..D4

SEGMENTS = {
    "big.yaml": "name: big\ncondition: {attribute: lifetime_revenue, gte: 100}\n",
    "clicked.yaml": "name: clicked\ncondition:\n  behaviour: {event_type: ad_click, at_least: 1, within_last_days: 1}\n",
}


def write(spark, rows, schema, path):
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(path)


def click(event_id: str, user_id: str, at: dt.datetime) -> dict:
    row = {f.name: None for f in SILVER_SCHEMA.fields}
    row.update(event_id=event_id, event_type="ad_click", event_ts=at, event_date=at.date(), user_id=user_id,
               channel="paid_search")
    return row


class Lake:
    def __init__(self, spark, settings):
        self.spark, self.settings = spark, settings

    def path(self, name):
        return table_path(name, self.settings)

    def profiles(self, revenue: dict[str, float], day: dt.date):
        """Profiles as of `day` (the segments job refuses profiles of another date)."""
        as_of = as_of_for(day)
        write(self.spark, [(c, r, as_of) for c, r in sorted(revenue.items())],
              "customer_id string, lifetime_revenue double, as_of timestamp", self.path("gold.customer_profiles"))

    def identity(self, users: dict[str, str]):
        rows = [("user_id", u, c, T1, T1) for u, c in sorted(users.items())]
        write(self.spark, rows, "identifier_type string, identifier_value string, customer_id string, "
                                "first_seen timestamp, last_seen timestamp", self.path("gold.identity_map"))

    def events(self, rows):
        self.spark.createDataFrame([tuple(r[f.name] for f in SILVER_SCHEMA.fields) for r in rows], SILVER_SCHEMA) \
            .write.format("delta").mode("overwrite").save(self.path("silver.events"))

    def merges(self, rows):
        write(self.spark, rows, "old_customer_id string, new_customer_id string, merged_at timestamp, "
                                "linking_event_id string", self.path("gold.identity_merges"))

    def table(self, name):
        return self.spark.read.format("delta").load(self.path(name))

    def membership(self):
        return sorted((r["segment"], r["customer_id"], r["entered_at"], r["exited_at"])
                      for r in self.table("gold.segment_membership").select(
                          "segment", "customer_id", *[job.F.unix_micros(c).alias(c) for c in ("entered_at", "exited_at")]
                      ).collect())

    def sizes(self):
        return sorted(tuple(r) for r in self.table("gold.segment_sizes")
                      .select("date", "segment", "members", "entered", "exited").collect())


def micros(instant: dt.datetime | None) -> int | None:
    return None if instant is None else round(instant.timestamp() * 1_000_000)


def stays(*rows):
    return sorted((s, c, micros(e), micros(x)) for s, c, e, x in rows)


@pytest.fixture
def lake(spark, settings, tmp_path):
    folder = tmp_path / "segments"
    folder.mkdir()
    for name, text in SEGMENTS.items():
        (folder / name).write_text(text)
    settings = settings.model_copy(update={"segments_dir": folder})
    return Lake(spark, settings)


def test_membership_history_reruns_backfill_merges_and_removed_segment(spark, lake):
    clicks = [click("e1", "u2", dt.datetime(2024, 3, 1, 10, tzinfo=UTC)),
              click("e2", "u1", dt.datetime(2024, 3, 3, 23, 59, 59, 999999, tzinfo=UTC))]
    lake.events(clicks)
    lake.identity({"u1": "c1", "u2": "c2"})
    d2_profiles = {"c1": 150.0, "c2": 120.0, "c3": 50.0, "c4": 500.0, "c5": 500.0}

    lake.profiles({**d2_profiles, "c3": 200.0}, D1)
    summary = job.run(spark, lake.settings, D1)
    assert summary["sizes"] == {"big": 5, "clicked": 1}
    lake.profiles(d2_profiles, D2)  # c3 drops out of big, c2's click is older than a day
    job.run(spark, lake.settings, D2)
    lake.profiles({**d2_profiles, "c3": 300.0}, D3)  # c3 comes back, c1 clicks
    job.run(spark, lake.settings, D3)

    big_from_t1 = [("big", c, T1, None) for c in ("c1", "c2", "c4", "c5")]
    after_d3 = stays(*big_from_t1, ("big", "c3", T1, T2), ("big", "c3", T3, None),
                     ("clicked", "c2", T1, T2), ("clicked", "c1", T3, None))
    sizes_after_d3 = sorted([(D1, "big", 5, 5, 0), (D1, "clicked", 1, 1, 0), (D2, "big", 4, 0, 1),
                             (D2, "clicked", 0, 0, 1), (D3, "big", 5, 1, 0), (D3, "clicked", 1, 1, 0)])
    assert lake.membership() == after_d3
    assert lake.sizes() == sizes_after_d3

    # Rerunning the latest date changes nothing and writes nothing.
    assert job.run(spark, lake.settings, D3)["membership_changed"] is False
    assert lake.membership() == after_d3

    # A corrected D2 (c3 was big after all) while D3 exists rewrites D2 only: c3's two stays become
    # one, and D3's counts follow. Rerunning D2 with its original inputs restores the tables exactly.
    lake.profiles({**d2_profiles, "c3": 250.0}, D2)
    job.run(spark, lake.settings, D2)
    assert lake.membership() == stays(*big_from_t1, ("big", "c3", T1, None),
                                      ("clicked", "c2", T1, T2), ("clicked", "c1", T3, None))
    assert lake.sizes() == sorted([(D1, "big", 5, 5, 0), (D1, "clicked", 1, 1, 0), (D2, "big", 5, 0, 0),
                                   (D2, "clicked", 0, 0, 1), (D3, "big", 5, 0, 0), (D3, "clicked", 1, 1, 0)])
    lake.profiles(d2_profiles, D2)
    job.run(spark, lake.settings, D2)
    assert lake.membership() == after_d3
    assert lake.sizes() == sizes_after_d3

    # D4: c2 merges into c1, and c5 into c4 into c1 (a chain); the clicked segment file is removed.
    # Stays of retired ids move to c1 and join c1's own: membership carries over the merges.
    (lake.settings.segments_dir / "clicked.yaml").unlink()
    lake.profiles({"c1": 1270.0, "c3": 300.0}, D4)
    lake.identity({"u1": "c1", "u2": "c1"})
    lake.merges([("c2", "c1", dt.datetime(2024, 3, 4, 8, tzinfo=UTC), "e9"),
                 ("c5", "c4", dt.datetime(2024, 3, 4, 8, tzinfo=UTC), "e10"),
                 ("c4", "c1", dt.datetime(2024, 3, 4, 9, tzinfo=UTC), "e11")])
    assert job.run(spark, lake.settings, D4)["sizes"] == {"big": 2}
    assert lake.membership() == stays(("big", "c1", T1, None), ("big", "c3", T1, T2), ("big", "c3", T3, None),
                                      ("clicked", "c1", T1, T2), ("clicked", "c1", T3, T4))
    assert lake.sizes() == sizes_after_d3 + [(D4, "big", 2, 0, 0), (D4, "clicked", 0, 0, 1)]
    fingerprints = {(r["date"], r["segment"]): r["definition_sha256"] for r in lake.table("gold.segment_sizes").collect()}
    big, clicked = (parse_segment(SEGMENTS[f"{n}.yaml"]).fingerprint for n in ("big", "clicked"))
    assert fingerprints == {**{(d, "big"): big for d in (D1, D2, D3, D4)},
                            **{(d, "clicked"): clicked for d in (D1, D2, D3)}, (D4, "clicked"): None}

    # "Who was in big on D2?" is a query; history speaks of the surviving ids.
    on_d2 = lake.table("gold.segment_membership").transform(job.members_on(D2))
    assert sorted((r["segment"], r["customer_id"]) for r in on_d2.collect()) == [("big", "c1")]


def test_a_date_is_not_evaluated_on_another_dates_profiles(spark, lake):
    """`touchpoint run segments --date D1` after D2's profiles: D1's members would be counted with
    orders and RFM of D2. Before, it ran and wrote them."""
    lake.events([click("e1", "u1", dt.datetime(2024, 3, 1, 10, tzinfo=UTC))])
    lake.identity({"u1": "c1"})
    lake.profiles({"c1": 150.0}, D2)
    with pytest.raises(RuntimeError) as error:
        job.run(spark, lake.settings, D1)
    assert str(error.value) == (
        f"gold.customer_profiles at {lake.path('gold.customer_profiles')} is as of 2024-03-03T00:00:00+00:00, "
        "not 2024-03-02T00:00:00+00:00: run profiles for 2024-03-01 first (touchpoint run profiles --date "
        "2024-03-01, after identity), or run the whole date (touchpoint run pipeline --date 2024-03-01)")
    assert not Path(lake.path("gold.segment_membership")).exists()  # refused before anything was written
    lake.profiles({"c1": 150.0}, D1)
    assert job.run(spark, lake.settings, D1)["sizes"] == {"big": 1, "clicked": 1}


def test_behaviour_counts_use_the_customers_of_the_dates_identity_run(spark, lake):
    """BRIEF §5: customers are "built from all events before the run's as-of". D1 run again after
    D2's identity merged a1 into u1's customer: a1's click of D1 still counts for a1's customer of D1
    (the one in D1's profiles), not for the survivor of D2's merge."""
    from touchpoint.jobs import identity

    def append(rows):
        lake.spark.createDataFrame([tuple(r[f.name] for f in SILVER_SCHEMA.fields) for r in rows], SILVER_SCHEMA) \
            .write.format("delta").mode("append").partitionBy("event_date").save(lake.path("silver.events"))

    visit = {**click("e1", "u1", dt.datetime(2024, 3, 1, 8, tzinfo=UTC)), "event_type": "page_view"}
    ad_click = {**click("e2", None, dt.datetime(2024, 3, 1, 10, tzinfo=UTC)), "anonymous_id": "a1"}
    append([visit, ad_click])
    identity.run(spark, lake.settings, D1)
    day_1 = {r["identifier_value"]: r["customer_id"] for r in lake.table("gold.identity_map").collect()}
    append([{**click("e3", "u1", dt.datetime(2024, 3, 2, 8, tzinfo=UTC)), "event_type": "identify",
             "anonymous_id": "a1"}])
    identity.run(spark, lake.settings, D2)
    day_2 = {r["identifier_value"]: r["customer_id"] for r in lake.table("gold.identity_map").collect()}
    assert day_1["a1"] != day_1["u1"] == day_2["a1"] == day_2["u1"]  # u1, first seen first, survives

    lake.profiles({day_1["a1"]: 0.0, day_1["u1"]: 0.0}, D1)
    job.run(spark, lake.settings, D1)
    assert [(r["segment"], r["customer_id"]) for r in lake.table("gold.segment_membership").collect()] == [
        ("clicked", day_1["a1"])]


def test_behaviour_counts_read_the_silver_the_profiles_were_derived_from(spark, lake):
    """Segments of D evaluate D's profiles, and their behaviour conditions count the events of the
    silver snapshot those profiles were derived from (recorded in the profiles commit). A click the
    stream appended after profiles ran, read by identity run again for D, is not counted until
    profiles of D run again too."""
    from touchpoint.jobs import identity, profiles

    def append(rows):
        lake.spark.createDataFrame([tuple(r[f.name] for f in SILVER_SCHEMA.fields) for r in rows], SILVER_SCHEMA) \
            .write.format("delta").mode("append").partitionBy("event_date").save(lake.path("silver.events"))

    append([{**click("e1", "u1", dt.datetime(2024, 3, 1, 8, tzinfo=UTC)), "event_type": "page_view"}])
    identity.run(spark, lake.settings, D1)
    profiles.run(spark, lake.settings, D1)
    append([click("e2", "u1", dt.datetime(2024, 3, 1, 10, tzinfo=UTC))])  # arrives after profiles ran
    identity.run(spark, lake.settings, D1)
    customer = lake.table("gold.identity_map").where("identifier_value = 'u1'").first()["customer_id"]

    assert job.run(spark, lake.settings, D1)["sizes"] == {"big": 0, "clicked": 0}
    assert lake.table("gold.segment_membership").count() == 0
    profiles.run(spark, lake.settings, D1)
    assert job.run(spark, lake.settings, D1)["sizes"] == {"big": 0, "clicked": 1}
    assert lake.membership() == stays(("clicked", customer, T1, None))


def test_union_stays_joins_overlapping_and_touching_stays(spark):
    def stay(start, end):
        return {"start": start, "end": end or job._FOREVER}

    frame = spark.createDataFrame(
        [("a", [stay(T2, T3), stay(T1, T2)]), ("b", [stay(T1, T3), stay(T2, None)]), ("c", [stay(T3, T4), stay(T1, T2)]),
         ("d", [stay(T2, T2)]), ("e", [])],
        job.StructType([job.StructField("customer_id", job._S), job.StructField("stays", job.ArrayType(job.STAY))]))
    merged = frame.select("customer_id", job.union_stays(job.F.col("stays")).alias("stays")).withColumn(
        "segment", job.F.lit("s")).transform(job.stay_rows)
    result = sorted(tuple(r) for r in merged.select(
        "segment", "customer_id", *[job.F.unix_micros(c).alias(c) for c in ("entered_at", "exited_at")]).collect())
    # touching stays of a join, overlapping ones of b join (open-ended), c keeps its gap, d's empty stay vanishes
    assert result == stays(("s", "a", T1, T3), ("s", "b", T1, None), ("s", "c", T1, T2), ("s", "c", T3, T4))
