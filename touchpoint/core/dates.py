"""The as-of bound every batch job shares (BRIEF §4): a run for logical date D covers event_ts < D+1 00:00Z."""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def as_of_for(logical_date: dt.date) -> dt.datetime:
    """The exclusive upper bound on event_ts of the run for `logical_date`."""
    return dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def epoch_micros(instant: dt.datetime) -> int:
    return (instant - EPOCH) // dt.timedelta(microseconds=1)


def calendar_date(value: dt.date) -> dt.date:
    """A plain `datetime.date` (UTC calendar day) from any date or datetime, e.g. Airflow's pendulum
    objects, which Spark's type checks refuse."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc) if value.tzinfo else value
    return dt.date(value.year, value.month, value.day)
