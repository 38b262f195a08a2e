"""Erasure proof (BRIEF §8) on generated traffic: build everything, export, forget one customer with
several devices and identifiers, then check (a) no table row refers to them, (b) no Parquet file under
the lake root (read with pyarrow, bypassing the Delta log) holds their raw identifiers, (c) no file
under a `_delta_log` holds them, (d) the next export has a `removes` row in each destination they
were in, with no raw PII, (e) their later events are quarantined as `erased_subject`, hashed,
(f) everybody else's results are unchanged. Also: consent opt-out flows to profiles and exports,
forgetting twice and forgetting an unknown person, and the erasure queue."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from touchpoint.core.catalog import TABLES, table_path
from touchpoint.core.config import ExportSettings, load_settings
from touchpoint.generator import GeneratorConfig, generate_jsonl
from touchpoint.jobs.runner import run_job

REPO = Path(__file__).resolve().parents[1]
START = dt.date(2026, 3, 2)
D = START + dt.timedelta(days=2)
NEXT = D + dt.timedelta(days=1)
CONFIG = GeneratorConfig(seed=5, customers=30, days=3, start_date=START, events_per_customer=8,
                         malformed_rate=0.03, duplicate_rate=0.02, late_rate=0.02)
SEGMENT = "known_visitors"
DESTINATIONS = ("jsonl", "google_customer_match", "esp")
# the module builds a lake once; on a machine shared with other test runs that can take a while
pytestmark = [pytest.mark.timeout(3000), pytest.mark.slow]
HEURISTIC = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "shapley")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build(spark, settings, day, jobs=("identity", "profiles", "attribution", "segments")):
    for job in jobs:
        run_job(job, day, settings=settings, spark=spark)


def export_all(spark, settings, day):
    from touchpoint.jobs.exports import export_segment

    return {name: export_segment(spark, settings, SEGMENT, name, day) for name in DESTINATIONS}


def read(spark, settings, name):
    return spark.read.format("delta").load(table_path(name, settings))


def others_results(spark, settings, subject_ids):
    """Everybody else's per-customer results, as sorted tuples of strings (heuristic attribution
    credits: Markov credits depend on everybody's paths by design)."""
    def rows(frame):
        others = F.col("customer_id").isNull() | ~F.col("customer_id").isin(subject_ids)
        return sorted(tuple(str(v) for v in r) for r in frame.where(others).collect())
    return {
        "identity_map": rows(read(spark, settings, "gold.identity_map")),
        "profiles": rows(read(spark, settings, "gold.customer_profiles").drop("as_of")),
        "credits": rows(read(spark, settings, "gold.attribution_credits").where(F.col("model").isin(*HEURISTIC))),
        "membership": rows(read(spark, settings, "gold.segment_membership")),
    }


def export_rows(root: Path, destination: str, run_id: str, kind: str) -> list[dict]:
    folder = root / SEGMENT / destination / run_id
    rows = []
    for path in sorted(folder.glob(f"{kind}-*")):
        if path.suffix == ".csv":
            rows += list(csv.DictReader(path.open(encoding="utf-8")))
        else:
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    from touchpoint.jobs.exports import published_root
    from touchpoint.streaming.ingest import ingest_files

    root = tmp_path_factory.mktemp("privacy")
    segments = root / "segments"
    segments.mkdir()
    (segments / f"{SEGMENT}.yaml").write_text(
        f"name: {SEGMENT}\ndescription: visited the site in the last 30 days\ncondition:\n"
        "  behaviour:\n    event_type: [page_view]\n    at_least: 1\n    within_last_days: 30\n")
    settings = load_settings(lake_root=str(root / "lake"), spark_shuffle_partitions=2,
                             jars_dir=str(REPO / ".state" / "jars"), segments_dir=str(segments),
                             exports=ExportSettings())
    events = root / "events.jsonl"
    generate_jsonl(str(events), CONFIG)
    ingest_files(spark, settings, events)
    build(spark, settings, D)
    export_all(spark, settings, D)

    # the subject: the member with the most identifiers, an email and at least two devices
    identity_map = read(spark, settings, "gold.identity_map")
    members = read(spark, settings, "gold.segment_membership").select("customer_id")
    counts = (identity_map.join(members, "customer_id", "left_semi").groupBy("customer_id")
              .agg(F.count("*").alias("n"), F.count_if(F.col("identifier_type") == "anonymous_id").alias("devices"),
                   F.count_if(F.col("identifier_type") == "email").alias("emails"))
              .where("devices >= 2 AND emails >= 1").orderBy(F.desc("n"), "customer_id").collect())
    assert counts, "the generated data has no member with two devices and an email"
    subject_id = counts[0]["customer_id"]
    identifiers = {(r[0], r[1]) for r in identity_map.where(F.col("customer_id") == subject_id)
                   .select("identifier_type", "identifier_value").collect()}
    email = sorted(v for t, v in identifiers if t == "email")[0]
    exports_root = published_root(settings)
    # the destinations whose export of D holds the subject
    in_destinations = {name for name in DESTINATIONS if any(
        subject_id in row.values() or sha(email) in row.values() or email in row.values()
        for row in export_rows(exports_root, name, D.isoformat(), "full"))}
    before = others_results(spark, settings, [subject_id])
    return {"settings": settings, "root": root, "subject_id": subject_id, "identifiers": identifiers,
            "email": email, "in_destinations": in_destinations, "before": before, "exports_root": exports_root}


@pytest.fixture(scope="module")
def erased(spark, world):
    """Forget the subject by a differently written email, then rebuild D's identity, profiles and
    segments from the erased lake (attribution state is checked as the erasure left it)."""
    from touchpoint.jobs.privacy import forget

    settings = world["settings"]
    result = forget(spark, settings, "email", "  " + world["email"].upper() + " ")
    credits = others_results(spark, settings, [world["subject_id"]])["credits"]
    build(spark, settings, D, ("identity", "profiles", "segments"))
    after = others_results(spark, settings, [world["subject_id"]])
    return {"result": result, "after_rebuild": after, "credits_after_erasure": credits}


def subject_values(world) -> set[str]:
    return {v for _, v in world["identifiers"]} | {world["subject_id"]}


def test_forget_resolves_every_identifier_and_logs_hashes_only(spark, world, erased):
    result = erased["result"]
    assert result["status"] == "erased"
    assert world["subject_id"] in result["customer_ids"]
    assert {(i["identifier_type"], i["identifier_sha256"]) for i in result["identifiers"]} == {
        (t, sha(v)) for t, v in world["identifiers"]}
    assert result["rows_removed"]["silver.events"] > 0 and result["rows_removed"]["gold.identity_map"] == len(
        world["identifiers"])
    log = read(spark, world["settings"], "gold.erasure_log").collect()
    assert [r["request_id"] for r in log] == [result["request_id"]]
    text = json.dumps([r.asDict(recursive=True) for r in log], default=str).lower()
    assert not [v for v in subject_values(world) - {world["subject_id"]} if v.lower() in text]


def test_a_no_table_row_refers_to_them(spark, world, erased):
    for name in TABLES:
        # the erasure log keeps the (pseudonymous) customer id on purpose: exports suppress by it
        values = sorted(subject_values(world) - ({world["subject_id"]} if name == "gold.erasure_log" else set()))
        path = table_path(name, world["settings"])
        if not Path(path).exists():
            continue
        frame = spark.read.format("delta").load(path)
        text_columns = [f.name for f in frame.schema.fields if f.dataType.typeName() in ("string", "binary")]
        hit = F.lit(False)
        for column in text_columns:
            as_text = F.lower(F.col(column).cast("string"))
            for value in values:
                hit = hit | F.coalesce(as_text.contains(value.lower()), F.lit(False))
        assert frame.where(hit).count() == 0, name


def test_b_no_parquet_file_under_the_lake_root_holds_their_identifiers(world, erased):
    values = [v.lower() for v in subject_values(world) - {world["subject_id"]}]
    files = sorted(Path(world["settings"].lake_uri).rglob("*.parquet"))
    assert len(files) > 20
    for path in files:
        text = str(pq.read_table(path).to_pylist()).lower()
        assert not [v for v in values if v in text], path


def test_c_no_delta_log_file_holds_their_identifiers(world, erased):
    values = [v.lower().encode() for v in subject_values(world) - {world["subject_id"]}]
    logs = [p for p in Path(world["settings"].lake_uri).rglob("*") if p.is_file() and "_delta_log" in p.parts]
    assert logs
    for path in logs:
        content = path.read_bytes().lower()
        assert not [v for v in values if v in content], path


def test_f_everybody_else_is_unchanged(world, erased):
    before, after = world["before"], erased["after_rebuild"]
    assert erased["credits_after_erasure"] == before["credits"]  # conversions of others, with null customers
    for name in ("identity_map", "profiles", "membership"):
        assert before[name] and after[name] == before[name], name


def test_c2_each_rewritten_run_still_verifies_against_its_export_log_row(spark, world, erased):
    """The erasure rewrote the files and manifests of the runs that held the person; each log row's
    manifest_sha256 follows (before, it kept the original's and the run no longer verified)."""
    logged = read(spark, world["settings"], "gold.export_log").collect()
    rewritten = [r for r in logged if "erasures" in json.loads((Path(r["path"]) / "manifest.json").read_text())]
    assert {r["destination"] for r in rewritten} == world["in_destinations"]
    for row in logged:
        manifest = (Path(row["path"]) / "manifest.json").read_bytes()
        assert hashlib.sha256(manifest).hexdigest() == row["manifest_sha256"], row["path"]


def test_d_next_export_removes_them_everywhere_they_were_without_raw_pii(spark, world, erased):
    settings, root = world["settings"], world["exports_root"]
    build(spark, settings, NEXT, ("identity", "profiles", "segments"))
    export_all(spark, settings, NEXT)
    assert world["in_destinations"] >= {"jsonl"}
    email, subject_id = world["email"], world["subject_id"]
    expected = {"jsonl": lambda r: r["customer_id"] == subject_id,
                "google_customer_match": lambda r: r["Email"] == sha(email),
                "esp": lambda r: r["customer_id"] == subject_id and r["email"] == ""}
    for name in world["in_destinations"]:
        removes = export_rows(root, name, NEXT.isoformat(), "removes")
        assert any(expected[name](r) for r in removes), name
    raw = [v.lower() for t, v in world["identifiers"] if t in ("email", "phone")]
    for path in root.rglob("*"):
        if path.is_file():
            content = (str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet" else
                       path.read_text(encoding="utf-8", errors="replace")).lower()
            assert not [v for v in raw if v in content], path


def test_e_their_later_events_are_quarantined_hashed(spark, world, erased):
    from touchpoint.streaming.ingest import ingest_files

    settings = world["settings"]
    device = sorted(v for t, v in world["identifiers"] if t == "anonymous_id")[0]
    later = [
        {"event_id": "late-erased-1", "event_type": "page_view", "event_ts": "2026-03-05T10:00:00Z",
         "email": world["email"].upper()},
        {"event_id": "late-erased-2", "event_type": "page_view", "event_ts": "2026-03-05T10:01:00Z",
         "anonymous_id": device},
        {"event_id": "late-stranger", "event_type": "page_view", "event_ts": "2026-03-05T10:02:00Z",
         "anonymous_id": "a-complete-stranger"},
    ]
    file = world["root"] / "later.jsonl"
    file.write_text("".join(json.dumps(e) + "\n" for e in later))
    ingest_files(spark, settings, file)
    quarantined = read(spark, settings, "silver.quarantine").where(F.col("error_code") == "erased_subject").collect()
    assert len(quarantined) == 2
    payloads = sorted(bytes(r["payload"]) for r in quarantined)
    assert payloads == sorted(b"erased-subject-payload-sha256:" + hashlib.sha256(
        (json.dumps(e)).encode()).hexdigest().encode() for e in later[:2])
    silver_ids = {r[0] for r in read(spark, settings, "silver.events").where(
        F.col("event_id").startswith("late-")).select("event_id").collect()}
    assert silver_ids == {"late-stranger"}
    bronze = read(spark, settings, "bronze.events").where(F.col("source_topic") == "file:later.jsonl")
    assert not [r for r in bronze.collect() if world["email"].encode() in bytes(r["payload"]).lower()
                or device.encode() in bytes(r["payload"])]


def test_forgetting_twice_and_forgetting_an_unknown_person(spark, world, erased, reported_progress):
    from touchpoint.core.catalog import TABLES
    from touchpoint.jobs.privacy import PRIVACY_TABLES, STREAM_WRITTEN, forget

    from lock_waiters import run_after_the_lock

    def erasures() -> int:
        return read(spark, world["settings"], "gold.erasure_log").count()

    logged = erasures()
    # a publish holds the lock: the erasure waits, and logs nothing meanwhile
    again = run_after_the_lock(world["settings"].lake_uri,
                               lambda: forget(spark, world["settings"], "email", world["email"]),
                               unchanged=lambda: erasures() == logged)
    assert (again["status"], again["rows_removed"]) == ("already_erased", {})
    reported_progress.clear()
    unknown = forget(spark, world["settings"], "user_id", "nobody-we-ever-saw")
    assert (unknown["status"], unknown["rows_removed"], unknown["customer_ids"]) == ("not_found", {}, [])
    # three tasks, each gone through to its end: the subject tables, the stream's tables again, and
    # (nothing removed from a person nobody knows) only the privacy bookkeeping to purge
    subject_tables = [name for name, table in TABLES.items() if table.subject_columns]
    bookkeeping = [name for name in PRIVACY_TABLES if name != "gold.erasure_log"]
    began = [event[2:] for event in reported_progress if event[0] == "begin"]
    assert began == [("erasure: deleting rows", len(subject_tables), "steps", 0),
                     ("erasure: deleting rows the stream committed meanwhile", len(STREAM_WRITTEN), "steps", 0),
                     ("erasure: purging files", len(bookkeeping), "steps", 0)]
    last = {event[1]: event[2] for event in reported_progress if event[0] == "update"}
    assert [last[task] for task in range(3)] == [len(subject_tables), len(STREAM_WRITTEN), len(bookkeeping)]
    assert [event for event in reported_progress if event[0] in ("end", "failed")] == [
        ("end", 0), ("end", 1), ("end", 2)]
