"""The ingest sink's keyed lookup of silver's dedup keys: which event ids silver already holds on
the batch's dates, and which orders share an order id with the batch's orders.

Before, every micro-batch scanned the `event_id` column of the batch's `event_date` partitions
and every order of silver: a live stream's batch read the whole day (8M rows after 27 minutes at
5,000 events/s), so its cost grew all day. `SilverKeys` is a mirror of those keys in a SQLite
file beside the stream's checkpoints, kept at a silver version it records:

- at each batch it catches up with silver's change data feed from that version to the latest,
  read by delta-rs straight from the table (inserts add keys, deletes and update pre-images remove
  them, applied version by version), so it sees the other writers' rows too (a file backfill, an
  erasure, the displaced-orders delete);
- an `event_date` is loaded once, from a scan of that partition at the version caught up to, the
  first time a batch carries it; silver's orders are loaded once, from a scan of every date;
- when the change feed cannot be read (switched off, its files vacuumed, the table re-created:
  another table id), the mirror starts again from the latest version and reloads what it is asked
  for. The file is a cache: deleting it costs the scans once more, never a row.

So a batch costs its own keys, not the day's partition. The lookup answers for the version caught
up to, as the scan answered for the snapshot it read; a writer committing between that read and the
batch's commit was not seen by either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from touchpoint.core.config import Settings
from touchpoint.core.delta import rs_table

log = logging.getLogger(__name__)

_CHANGE_COLUMNS = ["event_id", "event_date", "event_type", "order_id", "event_ts", "_change_type",
                   "_commit_version"]
_REMOVALS = ("delete", "update_preimage")
_ADDITIONS = ("insert", "update_postimage")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS loaded_dates (event_date TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_ids (
    event_id TEXT NOT NULL, event_date TEXT NOT NULL, PRIMARY KEY (event_id, event_date)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL, event_id TEXT NOT NULL, event_ts_us INTEGER NOT NULL, event_date TEXT NOT NULL,
    PRIMARY KEY (order_id, event_id)) WITHOUT ROWID;
"""


def store_file(settings: Settings, source_id: str) -> Path:
    """Where a source's mirror lives: beside the stream checkpoints of a local lake, else under the
    state folder, keyed by the lake (SQLite needs a local file)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source_id) + ".sqlite"
    if "://" not in settings.lake_uri:
        return Path(settings.checkpoint_root) / "_silver_keys" / name
    lake = hashlib.sha256(settings.lake_uri.encode()).hexdigest()[:16]
    return settings.state_path / "silver_keys" / lake / name


def _dates_text(dates: pa.Array) -> list[str]:
    return pc.cast(dates, pa.string()).to_pylist()


def _as_pyarrow(reader) -> pa.Table:
    """delta-rs hands back arro3 readers; pyarrow takes them through the Arrow stream interface."""
    table = pa.RecordBatchReader.from_stream(reader).read_all()
    # Utf8View columns, as delta-rs reads strings, are cast to plain strings for compute and lists.
    return table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
                                 for f in table.schema]))


class SilverKeys:
    """The mirror of one silver table's dedup keys (module docstring). Not thread-safe: one sink's."""

    def __init__(self, silver_path: str, file: Path):
        self.silver_path = silver_path
        self.file = Path(file)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.file, isolation_level=None)  # transactions are explicit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a lost last transaction is caught up again
        self._db.execute("PRAGMA cache_size=-131072")  # 128 MiB of pages
        self._db.executescript(_SCHEMA)
        self.reloads = 0  # times the mirror started again (a change feed that could not be read)

    def close(self) -> None:
        self._db.close()

    # ---- state -----------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def version(self) -> int | None:
        """The silver version the mirror reflects (None before its first batch)."""
        value = self._meta("version")
        return None if value is None else int(value)

    @property
    def loaded_dates(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT event_date FROM loaded_dates")}

    def _reset(self, table_id: str, version: int) -> None:
        for table in ("loaded_dates", "event_ids", "orders", "meta"):
            self._db.execute(f"DELETE FROM {table}")
        self._set_meta("table_id", table_id)
        self._set_meta("version", str(version))

    # ---- catching up -----------------------------------------------------------------------------

    def sync(self, event_dates: Iterable[dt.date], orders: bool) -> int:
        """Bring the mirror to silver's latest version, with `event_dates` loaded and, when `orders`,
        silver's orders; returns that version. One SQLite transaction: a crash leaves the mirror at
        its previous version, which the next call catches up from."""
        table = rs_table(self.silver_path)
        latest, table_id = table.version(), table.metadata().id
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self.version
            if version is None or self._meta("table_id") != table_id or version > latest:
                self._reset(table_id, latest)
            elif version < latest:
                try:
                    changes = _as_pyarrow(table.load_cdf(starting_version=version + 1, ending_version=latest,
                                                         columns=_CHANGE_COLUMNS))
                except Exception as unreadable:  # noqa: BLE001 - any unreadable feed means: start again
                    log.warning("silver keys: the change feed of %s since version %s cannot be read (%s); "
                                "reloading the keys from version %s", self.silver_path, version + 1,
                                unreadable, latest)
                    self.reloads += 1
                    self._reset(table_id, latest)
                else:
                    self._apply(changes)
                    self._set_meta("version", str(latest))
            wanted = sorted({day.isoformat() for day in event_dates} - self.loaded_dates)
            if wanted:
                self._load_dates(table, wanted)
            if orders and self._meta("orders_loaded") is None:
                self._load_orders(table)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return latest

    def _apply(self, changes: pa.Table) -> None:
        """Silver's changes, version by version: within a version the removals go first, so a row
        deleted and written again in one commit (an update) stays."""
        loaded = self.loaded_dates
        orders_loaded = self._meta("orders_loaded") is not None
        for version in sorted(set(changes.column("_commit_version").to_pylist())):
            of_version = changes.filter(pc.equal(changes.column("_commit_version"), version))
            for kinds, statement_ids, statement_orders in (
                    (_REMOVALS, "DELETE FROM event_ids WHERE event_id = ? AND event_date = ?",
                     "DELETE FROM orders WHERE order_id = ? AND event_id = ?"),
                    (_ADDITIONS, "INSERT OR IGNORE INTO event_ids VALUES (?, ?)",
                     "INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?)")):
                rows = of_version.filter(pc.is_in(of_version.column("_change_type"), pa.array(kinds)))
                if not rows.num_rows:
                    continue
                dates = _dates_text(rows.column("event_date"))
                if loaded:
                    keep = [day in loaded for day in dates]
                    ids = rows.column("event_id").to_pylist()
                    self._db.executemany(statement_ids, [(event_id, day) for event_id, day, kept
                                                         in zip(ids, dates, keep) if kept])
                if orders_loaded:
                    self._orders(rows, dates, statement_orders, removal=kinds is _REMOVALS)

    def _orders(self, rows: pa.Table, dates: list[str], statement: str, removal: bool) -> None:
        is_order = pc.and_(pc.equal(rows.column("event_type"), "order"), pc.is_valid(rows.column("order_id")))
        order_rows = rows.filter(is_order)
        if not order_rows.num_rows:
            return
        order_dates = [day for day, is_one in zip(dates, is_order.to_pylist()) if is_one]
        order_ids, event_ids = order_rows.column("order_id").to_pylist(), order_rows.column("event_id").to_pylist()
        if removal:
            self._db.executemany(statement, zip(order_ids, event_ids))
            return
        stamps = pc.cast(order_rows.column("event_ts"), pa.int64()).to_pylist()
        self._db.executemany(statement, zip(order_ids, event_ids, stamps, order_dates))

    def _load_dates(self, table, wanted: Sequence[str]) -> None:
        dataset = table.to_pyarrow_dataset()
        days = pa.array([dt.date.fromisoformat(day) for day in wanted], pa.date32())
        for batch in dataset.to_batches(columns=["event_id", "event_date"], filter=pc.field("event_date").isin(days)):
            if batch.num_rows:
                self._db.executemany("INSERT OR IGNORE INTO event_ids VALUES (?, ?)",
                                     zip(batch.column("event_id").to_pylist(), _dates_text(batch.column("event_date"))))
        self._db.executemany("INSERT OR IGNORE INTO loaded_dates VALUES (?)", [(day,) for day in wanted])
        log.info("silver keys: loaded event dates %s of %s at version %s", ", ".join(wanted), self.silver_path,
                 table.version())

    def _load_orders(self, table) -> None:
        dataset = table.to_pyarrow_dataset()
        columns = ["order_id", "event_id", "event_ts", "event_date"]
        is_order = (pc.field("event_type") == "order") & pc.field("order_id").is_valid()
        for batch in dataset.to_batches(columns=columns, filter=is_order):
            if batch.num_rows:
                self._db.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?)", zip(
                    batch.column("order_id").to_pylist(), batch.column("event_id").to_pylist(),
                    pc.cast(batch.column("event_ts"), pa.int64()).to_pylist(),
                    _dates_text(batch.column("event_date"))))
        self._set_meta("orders_loaded", str(table.version()))

    # ---- lookups ---------------------------------------------------------------------------------

    def _probe(self, values: Iterable[str]) -> None:
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS probe (value TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("DELETE FROM probe")
        self._db.executemany("INSERT OR IGNORE INTO probe VALUES (?)", ((value,) for value in values))

    def ids_in_silver(self, event_ids: Iterable[str], event_dates: Iterable[dt.date]) -> list[str]:
        """The distinct `event_ids` silver holds on any of `event_dates` (all of them loaded by `sync`)."""
        days = sorted({day.isoformat() for day in event_dates})
        missing = set(days) - self.loaded_dates
        if missing:
            raise ValueError(f"silver keys: event dates {sorted(missing)} are not loaded; call sync() with them")
        if not days:
            return []
        self._db.execute("BEGIN")
        try:
            self._probe(event_ids)
            marks = ", ".join("?" * len(days))
            found = [row[0] for row in self._db.execute(
                f"SELECT DISTINCT e.event_id FROM probe p JOIN event_ids e ON e.event_id = p.value "
                f"WHERE e.event_date IN ({marks})", days)]
        finally:
            self._db.execute("COMMIT")
        return found

    def orders_sharing(self, order_ids: Iterable[str]) -> list[tuple[str, str, int, str]]:
        """(order_id, event_id, event_ts in µs, event_date) of silver's orders with one of `order_ids`."""
        if self._meta("orders_loaded") is None:
            raise ValueError("silver keys: orders are not loaded; call sync(orders=True)")
        self._db.execute("BEGIN")
        try:
            self._probe(order_ids)
            found = list(self._db.execute(
                "SELECT o.order_id, o.event_id, o.event_ts_us, o.event_date FROM probe p "
                "JOIN orders o ON o.order_id = p.value ORDER BY o.order_id, o.event_id"))
        finally:
            self._db.execute("COMMIT")
        return found
