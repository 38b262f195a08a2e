"""The pytest processes that use the suite's broker (`kafka_broker` in conftest.py), counted in a
file under the state folder: the last one out stops a broker the suite started, never one that was
already up. A process killed without leaving is dropped the next time anyone joins or leaves; a
broker it started is still the suite's, and the last process of a later run stops it."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Callable

from touchpoint.core.config import Settings
from touchpoint.infra import kafka
from touchpoint.core.process import pid_alive


def _update(settings: Settings, change: Callable[[dict], object]):
    settings.state_path.mkdir(parents=True, exist_ok=True)
    users_file = settings.state_path / "kafka-suite-users.json"  # {"started_pid": int | None, "pids": [...]}
    with open(settings.state_path / "kafka-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers take turns: one starts the broker, the others find it up
        users = json.loads(users_file.read_text()) if users_file.exists() else {}
        users = {"started_pid": users.get("started_pid"),
                 "pids": [pid for pid in users.get("pids", []) if pid_alive(pid)]}  # a killed run leaves its pid
        result = change(users)
        users_file.write_text(json.dumps(users))
        return result


def join(settings: Settings, pid: int | None = None) -> kafka.BrokerStatus:
    """Count `pid` (this process) as a user and make sure the broker is up."""
    def change(users: dict) -> kafka.BrokerStatus:
        current = kafka.status(settings)
        suite_starts = False
        # With no live user, the broker is the suite's only if it is the very process a run started.
        if not users["pids"] and not (current.running and current.pid == users["started_pid"]):
            users["started_pid"] = None
            suite_starts = not current.answering
        users["pids"].append(pid or os.getpid())
        broker = kafka.start(settings)
        if suite_starts:
            users["started_pid"] = broker.pid
        return broker

    return _update(settings, change)


def leave(settings: Settings, pid: int | None = None) -> bool:
    """Stop counting `pid`; True when it was the last user and the broker, started by the suite, stopped."""
    def change(users: dict) -> bool:
        users["pids"] = [p for p in users["pids"] if p != (pid or os.getpid())]
        if not users["pids"] and users["started_pid"] is not None:
            users["started_pid"] = None
            return kafka.stop(settings)
        return False

    return _update(settings, change)
