"""Activation exports: per-destination normalisation and hashing, consent, erasure, diffs that
rebuild the full export, atomic runs and reruns (BRIEF §6)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable

from touchpoint.core.catalog import table_path
from touchpoint.core.config import ExportTarget
from touchpoint.jobs import export_files, exports
from touchpoint.jobs.export_destinations import DESTINATIONS, destination_rows, eligible

UTC = dt.timezone.utc
D1, D2, D3 = dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 3)
T1, T2, T3 = (dt.datetime(2024, 5, d, tzinfo=UTC) for d in (2, 3, 4))
PROFILE_COLUMNS = ("customer_id string, country string, email_sha256 string, phone_sha256 string, "
                   "consent_email_marketing boolean, consent_ads_personalization boolean")
MAP_COLUMNS = "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, last_seen timestamp"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rows_of(frame) -> set[tuple]:
    return {tuple(r) for r in frame.collect()}


# ---------------------------------------------------------------- normalisation and hashing


def test_each_destination_normalises_and_hashes_by_its_own_rules(spark):
    day = dt.datetime(2024, 4, 1, tzinfo=UTC)
    identifiers = spark.createDataFrame([
        ("email", " Ann.Lee@Example.COM ", "c1", day, day),
        ("email", "ann@work.example", "c1", day, day + dt.timedelta(days=3)),  # c1's most recent email
        ("phone", "+447700900123", "c1", day, day),  # GB
        ("phone", "+14155550123", "c2", day, day),  # US
        ("phone", "33612345678", "c2", day, day),  # FR, stored without its +
        ("email", "bob@example.fr", "c2", day, day),
        ("email", "zed@example.jp", "c3", day, day),
        ("email", "amy@example.jp", "c3", day, day),  # same last_seen: the smaller address wins for the ESP
        ("phone", "+81312345678", "c3", day, day),  # JP
        ("email", "outsider@example.com", "c9", day, day),  # not in the audience
    ], MAP_COLUMNS)
    audience = spark.createDataFrame([
        ("c1", "GB", "e1", "p1", True, True), ("c2", " us ", "e2", None, True, True), ("c3", None, None, None, True, True),
    ], PROFILE_COLUMNS)

    def build(name):
        return rows_of(audience.transform(destination_rows(DESTINATIONS[name], identifiers)))

    assert build("google_customer_match") == {
        (sha("ann.lee@example.com"), None), (sha("ann@work.example"), None), (None, sha("+447700900123")),
        (None, sha("+14155550123")), (None, sha("+33612345678")), (sha("bob@example.fr"), None),
        (sha("zed@example.jp"), None), (sha("amy@example.jp"), None), (None, sha("+81312345678")),
    }
    gb, us = sha("gb"), sha("us")
    assert build("meta_custom_audience") == {
        (sha("ann.lee@example.com"), None, gb), (sha("ann@work.example"), None, gb), (None, sha("447700900123"), gb),
        (None, sha("14155550123"), us), (None, sha("33612345678"), us), (sha("bob@example.fr"), None, us),
        (sha("zed@example.jp"), None, None), (sha("amy@example.jp"), None, None), (None, sha("81312345678"), None),
    }
    assert build("esp") == {("ann@work.example", "c1"), ("bob@example.fr", "c2"), ("amy@example.jp", "c3")}
    assert build("jsonl") == {("c1", "e1", "p1", "GB"), ("c2", "e2", None, " us "), ("c3", None, None, None)}
    assert [DESTINATIONS[n].columns for n in DESTINATIONS] == [
        ("Email", "Phone"), ("email", "phone", "country"), ("email", "customer_id"),
        ("customer_id", "email_sha256", "phone_sha256", "country")]


def test_consent_and_erasure_decide_the_audience(spark):
    profiles = spark.createDataFrame([
        ("c1", "GB", None, None, True, True), ("c2", "GB", None, None, True, False),
        ("c3", "GB", None, None, False, True), ("c4", "GB", None, None, None, None),
        ("c5", "GB", None, None, True, True), ("c6", "GB", None, None, True, True),
    ], PROFILE_COLUMNS)
    members = spark.createDataFrame([(c,) for c in ("c1", "c2", "c3", "c4", "c5")], "customer_id string")
    erased = spark.createDataFrame([("c5",)], "customer_id string")

    def audience(name):
        return {r["customer_id"] for r in profiles.transform(eligible(DESTINATIONS[name], members, erased)).collect()}

    assert audience("google_customer_match") == audience("meta_custom_audience") == {"c1", "c3"}
    assert audience("esp") == {"c1", "c2"}  # a never-stated consent (c4) is no consent
    assert audience("jsonl") == {"c1", "c2", "c3", "c4"}  # no consent flag, but never the erased c5


# ---------------------------------------------------------------- runs over a lake


class Lake:
    """Hand-built gold tables: profiles, identity map, segment membership and sizes."""

    def __init__(self, spark, settings):
        self.spark, self.settings = spark, settings

    def write(self, name, rows, schema):
        self.spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(
            table_path(name, self.settings))

    def profiles(self, consents: dict[str, tuple[bool | None, bool | None]]):
        self.write("gold.customer_profiles", [(c, "GB", f"e-{c}", None, email, ads) for c, (email, ads) in
                                              sorted(consents.items())], PROFILE_COLUMNS)

    def segment(self, stays, dates):
        self.write("gold.segment_membership", [("vip", c, e, x) for c, e, x in stays],
                   "segment string, customer_id string, entered_at timestamp, exited_at timestamp")
        self.write("gold.segment_sizes", [(d, "vip", None, 0, 0, 0, "fingerprint") for d in dates],
                   "date date, segment string, as_of timestamp, members long, entered long, exited long, "
                   "definition_sha256 string")

    def log(self):
        """gold.export_log's rows, read with delta-rs (no Spark job)."""
        return sorted((r["destination"], r["run_id"], r["seq"], r["mode"], r["base_run_id"], r["audience_rows"],
                       r["adds"], r["removes"], r["full_rows"])
                      for r in DeltaTable(table_path("gold.export_log", self.settings)).to_pyarrow_table().to_pylist())

    def copy_identity_map(self, written):
        """gold.identity_map: a copy of `written` (the module's IDENTITY_MAP table)."""
        shutil.copytree(written, table_path("gold.identity_map", self.settings))


DAY = dt.datetime(2024, 4, 1, tzinfo=UTC)
IDENTITY_MAP = [
    ("email", "ann@example.com", "c1", DAY, DAY), ("phone", "+447700900123", "c1", DAY, DAY),
    ("email", "bob@example.com", "c2", DAY, DAY), ("phone", "+14155550123", "c2", DAY, DAY),
    ("email", "cy@example.fr", "c3", DAY, DAY), ("email", "dee@example.de", "c4", DAY, DAY),
]


@pytest.fixture(scope="module")
def identity_map_table(spark, tmp_path_factory):
    """IDENTITY_MAP written once as a Delta table; each lake gets a copy (shutil.copytree). Read-only."""
    path = tmp_path_factory.mktemp("identity_map") / "identity_map"
    spark.createDataFrame(IDENTITY_MAP, MAP_COLUMNS).write.format("delta").mode("overwrite").save(str(path))
    return path


@pytest.fixture
def lake(spark, settings, tmp_path, identity_map_table):
    lake = Lake(spark, settings.model_copy(update={"exports_dir": tmp_path / "exports"}))
    lake.copy_identity_map(identity_map_table)
    return lake


def read_rows(path: Path) -> tuple[list[str], list[tuple]]:
    with path.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, [tuple(v or None for v in row) for row in rows]


def run_files(folder: Path, kind: str) -> set[tuple]:
    rows = set()
    for path in sorted(folder.glob(f"{kind}-*.csv")):
        rows |= set(read_rows(path)[1])
    return rows


def test_diffs_rebuild_the_full_export_and_follow_consent_and_erasure(spark, lake):
    lake.segment([("c1", T1, None), ("c2", T1, None), ("c3", T1, T3), ("c4", T3, None)], (D1, D2, D3))
    google = lake.settings.exports_dir / "vip" / "google_customer_match"
    esp = lake.settings.exports_dir / "vip" / "esp"

    lake.profiles({"c1": (True, True), "c2": (True, True), "c3": (True, True), "c4": (True, True)})
    for name in ("google_customer_match", "esp", "jsonl"):
        assert exports.export_segment(spark, lake.settings, "vip", name, D1)["mode"] == "full"
    sent = {"google": run_files(google / "2024-05-01", "full"), "esp": run_files(esp / "2024-05-01", "full")}
    assert sent["google"] == {(sha("ann@example.com"), None), (None, sha("+447700900123")), (sha("bob@example.com"), None),
                              (None, sha("+14155550123")), (sha("cy@example.fr"), None)}
    assert sent["esp"] == {("ann@example.com", "c1"), ("bob@example.com", "c2"), ("cy@example.fr", "c3")}
    jsonl = [json.loads(line) for line in (lake.settings.exports_dir / "vip" / "jsonl" / "2024-05-01" /
                                           "full-00001.jsonl").read_text().splitlines()]
    assert jsonl == [{"customer_id": c, "email_sha256": f"e-{c}", "phone_sha256": None, "country": "GB"}
                     for c in ("c1", "c2", "c3")]

    # D2: c1 withdraws ads consent (gone from Google, still emailed); c2 withdraws email consent (the reverse).
    lake.profiles({"c1": (True, False), "c2": (False, True), "c3": (True, True), "c4": (True, True)})
    exports.export_segment(spark, lake.settings, "vip", "google_customer_match", D2)
    exports.export_segment(spark, lake.settings, "vip", "esp", D2)
    assert run_files(google / "2024-05-02", "adds") == set()
    assert run_files(google / "2024-05-02", "removes") == {(sha("ann@example.com"), None), (None, sha("+447700900123"))}
    assert run_files(esp / "2024-05-02", "adds") == set()
    assert run_files(esp / "2024-05-02", "removes") == {("bob@example.com", "c2")}

    # D3: c3 leaves the segment, c4 joins, c2 is erased.
    erased = spark.createDataFrame([("c2",)], "customer_id string")
    for name in ("google_customer_match", "esp"):
        exports.export_segment(spark, lake.settings, "vip", name, D3, erased=erased)
    assert run_files(google / "2024-05-03", "adds") == {(sha("dee@example.de"), None)}
    assert run_files(google / "2024-05-03", "removes") == {(sha("bob@example.com"), None), (None, sha("+14155550123")),
                                                           (sha("cy@example.fr"), None)}
    assert run_files(esp / "2024-05-03", "removes") == {("cy@example.fr", "c3")}
    # removes are listed first: the order to apply them in
    manifest = json.loads((google / "2024-05-03" / "manifest.json").read_text())
    assert [(f["name"], f["rows"]) for f in manifest["files"]] == [("removes-00001.csv", 3), ("adds-00001.csv", 1)]

    # Applying the diffs to the first full export gives exactly what a full export sends now.
    for key, folder in (("google", google), ("esp", esp)):
        for day in ("2024-05-02", "2024-05-03"):
            sent[key] = (sent[key] - run_files(folder / day, "removes")) | run_files(folder / day, "adds")
    full = exports.export_segment(spark, lake.settings, "vip", "google_customer_match", D3, full=True, erased=erased)
    assert full["run_id"] == "2024-05-03-full"
    assert sent["google"] == run_files(google / "2024-05-03-full", "full") == {(sha("dee@example.de"), None)}
    assert sent["esp"] == {("ann@example.com", "c1"), ("dee@example.de", "c4")}

    # Re-running a run id changes nothing: same answer, same files, no new log row.
    before = {p: p.read_bytes() for p in google.rglob("*") if p.is_file()}
    again = exports.export_segment(spark, lake.settings, "vip", "google_customer_match", D2)
    assert again["status"] == "already exported" and again["run_id"] == "2024-05-02"
    assert {p: p.read_bytes() for p in google.rglob("*") if p.is_file()} == before
    assert lake.log() == sorted([
        ("esp", "2024-05-01", 1, "full", None, 3, None, None, 3), ("esp", "2024-05-02", 2, "diff", "2024-05-01", 2, 0, 1, None),
        ("esp", "2024-05-03", 3, "diff", "2024-05-02", 2, 1, 1, None),
        ("google_customer_match", "2024-05-01", 1, "full", None, 5, None, None, 5),
        ("google_customer_match", "2024-05-02", 2, "diff", "2024-05-01", 3, 0, 2, None),
        ("google_customer_match", "2024-05-03", 3, "diff", "2024-05-02", 1, 1, 3, None),
        ("google_customer_match", "2024-05-03-full", 4, "full", None, 1, None, None, 1),
        ("jsonl", "2024-05-01", 1, "full", None, 3, None, None, 3),
    ])


def test_crashed_runs_leave_nothing_visible_and_are_redone(spark, lake, monkeypatch):
    settings = lake.settings.model_copy(update={"exports": lake.settings.exports.model_copy(
        update={"max_rows_per_file": 2})})
    lake.segment([("c1", T1, None), ("c2", T1, None), ("c3", T1, T2)], (D1, D2, D3))
    lake.profiles({"c1": (True, True), "c2": (True, True), "c3": (True, True)})
    folder = settings.exports_dir / "vip" / "google_customer_match"

    # The writer dies after its first file: nothing becomes visible, nothing is logged.
    placed = []

    def dying_place(source, target):
        if placed:
            raise OSError("disk gone")
        placed.append(target)
        source.rename(target)

    monkeypatch.setattr(export_files, "place_file", dying_place)
    with pytest.raises(OSError, match="disk gone"):
        exports.export_segment(spark, settings, "vip", "google_customer_match", D1)
    assert sorted(p.name for p in folder.iterdir()) == ["_tmp-2024-05-01"]
    assert not list(folder.rglob(export_files.MANIFEST))
    assert lake.log() == []
    monkeypatch.undo()
    stale = folder / "_tmp-2024-04-30"  # left by an older crash
    stale.mkdir()
    (stale / "full-00001.csv").write_text("Email,Phone\nhalf")

    result = exports.export_segment(spark, settings, "vip", "google_customer_match", D1)
    assert result["cleared_leftovers"] == ["_tmp-2024-04-30", "_tmp-2024-05-01"]
    assert sorted(p.name for p in folder.iterdir()) == ["2024-05-01"]
    run = folder / "2024-05-01"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [(f["name"], f["kind"], f["rows"]) for f in manifest["files"]] == [
        ("full-00001.csv", "full", 2), ("full-00002.csv", "full", 2), ("full-00003.csv", "full", 1)]
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((run / entry["name"]).read_bytes()).hexdigest()
        assert entry["bytes"] == (run / entry["name"]).stat().st_size
    headers_and_rows = [read_rows(run / f["name"]) for f in manifest["files"]]
    assert {tuple(header) for header, _ in headers_and_rows} == {("Email", "Phone")}
    all_rows = [row for _, rows in headers_and_rows for row in rows]
    assert all_rows == sorted(all_rows, key=lambda r: tuple(v or "" for v in r))  # files are sorted
    assert set(all_rows) == {(sha("ann@example.com"), None), (None, sha("+447700900123")),
                             (sha("bob@example.com"), None), (None, sha("+14155550123")), (sha("cy@example.fr"), None)}
    assert (manifest["segment"], manifest["destination"], manifest["run_id"], manifest["logical_date"],
            manifest["mode"], manifest["schema_version"], manifest["counts"]) == (
        "vip", "google_customer_match", "2024-05-01", "2024-05-01", "full", "1", {"full": 5})

    # A crash after the rename but before the log: the run is visible and complete; the next run
    # logs it and diffs against it (c3 left at T2, so D2 removes c3 and D3 sends nothing).
    def dying_log(*_):
        raise OSError("driver killed")

    monkeypatch.setattr(exports, "_append_log", dying_log)
    with pytest.raises(OSError, match="driver killed"):
        exports.export_segment(spark, settings, "vip", "google_customer_match", D2)
    monkeypatch.undo()
    assert (folder / "2024-05-02" / "manifest.json").is_file()
    assert run_files(folder / "2024-05-02", "removes") == {(sha("cy@example.fr"), None)}
    third = exports.export_segment(spark, settings, "vip", "google_customer_match", D3)
    assert (third["base_run_id"], third["adds"], third["removes"], third["files"]) == ("2024-05-02", 0, 0, 0)
    assert [r[:5] for r in lake.log()] == [("google_customer_match", "2024-05-01", 1, "full", None),
                                           ("google_customer_match", "2024-05-02", 2, "diff", "2024-05-01"),
                                           ("google_customer_match", "2024-05-03", 3, "diff", "2024-05-02")]


def test_exports_refuse_what_they_cannot_send_safely(spark, lake):
    lake.segment([("c1", T1, None)], (D1,))
    lake.profiles({"c1": (True, True)})
    with pytest.raises(ValueError, match="unknown destination 'tiktok'; use one of: google_customer_match"):
        exports.export_segment(spark, lake.settings, "vip", "tiktok", D1)
    with pytest.raises(ValueError, match="segment 'vips' was not evaluated for 2024-05-01; known: vip"):
        exports.export_segment(spark, lake.settings, "vips", "esp", D1)
    with pytest.raises(RuntimeError, match="no segments run for 2024-05-02"):
        exports.export_segment(spark, lake.settings, "vip", "esp", D2)
    with pytest.raises(ValueError, match="invalid run id"):
        exports.export_segment(spark, lake.settings, "vip", "esp", D1, run_id="../../etc")
    with pytest.raises(ValueError, match="invalid segment name"):
        exports.export_segment(spark, lake.settings, "../vip", "esp", D1)
    assert exports.latest_segments_date(spark, lake.settings) == D1


def test_daily_job_sends_the_configured_pairs(spark, lake):
    lake.segment([("c1", T1, None), ("c4", T1, None)], (D1,))
    lake.profiles({"c1": (True, True), "c4": (True, False)})
    daily = (ExportTarget(segment="vip", destination="esp"),)
    settings = lake.settings.model_copy(update={"exports": lake.settings.exports.model_copy(update={"daily": daily})})
    summary = exports.run(spark, settings, D1)
    assert [(r["destination"], r["run_id"], r["mode"], r["full_rows"], r["status"]) for r in summary["exports"]] == [
        ("esp", "2024-05-01", "full", 2, "exported")]
    assert run_files(settings.exports_dir / "vip" / "esp" / "2024-05-01", "full") == {
        ("ann@example.com", "c1"), ("dee@example.de", "c4")}


def test_staged_exports_stay_hidden_until_published(spark, lake, identity_map_table):
    """Under write-audit-publish the exports job runs in a staging namespace: its runs are committed
    to a hidden folder and released into the published tree by publish_staged_exports."""
    staged = Lake(spark, lake.settings.model_copy(update={"gold_namespace": "staging/d20240501"}))
    staged.copy_identity_map(identity_map_table)
    staged.segment([("c1", T1, None)], (D1,))
    staged.profiles({"c1": (True, True)})
    published = lake.settings.exports_dir / "vip" / "esp"

    result = exports.export_segment(spark, staged.settings, "vip", "esp", D1)
    assert result["path"] == str(published / "2024-05-01")  # where it will be once published
    assert not published.exists()
    hidden = lake.settings.exports_dir / "_staged" / "staging-d20240501"
    assert (hidden / "vip" / "esp" / "2024-05-01" / "manifest.json").is_file()

    assert exports.publish_staged_exports(lake.settings, staged.settings) == ["vip/esp/2024-05-01"]
    assert run_files(published / "2024-05-01", "full") == {("ann@example.com", "c1")}
    assert not hidden.exists()


@pytest.mark.parametrize("crash", ["after the exports", "after gold.export_log"])
def test_a_date_rerun_after_a_crashed_publish_releases_each_export_run_once(spark, lake, monkeypatch, crash):
    """publish dies after releasing the staged export runs (before any table), or after publishing
    gold.export_log; the date is then re-run from scratch (prepare_staging drops the staged runs).
    Either way run D1 is in the published tree and the published log exactly once, and D2 diffs against it."""
    from touchpoint.jobs import pipeline

    lake.segment([("c1", T1, None), ("c2", T1, T2)], (D1, D2))
    lake.profiles({"c1": (True, True), "c2": (True, True)})
    settings = lake.settings.model_copy(update={"exports": lake.settings.exports.model_copy(
        update={"daily": (ExportTarget(segment="vip", destination="esp"),)})})
    published = settings.exports_dir / "vip" / "esp"

    def stage_and_export(day):
        pipeline.prepare_staging(spark, settings, day)
        return exports.run(spark, pipeline.staging_settings(settings, day), day)["exports"]

    assert [(r["run_id"], r["mode"], r["full_rows"]) for r in stage_and_export(D1)] == [("2024-05-01", "full", 2)]
    if crash == "after the exports":
        def dying_lock(*_):
            raise OSError("driver killed")

        monkeypatch.setattr(pipeline, "gold_write_lock", dying_lock)
    else:  # the published log is new here, so it is moved into place (an exchange otherwise)
        def dying_after(publish_folder):
            def publish_then_die(staged, target):
                published_folder = publish_folder(staged, target)
                if target.name == "export_log":
                    raise OSError("driver killed")
                return published_folder
            return publish_then_die

        for name in ("_exchange_into_place", "_move_into_place"):
            monkeypatch.setattr(pipeline, name, dying_after(getattr(pipeline, name)))
    with pytest.raises(OSError, match="driver killed"):
        pipeline.publish(spark, settings, D1)
    monkeypatch.undo()
    assert export_files.committed_runs(published) == [published / "2024-05-01"]

    rerun = stage_and_export(D1)
    assert [(r["run_id"], r["status"]) for r in rerun] == [("2024-05-01", "already exported")]
    pipeline.publish(spark, settings, D1)
    assert lake.log() == [("esp", "2024-05-01", 1, "full", None, 2, None, None, 2)]
    assert run_files(published / "2024-05-01", "full") == {("ann@example.com", "c1"), ("bob@example.com", "c2")}

    # D2: c2 left the segment at T2; the diff's base is the released D1 run.
    assert [(r["run_id"], r["mode"], r["base_run_id"], r["adds"], r["removes"]) for r in stage_and_export(D2)] == [
        ("2024-05-02", "diff", "2024-05-01", 0, 1)]
    pipeline.publish(spark, settings, D2)
    assert run_files(published / "2024-05-02", "removes") == {("bob@example.com", "c2")}
    assert [run.name for run in export_files.committed_runs(published)] == ["2024-05-01", "2024-05-02"]
    assert lake.log() == [("esp", "2024-05-01", 1, "full", None, 2, None, None, 2),
                          ("esp", "2024-05-02", 2, "diff", "2024-05-01", 1, 0, 1, None)]


def test_the_suppression_list_holds_every_customer_id_of_an_erasure(spark, lake):
    """gold.erasure_log keeps the first id of a request in customer_id and all of them in customer_ids."""
    from touchpoint.jobs import pipeline
    from touchpoint.jobs.privacy import ERASURE_LOG_SCHEMA

    row = {field.name: None for field in ERASURE_LOG_SCHEMA.fields}
    rows = [{**row, "request_id": "r1", "customer_id": "c1", "customer_ids": ["c1", "c2"]},
            {**row, "request_id": "r2", "customer_id": None, "customer_ids": []},  # not found
            {**row, "request_id": "r3", "customer_id": "c4", "customer_ids": None}]
    spark.createDataFrame(rows, ERASURE_LOG_SCHEMA).write.format("delta").save(
        table_path(exports.ERASURE_TABLE, lake.settings))
    assert rows_of(exports.erased_customers(spark, lake.settings)) == {("c1",), ("c2",), ("c4",)}
    # a pipeline run exports from its staging namespace, where forget never writes: before, it found
    # no log there and suppressed nobody
    staged = pipeline.staging_settings(lake.settings, D1)
    assert not Path(table_path(exports.ERASURE_TABLE, staged)).exists()
    assert rows_of(exports.erased_customers(spark, staged)) == {("c1",), ("c2",), ("c4",)}

    lake.segment([("c1", T1, None), ("c2", T1, None), ("c3", T1, None)], (D1,))
    lake.profiles({"c1": (True, True), "c2": (True, True), "c3": (True, True)})
    exports.export_segment(spark, lake.settings, "vip", "esp", D1)
    assert run_files(lake.settings.exports_dir / "vip" / "esp" / "2024-05-01", "full") == {("cy@example.fr", "c3")}


def test_a_full_export_starts_again_when_the_last_run_folder_is_gone(spark, lake):
    """The last run's folder deleted (EXPORTS.md: keep folders only as long as needed): a diff cannot
    be made and says so, naming --full; a full export then needs no base. Before, it failed too."""
    import shutil

    lake.segment([("c1", T1, None), ("c3", T1, None)], (D1, D2, D3))
    lake.profiles({"c1": (True, True), "c3": (True, True)})
    exports.export_segment(spark, lake.settings, "vip", "esp", D1)
    esp = lake.settings.exports_dir / "vip" / "esp"
    shutil.rmtree(esp / "2024-05-01")
    with pytest.raises(RuntimeError, match=r"the state of the last export 2024-05-01 is missing under .*; export "
                                           r"with full=True \(--full\) to start again from a full export"):
        exports.export_segment(spark, lake.settings, "vip", "esp", D2)
    full = exports.export_segment(spark, lake.settings, "vip", "esp", D2, full=True)
    assert (full["run_id"], full["mode"]) == ("2024-05-02-full", "full")
    assert run_files(esp / "2024-05-02-full", "full") == {("ann@example.com", "c1"), ("cy@example.fr", "c3")}
    assert exports.export_segment(spark, lake.settings, "vip", "esp", D3)["base_run_id"] == \
        "2024-05-02-full"


def test_default_exports_folder_sits_next_to_the_lake(settings):
    assert exports.exports_root(settings) == Path(settings.lake_uri).parent / "exports"
    s3 = settings.model_copy(update={"lake_root": "s3a://bucket/lake"})
    with pytest.raises(exports.ConfigError, match="key 'exports_dir'"):
        exports.exports_root(s3)
