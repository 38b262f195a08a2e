"""Start and stop background JVM services by PID file (never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22), None if unknown.
    With its PID it names one process: a PID the kernel hands out again gets another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces
    return fields[19] if len(fields) > 19 else None


def read_pid(pid_file: Path) -> int | None:
    """The recorded process if it still runs. A file records the PID and its start time: a PID now
    held by another process (after a reboot, or reused) is no longer the recorded one, so it is
    never reported alive, nor signalled by stop_pid. A file of the PID alone is trusted as is."""
    try:
        lines = pid_file.read_text().split()
        pid = int(lines[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    if len(lines) > 1 and start_ticks(pid) not in (None, lines[1]):
        return None
    return pid


def write_pid(pid_file: Path, pid: int) -> None:
    ticks = start_ticks(pid)
    pid_file.write_text(f"{pid}\n{ticks}\n" if ticks is not None else f"{pid}\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return True


def spawn(command: list[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start a detached process in its own session, log to a file, record its PID."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    write_pid(pid_file, proc.pid)
    return proc.pid


def wait_until(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop_pid(pid_file: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after `timeout`. True if one was running."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), timeout):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10)
    _reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def kill_pid(pid: int) -> None:
    """SIGKILL one process (fault drills)."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
