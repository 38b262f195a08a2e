"""What the fault drills (tests/test_drills_*.py) and the benchmarks share: processes we start and
kill by PID, a private Kafka broker, background traffic from the generator, lake readers, and a
resident-memory sampler.

Nothing here stops a process it did not start: every kill takes the PID (or process group) of a
child this module spawned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
JARS = REPO / ".state" / "jars"


# ---- small utilities ------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = "condition",
             diagnose: Callable[[], str] | None = None) -> None:
    """Poll `predicate` until it holds; TimeoutError after `timeout` s, with what `diagnose` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if not predicate():
        detail = ""
        if diagnose is not None:
            try:
                detail = "\n" + diagnose()
            except Exception as error:  # the timeout is the failure to report, not the diagnosis
                detail = f"\n(diagnosis failed: {error!r})"
        raise TimeoutError(f"{what} not reached within {timeout:.0f}s{detail}")


def stream_diagnosis(spark, query, dump_dir: Path) -> Callable[[], str]:
    """A `diagnose` for a wait on a query of this process's driver: the query's status and last
    progress, and the stack of its stream execution thread; full thread dumps of the driver JVM
    (jcmd) and of this Python process are written to `dump_dir`."""

    def diagnose() -> str:
        import faulthandler

        dump_dir.mkdir(parents=True, exist_ok=True)
        with open(dump_dir / "python-threads.txt", "w") as python_dump:
            faulthandler.dump_traceback(python_dump, all_threads=True)
        jvm_pid = spark._jvm.java.lang.ProcessHandle.current().pid()
        jvm_dump = subprocess.run(["jcmd", str(jvm_pid), "Thread.print"], capture_output=True, text=True,
                                  timeout=120).stdout
        (dump_dir / "jvm-threads.txt").write_text(jvm_dump)
        stream_threads = [block for block in jvm_dump.split("\n\n") if "stream execution thread" in block]
        progress = query.lastProgress or {}
        return "\n".join([
            f"query active: {query.isActive}; status: {query.status}",
            f"last progress: batch {progress.get('batchId')} at {progress.get('timestamp')}",
            f"thread dumps: {dump_dir}",
            *["\n".join(block.splitlines()[:40]) for block in stream_threads],
        ])

    return diagnose


def subprocess_env(lake_root: Path | str, **overrides: str) -> dict[str, str]:
    """Environment of a touchpoint child process: a private lake plus TOUCHPOINT_* overrides
    (keys as in Settings, nested with '__', e.g. STREAM__TRIGGER_SECONDS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    # ...except the broker (it is the run's: a child must reach the topics the run made) and the
    # JVM options the test suite chose for its children.
    for key in ("TOUCHPOINT_KAFKA_BOOTSTRAP", "TOUCHPOINT_SPARK_JVM_OPTIONS"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update({"TOUCHPOINT_LAKE_ROOT": str(lake_root), "TOUCHPOINT_JARS_DIR": str(JARS),
                "TOUCHPOINT_SPARK_SHUFFLE_PARTITIONS": "2", "PYTHONUNBUFFERED": "1"})
    env.update({f"TOUCHPOINT_{key.upper()}": str(value) for key, value in overrides.items()})
    return env


def lake_settings(lake_root: Path | str, **overrides):
    """In-process settings of a drill or benchmark on a private lake, as `subprocess_env` gives a child:
    the project's jars and 2 shuffle partitions, plus overrides (Settings fields)."""
    from touchpoint.core.config import load_settings

    return load_settings(**{"lake_root": str(lake_root), "jars_dir": str(JARS), "spark_shuffle_partitions": 2,
                            **overrides})


# ---- child processes --------------------------------------------------------------------------------

class ChildProcess:
    """A touchpoint command in its own session, logging to a file. `kill()` SIGKILLs its whole
    process group (the Python driver and the JVM it launched) by the group id we created."""

    def __init__(self, args: list[str], env: dict[str, str], log_file: Path):
        self.args = args
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_file, "ab")
        self.proc = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)
        self._reap_group()
        self._log.close()

    def _reap_group(self) -> None:
        # The JVM is in the same group; make sure it is gone before the next run reuses the lake.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._reap_group()
                self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def ingest_args(topic: str, available_now: bool = False, query_name: str = "ingest") -> list[str]:
    args = ["-m", "touchpoint", "stream", "ingest", "--topic", topic, "--query-name", query_name]
    return args + (["--available-now"] if available_now else [])


def speed_cli_available() -> bool:
    """Whether `touchpoint stream speed` exists (the speed layer's CLI)."""
    try:
        from touchpoint.cli import stream_app
    except ImportError:
        return False
    return any((command.name or getattr(command.callback, "__name__", "")) in ("speed", "stream_speed")
               for command in stream_app.registered_commands)


# Used while `touchpoint stream speed` does not exist: the same start_stream the CLI would call.
_SPEED_RUNNER = (
    "import sys; from touchpoint.core.config import get_settings; from touchpoint.core.spark import get_spark; "
    "from touchpoint.streaming.speed import start_stream; settings = get_settings(); "
    "query = start_stream(get_spark('touchpoint-stream-speed', settings=settings), settings, "
    "trigger_once={available_now}); query.awaitTermination(); sys.exit(1 if query.exception() else 0)"
)


def speed_args(available_now: bool = False, views: str = "all", nice: int = 0) -> list[str]:
    if speed_cli_available():
        return (["-m", "touchpoint", "stream", "speed"] + (["--available-now"] if available_now else [])
                + (["--views", views] if views != "all" else []) + (["--nice", str(nice)] if nice else []))
    if views != "all" or nice:
        raise RuntimeError("--views and --nice need `touchpoint stream speed`")
    return ["-c", _SPEED_RUNNER.format(available_now=available_now)]


# ---- lake readers (delta-rs: no Spark session needed) ---------------------------------------------

def read_table(path: str, columns: list[str] | None = None) -> list[dict]:
    """All rows of a Delta table, or [] when it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(path).to_pyarrow_table(columns=columns).to_pylist()
    except TableNotFoundError:
        return []


def lake_table(settings, name: str, columns: list[str] | None = None) -> list[dict]:
    from touchpoint.core.catalog import table_path

    return read_table(table_path(name, settings), columns)


def reconciliation_totals(settings) -> dict[str, int]:
    batches = lake_table(settings, "silver.reconciliation")
    return {key: sum(b[key] for b in batches) for key in ("bronze", "silver", "quarantine", "duplicates")}


def committed_batches(settings) -> int:
    return len(lake_table(settings, "silver.reconciliation", ["batch_id"]))


def ingested_all(settings, lines: int, source: str = "stream:ingest") -> bool:
    """Whether `source` has taken `lines` Kafka records and the batch that took the last of them has
    committed its silver append. Reconciliation is written before silver (silver is a batch's last
    write), so its counts alone run ahead: stopping the query then would interrupt that append."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import committed_batch

    batches = [row for row in lake_table(settings, "silver.reconciliation", ["source", "batch_id", "bronze"])
               if row["source"] == source]
    if not batches or sum(row["bronze"] for row in batches) < lines:
        return False
    silver = committed_batch(table_path("silver.events", settings), f"{source}:silver.events")
    return silver is not None and silver >= max(row["batch_id"] for row in batches)


# ---- generated traffic --------------------------------------------------------------------------------

def valid_event_ids(config, lines: int | None = None) -> list[str]:
    """The event_ids of the valid events among the first `lines` records a generator config produces
    (all when None; duplicates not repeated). They come from the seeded simulation alone, and a run
    cut short sends a prefix of the same sequence, so real-time and historical runs agree."""
    from itertools import islice

    from touchpoint.generator import iter_records

    return [json.loads(record.payload)["event_id"].strip()
            for record in islice(iter_records(config), lines) if record.kind == "valid"]


class BackgroundGenerator(threading.Thread):
    """The generator in real time (`rate` lines/s) into a Kafka topic, in a thread, until its traffic
    ends or `stop()` is called, through the generator's own producer (`touchpoint.generator.KafkaSink`:
    idempotent, acks=all, partition = CRC-32 of the key). `result()` returns the generator's report of
    what it sent; `valid_event_ids(config, report["lines"])` are the valid ids among them. With
    `processes` > 1 the generator runs in that many processes (`touchpoint.generator.generate`), each
    a shard of the customers; the report's "shards" name each shard's seed, offset and lines."""

    def __init__(self, topic: str, bootstrap: str, config, rate: float, processes: int = 1, lookahead: int = 0,
                 **pacing):
        """`pacing`: the generator's Pacer options (burst_factor, burst_start, burst_seconds, duration);
        `lookahead`: lines simulated ahead while the pacing waits (`touchpoint.generator.iter_records`)."""
        import multiprocessing

        super().__init__(daemon=True, name="generator")
        self.topic, self.bootstrap, self.config, self.rate, self.pacing = topic, bootstrap, config, rate, pacing
        self.processes, self.lookahead = processes, lookahead
        self.report: dict | None = None
        self.error: BaseException | None = None
        # the generator's processes, when it has them, are spawned: the event must reach them
        self._stop_requested = (threading.Event() if processes == 1
                                else multiprocessing.get_context("spawn").Event())

    def stop(self) -> None:
        self._stop_requested.set()

    def run(self) -> None:
        from touchpoint.generator import GenerationReport, KafkaSink, Pacer, generate, iter_records

        if self.processes > 1:
            try:
                self.report = generate(self.config, output="kafka", topic=self.topic, bootstrap=self.bootstrap,
                                       rate=self.rate, processes=self.processes, lookahead=self.lookahead,
                                       stop_event=self._stop_requested, **self.pacing)
            except BaseException as error:  # surfaced by result()
                self.error = error
            return
        try:
            sink = KafkaSink(self.bootstrap, self.topic, metadata_timeout=60)
            report = GenerationReport()
            pacer = Pacer(self.rate, **self.pacing)
            stop = lambda: self._stop_requested.is_set() or pacer.expired()  # noqa: E731
            try:
                for record in iter_records(self.config, report, clock=pacer, stop=stop, lookahead=self.lookahead):
                    sink.write(record)
            except BaseException:
                sink.abort()
                raise
            sink.close()  # raises when a record was not delivered
            self.report = report.as_dict()
        except BaseException as error:  # surfaced by result()
            self.error = error

    def result(self, timeout: float) -> dict:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"generator still producing after {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        return self.report


# ---- a private broker (never the shared one on 9092) ----------------------------------------------

@contextmanager
def private_broker(state_dir: Path, partitions: int = 2) -> Iterator:
    """A single-node KRaft broker on free ports with its own state folder; stopped (by the PID file
    in that folder) on exit. Yields the settings that point at it."""
    from touchpoint.core.config import load_settings
    from touchpoint.infra import kafka

    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
                             state_dir=str(state_dir), jars_dir=str(JARS), kafka_partitions=partitions)
    kafka.start(settings, timeout=120)
    try:
        yield settings
    finally:
        kafka.stop(settings)


def broker_pid(settings) -> int | None:
    from touchpoint.infra import kafka

    return kafka.status(settings).pid


# ---- resident memory -----------------------------------------------------------------------------

def process_role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "kafka.Kafka" in text:
        return "broker_jvm"
    if "org.apache.spark.deploy.SparkSubmit" in text or "pyspark-shell" in text:
        return "spark_driver_jvm"
    if "CoarseGrainedExecutorBackend" in text:
        return "spark_executor_jvm"
    if "pyspark.daemon" in text or "pyspark.worker" in text:
        return "python_workers"
    if cmdline and "python" in Path(cmdline[0]).name:
        return "python_driver"
    return "other"


JVM_ROLES = ("broker_jvm", "spark_driver_jvm", "spark_executor_jvm")


def unexeced_jvm_fork(role: str, cmdline: list[str], parent_cmdline: list[str] | None) -> bool:
    """Whether a process is a JVM's child caught between fork and exec: it still shows its parent's
    command line and, sharing its parent's pages, its parent's resident set. A Spark JVM spawns a
    process for every `readlink` Hadoop's local file system runs (155 in a few small Delta writes,
    session 36), so a sample taken then would count the JVM twice. JVMs never fork without exec;
    Python's workers do (pyspark.daemon), and are counted."""
    return role in JVM_ROLES and parent_cmdline is not None and cmdline == parent_cmdline


def _cmdline(proc) -> list[str] | None:
    """A process's command line, None when there is no process or it has exited."""
    import psutil

    try:
        return proc.cmdline() if proc is not None else None
    except psutil.Error:
        return None


@dataclass
class RssSampler:
    """Samples resident memory (and CPU time) of process trees every `interval` s in a thread. Memory
    peaks are per role (the sum over a role's processes at one instant), so a process that restarts
    is still counted; CPU time is per root (`cpu_by_root`).

    `peaks_mb` is the whole resident set. It counts file pages a process has mapped, which the
    kernel gives back under pressure: a Spark JVM maps the shuffle and block files it reads, so
    on a machine with free memory its resident set can exceed its heap by far. `peaks_anon_mb`
    is the anonymous part alone (heap, native memory, stacks: resident set minus file-backed and
    shared pages), what the process itself holds. With `names` (root pid -> a name, e.g. "ingest"),
    `peaks_anon_by_tree_mb` keeps the same per "<name>/<role>": which process a role's peak was."""

    roots: Callable[[], list[int]]
    interval: float = 0.5
    names: Callable[[], dict[int, str]] | None = None
    peaks_mb: dict[str, float] = field(default_factory=dict)
    peaks_anon_mb: dict[str, float] = field(default_factory=dict)
    peaks_anon_by_tree_mb: dict[str, float] = field(default_factory=dict)
    samples: int = 0

    def __post_init__(self) -> None:
        self._cpu: dict[int, tuple[int, float]] = {}  # pid -> (its root, CPU seconds at the last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def cpu_by_root(self) -> dict[int, float]:
        """CPU seconds (user + system) each root's process tree has used so far. A member that has
        exited keeps its last sampled time, so sample often enough (`interval`) to see it."""
        self.sample()
        totals: dict[int, float] = {}
        for root, seconds in list(self._cpu.values()):  # the sampling thread may add to it
            totals[root] = round(totals.get(root, 0.0) + seconds, 1)
        return totals

    def sample(self) -> dict[str, float]:
        import psutil

        seen: dict[int, "psutil.Process"] = {}
        tree_of: dict[int, int] = {}
        for root in self.roots():
            try:
                proc = psutil.Process(root)
                for member in [proc, *proc.children(recursive=True)]:
                    seen[member.pid] = member
                    tree_of[member.pid] = root
                    times = member.cpu_times()
                    self._cpu[member.pid] = (root, times.user + times.system)
            except psutil.Error:
                continue
        now: dict[str, float] = {}
        anon: dict[str, float] = {}
        by_tree: dict[str, float] = {}
        names = self.names() if self.names else {}
        for proc in seen.values():
            try:
                cmdline = proc.cmdline()
                role = process_role(cmdline)
                if unexeced_jvm_fork(role, cmdline, _cmdline(seen.get(proc.ppid()))):
                    continue
                memory = proc.memory_info()
                now[role] = now.get(role, 0.0) + memory.rss / 2**20
                # Linux: `shared` is the resident file-backed and shared-memory pages (RssFile + RssShmem).
                anonymous = (memory.rss - getattr(memory, "shared", 0)) / 2**20
                anon[role] = anon.get(role, 0.0) + anonymous
                tree = f"{names.get(tree_of[proc.pid], tree_of[proc.pid])}/{role}"
                by_tree[tree] = by_tree.get(tree, 0.0) + anonymous
            except psutil.Error:
                continue
        for role, mb in now.items():
            self.peaks_mb[role] = max(self.peaks_mb.get(role, 0.0), round(mb, 1))
            self.peaks_anon_mb[role] = max(self.peaks_anon_mb.get(role, 0.0), round(anon[role], 1))
        if self.names:
            for tree, mb in by_tree.items():
                self.peaks_anon_by_tree_mb[tree] = max(self.peaks_anon_by_tree_mb.get(tree, 0.0), round(mb, 1))
        self.samples += 1
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
