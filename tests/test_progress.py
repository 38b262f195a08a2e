"""Long work reports its progress through touchpoint.core.progress; the CLI shows it as bars."""

import pytest

from touchpoint.core import progress


def test_each_reports_the_item_under_way_and_nested_tasks_one_level_deeper(reported_progress):
    seen = []
    with progress.each(("identity", "publish"), "pipeline 2026-03-04") as steps:
        for step in steps:
            with progress.task("copying", total=300, unit="bytes") as copied:
                copied.advance(120)
                copied.advance(500)  # never beyond the total
            seen.append(step)
    assert seen == ["identity", "publish"]
    assert reported_progress == [
        ("begin", 0, "pipeline 2026-03-04", 2, "steps", 0),
        ("update", 0, 0.0, "pipeline 2026-03-04: identity"),
        ("begin", 1, "copying", 300, "bytes", 1),
        ("update", 1, 120.0, "copying"),
        ("update", 1, 300.0, "copying"),
        ("end", 1),
        ("update", 0, 1.0, "pipeline 2026-03-04: identity"),
        ("update", 0, 1.0, "pipeline 2026-03-04: publish"),
        ("begin", 2, "copying", 300, "bytes", 1),
        ("update", 2, 120.0, "copying"),
        ("update", 2, 300.0, "copying"),
        ("end", 2),
        ("update", 0, 2.0, "pipeline 2026-03-04: publish"),
        ("update", 0, 2.0, "pipeline 2026-03-04"),
        ("end", 0),
    ]


def test_a_failing_step_ends_its_task_as_failed_before_the_error_is_handled(reported_progress):
    """As the jobs use it: a comprehension over the steps, whose frame the traceback keeps alive."""
    def run(step: str) -> str:
        if step == "audit":
            raise RuntimeError("audit failed")
        return "ok"

    def pipeline() -> dict:
        with progress.each(["identity", "audit", "publish"], "pipeline") as steps:
            return {step: run(step) for step in steps}

    try:
        pipeline()
    except RuntimeError as error:
        assert str(error) == "audit failed"
        # ended when the error left the block, while its traceback (and the comprehension's frame) lives
        assert reported_progress[-1] == ("failed", 0)
    else:
        pytest.fail("the audit step did not fail")
    assert reported_progress == [
        ("begin", 0, "pipeline", 3, "steps", 0),
        ("update", 0, 0.0, "pipeline: identity"),
        ("update", 0, 1.0, "pipeline: identity"),
        ("update", 0, 1.0, "pipeline: audit"),
        ("failed", 0),
    ]
    # the next task is a top-level one again
    with progress.task("next", total=1):
        pass
    assert reported_progress[-2:] == [("begin", 1, "next", 1, "steps", 0), ("end", 1)]


def test_without_a_reporter_tasks_count_and_report_nothing():
    with progress.task("unknown size", total=None) as work:
        work.advance(3)
        work.describe("still unknown")
    assert (work.completed, work.total, work.description) == (3, None, "still unknown")
    with progress.each([1, 2], "quiet") as numbers:
        assert list(numbers) == [1, 2]
    with pytest.raises(ValueError, match="cannot be negative, got -1"):
        with progress.task("bad", total=-1):
            pass


def test_the_cli_shows_the_tasks_as_bars_on_stderr_and_marks_what_stopped(monkeypatch):
    import io

    from rich.console import Console

    from touchpoint import cli

    shown = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=shown, width=100, force_terminal=False))
    with pytest.raises(KeyError):
        with cli._progress("touchpoint run pipeline --date 2026-03-04"):
            with progress.each(["identity", "publish"], "pipeline 2026-03-04") as steps:
                for step in steps:
                    with progress.task("ingest events.jsonl", total=2_500_000, unit="bytes") as read:
                        read.advance(2_500_000 if step == "identity" else 1_200_000)
                        if step == "publish":
                            raise KeyError("disk gone")
    # a terminal redraws the bars; elsewhere they are printed once, as they ended
    lines = [line.split() for line in shown.getvalue().splitlines()]
    assert [[w for w in words if not w.startswith("━") and w != "0:00:00"] for words in lines] == [
        ["stopped", "touchpoint", "run", "pipeline", "--date", "2026-03-04"],
        ["stopped", "pipeline", "2026-03-04:", "publish", "1/2", "steps"],
        ["done", "ingest", "events.jsonl", "2.5", "MB/2.5", "MB"],
        ["stopped", "ingest", "events.jsonl", "1.2", "MB/2.5", "MB"],
    ]
    # nested tasks are indented under the task they run in
    starts = [text.index(word) for text, word in zip(shown.getvalue().splitlines(),
                                                    ("touchpoint", "pipeline", "ingest", "ingest"))]
    assert [start - starts[0] for start in starts] == [0, 2, 4, 4]
