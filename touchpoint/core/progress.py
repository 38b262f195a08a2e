"""How far long work has come: the jobs report it, a front end shows it.

The core may not depend on the CLI or on rich, so work reports to the `Reporter` its caller installed
with `reporting(...)` (a context variable): the CLI installs progress bars; Airflow tasks and
spark-submit install none, and their logs carry the jobs' own lines. Without a reporter `task` costs
nothing.

    with progress.each(STEPS, "pipeline 2026-03-04") as steps:   # a bar of len(STEPS) steps
        for step in steps:
            ...
    with progress.task("ingest events.jsonl", total=size, unit="bytes") as read:
        ...
        read.advance(len(chunk))
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    """What a front end implements: one handle per task, tasks may nest."""

    def begin(self, description: str, total: float | None, unit: str, depth: int) -> object: ...

    def update(self, handle: object, completed: float, description: str) -> None: ...

    def end(self, handle: object, failed: bool) -> None: ...


_REPORTER: ContextVar[Reporter | None] = ContextVar("touchpoint_progress_reporter", default=None)
_DEPTH: ContextVar[int] = ContextVar("touchpoint_progress_depth", default=0)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Send the progress of the work inside the block to `reporter`."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)


class Task:
    """One piece of long work: `total` units (steps, bytes, tables), `completed` of them done; a
    total of None is work of unknown size (a front end shows activity, not a fraction)."""

    def __init__(self, description: str, total: float | None, unit: str, reporter: Reporter | None, depth: int):
        if total is not None and total < 0:
            raise ValueError(f"a task's total cannot be negative, got {total}")
        self.description, self.total, self.unit, self.completed = description, total, unit, 0.0
        self._reporter, self._depth = reporter, depth
        self._handle = reporter.begin(description, total, unit, depth) if reporter is not None else None

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        if self.total is not None:
            self.completed = min(self.total, self.completed)
        self._report()

    def describe(self, description: str) -> None:
        self.description = description
        self._report()

    def _report(self) -> None:
        if self._reporter is not None:
            self._reporter.update(self._handle, self.completed, self.description)


@contextmanager
def task(description: str, total: float | None, unit: str = "steps") -> Iterator[Task]:
    """A task for the installed reporter (if any); tasks opened inside it are shown nested."""
    depth = _DEPTH.get()
    current = Task(description, total, unit, _REPORTER.get(), depth)
    token = _DEPTH.set(depth + 1)
    failed = True  # until the block ends normally: an exception leaves it set
    try:
        yield current
        failed = False
    finally:
        _DEPTH.reset(token)
        if current._reporter is not None:
            current._reporter.end(current._handle, failed)


@contextmanager
def each(items: Sequence[T], label: str, name: Callable[[T], str] = str,
         unit: str = "steps") -> Iterator[Iterator[T]]:
    """A block over the items in order, as one task of len(items) units described by the item under
    way. A block, not a bare generator: a step that raises ends the task as failed at once (a
    generator held by the traceback's frame would end it only when that is freed)."""
    with task(label, total=len(items), unit=unit) as done:
        def steps() -> Iterator[T]:
            for item in items:
                done.describe(f"{label}: {name(item)}")
                yield item
                done.advance()
            done.describe(label)

        yield steps()
