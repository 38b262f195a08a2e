"""The Spark conf generated for an s3a:// lake root: S3A on, credentials never in it, MinIO-style
endpoints, and hadoop-aws (+ its AWS SDK bundle) on the classpath only when the lake needs them;
and the `spark_conf` setting for any other Spark setting."""

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from touchpoint.core.config import ConfigError, load_settings
from touchpoint.core.spark import S3A_ARTIFACTS, _artifact, spark_conf, spark_jars

REPO = Path(__file__).resolve().parents[1]
JARS = str(REPO / ".state" / "jars")
POM = REPO / "infra" / "maven" / "spark-jars.pom.xml"
MAVEN = "{http://maven.apache.org/POM/4.0.0}"


def _jar_names(conf):
    return {Path(j).name for j in conf["spark.jars"].split(",")}


def test_aws_s3_lake_uses_the_default_credential_chain_and_virtual_host_buckets():
    conf = spark_conf(load_settings(lake_root="s3a://acme-lake/touchpoint", jars_dir=JARS))
    assert conf["spark.hadoop.fs.s3a.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == (
        "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider")
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "false"
    assert conf["spark.delta.logStore.s3a.impl"] == "io.delta.storage.S3SingleDriverLogStore"
    assert "spark.hadoop.fs.s3a.endpoint" not in conf and "spark.hadoop.fs.s3a.endpoint.region" not in conf


def test_minio_endpoint_turns_on_path_style_and_plain_http():
    settings = load_settings(lake_root="s3a://lake/", jars_dir=JARS,
                             s3={"endpoint": "http://minio:9000", "region": "us-east-1"})
    conf = spark_conf(settings)
    assert settings.lake_uri == "s3a://lake"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "us-east-1"

    explicit = spark_conf(load_settings(lake_root="s3a://lake", jars_dir=JARS,
                                        s3={"endpoint": "https://s3.eu.example", "path_style_access": False}))
    assert explicit["spark.hadoop.fs.s3a.path.style.access"] == "false"
    assert explicit["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"


def test_s3_settings_come_from_the_environment_and_bad_values_name_the_key(monkeypatch):
    monkeypatch.setenv("TOUCHPOINT_LAKE_ROOT", "s3a://env-bucket/lake")
    monkeypatch.setenv("TOUCHPOINT_S3__ENDPOINT", "http://127.0.0.1:9000")
    settings = load_settings(jars_dir=JARS)
    assert spark_conf(settings)["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    monkeypatch.setenv("TOUCHPOINT_S3__ENDPOINT", "minio:9000")  # no scheme
    with pytest.raises(ConfigError, match=r"key 's3.endpoint' \(env TOUCHPOINT_S3__ENDPOINT\)"):
        load_settings(jars_dir=JARS)


def test_credentials_in_the_environment_never_reach_the_conf(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-example-value-0001")
    conf = spark_conf(load_settings(lake_root="s3a://acme-lake/x", jars_dir=JARS,
                                    s3={"endpoint": "http://minio:9000"}))
    assert not [k for k in conf if re.search(r"access\.key|secret\.key|session\.token", k)]
    flat = "\n".join(f"{k}={v}" for k, v in conf.items())
    assert "AKIAEXAMPLEKEYID0001" not in flat and "s3cr3t-example-value-0001" not in flat


def test_s3a_jars_only_for_an_s3a_lake_and_never_a_second_hadoop():
    local = _jar_names(spark_conf(load_settings(lake_root="/tmp/lake", jars_dir=JARS)))
    s3a = _jar_names(spark_conf(load_settings(lake_root="s3a://b/lake", jars_dir=JARS)))
    assert not {_artifact(j) for j in local} & S3A_ARTIFACTS
    added = sorted(s3a - local)
    assert [_artifact(j) for j in added] == ["analyticsaccelerator-s3", "bundle", "hadoop-aws", "wildfly-openssl"]
    # pyspark's own Hadoop client wins; the one Delta's pom drags in never reaches the classpath
    assert not [j for j in s3a if j.startswith("hadoop-client-")]


def test_pom_hadoop_aws_matches_the_hadoop_pyspark_ships():
    import pyspark

    shipped = sorted(p.name for p in (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert len(shipped) == 1
    hadoop_in_pyspark = shipped[0].removeprefix("hadoop-client-api-").removesuffix(".jar")
    pom = ElementTree.parse(POM).getroot()
    assert pom.find(f"{MAVEN}properties/{MAVEN}hadoop.version").text == hadoop_in_pyspark
    aws = [d for d in pom.iter(f"{MAVEN}dependency") if d.find(f"{MAVEN}artifactId").text == "hadoop-aws"]
    assert [d.find(f"{MAVEN}version").text for d in aws] == ["${hadoop.version}"]
    resolved = [Path(j).name for j in spark_jars(load_settings(lake_root="s3a://b/l", jars_dir=JARS))]
    assert f"hadoop-aws-{hadoop_in_pyspark}.jar" in resolved


def test_missing_hadoop_aws_fails_with_the_fix(tmp_path):
    jars = tmp_path / "jars" / "spark"
    jars.mkdir(parents=True)
    (jars / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    assert spark_jars(load_settings(lake_root=str(tmp_path / "lake"), jars_dir=str(tmp_path / "jars")))
    with pytest.raises(RuntimeError, match="hadoop-aws missing .* run `make jars`"):
        spark_jars(load_settings(lake_root="s3a://b/lake", jars_dir=str(tmp_path / "jars")))


def test_driver_address_is_loopback_locally_and_left_to_the_launcher_when_empty():
    local = spark_conf(load_settings(jars_dir=JARS))
    assert (local["spark.driver.host"], local["spark.driver.bindAddress"]) == ("127.0.0.1", "127.0.0.1")
    pod = spark_conf(load_settings(jars_dir=JARS, spark_driver_host="", spark_master="k8s://https://kube:443"))
    assert "spark.driver.host" not in pod and "spark.driver.bindAddress" not in pod
    assert pod["spark.master"] == "k8s://https://kube:443"


def test_spark_own_jars_are_found_from_spark_home_as_under_spark_submit(monkeypatch):
    """spark-submit imports pyspark from $SPARK_HOME/python/lib/pyspark.zip: the filter must still
    see Spark's jars, or Delta's Hadoop 3.4 client would join Spark's 3.5 on the classpath."""
    import pyspark

    from touchpoint.core.spark import _pyspark_jar_names

    home = Path(pyspark.__file__).parent
    monkeypatch.setattr(pyspark, "__file__", str(home / "python" / "lib" / "pyspark.zip" / "pyspark" / "__init__.py"))
    monkeypatch.setenv("SPARK_HOME", str(home))
    assert {"hadoop-client-api", "jackson-core", "scala-library"} <= _pyspark_jar_names()
    local = [Path(j).name for j in spark_jars(load_settings(lake_root="/tmp/lake", jars_dir=JARS))]
    assert not [j for j in local if j.startswith(("hadoop-client-", "jackson-core-", "scala-library-"))]
    monkeypatch.delenv("SPARK_HOME")  # nothing leads to the jars: fail rather than filter nothing
    with pytest.raises(RuntimeError, match="no Spark jars"):
        _pyspark_jar_names()


def test_spark_conf_setting_adds_spark_settings_from_toml_and_env(monkeypatch, tmp_path):
    config = tmp_path / "touchpoint.toml"
    config.write_text('[spark_conf]\n"spark.sql.adaptive.enabled" = "false"\n')
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    monkeypatch.delenv("TOUCHPOINT_SPARK_CONF", raising=False)
    from_toml = spark_conf(load_settings(jars_dir=JARS))
    assert from_toml["spark.sql.adaptive.enabled"] == "false"
    monkeypatch.setenv("TOUCHPOINT_SPARK_CONF", '{"spark.sql.codegen.wholeStage": "false", "spark.sql.adaptive.enabled": "true"}')
    merged = spark_conf(load_settings(jars_dir=JARS))  # key by key, the environment wins over the file
    assert (merged["spark.sql.codegen.wholeStage"], merged["spark.sql.adaptive.enabled"]) == ("false", "true")


def test_spark_conf_setting_refuses_what_the_platform_sets_and_names_the_fix(monkeypatch):
    monkeypatch.delenv("TOUCHPOINT_SPARK_CONF", raising=False)
    settings = load_settings(jars_dir=JARS, spark_conf={"spark.master": "local[8]", "spark.sql.session.timeZone": "CET"})
    with pytest.raises(ConfigError, match=r"key 'spark_conf' \(env TOUCHPOINT_SPARK_CONF\): spark.master, "
                                          r"spark.sql.session.timeZone are set by touchpoint itself; .*spark_master"):
        spark_conf(settings)
    with pytest.raises(ConfigError, match=r"key 'spark_conf' .*expected Spark setting names starting with 'spark.', "
                                          r"got 'sql.adaptive.enabled'"):
        load_settings(spark_conf={"sql.adaptive.enabled": "false"})
