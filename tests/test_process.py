"""`core.process`: services and streams are started and stopped by the PID file they were given,
which names one process: its PID and its start time."""

import sys

from touchpoint.core.process import kill_pid, pid_alive, read_pid, spawn, start_ticks, stop_pid


def test_a_pid_file_names_one_process_not_whatever_holds_its_pid_later(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    pid = spawn([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "sleeper.log", pid_file)
    try:
        recorded = pid_file.read_text().split()
        assert recorded == [str(pid), start_ticks(pid)] and int(recorded[1]) > 0
        assert read_pid(pid_file) == pid
        # the same PID recorded with another start time: the kernel handed it to this process later
        pid_file.write_text(f"{pid}\n{int(recorded[1]) - 1}\n")
        assert read_pid(pid_file) is None
        assert stop_pid(pid_file) is False and pid_alive(pid)  # not signalled
        assert not pid_file.exists()  # a stale file is cleared
        pid_file.write_text(f"{pid}\n")  # a file from before start times were recorded: trusted
        assert read_pid(pid_file) == pid
        pid_file.write_text(" ".join(recorded))
        assert stop_pid(pid_file) is True and not pid_alive(pid)
    finally:
        if pid_alive(pid):
            kill_pid(pid)
