"""Delta helpers every writer shares: table creation with privacy-safe statistics, idempotent DML."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from touchpoint.core.catalog import TABLES


log = logging.getLogger(__name__)
T = TypeVar("T")
CONFLICT_ATTEMPTS = 3
# A live table creation commits within seconds; a `_delta_log` without a commit this old was abandoned.
ABANDONED_CREATE_SECONDS = 15.0
# Files that make a `_delta_log` a table's log: commits, checksums, checkpoints, compactions (all
# named from a version) and the checkpoint pointer. Unfinished writes are hidden `.<name>.tmp` files.
_LOG_FILE = re.compile(r"^(\d{20}\..+|_last_checkpoint)$")

# Types Delta can collect min/max statistics for.
_STATS_TYPES = {"string", "long", "integer", "double", "float", "date", "timestamp", "timestamp_ntz", "decimal",
                "short", "byte"}


def _table_properties(schema: StructType, catalog_name: str | None,
                      partition_by: Sequence[str]) -> dict[str, str]:
    properties: dict[str, str] = {}
    table = TABLES.get(catalog_name) if catalog_name else None
    if table is not None and table.change_feed:
        properties["delta.enableChangeDataFeed"] = "true"
    if table is not None and table.pii_columns:
        # Statistics of PII columns would put raw values into _delta_log (BRIEF §8): collect none.
        safe = [f.name for f in schema.fields if f.name not in table.pii_columns and f.name not in partition_by
                and f.dataType.typeName() in _STATS_TYPES]
        properties["delta.dataSkippingStatsColumns"] = ",".join(f"`{name}`" for name in safe)
    return properties


def ensure_table(spark: SparkSession, path: str, schema: StructType, partition_by: Sequence[str] = (),
                 catalog_name: str | None = None, properties: Mapping[str, str] | None = None) -> None:
    """Create an empty Delta table at `path` if none exists (with `properties` besides the catalog's).
    Safe to call before every write."""
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        return
    _clear_abandoned_creation(spark, path)
    # Hadoop writes a local URI as file:/x; Delta refuses `file:///x` as a second, "ambiguous" location.
    location = "file:/" + path.removeprefix("file://").lstrip("/") if path.startswith("file://") else path
    builder = DeltaTable.createIfNotExists(spark).location(location).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in {**_table_properties(schema, catalog_name, partition_by), **(properties or {})}.items():
        builder = builder.property(key, value)
    try:
        builder.execute()
    except Exception:
        # Another writer created it between the check above and this creation (two speed processes
        # starting at once): Delta refuses the second creation (DELTA_PROTOCOL_CHANGED, or
        # DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION while the other commit is still being made).
        if not _created_meanwhile(spark, path):
            raise


def _created_meanwhile(spark: SparkSession, path: str, wait_seconds: float = 10.0) -> bool:
    """Whether a Delta table exists at `path`, giving a creation under way `wait_seconds` to commit."""
    from delta.tables import DeltaTable

    deadline = time.monotonic() + wait_seconds
    while not DeltaTable.isDeltaTable(spark, path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def _hadoop_path(spark: SparkSession, uri: str):
    """(Hadoop Path, its FileSystem): what Spark itself uses for a URI (s3a://, file://, ...)."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsparkSession.sessionState().newHadoopConf())


def remove_tree(spark: SparkSession, uri: str) -> None:
    """Delete a folder and everything under it, on a local lake or any file system Spark reaches."""
    if "://" not in uri:
        shutil.rmtree(uri, ignore_errors=True)
        return
    path, filesystem = _hadoop_path(spark, uri)
    if filesystem.exists(path):
        filesystem.delete(path, True)


def folder_exists(spark: SparkSession, uri: str) -> bool:
    if "://" not in uri:
        return Path(uri).is_dir()
    path, filesystem = _hadoop_path(spark, uri)
    return bool(filesystem.exists(path))


def make_folder(spark: SparkSession, uri: str) -> None:
    if "://" not in uri:
        Path(uri).mkdir(parents=True, exist_ok=True)
        return
    path, filesystem = _hadoop_path(spark, uri)
    filesystem.mkdirs(path)


def subfolders(spark: SparkSession, uri: str) -> list[str]:
    """Names of the folders right under `uri` (none when it does not exist), sorted."""
    if "://" not in uri:
        return sorted(p.name for p in Path(uri).iterdir() if p.is_dir()) if Path(uri).is_dir() else []
    path, filesystem = _hadoop_path(spark, uri)
    if not filesystem.exists(path):
        return []
    return sorted(status.getPath().getName() for status in filesystem.listStatus(path) if status.isDirectory())


def _clear_abandoned_creation(spark: SparkSession, path: str) -> None:
    """Remove the `_delta_log` of a creation that never committed (its process was killed between
    writing commit 0's temporary file and renaming it): Delta refuses to create a table over it
    (DELTA_TABLE_NOT_FOUND), and nothing was ever written there. Leftovers younger than
    ABANDONED_CREATE_SECONDS may belong to a creation still running: wait out the rest first."""
    log_dir, filesystem = _hadoop_path(spark, f"{path.rstrip('/')}/_delta_log")
    for attempt in (1, 2):  # a second look after waiting; then what is left is abandoned
        if not filesystem.exists(log_dir):
            return
        entries = list(filesystem.listStatus(log_dir))
        if any(_LOG_FILE.match(entry.getPath().getName()) for entry in entries):
            return  # a table's log (or one that committed meanwhile): Delta's to judge
        # The folder's own time counts too: a creation that has only made the folder is fresh.
        newest = max(entry.getModificationTime() / 1000
                     for entry in [filesystem.getFileStatus(log_dir), *entries])
        wait = newest + ABANDONED_CREATE_SECONDS - time.time()
        if attempt == 1 and wait > 0:
            time.sleep(min(wait, ABANDONED_CREATE_SECONDS))
            continue
        log.warning("%s: removing the log of a table creation that never committed: %s", path,
                    sorted(entry.getPath().getName() for entry in entries))
        filesystem.delete(log_dir, True)
        return


def retry_on_conflict(write: Callable[[], None], what: str, attempts: int = CONFLICT_ATTEMPTS) -> None:
    """Run an idempotent Delta write, again when it lost Delta's optimistic commit race: a refused
    commit wrote nothing, and the write re-reads the table each time. Only for writes that are
    done once (BatchWrites, txnAppId/txnVersion, or by nature, like OPTIMIZE) and whose outcome does not
    depend on the rows a conflicting commit rewrote (OPTIMIZE changes files, not rows; a metadata
    change, neither)."""
    from delta.exceptions import (
        ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
        ConcurrentTransactionException, DeltaConcurrentModificationException, MetadataChangedException,
        ProtocolChangedException,
    )

    # Delta's Python conflict classes share no common base class: name each one.
    conflicts = (DeltaConcurrentModificationException, MetadataChangedException, ProtocolChangedException,
                 ConcurrentAppendException, ConcurrentDeleteReadException, ConcurrentDeleteDeleteException,
                 ConcurrentTransactionException)
    for attempt in range(1, attempts + 1):
        try:
            write()
            return
        except conflicts as conflict:
            if attempt == attempts:
                raise
            log.warning("%s lost a commit race (%s); attempt %s of %s", what, type(conflict).__name__,
                        attempt + 1, attempts)
            time.sleep(attempt)


@contextmanager
def commit_metadata(spark: SparkSession, text: str) -> Iterator[None]:
    """Tag every Delta commit made inside the block with `text` (its userMetadata, shown by DESCRIBE
    HISTORY): DML such as MERGE and DELETE takes it only from the session, not as a write option."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    outer = spark.conf.get(key, None)
    spark.conf.set(key, text)
    try:
        yield
    finally:
        if outer is None:
            spark.conf.unset(key)
        else:  # a block inside another's: the outer tag again
            spark.conf.set(key, outer)


@contextmanager
def idempotent_merge_conf(spark: SparkSession, app_id: str, version: int) -> Iterator[None]:
    """Make the DML inside the block a no-op if (app_id, version) already committed to its table."""
    spark.conf.set("spark.databricks.delta.write.txnAppId", app_id)
    spark.conf.set("spark.databricks.delta.write.txnVersion", str(version))
    try:
        yield
    finally:
        spark.conf.unset("spark.databricks.delta.write.txnAppId")
        spark.conf.unset("spark.databricks.delta.write.txnVersion")


def delta_rs_uri(path: str) -> str:
    """delta-rs names the S3 scheme s3://, Spark's Hadoop connector s3a://."""
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


def rs_table(path: str, version: int | None = None):
    """The table (at `version`, else the latest) as delta-rs reads it: metadata straight from the
    Delta log, no Spark job for bookkeeping."""
    from deltalake import DeltaTable as RsDeltaTable

    return RsDeltaTable(delta_rs_uri(path), version=version)


def is_delta(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def latest_version(spark: SparkSession | None, path: str) -> int:
    """The table's current Delta version (`spark` is unused: kept for the callers' signature)."""
    return rs_table(path).version()


def read_version(spark: SparkSession, path: str, version: int) -> DataFrame:
    return spark.read.format("delta").option("versionAsOf", version).load(path)


def unreadable_change_version(path: str, from_version: int, through: int | None = None) -> int | None:
    """The first version from `from_version` on (to `through`, else the latest) whose changes a
    change-feed reader can no longer read, or None. On a local table a version is unreadable when
    its commit left the log (log cleanup) or a file its changes are read from is gone (VACUUM, an
    erasure's purge): its change data files when it wrote any, else the files it added or removed as
    a data change. A table on an object store is taken as readable: a request per file is too dear,
    the read decides."""
    if "://" in path and not path.startswith("file://"):
        return None
    root = Path(path.removeprefix("file://"))
    for version in range(from_version, (latest_version(None, path) if through is None else through) + 1):
        commit = root / "_delta_log" / f"{version:020d}.json"
        if not commit.is_file():
            return version
        changes, data = [], []
        for line in commit.read_text().splitlines():
            action = json.loads(line) if line.strip() else {}
            if "cdc" in action:
                changes.append(action["cdc"]["path"])
            for kind in ("add", "remove"):
                if kind in action and action[kind].get("dataChange", True):
                    data.append(action[kind]["path"])
        if not files_present(path, changes or data):
            return version
    return None


def files_present(path: str, names: Iterable[str]) -> bool:
    """Whether these data files of a local table (paths as its log writes them) are on disk; the
    log outlives them (VACUUM deletes the files of old versions the log still lists). On an object
    store a listing per file costs a request each: there the read decides (True)."""
    if "://" in path and not path.startswith("file://"):
        return True
    root = Path(path.removeprefix("file://"))
    # Path.exists raises on a denied permission (os.path.exists would say "gone" and start a resync)
    return all("://" in name or (root / unquote(name)).exists() for name in names)


def snapshot_present(path: str, version: int) -> bool:
    """Whether a version of a table can still be read: its log entry and, locally, its data files."""
    import pyarrow as pa

    try:
        actions = pa.table(rs_table(path, version).get_add_actions(flatten=True))
    except Exception:  # the version left the log, or the table was replaced
        return False
    return files_present(path, actions.column("path").to_pylist())


def snapshot_fingerprint(path: str, version: int) -> str:
    """A digest of the data files (and deletion vectors) that make up a snapshot, from the log alone.
    Equal fingerprints mean the same rows; a table re-created or overwritten with the same rows has
    other files, hence another fingerprint, whatever its version numbers."""
    import hashlib

    import pyarrow as pa

    actions = pa.table(rs_table(path, version).get_add_actions(flatten=True))
    columns = ["path", *sorted(c for c in actions.column_names if c.lower().startswith(("deletionvector", "deletion_vector")))]
    entries = sorted("\t".join("" if v is None else str(v) for v in row)
                     for row in zip(*(actions.column(c).to_pylist() for c in columns)))
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:32]


# ---- batch marks: exactly-once streaming writes without Delta's per-commit transaction lookup ----------
# Delta makes a write idempotent by txnAppId/txnVersion, but to check them it rebuilds the table's
# state from its log at every commit: three more Spark jobs, 0.6 s a commit here
# (bench.ingest_fixed_costs), and a micro-batch makes four. A streaming sink instead marks each commit
# with (writer, batch) in its userMetadata, and reads the marks back from the log only when it starts
# or after a failed batch; in between, the marks it wrote itself are all there is to know.

BATCH_MARK = "touchpoint_batch"
_HISTORY_FIRST_PAGE = 64


def batch_mark(app_id: str, batch_id: int) -> str:
    """The userMetadata of a commit that holds `app_id`'s batch `batch_id` (shown by DESCRIBE HISTORY)."""
    return json.dumps({BATCH_MARK: {"app": app_id, "batch": batch_id}}, sort_keys=True)


def marked_batch(commit_info: Mapping, app_id: str) -> int | None:
    """The batch of `app_id` a commit (a history entry) holds, None for any other commit."""
    text = commit_info.get("userMetadata")
    if not isinstance(text, str) or BATCH_MARK not in text:
        return None
    try:
        mark = json.loads(text)[BATCH_MARK]
    except (ValueError, TypeError, KeyError):  # someone else's userMetadata that merely names ours
        return None
    if not isinstance(mark, dict) or mark.get("app") != app_id or not isinstance(mark.get("batch"), int):
        return None
    return mark["batch"]


def committed_batch(path: str, app_id: str) -> int | None:
    """The last batch `app_id` committed to the table, None if none: the mark of its newest marked
    commit, searched back through the log (a writer's batches only grow, so the newest is the last).
    A table that `app_id` wrote before marks existed answers with its txnVersion for `app_id`; a table
    not created yet, None."""
    from deltalake.exceptions import TableNotFoundError

    try:
        table = rs_table(path)
    except TableNotFoundError:
        return None
    batch = newest_mark(table, lambda commit: marked_batch(commit, app_id))
    return batch if batch is not None else table.transaction_version(app_id)


def newest_mark(table, mark: Callable[[Mapping], T | None]) -> T | None:
    """`mark(commit)` of the newest commit of a delta-rs table for which it is not None, searched
    back through the log in growing pages; None when no commit log retention kept has one."""
    limit = _HISTORY_FIRST_PAGE
    while True:
        commits = table.history(limit)
        for commit in commits:
            found = mark(commit)
            if found is not None:
                return found
        if len(commits) < limit:  # the whole log read
            return None
        limit *= 8


class BatchWrites:
    """A streaming sink's Delta writes, each done once per micro-batch: a replayed batch (the query
    restarted after a crash between its writes) skips the tables that already hold it. Writes are
    marked (`batch_mark`); what each table holds is read from its log once, then kept, and read
    again after a failed batch (`forget`), since a commit may have landed before the failure.

    Marks live as long as the commit log (Delta's `logRetentionDuration`, 30 days by default), which
    outlasts what a stream can replay (Kafka's retention; the change feed's, for the speed layer).
    A writer that may replay any time later (a file, ingested again) passes `txn_versions=True`:
    its writes also carry `txnAppId`/`txnVersion`, which Delta keeps in the table's state for good,
    at three more Spark jobs a commit."""

    def __init__(self, paths: Mapping[str, str], app_id: Callable[[str], str], txn_versions: bool = False):
        self._paths = paths
        self._app_id = app_id
        self._txn_versions = txn_versions
        self._committed: dict[str, int | None] = {}

    def committed(self, table: str) -> int | None:
        """The last batch written to `table` by this writer, None if none."""
        if table not in self._committed:
            self._committed[table] = committed_batch(self._paths[table], self._app_id(table))
        return self._committed[table]

    def holds(self, table: str, batch_id: int) -> bool:
        committed = self.committed(table)
        return committed is not None and committed >= batch_id

    def forget(self) -> None:
        self._committed.clear()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One micro-batch's writes: if it fails, what the tables hold is read from their logs again,
        since a commit may have landed before the failure."""
        try:
            yield
        except BaseException:
            self.forget()
            raise

    def write(self, frame: DataFrame, table: str, batch_id: int, mode: str = "append") -> bool:
        """Write `frame` to `table` as batch `batch_id` unless the table holds it; False when skipped.
        A write that lost a commit race wrote nothing and is retried (`retry_on_conflict`)."""
        if self.holds(table, batch_id):
            log.info("batch %s: %s already holds it (a replay); not written again", batch_id, table)
            return False
        app_id = self._app_id(table)
        options = {"userMetadata": batch_mark(app_id, batch_id)}
        if self._txn_versions:
            options.update(txnAppId=app_id, txnVersion=str(batch_id))
        retry_on_conflict(lambda: frame.write.format("delta").mode(mode).options(**options).save(self._paths[table]),
                          f"batch {batch_id}: {table} {mode}")
        self._committed[table] = batch_id
        return True


# ---- local lakes: one writer of published gold at a time, one ingest batch committing to silver at a
# time, and folders exchanged in one step -----------------------------------------------------------

@contextmanager
def _lake_lock(lake_uri: str, name: str, holders: str, timeout_seconds: float | None) -> Iterator[None]:
    """An advisory lock file `<lake>/_locks/<name>.lock`, for processes on one host (a local lake's
    readers and writers all are; flock also excludes two threads of one process); a no-op on an
    object store (a `file://` lake is a local folder: locked). Raises TimeoutError after
    `timeout_seconds` (None: wait as long as it takes)."""
    if "://" in lake_uri and not lake_uri.startswith("file://"):
        yield
        return
    path = Path(lake_uri.removeprefix("file://")) / "_locks" / f"{name}.lock"  # config allows file:/// only
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(path, "a+b") as handle:
        waiting_logged = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if timeout_seconds is not None and waited >= timeout_seconds:
                    raise TimeoutError(f"another {holders} still holds {path} after {waited:.1f} s; wait for it "
                                       "to finish, then run this again") from None
                if not waiting_logged:
                    log.info("waiting for %s: another %s is running", path, holders)
                    waiting_logged = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def gold_write_lock(lake_uri: str, timeout_seconds: float | None = None) -> AbstractContextManager[None]:
    """Hold the lake's gold write lock: publish (which exchanges table folders) and an erasure (which
    deletes rows from published gold) never overlap, so no commit lands in a folder being exchanged.
    On an object store publish overwrites through Delta's own conflict checks instead."""
    return _lake_lock(lake_uri, "gold", "gold writer (a publish or an erasure)", timeout_seconds)


def silver_write_lock(lake_uri: str, timeout_seconds: float | None = None) -> AbstractContextManager[None]:
    """Hold the lake's silver write lock. An ingest batch holds it from the end of its validation
    (the suppression list read again, the bronze append, the dedup plan) to its silver commit, so two
    ingest writers at once (the stream and a file ingest) each plan against silver as the other left
    it and an event id or order id both carry lands once (docs/INGESTION.md; Delta's blind appends do
    not conflict with each other). An erasure's last pass over the ingest's tables and its purge's
    full-VACUUM fallback hold it too (docs/PRIVACY.md). On an object store: not held."""
    return _lake_lock(lake_uri, "silver", "silver writer (an ingest batch, or an erasure's last pass or purge)",
                      timeout_seconds)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_folders(first: str | Path, second: str | Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 with RENAME_EXCHANGE): a reader of either
    path sees the old or the new folder, never neither. False, with nothing moved, where the system
    or the file system cannot do it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(first), str(second))
