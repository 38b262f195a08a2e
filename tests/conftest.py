"""Shared fixtures: one Spark session (Delta on, UI off, 2 shuffle partitions), a real broker."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.chdir(REPO)  # relative defaults (.state/jars) resolve against the repository
# `make test` runs the suite in two pytest-xdist workers (gw0, gw1); each keeps its own Airflow
# metadata database and data-quality reports, which two processes cannot share.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".state" / f"airflow-test{'-' + WORKER if WORKER else ''}"))
if WORKER:
    os.environ.setdefault("TOUCHPOINT_REPORTS_DIR", str(REPO / ".state" / f"reports-{WORKER}"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
# The Spark JVMs the tests start as child processes (jobs, streams, a cluster's executors) live for
# seconds to minutes: with the C1 compiler alone their start-up costs about 40 % less CPU
# (docs/DRILLS.md, session 13). The suite's own long-lived driver keeps the full JIT (`spark` below).
CHILD_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"
os.environ.setdefault("TOUCHPOINT_SPARK_JVM_OPTIONS", CHILD_JVM_OPTIONS)
# Every Spark session of the suite (its own and its children's) runs queries interpreted, without
# generated code, and without adaptive re-planning. On the suite's tiny frames, compiling a class per
# operator and task took about half of the executors' CPU and re-planning much of the driver's; the
# results are the same by Spark's contract (docs/DRILLS.md, session 16). `production_codegen` below
# runs a test with the platform's defaults instead.
TEST_SPARK_CONF = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN",
                   "spark.sql.adaptive.enabled": "false"}
os.environ.setdefault("TOUCHPOINT_SPARK_CONF", json.dumps(TEST_SPARK_CONF))
logging.getLogger("py4j").setLevel(logging.WARNING)


# ---- scheduling over two workers (`make test`: pytest -n 2 --dist loadfile --no-loadscope-reorder) ----
# Each test file runs whole on one worker, as one unit; the files that share the published lakes
# below form one unit, so the lakes are built once. Units holding a `slow` test are handed out first,
# the largest (the shared lakes) first of all: the long ones start early and short files fill in.
# (Not `--dist loadgroup`: xdist 3.8 marks groups through an attribute pytest 9 no longer has.)
SHARED_LAKE_FILES = ("test_cluster_submit.py", "test_pipeline_dag.py", "test_report.py")


def _unit(nodeid: str) -> str:
    file = nodeid.split("::", 1)[0]
    return "shared_lakes" if Path(file).name in SHARED_LAKE_FILES else file


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # pytest -p no:xdist still runs
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedLakeUnits(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return SharedLakeUnits(config, log)


SHARED_LAKE_FIXTURES = ("ingested_history", "published_first_day", "published_history")


def pytest_collection_modifyitems(config, items):
    # The scheduler sees node ids only, so the unit is named by file: a file that starts using the
    # shared lakes must join SHARED_LAKE_FILES, or another worker would build them a second time.
    strays = sorted({item.path.name for item in items if item.path.name not in SHARED_LAKE_FILES
                     and set(SHARED_LAKE_FIXTURES) & set(item.fixturenames)})
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)} use the shared lakes ({', '.join(SHARED_LAKE_FIXTURES)}): "
                                "add them to SHARED_LAKE_FILES in tests/conftest.py")
    slow_units = {_unit(item.nodeid) for item in items if item.get_closest_marker("slow")}
    position = {}
    for index, item in enumerate(items):
        position.setdefault(_unit(item.nodeid), index)

    def rank(item) -> tuple:
        unit = _unit(item.nodeid)
        return (unit != "shared_lakes", unit not in slow_units, position[unit])

    items.sort(key=rank)  # stable: tests keep their order within a unit


@pytest.fixture(scope="session")
def spark():
    from touchpoint.core.config import load_settings
    from touchpoint.core.spark import get_spark, spark_conf

    # One driver runs the whole suite (pipelines, streams, GX, Airflow tasks): more heap than a job needs.
    settings = load_settings(spark_shuffle_partitions=2, spark_master="local[2]", spark_driver_memory="4g",
                             spark_jvm_options="")
    # The throughput collector for this long, CPU-bound driver: with G1, the platform's default, its
    # concurrent marking took a fifth of the test JVMs' CPU (docs/DRILLS.md, session 11).
    java_options = spark_conf(settings)["spark.driver.extraJavaOptions"] + " -XX:+UseParallelGC"
    # Spark sizes its memory pages from heap and cores: 64 MB here, and every hash relation built for
    # a broadcast join holds at least one page until the broadcast is cleaned. Over a whole suite the
    # heap filled with them (full GCs every few seconds; session 47's CI run timed out a broadcast
    # after 300 s, then lost its SparkContext). The suite's tables are tiny: small pages suffice.
    session = get_spark("touchpoint-tests", settings=settings, **{"spark.driver.extraJavaOptions": java_options,
                                                                  "spark.buffer.pageSize": "2m"})
    assert session.sparkContext.getConf().get("spark.buffer.pageSize") == "2m", "a Spark session existed already"
    yield session
    session.stop()


@pytest.fixture
def production_codegen(spark):
    """The session with Spark's defaults for code generation and adaptive execution during one test."""
    before = {key: spark.conf.get(key) for key in TEST_SPARK_CONF}
    for key in TEST_SPARK_CONF:
        spark.conf.unset(key)
    # Unset must mean Spark's defaults again: generated code on, adaptive execution on.
    assert {key: spark.conf.get(key) for key in TEST_SPARK_CONF} == {
        "spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK",
        "spark.sql.adaptive.enabled": "true"}
    yield spark
    for key, value in before.items():
        spark.conf.set(key, value)


def _lake_settings(lake_dir: Path):
    from touchpoint.core.config import load_settings

    return load_settings(lake_root=str(lake_dir), spark_shuffle_partitions=2, jars_dir=str(REPO / ".state" / "jars"))


@pytest.fixture
def settings(tmp_path):
    """Settings with a private lake root and state folder per test (jars stay shared)."""
    return _lake_settings(tmp_path / "lake")


@pytest.fixture(scope="session")
def lake_settings():
    """`settings` for a lake folder the caller names: for module fixtures that build a lake once
    for tests to copy, so that it is made as the tests' own lakes are."""
    return _lake_settings


@pytest.fixture
def reported_progress():
    """What the work inside the test reports through touchpoint.core.progress, in order:
    ("begin", task, description, total, unit, depth), ("update", task, completed, description),
    ("end", task) or ("failed", task); tasks numbered from 0."""
    from touchpoint.core import progress

    class Recorder:
        def __init__(self):
            self.events = []
            self.tasks = 0

        def begin(self, description, total, unit, depth):
            self.tasks += 1
            self.events.append(("begin", self.tasks - 1, description, total, unit, depth))
            return self.tasks - 1

        def update(self, handle, completed, description):
            self.events.append(("update", handle, completed, description))

        def end(self, handle, failed):
            self.events.append(("failed" if failed else "end", handle))

    with progress.reporting(Recorder()) as recorder:
        yield recorder.events


@pytest.fixture(scope="session")
def kafka_broker():
    """The local broker, started if it is down. A broker the suite started is stopped by the last
    pytest process using it (`make test` starts it itself, so there it stays up until `make` stops it)."""
    from touchpoint.core.config import get_settings

    from broker_users import join, leave

    settings = get_settings()
    yield join(settings)
    leave(settings)


@pytest.fixture
def kafka_topic(kafka_broker, settings):
    """A fresh topic per test, deleted afterwards."""
    from touchpoint.infra import kafka

    name = f"test.{uuid.uuid4().hex[:12]}"
    kafka.ensure_topic(name, partitions=2, settings=settings)
    yield name
    kafka.delete_topic(name, settings=settings)


# ---- one generated history, ingested and published once for the end-to-end tests ---------------
# Pipeline runs cost a minute or more each; tests that only need *a* published lake share these
# and work on their own copies (tests/test_pipeline_dag.py, tests/test_cluster_submit.py).

@pytest.fixture(scope="session")
def ingested_history(spark, tmp_path_factory) -> Path:
    """<root>/events.jsonl generated by history_config() and <root>/lake with it ingested (no gold)."""
    from touchpoint.core.config import load_settings
    from touchpoint.generator import generate_jsonl
    from touchpoint.streaming.ingest import ingest_files

    from shared_history import history_config

    root = tmp_path_factory.mktemp("ingested_history")
    generate_jsonl(str(root / "events.jsonl"), history_config())
    ingest_files(spark, load_settings(lake_root=str(root / "lake"), spark_shuffle_partitions=2), root / "events.jsonl")
    return root


def _publish(spark, source: Path, root: Path, day: str) -> Path:
    """<root>/lake: a copy of <source>/lake with the daily pipeline run for `day`; <root>/runs.json: the
    attribution mode of each date published into it so far ({date: "full" | "incremental"});
    <root>/last_touch.json: campaign_metrics' `last_touch` of each of those dates."""
    import datetime as dt
    import json
    import shutil

    from touchpoint.core.config import load_settings
    from touchpoint.jobs.pipeline import run

    shutil.copytree(source / "lake", root / "lake")
    result = run(spark, load_settings(lake_root=str(root / "lake"), spark_shuffle_partitions=2),
                 dt.date.fromisoformat(day))
    runs = json.loads((source / "runs.json").read_text()) if (source / "runs.json").exists() else {}
    (root / "runs.json").write_text(json.dumps({**runs, day: result["attribution"]["mode"]}))
    # where campaign_metrics took each conversion's last touch from, per date
    sources = json.loads((source / "last_touch.json").read_text()) if (source / "last_touch.json").exists() else {}
    (root / "last_touch.json").write_text(json.dumps({**sources, day: result["campaign_metrics"]["last_touch"]}))
    return root


@pytest.fixture(scope="session")
def published_first_day(spark, ingested_history, tmp_path_factory) -> Path:
    """The ingested history published for FIRST_DAY (the backfill's first date). Read-only for tests:
    copy it (shutil.copytree) before changing anything."""
    from shared_history import FIRST_DAY

    return _publish(spark, ingested_history, tmp_path_factory.mktemp("published_first_day"), FIRST_DAY)


@pytest.fixture(scope="session")
def published_history(spark, published_first_day, tmp_path_factory) -> Path:
    """published_first_day's lake published for HISTORY_DAY as well: the ingested history backfilled
    date by date. Read-only for tests: copy it (shutil.copytree) before changing anything."""
    from shared_history import HISTORY_DAY

    return _publish(spark, published_first_day, tmp_path_factory.mktemp("published_history"), HISTORY_DAY)
