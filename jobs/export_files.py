"""Atomic export folders: files are written into a temp folder, hashed, described by a manifest
written last, and the folder is renamed into place in one step (docs/EXPORTS.md).

Layout under the exports root, one folder per segment and destination:

    <segment>/<destination>/<run_id>/           a committed run (it has manifest.json)
        full-00001.csv ...  or  adds-00001.csv ... removes-00001.csv ...
        manifest.json
        _state/                                 the full row set after this run (Parquet), the next diff's base
    <segment>/<destination>/_tmp-<run_id>/      a run being written; never read, removed by the next run

Only the local file system (or a mount) is supported: the rename is what makes a run appear at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.sql import DataFrame

# Listed in a manifest in this order, the order to apply them: a changed row is a remove of the old
# row and an add of the new one, and applying the add first then the remove would drop the person.
KINDS = ("full", "removes", "adds")
MANIFEST = "manifest.json"
STATE = "_state"
TEMP_PREFIX = "_tmp-"
_PART_COUNTER = re.compile(r"[.-]c(\d+)(?:\.[a-z0-9]+)+$")


@dataclass(frozen=True)
class ExportFile:
    name: str
    kind: str  # full, adds or removes
    rows: int
    bytes: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place_file(source: Path, target: Path) -> None:
    """Move one written part into its final name inside the temp folder."""
    os.replace(source, target)


def write_part_files(rows: DataFrame, folder: Path, file_format: str, counts: dict[str, int],
                     max_rows: int) -> list[ExportFile]:
    """Write rows tagged with a `kind` (full, adds, removes) as <kind>-00001.<ext>, ... of at most
    `max_rows` rows each, in one Spark write through one task, every file sorted by all columns so a
    run's files are reproducible. `counts` are the rows per kind; a kind without rows has no file."""
    kinds = [kind for kind in KINDS if counts.get(kind)]
    if not kinds:
        return []
    scratch = folder / "_spark"
    columns = [c for c in rows.columns if c != "kind"]
    ordered = rows.repartition(1).sortWithinPartitions("kind", *columns)
    writer = ordered.write.mode("overwrite").partitionBy("kind").option("maxRecordsPerFile", max_rows)
    if file_format == "csv":
        # RFC 4180: a quote inside a field is doubled; a null is an empty field.
        (writer.option("header", True).option("quote", '"').option("escape", '"').option("nullValue", "")
         .option("lineSep", "\n").option("encoding", "UTF-8").csv(str(scratch)))
        extension = "csv"
    else:
        writer.option("ignoreNullFields", False).option("lineSep", "\n").json(str(scratch))
        extension = "jsonl"
    files = []
    for kind in kinds:
        total = counts[kind]
        parts = sorted((p for p in (scratch / f"kind={kind}").iterdir() if p.name.startswith("part-")),
                       key=lambda p: int(_PART_COUNTER.search(p.name).group(1)))
        expected = -(-total // max_rows)
        if len(parts) != expected:
            raise RuntimeError(f"Spark wrote {len(parts)} {kind} files for {total} rows, expected {expected}")
        for index, part in enumerate(parts):
            target = folder / f"{kind}-{index + 1:05d}.{extension}"
            place_file(part, target)
            files.append(ExportFile(target.name, kind, min(max_rows, total - index * max_rows),
                                    target.stat().st_size, sha256_file(target)))
    shutil.rmtree(scratch)
    return files


def write_state(rows: DataFrame, folder: Path) -> None:
    rows.write.mode("overwrite").parquet(str(folder / STATE))


def state_path(run_folder: Path) -> str:
    return str(run_folder / STATE)


def write_manifest(folder: Path, manifest: dict, files: list[ExportFile]) -> str:
    """Write manifest.json (the last file of a run); returns its SHA-256."""
    document = {**manifest, "files": [asdict(f) for f in files]}
    path = folder / MANIFEST
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sha256_file(path)


def read_manifest(run_folder: Path) -> dict:
    return json.loads((run_folder / MANIFEST).read_text(encoding="utf-8"))


def committed_runs(destination_folder: Path) -> list[Path]:
    """Run folders that were committed (renamed into place with their manifest)."""
    if not destination_folder.is_dir():
        return []
    return sorted(p for p in destination_folder.iterdir()
                  if p.is_dir() and not p.name.startswith("_") and (p / MANIFEST).is_file())


def temp_folder(destination_folder: Path, run_id: str) -> Path:
    return destination_folder / f"{TEMP_PREFIX}{run_id}"


def clear_leftovers(destination_folder: Path) -> list[str]:
    """Remove what a crashed run left: temp folders, and run folders without a manifest."""
    removed = []
    if destination_folder.is_dir():
        for path in destination_folder.iterdir():
            if path.is_dir() and (path.name.startswith(TEMP_PREFIX) or not (path / MANIFEST).is_file()):
                shutil.rmtree(path)
                removed.append(path.name)
    return sorted(removed)


def commit(temp: Path, final: Path) -> None:
    """Make a written run visible in one rename (atomic on one file system)."""
    os.rename(temp, final)
