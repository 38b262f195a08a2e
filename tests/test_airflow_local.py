"""`touchpoint airflow`: a real local Airflow on loopback serving the project's DAGs, stopped by PID."""

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from touchpoint.core.config import load_settings
from touchpoint.infra import airflow_local
from touchpoint.core.process import pid_alive, wait_until

EXPECTED_DAGS = {"lake_maintenance", "marketing_daily", "privacy_erasure", "streaming_supervisor"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(url: str, token: str | None = None, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _listening_ports_of(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets a process listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


@pytest.mark.slow
def test_local_airflow_serves_the_dags_on_loopback_and_stops(tmp_path):
    settings = load_settings(state_dir=str(tmp_path / "state"), airflow_port=_free_port())
    try:
        state = airflow_local.start(settings)
        assert state.running and state.url == f"http://127.0.0.1:{settings.airflow_port}"
        token = _call(f"{state.url}/auth/token", body={"username": state.username,
                                                       "password": state.password})["access_token"]

        def dag_ids() -> set[str]:
            return {dag["dag_id"] for dag in _call(f"{state.url}/api/v2/dags", token)["dags"]}

        assert wait_until(lambda: dag_ids() == EXPECTED_DAGS, 180, interval=2), dag_ids()
        # every component listens on loopback only (127.0.0.1 is 0100007F in /proc/net/tcp)
        for name in airflow_local.COMPONENTS:
            pid = airflow_local.read_pid(airflow_local._pid_file(settings, name))
            for address, port in _listening_ports_of(pid):
                assert address == "0100007F", (name, address, port)
        pids = [airflow_local.read_pid(airflow_local._pid_file(settings, name)) for name in airflow_local.COMPONENTS]
    finally:
        stopped = airflow_local.stop(settings)
    assert stopped
    assert not any(pid_alive(pid) for pid in pids)
    assert not airflow_local.status(settings).running
