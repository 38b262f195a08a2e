"""Step timing of a batch job, logged at INFO: where a run's time goes, without a profiler."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Callable


def step_timer(log: logging.Logger, job: str, logical_date: dt.date) -> Callable[[str], None]:
    """`step(name)` logs "<job> <date>: <name> took <s>s", the time since the previous step (or
    since this call)."""
    started = [time.monotonic()]

    def step(name: str) -> None:
        now = time.monotonic()
        log.info("%s %s: %s took %.1fs", job, logical_date, name, now - started[0])
        started[0] = now

    return step
