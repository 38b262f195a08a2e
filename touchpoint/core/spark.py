"""The one Spark session factory: Delta, the Kafka connector, UTC, loopback only."""

from __future__ import annotations

import os
from pathlib import Path

from touchpoint.core.config import Settings, get_settings


def _pyspark_jar_names() -> set[str]:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return {_artifact(p.name) for p in jars.glob("*.jar")}


def _artifact(jar_name: str) -> str:
    """'jackson-core-2.21.2.jar' -> 'jackson-core' (the name without its version)."""
    stem = jar_name[:-4]
    parts = stem.split("-")
    for i, part in enumerate(parts):
        if part[:1].isdigit():
            return "-".join(parts[:i])
    return stem


def spark_jars(settings: Settings | None = None) -> list[str]:
    """Project jars for Spark, minus artifacts pyspark already ships (its versions win)."""
    settings = settings or get_settings()
    folder = settings.jars_dir.resolve() / "spark"
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise RuntimeError(
            f"Delta jars missing in {folder}: run `make jars` (resolves infra/maven/spark-jars.pom.xml)"
        )
    shipped = _pyspark_jar_names()
    return [str(j) for j in jars if _artifact(j.name) not in shipped]


def spark_conf(settings: Settings | None = None, app_name: str = "touchpoint") -> dict[str, str]:
    """Every Spark setting the platform relies on, as a plain dict (also fed to spark-submit)."""
    settings = settings or get_settings()
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        "spark.jars": ",".join(spark_jars(settings)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.default.parallelism": str(settings.spark_shuffle_partitions),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.warehouse.dir": str(settings.state_path / "warehouse"),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta rebuilds table state (e.g. to look up txnAppId versions) with a job of this many
        # partitions; its default of 50 dominates small micro-batches on a small machine.
        "spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions),
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        # Delta statistics for restricted PII columns are switched off per table (see catalog).
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    }
    if settings.lake_uri.startswith("s3a://"):
        conf.update(
            {
                "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "spark.hadoop.fs.s3a.aws.credentials.provider": (
                    "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
                ),
                "spark.hadoop.fs.s3a.path.style.access": "true",
                # S3 has no atomic rename: Delta needs a log store for concurrent writers.
                "spark.delta.logStore.s3a.impl": "io.delta.storage.S3SingleDriverLogStore",
            }
        )
    return conf


def get_spark(app_name: str = "touchpoint", settings: Settings | None = None, **extra_conf: str):
    """Return the active session or build one with the platform's configuration."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = settings or get_settings()
    # Bind every JVM server (driver, block manager, UIs) to loopback.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or _python())
    builder = SparkSession.builder
    for key, value in {**spark_conf(settings, app_name), **extra_conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _python() -> str:
    import sys

    return sys.executable
