"""`touchpoint ingest --file` plans a file as line-aligned byte ranges grouped into sink batches, so a
large file never sits in memory and an interrupted ingest resumes (the Spark side of it:
tests/test_ingest_generated.py)."""

import hashlib

import pytest

from touchpoint.streaming import ingest
from touchpoint.streaming.ingest import FileRange, FileScan, file_batches, resume_offset, scan_file

# byte offsets: "aaaa\n" 0-4, "bb\n" 5-7, "\n" 8, "cccccc\n" 9-15, "d\n" 16-17 (lines 1-5)
SMALL = b"aaaa\nbb\n\ncccccc\nd\n"


@pytest.mark.parametrize("block_bytes", [3, 1 << 20])  # split points found across read blocks too
def test_scan_splits_at_line_starts_with_their_line_numbers(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(ingest, "_SCAN_BLOCK_BYTES", block_bytes)
    file = tmp_path / "small.jsonl"
    file.write_bytes(SMALL)
    scan = scan_file(file, split_bytes=5)
    # 5: the line holding byte 4 ends there; 10: the line holding byte 9 ("cccccc") ends at 15
    assert scan == FileScan(hashlib.sha256(SMALL).hexdigest()[:32], 18, ((0, 1), (5, 2), (16, 5)))
    assert scan_file(file, split_bytes=100).splits == ((0, 1),)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert scan_file(tmp_path / "empty.jsonl", split_bytes=5).splits == ((0, 1),)


def test_batches_group_ranges_and_resume_at_any_line_start(tmp_path):
    file = tmp_path / "small.jsonl"
    file.write_bytes(SMALL)
    scan = scan_file(file, split_bytes=5)
    ranges = [FileRange(0, 5, 1), FileRange(5, 16, 2), FileRange(16, 18, 5)]
    assert file_batches(file, scan, 0, batch_bytes=12) == [[ranges[0]], [ranges[1]], [ranges[2]]]
    assert file_batches(file, scan, 0, batch_bytes=16) == [ranges[:2], [ranges[2]]]
    assert file_batches(file, scan, 16, batch_bytes=16) == [[ranges[2]]]
    # byte 9 starts line 4 ("cccccc"), which is not a split point
    assert file_batches(file, scan, 9, batch_bytes=100) == [[FileRange(9, 16, 4), FileRange(16, 18, 5)]]
    assert file_batches(file, scan, 18, batch_bytes=100) == []


@pytest.mark.parametrize(("committed", "size", "resume_at"), [
    (None, 100, 0),  # never ingested: from the start
    (40, 100, 40),  # died after the batch that ended at byte 40
    (100, 100, None),  # done
    (0, 100, None),  # the whole-file batch 0 of earlier versions: done, not ingested twice
    (None, 0, 0),  # an empty file is one empty batch
    (0, 0, None),
])
def test_resume_offset(committed, size, resume_at):
    assert resume_offset(committed, size) == resume_at
