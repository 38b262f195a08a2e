"""On a local standalone cluster (master + 2 workers): the CLI's ingest in client mode lands what a
local ingest lands, and a batch job spark-submitted with the packaged project writes exactly the gold
tables that a local-mode run writes. `make test` submits the identity job; `make drills` submits the
whole daily pipeline (about 4 minutes more on 2 cores: five JVMs share them)."""

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deltalake import DeltaTable

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.infra import cluster, submit
from touchpoint.jobs import identity

from shared_history import FIRST_DAY

REPO = Path(__file__).resolve().parents[1]
DAY = dt.date.fromisoformat(FIRST_DAY)
# Every gold table the submitted job writes is compared; these must exist and hold rows on this data.
REQUIRED = {
    "identity": ("gold.identity_map", "gold.identity_edges", "gold.identity_runs"),
    "pipeline": ("gold.identity_map", "gold.customer_profiles", "gold.attribution_credits", "gold.attribution_daily",
                 "gold.markov_removal_effects", "gold.attribution_paths", "gold.segment_membership",
                 "gold.segment_sizes", "gold.high_water_mark"),
}
# Run-log columns naming Delta versions, which differ when the identity job alone is compared: the
# local pipeline compacted silver first and wrote through its staging clones.
VERSION_COLUMNS = {"silver_version", "identity_map_version", "identity_edges_version", "identity_guardrails_version"}
# Run-log columns digesting a snapshot's data file names (core.delta.snapshot_fingerprint): random
# per write, so they differ between any two lakes however equal their rows.
FILE_FINGERPRINT_COLUMNS = {"identity_map_fingerprint"}
# A port of its own, away from a cluster `touchpoint up --cluster` may have started on 7077.
MASTER_PORT = int(os.environ.get("TOUCHPOINT_TEST_SUBMIT_MASTER_PORT", "7277"))


def _settings(root: Path, **overrides):
    return load_settings(lake_root=str(root / "lake"), state_dir=str(root / "state"),
                         jars_dir=str(REPO / ".state" / "jars"), spark_shuffle_partitions=2,
                         cluster_master_port=MASTER_PORT, **overrides)


def _env(settings) -> dict[str, str]:
    return {**os.environ, "TOUCHPOINT_LAKE_ROOT": settings.lake_uri, "TOUCHPOINT_STATE_DIR": str(settings.state_path),
            "TOUCHPOINT_JARS_DIR": str(settings.jars_dir), "TOUCHPOINT_SPARK_SHUFFLE_PARTITIONS": "2",
            "TOUCHPOINT_SPARK_MASTER": settings.spark_master}


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _normal(value):
    if isinstance(value, float):
        return round(value, 9) if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return tuple(_normal(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _normal(v)) for k, v in value.items()))
    return value


def _rows(settings, name, skipped=frozenset()):
    rows = DeltaTable(table_path(name, settings)).to_pyarrow_table().to_pylist()
    return sorted((tuple((k, _normal(v)) for k, v in sorted(r.items()) if k not in skipped) for r in rows), key=repr)


def _gold_tables(settings) -> set[str]:
    gold = Path(settings.lake_uri) / "gold"
    return {f"gold.{p.name}" for p in gold.iterdir() if (p / "_delta_log").is_dir()}


def _silver(settings) -> list[tuple]:
    """Silver's content without what differs between two ingests of the same file (ingest times)."""
    rows = DeltaTable(table_path("silver.events", settings)).to_pyarrow_table(
        columns=["event_id", "event_type", "event_ts", "channel", "event_date", "anonymous_id"]).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(5400)  # a few minutes alone; far longer on a machine shared with other Spark apps
@pytest.mark.parametrize("job", ["identity", pytest.param("pipeline", marks=[pytest.mark.drill, pytest.mark.long_drill])])
def test_ingest_and_a_job_on_a_standalone_cluster_equal_local_mode(tmp_path, ingested_history, published_first_day,
                                                                   job):
    """On a master with 2 workers: `touchpoint ingest` in client mode lands the same silver as a local
    ingest, and the spark-submitted job writes exactly the gold tables of a local-mode run (the shared
    lake published for FIRST_DAY: same history, same date, the same job inside the pipeline)."""
    local_ingest = _settings(ingested_history)
    local = _settings(published_first_day)
    master = cluster.master_url(_settings(tmp_path / "cluster"))
    ingest_lake = _settings(tmp_path / "ingest", spark_master=master)
    on_cluster = _settings(tmp_path / "cluster", spark_master=master)
    # The pipeline starts from a byte copy of the ingested lake: the comparison isolates the batch layer.
    shutil.copytree(Path(local_ingest.lake_uri), Path(on_cluster.lake_uri))

    command = submit.compose(submit.job_args(job, DAY.isoformat()), settings=on_cluster)
    assert command.argv[command.argv.index("--master") + 1] == f"spark://127.0.0.1:{MASTER_PORT}"
    archive = command.argv[command.argv.index("--archives") + 1]
    assert archive.endswith("-code.zip#touchpoint") and Path(archive.split("#")[0]).exists()
    state = cluster.start(on_cluster, workers=2)
    try:
        assert state.workers_registered == 2
        # the JVM options the suite gives its children (tests/conftest.py) reach the master and workers
        options = [option.encode() for option in on_cluster.spark_jvm_options.split()]
        assert options, "tests/conftest.py sets TOUCHPOINT_SPARK_JVM_OPTIONS for the suite's children"
        home = on_cluster.state_path / "spark-cluster"
        for pid_file in [home / "master.pid", *home.glob("worker-*.pid")]:
            command_line = Path(f"/proc/{pid_file.read_text().split()[0]}/cmdline").read_bytes().split(b"\0")
            assert set(options) <= set(command_line), pid_file.name
        ingested = subprocess.run([sys.executable, "-m", "touchpoint", "ingest", "--file",
                                   str(ingested_history / "events.jsonl")], env=_env(ingest_lake),
                                  capture_output=True, text=True, timeout=1200)
        result = submit.run(command, timeout=2400, capture=True)
    finally:
        cluster.stop(on_cluster)
    _check(ingested)
    _check(result)
    # the ingest released its local checkpoints: Spark's warning for each (its lineage "cannot be
    # recomputed") is silenced, as it printed dozens of lines over the CLI's progress bars
    assert "Spark's default log4j profile" in ingested.stderr  # the driver's log does reach stderr
    assert "cannot be recomputed" not in ingested.stderr
    expected_silver = _silver(local_ingest)
    assert _silver(ingest_lake) == expected_silver and len(expected_silver) > 200
    # the work ran on the workers' executors, with the project unpacked from the archive
    work = on_cluster.state_path / "spark-cluster"
    unpacked = sorted(work.glob("work-*/app-*/*/touchpoint/jobs/runner.py"))
    assert {p.parts[-6] for p in unpacked} == {"work-0", "work-1"}
    # executors fetched the project jars but never a second Hadoop client (pyspark ships its own)
    fetched = {p.name for p in work.glob("work-*/app-*/*/*.jar")}
    assert any(name.startswith("delta-spark_") for name in fetched)
    assert not [name for name in fetched if name.startswith(("hadoop-client-", "jackson-core-", "scala-library-"))]

    tables = _gold_tables(on_cluster)
    # what the local run has of the job's tables (identity writes merges and splits once it has any)
    written = _gold_tables(local) if job == "pipeline" else _gold_tables(local) & set(identity.TABLES)
    assert tables == written and set(REQUIRED[job]) <= tables
    skipped = FILE_FINGERPRINT_COLUMNS | (VERSION_COLUMNS if job == "identity" else frozenset())
    for name in sorted(tables):
        assert _rows(on_cluster, name, skipped) == _rows(local, name, skipped), name
    assert all(_rows(local, name) for name in REQUIRED[job])
    assert _rows(local, "gold.high_water_mark") == [(("high_water_mark", dt.datetime(2026, 3, 4, tzinfo=dt.timezone.utc)),
                                                     ("logical_date", DAY))]


def test_submit_command_carries_master_jars_conf_archive_and_the_runner(tmp_path):
    from touchpoint.core.spark import spark_conf, spark_jars

    settings = _settings(tmp_path, spark_master="spark://10.0.0.5:7077", stream={"min_partitions": 6},
                         spark_jvm_options="-XX:+UseSerialGC  -Xss4m")
    wheel = submit.build_wheel(settings)
    assert submit.build_wheel(settings) == wheel  # cached by source digest: no second build
    assert wheel.parent.name == submit.source_digest()[:16]
    archive = submit.code_archive(wheel)
    command = submit.compose(submit.job_args("identity", "2026-03-04"), settings=settings, archive=archive)
    argv = command.argv

    assert argv[0] == str(submit.spark_submit_path()) and Path(argv[0]).exists()
    assert argv[argv.index("--master") + 1] == "spark://10.0.0.5:7077"
    assert argv[argv.index("--deploy-mode") + 1] == "client"
    assert argv[argv.index("--jars") + 1].split(",") == spark_jars(settings)
    assert argv[argv.index("--archives") + 1] == f"{archive}#touchpoint"
    confs = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--conf")
    expected = {k: v for k, v in spark_conf(settings).items() if k not in ("spark.master", "spark.app.name", "spark.jars")}
    assert confs == expected
    assert confs["spark.sql.shuffle.partitions"] == "2" and confs["spark.driver.host"] == "127.0.0.1"
    assert confs["spark.driver.extraJavaOptions"] == "-Duser.timezone=UTC -XX:+UseSerialGC -Xss4m"
    assert confs["spark.executor.extraJavaOptions"] == "-Duser.timezone=UTC -XX:+UseSerialGC -Xss4m"
    assert argv[-4:] == [str(REPO / "jobs" / "runner.py"), "identity", "--date", "2026-03-04"]
    # the driver re-reads the same settings from its environment
    assert command.env["TOUCHPOINT_SPARK_MASTER"] == "spark://10.0.0.5:7077"
    assert command.env["TOUCHPOINT_SPARK_SHUFFLE_PARTITIONS"] == "2"
    assert json.loads(command.env["TOUCHPOINT_STREAM"])["min_partitions"] == 6
    assert command.env["TOUCHPOINT_LAKE_ROOT"] == str(tmp_path / "lake")

    stream = submit.compose(["stream", "ingest"], settings=settings, entry="cli", archive=archive)
    assert stream.argv[-3:] == [str(REPO / "touchpoint" / "__main__.py"), "stream", "ingest"]
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        submit.job_args("nope", "2026-03-04")


def test_code_archive_is_the_package_at_the_root_with_its_data_files(tmp_path):
    archive = submit.code_archive(submit.build_wheel(_settings(tmp_path)))
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"__init__.py", "jobs/runner.py", "core/spark.py", "schemas/event.v1.json", "core/channel_rules.yaml",
            "expectations/silver.events.json"} <= names
    assert not [n for n in names if n.startswith(("touchpoint/", "touchpoint-")) or "__pycache__" in n]
