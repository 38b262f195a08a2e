"""publish: each staged gold table replaces its published table, except a staged copy that no job
committed to (its last commit is still the published one), which is left as it is. On a local lake a
staged table whose log continues the published one is exchanged into place, files and history
included; a published table with a commit of its own since staging is overwritten."""

import datetime as dt
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from touchpoint.core.catalog import TABLES
from touchpoint.core.delta import exchange_folders, gold_write_lock
from touchpoint.jobs.pipeline import prepare_staging, publish, staging_settings

from lock_waiters import run_after_the_lock

D = dt.date(2026, 3, 4)
SCHEMA = "segment string, members long"


def versions(spark, *paths):
    return [DeltaTable.forPath(spark, p).history(1).first()["version"] for p in paths]


def data_files(path) -> dict[str, int]:
    """Parquet files of a table folder: relative name -> inode."""
    return {str(f.relative_to(path)): f.stat().st_ino for f in Path(path).rglob("*.parquet")
            if "_delta_log" not in f.parts}


def rows(spark, path) -> list[tuple]:
    return sorted(map(tuple, spark.read.format("delta").load(path).collect()))


def test_publish_rewrites_changed_tables_and_leaves_untouched_copies_alone(spark, settings):
    sizes, daily = TABLES["gold.segment_sizes"].path(settings), TABLES["gold.attribution_daily"].path(settings)
    spark.createDataFrame([("vip", 3)], SCHEMA).write.format("delta").save(sizes)
    spark.createDataFrame([("any", 1)], SCHEMA).write.format("delta").save(daily)

    assert prepare_staging(spark, settings, D)["cloned"] == ["gold.attribution_daily", "gold.segment_sizes"]
    staged_sizes = TABLES["gold.segment_sizes"].path(staging_settings(settings, D))
    spark.createDataFrame([("vip", 4), ("new", 1)], SCHEMA).write.format("delta").mode("overwrite").save(staged_sizes)

    staged_files = data_files(staged_sizes)
    assert publish(spark, settings, D)["published"] == ["gold.segment_sizes"]
    assert sorted(map(tuple, spark.read.format("delta").load(sizes).collect())) == [("new", 1), ("vip", 4)]
    assert versions(spark, sizes, daily) == [1, 0]  # attribution_daily: no commit, same rows
    # exchanged into place: the staged files themselves (same inodes), no rewrite; staging is gone
    assert data_files(sizes) == staged_files and staged_files
    assert not Path(settings.lake_uri, staging_settings(settings, D).gold_namespace).exists()

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
    staged_files, published_files = data_files(staged_daily), data_files(daily)
    assert publish(spark, settings, D)["published"] == ["gold.attribution_daily"]
    assert [tuple(r) for r in spark.read.format("delta").load(daily).collect()] == [("any", 2)]
    # not exchanged (that would drop the published commit from its history): overwritten by a commit
    # of its own, which wrote one new file
    new_files = set(data_files(daily)) - set(published_files)
    assert versions(spark, daily) == [2] and len(new_files) == 1 and not new_files & set(staged_files)


def test_on_a_lake_reached_through_hadoop_staging_is_copied_published_and_removed(spark, settings, tmp_path):
    """A `file://` lake root takes the object-store path (s3a://): staging copied by Spark, published by
    an overwrite, and the staging namespace removed through Hadoop's file system afterwards (before,
    it was only removed on a local lake, so every date's full copy of gold, raw PII included, stayed)."""
    folder = tmp_path / "lake"
    lake = settings.model_copy(update={"lake_root": f"file://{folder}"})
    sizes = TABLES["gold.segment_sizes"].path(lake)
    assert sizes.startswith("file://")
    spark.createDataFrame([("vip", 3)], SCHEMA).write.format("delta").save(sizes)

    assert prepare_staging(spark, lake, D)["cloned"] == ["gold.segment_sizes"]
    staged = TABLES["gold.segment_sizes"].path(staging_settings(lake, D))
    spark.createDataFrame([("vip", 4)], SCHEMA).write.format("delta").mode("overwrite").save(staged)
    assert (folder / "staging" / f"d{D:%Y%m%d}").is_dir()
    assert publish(spark, lake, D)["published"] == ["gold.segment_sizes"]
    assert rows(spark, sizes) == [("vip", 4)]
    assert not (folder / "staging" / f"d{D:%Y%m%d}").exists()


def test_publish_refuses_a_date_whose_staging_is_gone_unless_it_published_it(spark, settings):
    """Staging removed under a run (clean_staging beside a backfill) must not record H and expire
    speed rows for tables it never published; a retry of a finished publish finds H and stops."""
    staging = Path(settings.lake_uri, staging_settings(settings, D).gold_namespace)
    with pytest.raises(RuntimeError) as error:
        publish(spark, settings, D)
    assert str(error.value) == (f"publish {D}: nothing is staged at {staging}; re-run the date from prepare_staging "
                                "(was it removed while the run went on?)")
    assert prepare_staging(spark, settings, D)["cloned"] == [] and staging.is_dir()  # staged, though empty
    sizes = TABLES["gold.segment_sizes"].path(staging_settings(settings, D))
    spark.createDataFrame([("vip", 3)], SCHEMA).write.format("delta").save(sizes)
    first = publish(spark, settings, D)
    assert (first["published"], "note" in first, staging.exists()) == (["gold.segment_sizes"], False, False)
    again = publish(spark, settings, D)  # the task retried after it finished
    assert (again["published"], again["note"]) == ([], "published before")
    assert rows(spark, TABLES["gold.segment_sizes"].path(settings)) == [("vip", 3)]


def test_a_table_published_for_the_first_time_is_moved_into_place(spark, settings):
    prepare_staging(spark, settings, D)
    staged_sizes = TABLES["gold.segment_sizes"].path(staging_settings(settings, D))
    spark.createDataFrame([("vip", 7)], SCHEMA).write.format("delta").save(staged_sizes)
    staged_files = data_files(staged_sizes)

    assert publish(spark, settings, D)["published"] == ["gold.segment_sizes"]
    published = TABLES["gold.segment_sizes"].path(settings)
    assert rows(spark, published) == [("vip", 7)]
    assert versions(spark, published) == [0] and data_files(published) == staged_files


def staged_change(spark, settings, published_members: int, staged_members: int) -> tuple[str, str]:
    """gold.segment_sizes published with one row, staged, and changed by a commit in staging."""
    sizes = TABLES["gold.segment_sizes"].path(settings)
    spark.createDataFrame([("vip", published_members)], SCHEMA).write.format("delta").save(sizes)
    prepare_staging(spark, settings, D)
    staged_sizes = TABLES["gold.segment_sizes"].path(staging_settings(settings, D))
    spark.createDataFrame([("vip", staged_members)], SCHEMA).write.format("delta").mode("overwrite").save(staged_sizes)
    return sizes, staged_sizes


def test_a_publish_retried_after_an_exchange_publishes_nothing_twice(spark, settings):
    sizes, staged_sizes = staged_change(spark, settings, 3, 5)
    # What a publish that died right after exchanging this table leaves: the old folder in staging.
    assert exchange_folders(staged_sizes, sizes)
    assert versions(spark, sizes) == [1]

    assert publish(spark, settings, D)["published"] == []  # the staged (old) copy is behind: not published
    assert rows(spark, sizes) == [("vip", 5)] and versions(spark, sizes) == [1]


def test_exchange_folders_swaps_two_folders_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("from b")
    assert exchange_folders(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["y"] and [p.name for p in (tmp_path / "b").iterdir()] == ["x"]
    with pytest.raises(FileNotFoundError):
        exchange_folders(tmp_path / "a", tmp_path / "missing")


def test_publish_waits_for_the_gold_write_lock(spark, settings):
    sizes, _ = staged_change(spark, settings, 3, 9)

    with pytest.raises(TimeoutError, match="another gold writer .* still holds .*gold.lock"):
        with gold_write_lock(settings.lake_uri), gold_write_lock(settings.lake_uri, timeout_seconds=0.3):
            pass
    # as an erasure in another process would hold it
    result = run_after_the_lock(settings.lake_uri, lambda: publish(spark, settings, D),
                                unchanged=lambda: rows(spark, sizes) == [("vip", 3)], held_seconds=3)
    assert result["published"] == ["gold.segment_sizes"] and rows(spark, sizes) == [("vip", 9)]


def test_a_commit_that_slips_in_before_the_exchange_is_kept_in_history(spark, settings, monkeypatch):
    from touchpoint.jobs import pipeline

    sizes, _ = staged_change(spark, settings, 3, 5)
    calls = []

    def exchange_after_a_late_commit(first, second):
        if not calls:  # a writer that ignores the lock commits right before the folders are exchanged
            spark.createDataFrame([("late", 1)], SCHEMA).write.format("delta").mode("append").save(sizes)
        calls.append((first, second))
        return exchange_folders(first, second)

    monkeypatch.setattr(pipeline, "exchange_folders", exchange_after_a_late_commit)
    assert publish(spark, settings, D)["published"] == ["gold.segment_sizes"]
    assert len(calls) == 2  # exchanged, found the late commit in the folder that came out, put back
    # then overwritten by the audited staged rows, on top of the late commit (not dropped from history)
    assert rows(spark, sizes) == [("vip", 5)]
    operations = [(r["version"], r["operation"], r["operationParameters"]["mode"])
                  for r in DeltaTable.forPath(spark, sizes).history().orderBy("version").collect()]
    assert operations == [(0, "WRITE", "ErrorIfExists"), (1, "WRITE", "Append"), (2, "WRITE", "Overwrite")]


def test_a_backfill_further_back_than_the_grace_reports_the_serving_gap(spark, settings, caplog):
    """Publishing an older date moves the serving cut back. Within stream.backfill_grace_days (7) of
    the latest date's cut the speed rows are still kept (docs/SERVING.md), so nothing is reported;
    further back the publish names the interval serving may lack, and the fix."""
    latest = dt.date(2026, 3, 20)
    for day in (latest, dt.date(2026, 3, 13), dt.date(2026, 3, 10)):
        prepare_staging(spark, settings, day)
        with caplog.at_level("WARNING", logger="touchpoint.jobs.pipeline"):
            published = publish(spark, settings, day)
        if day != dt.date(2026, 3, 10):
            assert "serving_gap" not in published  # 2026-03-13: its cut 03-14 is exactly 7 days below 03-21
            assert not caplog.records
    assert published["serving_gap"] == {"from": "2026-03-11T00:00:00+00:00", "to": "2026-03-14T00:00:00+00:00",
                                        "latest_date": "2026-03-20"}
    [warning] = caplog.records
    assert "stream.backfill_grace_days" in warning.getMessage() and "until 2026-03-20 runs again" in warning.getMessage()
