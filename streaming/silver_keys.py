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

An event id is kept as its 128-bit MD5 digest (computed by DuckDB over the Arrow column), in sorted
runs per date (16 bytes an id; a run per catch-up, merged as in a log-structured merge tree, so a
lookup is a binary search in a few runs). Two distinct ids of one date share a digest with a
probability of about n^2 / 2^129: 10^-21 for a billion ids. MD5's known collisions need both
inputs chosen, so a sender can make two of its own ids collide, never match another's. An order
is kept whole (order id, event id, time, date), since the earliest-order rule needs them.

Above `max_event_ids` (100M, 1.6 GB of digests) the dates batches asked for least recently are
dropped, and loaded again if a batch carries them later.

So a batch costs its own keys, not the day's partition. The lookup answers for the version caught
up to, as the scan answered for the snapshot it read; a writer committing between that read and the
batch's commit was not seen by either.
"""

from __future__ import annotations

import datetime as dt
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

# A set of event-id digests: (upper, lower) 64-bit halves, sorted by both and unique within a run.
Digests = tuple[np.ndarray, np.ndarray]
_NONE: Digests = (np.empty(0, np.uint64), np.empty(0, np.uint64))


def _string_column(values):
    """An Arrow string column as given, or the strings as one."""
    return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string())


def digests(event_ids) -> Digests:
    """The 128-bit MD5 digest of each id, in order, as two 64-bit halves; computed by DuckDB over the
    Arrow column (vectorised, no Python object per id: 500,000 ids in about 0.06 s)."""
    import duckdb

    ids = _string_column(event_ids)
    if not len(ids):
        return _NONE
    if ids.null_count:
        raise ValueError("silver keys: an event id is null")
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = true")  # the digests in the ids' order
        con.register("ids", pa.table({"event_id": ids}))
        # md5_number is the digest as one 128-bit integer; Arrow carries it as a 16-byte decimal whose
        # bits are the integer's, read here as two words (md5_number_upper/lower compute it twice, 9x slower).
        numbers = con.sql("SELECT md5_number(event_id) AS digest FROM ids").to_arrow_table().column(0).combine_chunks()
    words = np.frombuffer(numbers.buffers()[1], dtype="<u8")[2 * numbers.offset:2 * (numbers.offset + len(numbers))]
    return words[0::2].copy(), words[1::2].copy()


def _sorted_unique(keys: Digests) -> Digests:
    hi, lo = keys
    order = np.argsort(hi, kind="stable")
    hi, lo = hi[order], lo[order]
    if np.any(hi[1:] == hi[:-1]):  # equal upper halves (rare): order those by the lower half too
        order = np.lexsort((lo, hi))
        hi, lo = hi[order], lo[order]
    first = np.ones(len(hi), dtype=bool)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    return hi[first], lo[first]


def _contains(run: Digests, keys: Digests) -> np.ndarray:
    """For each of `keys`, whether the sorted `run` holds it: a binary search on the upper half, then
    the lower half compared (a range of equal upper halves is as rare as a 64-bit collision)."""
    (run_hi, run_lo), (hi, lo) = run, keys
    left, right = np.searchsorted(run_hi, hi, "left"), np.searchsorted(run_hi, hi, "right")
    found = np.zeros(len(hi), dtype=bool)
    single = right - left == 1
    found[single] = run_lo[left[single]] == lo[single]
    for at in np.flatnonzero(right - left > 1).tolist():
        found[at] = bool(np.any(run_lo[left[at]:right[at]] == lo[at]))
    return found


class _DateKeys:
    """One date's event-id digests: sorted runs, the newest last; two runs are merged whenever the
    newer is at least half the older, so there are about log2(rows / batch) of them."""

    def __init__(self) -> None:
        self.runs: list[Digests] = []

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self.runs)

    def add(self, keys: Digests) -> None:
        if not len(keys[0]):
            return
        self.runs.append(_sorted_unique(keys))
        while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            (newer_hi, newer_lo), (older_hi, older_lo) = self.runs.pop(), self.runs.pop()
            self.runs.append(_sorted_unique((np.concatenate([older_hi, newer_hi]),
                                             np.concatenate([older_lo, newer_lo]))))

    def remove(self, keys: Digests) -> None:
        if not len(keys[0]):
            return
        gone = set(zip(keys[0].tolist(), keys[1].tolist()))
        kept_runs = []
        for hi, lo in self.runs:
            keep = np.ones(len(hi), dtype=bool)
            for at in np.flatnonzero(np.isin(hi, keys[0])).tolist():
                keep[at] = (int(hi[at]), int(lo[at])) not in gone
            kept_runs.append((hi[keep], lo[keep]))
        self.runs = kept_runs

    def contains(self, keys: Digests) -> np.ndarray:
        # Searched in sorted order: each binary search then starts near the last (13x faster at 500k).
        order = np.argsort(keys[0], kind="stable")
        in_order = (keys[0][order], keys[1][order])
        found_in_order = np.zeros(len(order), dtype=bool)
        for run in self.runs:
            found_in_order |= _contains(run, in_order)
        found = np.empty(len(order), dtype=bool)
        found[order] = found_in_order
        return found


def _as_pyarrow(reader) -> pa.Table:
    """delta-rs hands back arro3 readers; pyarrow takes them through the Arrow stream interface."""
    table = pa.RecordBatchReader.from_stream(reader).read_all()
    # Utf8View columns, as delta-rs reads strings, are cast to plain strings for compute and lists.
    return table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
                                 for f in table.schema]))


def _date_texts(dates) -> list[str]:
    return pc.cast(dates, pa.string()).to_pylist()


def _by_date(rows):
    """(ISO date, its rows) for each `event_date` of an Arrow table or record batch."""
    dates = rows.column("event_date")
    days = pc.unique(dates).to_pylist()
    for day in days:
        yield day.isoformat(), (rows if len(days) == 1 else
                                rows.filter(pc.equal(dates, pa.scalar(day, pa.date32()))))


def _where(rows: pa.Table, mask) -> pa.Table:
    """The rows of the mask, without a copy when that is all of them (most catch-ups: one append)."""
    return rows if pc.all(mask).as_py() else rows.filter(mask)


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

    @property
    def orders_held(self) -> int:
        """How many of silver's orders the mirror holds (none until a batch first has an order)."""
        return sum(len(events) for events in (self._orders or {}).values())

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
            of_version = _where(changes, pc.equal(changes.column("_commit_version"), version))
            for kinds in (_REMOVALS, _ADDITIONS):
                rows = _where(of_version, pc.is_in(of_version.column("_change_type"), pa.array(kinds)))
                if not rows.num_rows:
                    continue
                for day, of_day in _by_date(rows):
                    if day in self._dates:
                        keys = digests(of_day.column("event_id"))
                        self._dates[day].remove(keys) if kinds is _REMOVALS else self._dates[day].add(keys)
                if self._orders is not None:
                    self._apply_orders(rows, removal=kinds is _REMOVALS)

    def _apply_orders(self, rows: pa.Table, removal: bool) -> None:
        is_order = pc.and_(pc.equal(rows.column("event_type"), "order"), pc.is_valid(rows.column("order_id")))
        if not pc.any(is_order).as_py():
            return
        order_rows = rows.filter(is_order)
        self._add_orders(order_rows, _date_texts(order_rows.column("event_date")), removal)

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
        parts: dict[str, list[Digests]] = {day: [] for day in wanted}
        for batch in table.to_pyarrow_dataset().to_batches(columns=["event_id", "event_date"],
                                                           filter=pc.field("event_date").isin(days)):
            for day, of_day in _by_date(batch):
                parts[day].append(digests(of_day.column("event_id")))
        for day in wanted:
            self._dates[day] = _DateKeys()
            if parts[day]:
                self._dates[day].add((np.concatenate([hi for hi, _ in parts[day]]),
                                      np.concatenate([lo for _, lo in parts[day]])))
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

    def ids_in_silver(self, event_ids, event_dates: Iterable[dt.date]) -> list[str]:
        """The distinct `event_ids` (an Arrow string column or strings) silver holds on any of
        `event_dates` (all of them loaded by `sync`), sorted."""
        days = sorted({day.isoformat() for day in event_dates})
        missing = set(days) - set(self._dates)
        if missing:
            raise ValueError(f"silver keys: event dates {sorted(missing)} are not loaded; call sync() with them")
        ids = _string_column(event_ids)
        if not days or not len(ids):
            return []
        keys = digests(ids)
        found = np.zeros(len(keys[0]), dtype=bool)
        for day in days:
            found |= self._dates[day].contains(keys)
        return sorted(set(pc.filter(ids, pa.array(found)).to_pylist()))

    def orders_sharing(self, order_ids: Iterable[str]) -> list[tuple[str, str, int, str]]:
        """(order_id, event_id, event_ts in µs, event_date) of silver's orders with one of `order_ids`."""
        if self._orders is None:
            raise ValueError("silver keys: orders are not loaded; call sync(orders=True)")
        return [(order_id, event_id, stamp, day) for order_id in sorted(set(order_ids))
                for event_id, (stamp, day) in sorted(self._orders.get(order_id, {}).items())]
