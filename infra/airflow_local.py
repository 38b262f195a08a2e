"""A local Airflow for the project's DAGs, like `airflow standalone`: its own home and SQLite metadata DB
under the state folder, the API server on 127.0.0.1, each component started and stopped by its PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from touchpoint.core.config import Settings
from touchpoint.core.process import port_open, read_pid, spawn, stop_pid, wait_until

REPO = Path(__file__).resolve().parents[1]
ADMIN = "admin"


@dataclass(frozen=True)
class AirflowState:
    running: bool
    pid: int | None
    url: str
    username: str
    password: str | None
    home: Path
    log_file: Path


def home(settings: Settings) -> Path:
    return settings.state_path / "airflow"


# The components `airflow standalone` would start, run one by one so that each binds loopback only:
# standalone's scheduler and triggerer also start a log server on 0.0.0.0, which the local executor
# does not need (task logs are files the API server reads directly).
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def _pid_file(settings: Settings, component: str) -> Path:
    return home(settings) / f"{component}.pid"


def _log_file(settings: Settings, component: str = "api-server") -> Path:
    return home(settings) / f"{component}.log"


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.airflow_port}"


def environment(settings: Settings) -> dict[str, str]:
    """Airflow config as AIRFLOW__* variables: nothing is written into the repository."""
    airflow_home = home(settings)
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url(settings)}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        # standalone starts its components as `airflow ...` from PATH: the one next to this interpreter
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        # the project's own settings reach the tasks unchanged
        "TOUCHPOINT_STATE_DIR": str(settings.state_path),
    }


def _password(settings: Settings) -> str | None:
    try:
        return json.loads((home(settings) / "passwords.json").read_text()).get(ADMIN)
    except (FileNotFoundError, ValueError):
        return None


def healthy(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{url(settings)}/api/v2/monitor/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _pids(settings: Settings) -> dict[str, int | None]:
    return {name: read_pid(_pid_file(settings, name)) for name in COMPONENTS}


def status(settings: Settings) -> AirflowState:
    pids = _pids(settings)
    running = all(pid is not None for pid in pids.values()) and healthy(settings)
    return AirflowState(running, pids["api-server"], url(settings), ADMIN, _password(settings), home(settings),
                        _log_file(settings))


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def start(settings: Settings, timeout: float = 240) -> AirflowState:
    """Migrate the metadata DB, start the four components in the background (idempotent) and wait
    until the API answers."""
    current = status(settings)
    if current.running:
        return current
    pids = _pids(settings)
    if pids["api-server"] is None and port_open("127.0.0.1", settings.airflow_port):
        raise RuntimeError(f"port {settings.airflow_port} on 127.0.0.1 is taken by another process: "
                           f"set airflow_port (TOUCHPOINT_AIRFLOW_PORT) to a free port")
    home(settings).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **environment(settings)}
    migrated = subprocess.run(_airflow("db", "migrate"), env=env, cwd=REPO, capture_output=True, text=True)
    if migrated.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{migrated.stderr[-3000:]}")
    for name, args in COMPONENTS.items():
        if pids[name] is None:
            spawn(_airflow(*args), _log_file(settings, name), _pid_file(settings, name), env=environment(settings),
                  cwd=REPO)

    def ready_or_dead() -> bool:
        return healthy(settings) or any(pid is None for pid in _pids(settings).values())

    wait_until(ready_or_dead, timeout, interval=1)
    if not healthy(settings) or any(pid is None for pid in _pids(settings).values()):
        logs = "\n".join(f"--- {name}\n" + _log_file(settings, name).read_text(errors="replace")[-1500:]
                         for name in COMPONENTS if _log_file(settings, name).exists())
        stop(settings)
        raise RuntimeError(f"Airflow did not come up within {timeout:.0f}s; logs under {home(settings)}:\n{logs}")
    wait_until(lambda: _password(settings) is not None, 30, interval=0.5)
    return status(settings)


def stop(settings: Settings) -> bool:
    """Stop every component by its recorded PID (SIGTERM, then SIGKILL). True if any was running."""
    return any([stop_pid(_pid_file(settings, name)) for name in COMPONENTS])
