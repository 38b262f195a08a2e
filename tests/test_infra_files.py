"""Static validation of the deployment files (no Docker engine or Kubernetes here): they parse, carry
the required keys, pin every image, and agree with the versions pinned in pyproject.toml,
requirements.lock and the Maven poms, and with the settings and jobs of the code."""

import re
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from touchpoint.core.config import Settings
from touchpoint.jobs.pipeline import PIPELINE_JOBS
from touchpoint.jobs.runner import JOBS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "infra" / "compose" / ".env.example"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
K8S = REPO / "infra" / "k8s"
MAVEN = "{http://maven.apache.org/POM/4.0.0}"
IMAGE_SITE_PACKAGES = "local:///usr/local/lib/python3.11/site-packages/"


# ---- the pins, read from where they are pinned -----------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pyproject_pin(package: str) -> str:
    pins = dict(dep.split("==", 1) for dep in _pyproject()["project"]["dependencies"])
    return pins[package]


def _lock_pin(package: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.strip()
    raise AssertionError(f"{package} not in requirements.lock")


def _pom_property(pom: str, name: str) -> str:
    root = ElementTree.parse(REPO / "infra" / "maven" / pom).getroot()
    return root.find(f"{MAVEN}properties/{MAVEN}{name}").text


PROJECT_VERSION = _pyproject()["project"]["version"]
SPARK = _pyproject_pin("pyspark")
AIRFLOW = _lock_pin("apache-airflow")
KAFKA = _pom_property("kafka-broker.pom.xml", "kafka.version")
PROJECT_IMAGE = f"touchpoint:{PROJECT_VERSION}"


def test_the_pins_agree_with_each_other():
    assert _pom_property("spark-jars.pom.xml", "spark.version") == SPARK == _lock_pin("pyspark")
    assert _pyproject_pin("apache-airflow") == AIRFLOW
    assert _pom_property("spark-jars.pom.xml", "delta.version") == _pyproject_pin("delta-spark")


def _assert_pinned(image: str) -> None:
    assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image), f"image {image!r} has no tag"
    tag = image.rsplit(":", 1)[1]
    assert tag not in {"latest", "stable", "edge", "main"}, f"image {image!r} floats"
    assert re.search(r"\d", tag), f"image {image!r} is not pinned to a version"


def _setting_exists(variable: str) -> bool:
    """TOUCHPOINT_S3__ENDPOINT -> Settings.s3.endpoint."""
    path = variable.removeprefix("TOUCHPOINT_").lower().split("__")
    model = Settings
    for part in path:
        if model is None or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
        model = model if isinstance(model, type) and hasattr(model, "model_fields") else None
    return True


# ---- docker compose ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_compose_has_every_service_and_pins_every_image(compose):
    services = compose["services"]
    assert {"kafka", "kafka-init", "minio", "minio-init", "postgres", "spark-master", "spark-worker-1",
            "spark-worker-2", "stream-ingest", "stream-speed", "airflow-init", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"} <= set(services)
    for name, service in services.items():
        assert "image" in service, name
        _assert_pinned(service["image"])
    assert services["kafka"]["image"] == services["kafka-init"]["image"] == f"apache/kafka:{KAFKA}"
    project = [n for n, s in services.items() if s["image"] == PROJECT_IMAGE]
    assert set(project) >= {"spark-master", "spark-worker-1", "stream-ingest", "airflow-scheduler"}
    for name in project:  # the image is built from the repository's Dockerfile
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["args"]["TOUCHPOINT_VERSION"] == PROJECT_VERSION


def test_compose_host_ports_are_loopback_and_volumes_are_declared(compose):
    services = compose["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, host_port, container_port = port.split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[int(host_port)] = name
    assert published == {9092: "kafka", 9000: "minio", 9001: "minio", 8081: "spark-master",
                         8080: "airflow-apiserver"}
    used = {mount.split(":")[0] for s in services.values() for mount in s.get("volumes", [])}
    assert used == set(compose["volumes"]) == {"kafka-data", "minio-data", "postgres-data", "exports"}
    mounts = {n: [m.split(":")[1] for m in s.get("volumes", [])] for n, s in services.items()}
    assert mounts["kafka"] == ["/var/lib/kafka/data"] and mounts["postgres"] == ["/var/lib/postgresql/data"]
    # executors write export files where the task drivers read them
    for name in ("spark-worker-1", "spark-worker-2", "airflow-scheduler"):
        assert mounts[name] == [services[name]["environment"]["TOUCHPOINT_EXPORTS_DIR"]]


def test_compose_wiring_matches_the_settings(compose, env_example):
    services = compose["services"]
    env = compose["x-touchpoint-env"]
    assert [v for v in env if v.startswith("TOUCHPOINT_") and not _setting_exists(v)] == []
    assert [v for v in compose["x-airflow-env"] if v.startswith("TOUCHPOINT_") and not _setting_exists(v)] == []
    master = services["spark-master"]["command"]
    assert env["TOUCHPOINT_SPARK_MASTER"] == f"spark://{master[master.index('--host') + 1]}:{master[master.index('--port') + 1]}"
    for worker in ("spark-worker-1", "spark-worker-2"):
        assert env["TOUCHPOINT_SPARK_MASTER"] in services[worker]["command"]
    kafka = services["kafka"]["environment"]
    assert f"INTERNAL://{env['TOUCHPOINT_KAFKA_BOOTSTRAP']}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["TOUCHPOINT_KAFKA_PARTITIONS"] == kafka["KAFKA_NUM_PARTITIONS"] == "${KAFKA_PARTITIONS}"
    assert f"--topic {env['TOUCHPOINT_KAFKA_TOPIC']} --partitions ${{KAFKA_PARTITIONS}}" in " ".join(
        services["kafka-init"]["command"])
    assert env["TOUCHPOINT_LAKE_ROOT"].startswith("s3a://${LAKE_BUCKET}/")
    assert env["TOUCHPOINT_S3__ENDPOINT"] == "http://minio:9000"
    # each client-mode driver advertises its own container as the driver host
    for name in ("stream-ingest", "stream-speed"):
        assert services[name]["environment"]["TOUCHPOINT_SPARK_DRIVER_HOST"] == services[name]["hostname"]
    assert compose["x-airflow-env"]["TOUCHPOINT_SPARK_DRIVER_HOST"] == services["airflow-scheduler"]["hostname"]
    assert services["stream-ingest"]["command"] == ["touchpoint", "stream", "ingest"]
    assert services["stream-speed"]["command"] == ["touchpoint", "stream", "speed"]
    assert compose["x-airflow-env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")


def test_compose_variables_come_from_the_example_env_which_holds_no_secret(env_example):
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?::-[^}]*)?\}", COMPOSE.read_text()))
    assert referenced == set(env_example)
    for key, value in env_example.items():
        if re.search(r"PASSWORD|SECRET|KEY|USER|CLUSTER_ID", key):
            assert value.startswith("change-me"), key
    assert "infra/compose/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_dockerfile_pins_python_java_and_the_project_version():
    text = DOCKERFILE.read_text()
    base = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(base) == 1
    _assert_pinned(base[0])
    python = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-\w+", base[0])
    assert python and f"=={python[1]}.{python[2]}" in _pyproject()["project"]["requires-python"].replace(">=", "==")
    assert f"ARG TOUCHPOINT_VERSION={PROJECT_VERSION}" in text
    assert "openjdk-17-jre-headless" in text
    assert "pip install -c /opt/touchpoint/requirements.lock" in text
    assert "COPY requirements.lock" in text and "COPY --chown=touchpoint:touchpoint .state/jars/spark" in text
    assert re.search(r"^USER 185$", text, re.MULTILINE)  # not root
    entrypoint = (DOCKERFILE.parent / "entrypoint.sh").read_text()
    assert "KubernetesExecutorBackend" in entrypoint and 'exec "$@"' in entrypoint


# ---- Kubernetes -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "airflow-values.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            assert doc["metadata"]["name"] and doc["metadata"].get("namespace", "touchpoint") == "touchpoint"
            docs.setdefault(doc["kind"], []).append(doc)
    return docs


def _config_map(manifests) -> dict[str, str]:
    [config] = [c for c in manifests["ConfigMap"] if c["metadata"]["name"] == "touchpoint-env"]
    return config["data"]


def test_spark_applications_run_real_jobs_and_streams(manifests):
    from touchpoint.cli import stream_app

    apps = manifests["SparkApplication"]
    batch = {}
    streams = {}
    for app in apps:
        spec = app["spec"]
        assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
        assert (spec["type"], spec["mode"], spec["sparkVersion"], spec["image"]) == (
            "Python", "cluster", SPARK, PROJECT_IMAGE)
        main = spec["mainApplicationFile"]
        assert main.startswith(IMAGE_SITE_PACKAGES)
        module = main.removeprefix(IMAGE_SITE_PACKAGES).removesuffix(".py").replace("/", ".")
        if module == "touchpoint.jobs.runner":
            job, flag, date = spec["arguments"]
            assert job in JOBS and flag == "--date" and date == "{{ ds }}"
            batch[job] = spec
        else:
            assert module == "touchpoint.__main__"
            assert spec["arguments"][0] == "stream"
            streams[spec["arguments"][1]] = spec
        for role in ("driver", "executor"):
            sources = [next(iter(s.values()))["name"] for s in spec[role]["envFrom"]]
            assert sources == ["touchpoint-env", "touchpoint-s3-credentials"]
        assert spec["driver"]["serviceAccount"] == "touchpoint-spark"
    assert {"pipeline", "maintenance", *PIPELINE_JOBS} <= set(batch)
    assert set(streams) == {"ingest", "speed"}
    registered = {command.name for command in stream_app.registered_commands}
    assert set(streams) <= registered, f"`touchpoint stream` lacks {set(streams) - registered}"
    for spec in streams.values():
        assert spec["restartPolicy"]["type"] == "Always"
    for spec in batch.values():
        assert spec["restartPolicy"]["type"] == "OnFailure"
        mounts = {m["name"]: m["mountPath"] for m in spec["executor"]["volumeMounts"]}
        assert {v["name"] for v in spec["volumes"]} == set(mounts) == {"exports"}
        assert mounts["exports"] == _config_map(manifests)["TOUCHPOINT_EXPORTS_DIR"]


def test_strimzi_kafka_matches_the_broker_pin_and_the_settings(manifests):
    [kafka] = manifests["Kafka"]
    [pool] = manifests["KafkaNodePool"]
    [topic] = manifests["KafkaTopic"]
    defaults = Settings.model_fields
    assert kafka["spec"]["kafka"]["version"] == KAFKA
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert topic["metadata"]["name"] == defaults["kafka_topic"].default
    config = _config_map(manifests)
    assert str(topic["spec"]["partitions"]) == config["TOUCHPOINT_KAFKA_PARTITIONS"]
    retention_hours = Settings().retention.kafka_retention_hours
    assert topic["spec"]["config"]["retention.ms"] == retention_hours * 3_600_000
    assert kafka["spec"]["kafka"]["config"]["log.retention.hours"] == retention_hours
    plain = [l for l in kafka["spec"]["kafka"]["listeners"] if not l["tls"]]
    assert config["TOUCHPOINT_KAFKA_BOOTSTRAP"] == (
        f"{kafka['metadata']['name']}-kafka-bootstrap.touchpoint.svc:{plain[0]['port']}")


def test_k8s_config_is_settings_and_holds_no_credentials(manifests):
    config = _config_map(manifests)
    assert [k for k in config if k.startswith("TOUCHPOINT_") and not _setting_exists(k)] == []
    assert config["TOUCHPOINT_LAKE_ROOT"].startswith("s3a://")
    assert config["TOUCHPOINT_SPARK_DRIVER_HOST"] == ""
    assert "Secret" not in manifests  # credentials are created outside the repository
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*:", text)
    [claim] = manifests["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_airflow_chart_values_use_the_project_image_and_airflow_pin():
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["airflowVersion"] == AIRFLOW
    assert (values["defaultAirflowRepository"], values["defaultAirflowTag"]) == ("touchpoint", PROJECT_VERSION)
    assert f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}" == PROJECT_IMAGE
    assert values["executor"] in {"KubernetesExecutor", "CeleryExecutor", "LocalExecutor"}
    assert values["config"]["core"]["dags_folder"] == "/opt/touchpoint/dags"
    assert "COPY --chown=touchpoint:touchpoint dags /opt/touchpoint/dags" in DOCKERFILE.read_text()
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert [next(iter(e.values()))["name"] for e in env_from] == ["touchpoint-env", "touchpoint-s3-credentials"]
    assert all(_setting_exists(e["name"]) for e in values["env"] if e["name"].startswith("TOUCHPOINT_"))
