"""Run an action while the test holds the lake's gold write lock (as another process would): it must
still be waiting after a while, and finish once the lock is released."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

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
