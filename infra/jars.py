"""Resolve the JVM jars from Maven Central once, then reuse them offline.

Each pom under infra/maven/ is copied with its runtime dependencies into
<state_dir>/jars/<name>/. A marker holding the pom's SHA-256 makes it idempotent.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from touchpoint.core.config import Settings, get_settings

MAVEN_DIR = Path(__file__).parent / "maven"
POMS = {"spark": "spark-jars.pom.xml", "kafka": "kafka-broker.pom.xml"}
MARKER = ".resolved"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_ready(name: str, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    marker = settings.jars_dir.resolve() / name / MARKER
    return marker.exists() and marker.read_text().strip() == _pom_digest(MAVEN_DIR / POMS[name])


def resolve(name: str, settings: Settings | None = None) -> Path:
    """Copy the pom's runtime dependencies into the jar folder unless already there."""
    settings = settings or get_settings()
    target = settings.jars_dir.resolve() / name
    if jars_ready(name, settings):
        return target
    pom = MAVEN_DIR / POMS[name]
    staging = settings.jars_dir.resolve() / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mvn could not resolve {pom.name}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    (staging / MARKER).write_text(_pom_digest(pom))
    _swap_in(staging, target)
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Move freshly resolved jars into place without ever emptying the folder: Spark sessions
    already running keep the jars they have not opened yet (same file name = same version).
    The marker moves last, so an interrupted swap is re-resolved next time."""
    target.mkdir(parents=True, exist_ok=True)
    (target / MARKER).unlink(missing_ok=True)
    fresh = {p.name for p in staging.iterdir()}
    for old in target.iterdir():
        if old.name not in fresh:
            old.unlink()
    for new in staging.iterdir():
        if new.name != MARKER and not (target / new.name).exists():
            new.rename(target / new.name)
    (staging / MARKER).rename(target / MARKER)
    shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    settings = get_settings()
    for name in POMS:
        state = "cached" if jars_ready(name, settings) else "resolving"
        print(f"jars/{name}: {state}", flush=True)
        folder = resolve(name, settings)
        print(f"jars/{name}: {len(list(folder.glob('*.jar')))} jars in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
