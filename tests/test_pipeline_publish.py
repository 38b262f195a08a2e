"""publish: each staged gold table replaces its published table, except a staged copy that no job
committed to (its last commit is still the published one), which is left as it is."""

import datetime as dt

from delta.tables import DeltaTable

from touchpoint.core.catalog import TABLES
from touchpoint.jobs.pipeline import prepare_staging, publish, staging_settings

D = dt.date(2026, 3, 4)
SCHEMA = "segment string, members long"


def versions(spark, *paths):
    return [DeltaTable.forPath(spark, p).history(1).first()["version"] for p in paths]


def test_publish_rewrites_changed_tables_and_leaves_untouched_copies_alone(spark, settings):
    sizes, daily = TABLES["gold.segment_sizes"].path(settings), TABLES["gold.attribution_daily"].path(settings)
    spark.createDataFrame([("vip", 3)], SCHEMA).write.format("delta").save(sizes)
    spark.createDataFrame([("any", 1)], SCHEMA).write.format("delta").save(daily)

    assert prepare_staging(spark, settings, D)["cloned"] == ["gold.attribution_daily", "gold.segment_sizes"]
    staged_sizes = TABLES["gold.segment_sizes"].path(staging_settings(settings, D))
    spark.createDataFrame([("vip", 4), ("new", 1)], SCHEMA).write.format("delta").mode("overwrite").save(staged_sizes)

    assert publish(spark, settings, D)["published"] == ["gold.segment_sizes"]
    assert sorted(map(tuple, spark.read.format("delta").load(sizes).collect())) == [("new", 1), ("vip", 4)]
    assert versions(spark, sizes, daily) == [1, 0]  # attribution_daily: no commit, same rows

    # Re-running the date with nothing changed publishes nothing.
    prepare_staging(spark, settings, D)
    assert publish(spark, settings, D)["published"] == []
    assert versions(spark, sizes, daily) == [1, 0]

    # The staged copy and the published table each got a commit of the same version number: their
    # last commits differ in content, so the audited staged table is what gets published.
    prepare_staging(spark, settings, D)
    staged_daily = TABLES["gold.attribution_daily"].path(staging_settings(settings, D))
    spark.createDataFrame([("any", 2)], SCHEMA).write.format("delta").mode("overwrite").save(staged_daily)
    spark.createDataFrame([("other", 5)], SCHEMA).write.format("delta").mode("overwrite").save(daily)
    assert versions(spark, staged_daily, daily) == [1, 1]
    assert publish(spark, settings, D)["published"] == ["gold.attribution_daily"]
    assert [tuple(r) for r in spark.read.format("delta").load(daily).collect()] == [("any", 2)]
