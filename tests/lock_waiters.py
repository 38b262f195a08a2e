"""Run an action while the test holds the lake's gold write lock (as another process would): it must
still be waiting after a while, and finish once the lock is released. And the pieces tests of the
silver write lock stage their interleavings with: a thread whose outcome is handed back, and an
event set once some thread waits for a lock."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from touchpoint.core.delta import gold_write_lock


def run_after_the_lock(lake_uri: str, action: Callable[[], Any], unchanged: Callable[[], bool],
                       held_seconds: float = 2.0, timeout: float = 600.0) -> Any:
    """Start `action` in a thread while holding the lock; assert that after `held_seconds` it has not
    finished and `unchanged()` holds; release, and return the action's result (or raise its error)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = action()
        except BaseException as error:  # noqa: BLE001 - handed to the test below
            outcome["error"] = error

    with gold_write_lock(lake_uri):
        waiting = threading.Thread(target=target)
        waiting.start()
        time.sleep(held_seconds)
        assert waiting.is_alive() and not outcome, f"ran while the gold write lock was held: {outcome}"
        assert unchanged(), "the lake changed while the gold write lock was held"
    waiting.join(timeout=timeout)
    assert not waiting.is_alive(), f"still waiting {timeout} s after the lock was released"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def in_thread(action: Callable[[], Any]) -> tuple[threading.Thread, Callable[..., Any]]:
    """Start `action` in a thread; returns it and `finish(timeout)`, which joins it and returns the
    action's result (or raises its error)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = action()
        except BaseException as error:  # noqa: BLE001 - raised by finish()
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()

    def finish(timeout: float = 600.0) -> Any:
        thread.join(timeout)
        assert not thread.is_alive(), f"still running after {timeout} s"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return thread, finish


@contextmanager
def waits_for_lock(name: str) -> Iterator[threading.Event]:
    """An event set once some thread logs that it waits for the lake's `<name>.lock`
    (core.delta's lock logs that once per wait)."""
    waiting = threading.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if f"{name}.lock" in record.getMessage():
                waiting.set()

    handler, lock_log = Handler(), logging.getLogger("touchpoint.core.delta")
    previous = lock_log.level
    lock_log.addHandler(handler)
    lock_log.setLevel(logging.INFO)
    try:
        yield waiting
    finally:
        lock_log.removeHandler(handler)
        lock_log.setLevel(previous)
