"""Shared fixtures: one Spark session (Delta on, UI off, 2 shuffle partitions), a real broker."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.chdir(REPO)  # relative defaults (.state/jars) resolve against the repository
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".state" / "airflow-test"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def spark():
    from touchpoint.core.config import load_settings
    from touchpoint.core.spark import get_spark

    # One driver runs the whole suite (pipelines, streams, GX, Airflow tasks): more heap than a job needs.
    settings = load_settings(spark_shuffle_partitions=2, spark_master="local[2]", spark_driver_memory="4g")
    session = get_spark("touchpoint-tests", settings=settings)
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path):
    """Settings with a private lake root and state folder per test (jars stay shared)."""
    from touchpoint.core.config import load_settings

    return load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2,
                         jars_dir=str(REPO / ".state" / "jars"))


@pytest.fixture(scope="session")
def kafka_broker():
    from touchpoint.core.config import get_settings
    from touchpoint.infra import kafka

    return kafka.start(get_settings())


@pytest.fixture
def kafka_topic(kafka_broker, settings):
    """A fresh topic per test, deleted afterwards."""
    from touchpoint.infra import kafka

    name = f"test.{uuid.uuid4().hex[:12]}"
    kafka.ensure_topic(name, partitions=2, settings=settings)
    yield name
    kafka.delete_topic(name, settings=settings)
