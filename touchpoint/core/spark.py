"""The one Spark session factory: Delta, the Kafka connector, UTC, loopback only."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from touchpoint.core.config import ConfigError, Settings, get_settings


def _pyspark_jar_names() -> set[str]:
    """Artifacts on Spark's own classpath. Under spark-submit pyspark is imported from
    $SPARK_HOME/python/lib/pyspark.zip, so its __file__ does not lead to the jars: SPARK_HOME does."""
    home = os.environ.get("SPARK_HOME")
    if home and (Path(home) / "jars").is_dir():
        jars = Path(home) / "jars"
    else:
        import pyspark

        jars = Path(pyspark.__file__).parent / "jars"
    names = {_artifact(p.name) for p in jars.glob("*.jar")}
    if not names:  # an empty set would silently put a second Hadoop and Jackson on the classpath
        raise RuntimeError(f"no Spark jars in {jars}: set SPARK_HOME to the Spark installation")
    return names


def _artifact(jar_name: str) -> str:
    """'jackson-core-2.21.2.jar' -> 'jackson-core' (the name without its version)."""
    stem = jar_name[:-4]
    parts = stem.split("-")
    for i, part in enumerate(parts):
        if part[:1].isdigit():
            return "-".join(parts[:i])
    return stem


# hadoop-aws and what it brings: only on the classpath of an s3a:// lake. The AWS SDK bundle alone is
# ~650 MB, which every executor would otherwise fetch from the driver for every application.
S3A_ARTIFACTS = frozenset({"hadoop-aws", "bundle", "analyticsaccelerator-s3", "wildfly-openssl"})


def uses_s3a(settings: Settings) -> bool:
    return settings.lake_uri.startswith("s3a://")


def spark_jars(settings: Settings | None = None) -> list[str]:
    """Project jars for Spark, minus artifacts pyspark already ships (its versions win), plus the
    S3A jars when the lake is on object storage."""
    settings = settings or get_settings()
    folder = settings.jars_dir.resolve() / "spark"
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise RuntimeError(
            f"Delta jars missing in {folder}: run `make jars` (resolves infra/maven/spark-jars.pom.xml)"
        )
    s3a = uses_s3a(settings)
    if s3a and not any(j.name.startswith("hadoop-aws-") for j in jars):
        raise RuntimeError(f"hadoop-aws missing in {folder} for lake root {settings.lake_uri}: run `make jars`")
    shipped = _pyspark_jar_names()
    return [str(j) for j in jars
            if _artifact(j.name) not in shipped and (s3a or _artifact(j.name) not in S3A_ARTIFACTS)]


def s3a_conf(settings: Settings) -> dict[str, str]:
    """Hadoop S3A settings for an s3a:// lake root. Credentials never appear here: the AWS SDK's
    default chain finds them (AWS_* environment variables, web identity on EKS, the instance profile)
    in each driver and executor's own environment."""
    s3 = settings.s3
    path_style = s3.path_style_access if s3.path_style_access is not None else s3.endpoint is not None
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        ),
        # MinIO and most S3-compatible stores serve buckets under the path, not as a DNS name.
        "spark.hadoop.fs.s3a.path.style.access": str(path_style).lower(),
        # S3 has no atomic put-if-absent for Delta's log: one driver writes a table at a time.
        "spark.delta.logStore.s3a.impl": "io.delta.storage.S3SingleDriverLogStore",
    }
    if s3.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(s3.endpoint.startswith("https://")).lower()
    if s3.region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = s3.region
    return conf


def spark_conf(settings: Settings | None = None, app_name: str = "touchpoint") -> dict[str, str]:
    """Every Spark setting the platform relies on, as a plain dict (also fed to spark-submit)."""
    settings = settings or get_settings()
    java_options = " ".join(["-Duser.timezone=UTC", *settings.spark_jvm_options.split()])
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        "spark.jars": ",".join(spark_jars(settings)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": java_options,
        "spark.executor.extraJavaOptions": java_options,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.default.parallelism": str(settings.spark_shuffle_partitions),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.warehouse.dir": str(settings.state_path / "warehouse"),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta rebuilds table state (e.g. to look up txnAppId versions) with a job of this many
        # partitions; its default of 50 dominates small micro-batches on a small machine.
        "spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions),
        # Delta's VACUUM lists a table's directories in this many tasks. Spark's default of 10,000
        # empty tasks made a VACUUM of a small table take 30-37 s on 2 cores, against 2.5 s with 2.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(settings.spark_shuffle_partitions),
        # Generated code is compiled once per distinct plan and kept in a cache of 100 classes by
        # default. A driver that plans many queries (the test session: 9,922 compilations against
        # 1,989 with this size for the speed tests, 10 % less time) compiled the same classes again
        # and again (docs/DRILLS.md, session 12).
        "spark.sql.codegen.cache.maxEntries": "2000",
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        # A long-lived driver (stream, test session) frees the cached and checkpointed blocks of
        # finished micro-batches only when its heap is collected; the default waits 30 minutes.
        "spark.cleaner.periodicGC.interval": "5min",
        # Delta statistics for restricted PII columns are switched off per table (see catalog).
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    }
    if settings.spark_driver_host:
        conf["spark.driver.host"] = settings.spark_driver_host
        conf["spark.driver.bindAddress"] = settings.spark_driver_host
    if uses_s3a(settings):
        conf.update(s3a_conf(settings))
    owned = sorted(set(settings.spark_conf) & set(conf))
    if owned:
        raise ConfigError(f"key 'spark_conf' (env TOUCHPOINT_SPARK_CONF): {', '.join(owned)} are set by touchpoint itself; "
                          "remove them and use the matching setting in docs/CONFIG.md (spark_master, "
                          "spark_shuffle_partitions, spark_jvm_options, ...)")
    conf.update(settings.spark_conf)
    return conf


# What a launcher (spark-submit, the Spark Operator's driver pod) decided for this driver wins over
# the settings: on Kubernetes the master and driver address are the pod's, not ours.
LAUNCHER_KEYS = ("spark.master", "spark.driver.host", "spark.driver.bindAddress")


def _launcher_conf() -> dict[str, str]:
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # set only when spark-submit started this Python
        return {}
    from pyspark import SparkConf

    launched = SparkConf()
    return {key: launched.get(key) for key in LAUNCHER_KEYS if launched.contains(key)}


def get_spark(app_name: str = "touchpoint", settings: Settings | None = None, **extra_conf: str):
    """Return the active session or build one with the platform's configuration."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = settings or get_settings()
    if settings.spark_driver_host == "127.0.0.1":
        # Bind every JVM server (driver, block manager, UIs) to loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or _python())
    builder = SparkSession.builder
    for key, value in {**spark_conf(settings, app_name), **_launcher_conf(), **extra_conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # Releasing a local checkpoint (release_checkpoint) is deliberate: Spark's warning that the RDD's
    # lineage "cannot be recomputed" would print a line per released frame, dozens per job.
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
        "org.apache.spark.rdd.MapPartitionsRDD", jvm.org.apache.logging.log4j.Level.ERROR)
    return spark


def _python() -> str:
    import sys

    return sys.executable


@contextmanager
def local_checkpoint(frame):
    """The frame computed once, with its plan cut (a lazy `localCheckpoint`), freed on leaving the block.

    Used instead of persist() for frames reused within a run or a micro-batch: a persisted frame
    keeps its whole plan, and Spark prints every nested cached plan again at each adaptive re-plan
    (most of an incremental attribution run: 44 s of driver time against 12 s of jobs over 17
    events). The blocks live on the executors: losing one fails the run, which retries repeat."""
    checkpointed = frame.localCheckpoint(eager=False)
    try:
        yield checkpointed
    finally:
        release_checkpoint(checkpointed)


def release_checkpoint(frame) -> None:
    """Free the blocks of a frame made by `localCheckpoint()` now. Otherwise they go only when the
    driver garbage-collects the frame, and a stream that checkpoints every micro-batch would hold
    many batches' worth (spark.cleaner.periodicGC.interval bounds that wait)."""
    plan = frame._jdf.logicalPlan()
    if plan.getClass().getSimpleName() != "LogicalRDD":
        raise ValueError("release_checkpoint takes the frame that localCheckpoint() returned")
    plan.rdd().unpersist(False)


def checkpoint_with_own_size(frame):
    """`frame.localCheckpoint(eager=True)` whose size estimate is the bytes its blocks hold.

    A local checkpoint keeps the size estimate of the plan it cut. Without column statistics Spark
    estimates an inner join as the product of its inputs' sizes, so a frame checkpointed round after
    round (connected components, a map extended every micro-batch) carries a product of products:
    the estimate's digits grow each round, and the driver spends seconds, then minutes, multiplying
    them for every plan that reads it (bench/README.md, session 30). Here the checkpoint's plan node
    is rebuilt with an estimate of its own: the memory and disk its blocks take, as the block
    manager counts them (no extra job). That overstates the rows' bytes by the JVM's per-object
    overhead, so a checkpoint is broadcast a little less readily than its rows alone would allow.
    Spark has no public API for this; the node is rebuilt through the JVM (checked on Spark 4.2)."""
    from pyspark.sql import DataFrame

    checkpointed = frame.localCheckpoint(eager=True)
    plan = checkpointed._jdf.logicalPlan()
    rdd = plan.rdd()
    spark = checkpointed.sparkSession
    blocks = [info for info in spark.sparkContext._jsc.sc().getRDDStorageInfo() if info.id() == rdd.id()]
    if not blocks:  # not reported (never seen): an estimate of 8 bytes would broadcast it, whatever its size
        return checkpointed
    stored = blocks[0].memSize() + blocks[0].diskSize()
    # A statistics object of that size, made on the JVM: py4j turns every Scala BigInt it returns
    # into a Python int, so one cannot be passed back. A range of n longs is estimated at 8n bytes,
    # and the projection over it drops the range's row count (not this frame's).
    own_stats = spark.range(max(1, -(-stored // 8))).select("id")._jdf.queryExecution().analyzed().stats()
    jvm = spark.sparkContext._jvm
    session = checkpointed._jdf.sparkSession()
    no_constraints = getattr(getattr(jvm.scala, "None$"), "MODULE$")
    resized = plan.copy(plan.output(), rdd, plan.outputPartitioning(), plan.outputOrdering(), plan.isStreaming(),
                        plan.stream(), session, jvm.scala.Some(own_stats), no_constraints)
    datasets = getattr(getattr(jvm.org.apache.spark.sql.classic, "Dataset$"), "MODULE$")
    return DataFrame(datasets.ofRows(session, resized), spark)


def has_checkpoint(checkpoint: str) -> bool:
    """Whether a streaming query's checkpoint folder holds offsets. A remote one (s3a://) is taken
    as present: never bootstrap or refuse on a guess."""
    from pathlib import Path

    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return True
    return (Path(checkpoint.removeprefix("file://")) / "offsets").exists()


def committed_source_offsets(checkpoint: str) -> list | None:
    """The offsets of each source (parsed JSON, one per source) at the end of the last micro-batch a
    query's checkpoint committed; None for a remote checkpoint or before any committed batch."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return None
    root = Path(checkpoint.removeprefix("file://"))
    committed = [int(p.name) for p in (root / "commits").glob("*") if p.name.isdigit()]
    if not committed:
        return None
    # offsets/<n>: a format version line, the batch's metadata, then one line per source
    lines = (root / "offsets" / str(max(committed))).read_text().splitlines()[2:]
    sources = []
    for line in lines:
        try:
            sources.append(json.loads(line))
        except json.JSONDecodeError:  # a source without offsets yet ("-")
            sources.append(None)
    return sources


def delta_source_position(checkpoint: str) -> int | None:
    """The version a query with one Delta source reads from next: the `reservoirVersion` of the end
    offset of its last committed micro-batch (Delta writes "version N read" as (N + 1, index -1); a
    partly read version counts). None when unknown: a remote checkpoint, or no committed batch."""
    sources = committed_source_offsets(checkpoint)
    if not sources or not isinstance(sources[-1], dict) or "reservoirVersion" not in sources[-1]:
        return None
    return int(sources[-1]["reservoirVersion"])
