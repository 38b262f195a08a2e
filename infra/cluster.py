"""A local Spark standalone cluster (one master, N workers) on 127.0.0.1 via spark-class."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from touchpoint.core.config import Settings, get_settings
from touchpoint.core.process import port_open, read_pid, spawn, stop_pid, wait_until


@dataclass(frozen=True)
class ClusterStatus:
    master_url: str
    master_running: bool
    workers_running: int
    workers_registered: int


def _home(settings: Settings) -> Path:
    return settings.state_path / "spark-cluster"


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def master_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"spark://127.0.0.1:{settings.cluster_master_port}"


def _env(settings: Settings) -> dict[str, str]:
    env = {
        "SPARK_HOME": str(_spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(_home(settings) / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_NO_DAEMONIZE": "1",
    }
    if settings.spark_jvm_options:  # the master's and workers' JVMs, after any options of the caller's
        env["SPARK_DAEMON_JAVA_OPTS"] = " ".join(
            filter(None, [os.environ.get("SPARK_DAEMON_JAVA_OPTS", ""), settings.spark_jvm_options]))
    return env


def _spark_class(*args: str) -> list[str]:
    return [str(_spark_home() / "bin" / "spark-class"), *args]


def _registered_workers(settings: Settings) -> int:
    log = _home(settings) / "logs" / "master.log"
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count("Registering worker")


def status(settings: Settings | None = None) -> ClusterStatus:
    settings = settings or get_settings()
    home = _home(settings)
    master = read_pid(home / "master.pid") is not None
    workers = sum(read_pid(p) is not None for p in home.glob("worker-*.pid"))
    return ClusterStatus(master_url(settings), master, workers, _registered_workers(settings) if master else 0)


def start(settings: Settings | None = None, workers: int | None = None, timeout: float = 60) -> ClusterStatus:
    settings = settings or get_settings()
    workers = workers or settings.cluster_workers
    home = _home(settings)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    env = _env(settings)
    port = settings.cluster_master_port
    if read_pid(home / "master.pid") is None:
        (home / "logs" / "master.log").unlink(missing_ok=True)
        spawn(
            _spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(port + 1003)),
            home / "logs" / "master.log", home / "master.pid", env=env,
        )
        if not wait_until(lambda: port_open("127.0.0.1", port), timeout):
            raise RuntimeError(f"Spark master did not open port {port}; see {home / 'logs' / 'master.log'}")
    for i in range(workers):
        pid_file = home / f"worker-{i}.pid"
        if read_pid(pid_file) is not None:
            continue
        work_dir = home / f"work-{i}"
        work_dir.mkdir(exist_ok=True)
        spawn(
            _spark_class("org.apache.spark.deploy.worker.Worker", master_url(settings), "--host", "127.0.0.1",
                         "--cores", "1", "--memory", "2g", "--work-dir", str(work_dir),
                         "--webui-port", str(port + 1004 + i)),
            home / "logs" / f"worker-{i}.log", pid_file, env=env,
        )
    if not wait_until(lambda: _registered_workers(settings) >= workers, timeout):
        raise RuntimeError(f"Spark workers did not register in {timeout:.0f}s; see {home / 'logs'}")
    return status(settings)


def stop(settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    home = _home(settings)
    stopped = False
    for pid_file in sorted(home.glob("worker-*.pid")):
        stopped |= stop_pid(pid_file, timeout=15)
    stopped |= stop_pid(home / "master.pid", timeout=15)
    return stopped
