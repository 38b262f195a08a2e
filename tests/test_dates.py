"""The shared as-of bound and date coercion every batch entry point uses."""

import datetime as dt

import pendulum

from touchpoint.core.dates import as_of_for, calendar_date, epoch_micros


def test_as_of_is_the_next_utc_midnight():
    assert as_of_for(dt.date(2026, 2, 28)) == dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    assert epoch_micros(as_of_for(dt.date(1970, 1, 1))) == 86_400_000_000


def test_airflow_pendulum_dates_become_plain_utc_dates():
    # 23:30 in Paris on 4 March is 22:30 UTC: still the 4th
    evening = pendulum.datetime(2026, 3, 4, 23, 30, tz="Europe/Paris")
    assert calendar_date(evening) == dt.date(2026, 3, 4) and type(calendar_date(evening)) is dt.date
    # 00:30 in Paris on 5 March is 23:30 UTC on the 4th
    assert calendar_date(pendulum.datetime(2026, 3, 5, 0, 30, tz="Europe/Paris")) == dt.date(2026, 3, 4)
    assert type(calendar_date(pendulum.date(2026, 3, 4))) is dt.date
