"""The ingest sink's keyed lookup of silver's dedup keys: which event ids silver already holds on
the batch's dates, and which orders share an order id with the batch's orders.

Before, every micro-batch scanned the `event_id` column of the batch's `event_date` partitions
and every order of silver: a live stream's batch read the whole day (8M rows after 27 minutes at
5,000 events/s), so its cost grew all day. `SilverKeys` is a mirror of those keys in the driver's
memory, kept at a silver version it records:

- at each batch it catches up with silver's change data feed from that version to the latest,
  read by delta-rs straight from the table (inserts add keys, deletes and update pre-images remove
  them, applied version by version), so it sees the other writers' rows too (a file backfill, an
  erasure, the displaced-orders delete);
- an `event_date` is loaded once, from a scan of that partition at the version caught up to, the
  first time a batch carries it; silver's orders are loaded once, from a scan of every date;
- when the change feed cannot be read (switched off, its files vacuumed) or silver was created
  again (another table id), the mirror starts again from the latest version and reloads what it
  is asked for. A new process starts empty and loads the same way: nothing is lost with it.

An event id is kept as its 128-bit BLAKE2b digest, in sorted runs per date (16 bytes an id; a run
per catch-up, merged as in a log-structured merge tree, so a lookup is a binary search in a few
runs). Two distinct ids of one date share a digest with a probability of about n^2 / 2^129: 10^-21
for a billion ids. An order is kept whole (order id, event id, time, date), since the
earliest-order rule needs them.

Above `max_event_ids` (100M, 1.6 GB of digests) the dates batches asked for least recently are
dropped, and loaded again if a batch carries them later.

So a batch costs its own keys, not the day's partition. The lookup answers for the version caught
up to, as the scan answered for the snapshot it read; a writer committing between that read and the
batch's commit was not seen by either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from touchpoint.core.delta import rs_table

log = logging.getLogger(__name__)

_CHANGE_COLUMNS = ["event_id", "event_date", "event_type", "order_id", "event_ts", "_change_type",
                   "_commit_version"]
_REMOVALS = ("delete", "update_preimage")
_ADDITIONS = ("insert", "update_postimage")
_DIGEST = np.dtype("V16")


def digests(event_ids: Iterable[str]) -> np.ndarray:
    """The 128-bit BLAKE2b digest of each id, in order, as one numpy array of 16-byte values."""
    joined = b"".join(hashlib.blake2b(event_id.encode(), digest_size=16).digest() for event_id in event_ids)
    return np.frombuffer(joined, dtype=_DIGEST)


def _contains(run: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each of `keys`, whether the sorted `run` holds it."""
    if not len(run):
        return np.zeros(len(keys), dtype=bool)
    at = np.searchsorted(run, keys)
    return run[np.minimum(at, len(run) - 1)] == keys


class _DateKeys:
    """One date's event-id digests: sorted runs, the newest last; two runs are merged whenever the
    newer is at least half the older, so there are about log2(rows / batch) of them."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self.runs.append(np.unique(keys))
        while len(self.runs) > 1 and 2 * len(self.runs[-1]) >= len(self.runs[-2]):
            newer, older = self.runs.pop(), self.runs.pop()
            self.runs.append(np.unique(np.concatenate([older, newer])))

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.runs = [run[~np.isin(run, keys)] for run in self.runs]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            found |= _contains(run, keys)
        return found


def _as_pyarrow(reader) -> pa.Table:
    """delta-rs hands back arro3 readers; pyarrow takes them through the Arrow stream interface."""
    table = pa.RecordBatchReader.from_stream(reader).read_all()
    # Utf8View columns, as delta-rs reads strings, are cast to plain strings for compute and lists.
    return table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
                                 for f in table.schema]))


def _date_texts(dates) -> list[str]:
    return pc.cast(dates, pa.string()).to_pylist()


class SilverKeys:
    """The mirror of one silver table's dedup keys (module docstring). Not thread-safe: one sink's."""

    # 100M ids are 1.6 GB of digests: beyond that, the dates batches carried least recently go.
    MAX_EVENT_IDS = 100_000_000

    def __init__(self, silver_path: str, max_event_ids: int = MAX_EVENT_IDS):
        self.silver_path = silver_path
        self.max_event_ids = max_event_ids
        self.version: int | None = None  # the silver version the mirror reflects
        self.table_id: str | None = None
        self._dates: dict[str, _DateKeys] = {}
        self._last_asked: dict[str, int] = {}  # date -> the sync that last asked for it
        self._syncs = 0
        self.evictions = 0
        self._orders: dict[str, dict[str, tuple[int, str]]] | None = None  # order id -> event id -> (µs, date)
        self.reloads = 0  # times the mirror started again (a change feed that could not be read)

    @property
    def loaded_dates(self) -> set[str]:
        return set(self._dates)

    @property
    def event_ids(self) -> int:
        """How many event ids the mirror holds (over its loaded dates)."""
        return sum(len(keys) for keys in self._dates.values())

    def _reset(self, table_id: str, version: int) -> None:
        self.table_id, self.version = table_id, version
        self._dates, self._orders, self._last_asked = {}, None, {}

    # ---- catching up -----------------------------------------------------------------------------

    def sync(self, event_dates: Iterable[dt.date], orders: bool) -> int:
        """Bring the mirror to silver's latest version, with `event_dates` loaded and, when `orders`,
        silver's orders; returns that version. A failure part way leaves the mirror empty, to be
        loaded again, never half caught up."""
        table = rs_table(self.silver_path)
        latest, table_id = table.version(), table.metadata().id
        try:
            if self.version is None or table_id != self.table_id or self.version > latest:
                self._reset(table_id, latest)
            elif self.version < latest:
                try:
                    changes = _as_pyarrow(table.load_cdf(starting_version=self.version + 1, ending_version=latest,
                                                         columns=_CHANGE_COLUMNS))
                except Exception as unreadable:  # noqa: BLE001 - any unreadable feed means: start again
                    log.warning("silver keys: the change feed of %s since version %s cannot be read (%s); "
                                "reloading the keys from version %s", self.silver_path, self.version + 1,
                                unreadable, latest)
                    self.reloads += 1
                    self._reset(table_id, latest)
                else:
                    self._apply(changes)
                    self.version = latest
            asked = {day.isoformat() for day in event_dates}
            self._syncs += 1
            self._last_asked.update(dict.fromkeys(asked, self._syncs))
            wanted = sorted(asked - set(self._dates))
            if wanted:
                self._load_dates(table, wanted)
            self._evict(keep=asked)
            if orders and self._orders is None:
                self._load_orders(table)
        except BaseException:
            self._reset(table_id, latest)
            self.version = None  # loaded from scratch at the next call
            raise
        return latest

    def _evict(self, keep: set[str]) -> None:
        """Above `max_event_ids`, drop the dates batches asked for least recently (never the ones
        this batch asked for); a later batch with such a date loads it again."""
        held = self.event_ids
        for day in sorted(set(self._dates) - keep, key=lambda d: self._last_asked.get(d, 0)):
            if held <= self.max_event_ids:
                break
            held -= len(self._dates.pop(day))
            self.evictions += 1
            log.info("silver keys: dropped event date %s of %s from memory (%s ids held)", day,
                     self.silver_path, held)

    def _apply(self, changes: pa.Table) -> None:
        """Silver's changes, version by version: within a version the removals go first, so a row
        deleted and written again in one commit (an update) stays."""
        for version in sorted(set(changes.column("_commit_version").to_pylist())):
            of_version = changes.filter(pc.equal(changes.column("_commit_version"), version))
            for kinds in (_REMOVALS, _ADDITIONS):
                rows = of_version.filter(pc.is_in(of_version.column("_change_type"), pa.array(kinds)))
                if not rows.num_rows:
                    continue
                dates = _date_texts(rows.column("event_date"))
                by_date: dict[str, list[str]] = {}
                for event_id, day in zip(rows.column("event_id").to_pylist(), dates):
                    if day in self._dates:
                        by_date.setdefault(day, []).append(event_id)
                for day, event_ids in by_date.items():
                    keys = digests(event_ids)
                    self._dates[day].remove(keys) if kinds is _REMOVALS else self._dates[day].add(keys)
                if self._orders is not None:
                    self._apply_orders(rows, dates, removal=kinds is _REMOVALS)

    def _apply_orders(self, rows: pa.Table, dates: list[str], removal: bool) -> None:
        is_order = pc.and_(pc.equal(rows.column("event_type"), "order"), pc.is_valid(rows.column("order_id")))
        if not pc.any(is_order).as_py():
            return
        order_rows = rows.filter(is_order)
        order_dates = [day for day, is_one in zip(dates, is_order.to_pylist()) if is_one]
        self._add_orders(order_rows, order_dates, removal)

    def _add_orders(self, order_rows, order_dates: list[str], removal: bool = False) -> None:
        stamps = pc.cast(order_rows.column("event_ts"), pa.int64()).to_pylist()
        for order_id, event_id, stamp, day in zip(order_rows.column("order_id").to_pylist(),
                                                  order_rows.column("event_id").to_pylist(), stamps, order_dates):
            if removal:
                events = self._orders.get(order_id)
                if events is not None:
                    events.pop(event_id, None)
                    if not events:
                        del self._orders[order_id]
            else:
                self._orders.setdefault(order_id, {})[event_id] = (stamp, day)

    def _load_dates(self, table, wanted: list[str]) -> None:
        days = pa.array([dt.date.fromisoformat(day) for day in wanted], pa.date32())
        # Hashed a record batch at a time: only digests are kept, never a date's strings.
        parts: dict[str, list[np.ndarray]] = {day: [] for day in wanted}
        for batch in table.to_pyarrow_dataset().to_batches(columns=["event_id", "event_date"],
                                                           filter=pc.field("event_date").isin(days)):
            for day in pc.unique(batch.column("event_date")).to_pylist():
                of_day = batch.filter(pc.equal(batch.column("event_date"), pa.scalar(day, pa.date32())))
                parts[day.isoformat()].append(digests(of_day.column("event_id").to_pylist()))
        for day in wanted:
            self._dates[day] = _DateKeys()
            self._dates[day].add(np.concatenate(parts[day]) if parts[day] else np.empty(0, _DIGEST))
        log.info("silver keys: loaded event dates %s of %s at version %s (%s ids)", ", ".join(wanted),
                 self.silver_path, table.version(), sum(len(self._dates[day]) for day in wanted))

    def _load_orders(self, table) -> None:
        self._orders = {}
        is_order = (pc.field("event_type") == "order") & pc.field("order_id").is_valid()
        for batch in table.to_pyarrow_dataset().to_batches(columns=["order_id", "event_id", "event_ts", "event_date"],
                                                           filter=is_order):
            if batch.num_rows:
                self._add_orders(batch, _date_texts(batch.column("event_date")))

    # ---- lookups ---------------------------------------------------------------------------------

    def ids_in_silver(self, event_ids: Iterable[str], event_dates: Iterable[dt.date]) -> list[str]:
        """The distinct `event_ids` silver holds on any of `event_dates` (all of them loaded by `sync`)."""
        days = sorted({day.isoformat() for day in event_dates})
        missing = set(days) - set(self._dates)
        if missing:
            raise ValueError(f"silver keys: event dates {sorted(missing)} are not loaded; call sync() with them")
        candidates = sorted(set(event_ids))
        if not days or not candidates:
            return []
        keys = digests(candidates)
        found = np.zeros(len(keys), dtype=bool)
        for day in days:
            found |= self._dates[day].contains(keys)
        return [event_id for event_id, hit in zip(candidates, found.tolist()) if hit]

    def orders_sharing(self, order_ids: Iterable[str]) -> list[tuple[str, str, int, str]]:
        """(order_id, event_id, event_ts in µs, event_date) of silver's orders with one of `order_ids`."""
        if self._orders is None:
            raise ValueError("silver keys: orders are not loaded; call sync(orders=True)")
        return [(order_id, event_id, stamp, day) for order_id in sorted(set(order_ids))
                for event_id, (stamp, day) in sorted(self._orders.get(order_id, {}).items())]
