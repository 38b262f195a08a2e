"""spark-submit the project: package it, compose the command line, run it.

    touchpoint submit pipeline --date 2026-03-04        # a batch job through touchpoint.jobs.runner
    touchpoint submit stream ingest                     # a streaming query through the CLI

The project's wheel is built once per source tree (pip wheel --no-deps, cached in
<state_dir>/dist/<source digest>/). Executors receive the code as an archive made from that wheel,
unpacked next to their working files as a real `touchpoint/` folder: unlike a zip on --py-files it
keeps package data (schemas, channel rules, suites) readable as files. The driver runs in client mode
on the submitting machine, which has the project installed. Third-party packages (pyarrow,
phonenumbers, ...) must be installed in the workers' Python (requirements.lock); the project image
(infra/docker/Dockerfile) has them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from touchpoint.core.config import Settings, get_settings, settings_env
from touchpoint.core.spark import spark_conf

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_ALIAS = "touchpoint"  # the folder each executor unpacks the code archive into
# passed as spark-submit flags of their own, not as --conf
FLAG_KEYS = ("spark.master", "spark.app.name", "spark.jars")


@dataclass(frozen=True)
class SubmitCommand:
    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        import shlex

        return " ".join(shlex.quote(part) for part in self.argv)


def spark_submit_path() -> Path:
    """pyspark's bundled spark-submit: the same Spark 4.2.0 as the library."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def _pyproject() -> dict:
    pyproject = REPO_ROOT / "pyproject.toml"
    if not pyproject.exists():
        raise RuntimeError(f"no pyproject.toml in {REPO_ROOT}: `touchpoint submit` packages a source checkout")
    return tomllib.loads(pyproject.read_text())


def source_digest() -> str:
    """SHA-256 over pyproject.toml and every file of the packaged folders (caches go uncounted)."""
    package_dirs = sorted(set(_pyproject()["tool"]["setuptools"]["package-dir"].values()))
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes())
    for folder in package_dirs:
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_wheel(settings: Settings | None = None) -> Path:
    """The project's wheel for the current sources, built only when they changed."""
    settings = settings or get_settings()
    dist = settings.state_path / "dist"
    key = source_digest()[:16]
    target = dist / key
    built = sorted(target.glob("touchpoint-*.whl"))
    if built:
        return built[0]
    staging = dist / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(staging), str(REPO_ROOT)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    for stale in dist.iterdir():  # one cached build is enough
        if stale.is_dir() and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    staging.rename(target)
    return sorted(target.glob("touchpoint-*.whl"))[0]


def code_archive(wheel: Path) -> Path:
    """A zip of the wheel's `touchpoint/` package with the prefix stripped: unpacked by Spark into
    `<executor files dir>/touchpoint/`, which is on the executors' Python path."""
    archive = wheel.with_name(wheel.stem + "-code.zip")
    if archive.exists():
        return archive
    partial = archive.with_suffix(".partial")
    prefix = f"{ARCHIVE_ALIAS}/"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename.startswith(prefix) and not item.is_dir():
                target.writestr(item.filename[len(prefix):], source.read(item))
    partial.rename(archive)
    return archive


def main_script(entry: str) -> Path:
    """The primary resource spark-submit runs: the job runner, or the CLI for streams."""
    if entry == "runner":
        from touchpoint.jobs import runner

        return Path(runner.__file__)
    if entry == "cli":
        import touchpoint

        return Path(touchpoint.__file__).with_name("__main__.py")
    raise ValueError(f"unknown entry {entry!r}: 'runner' or 'cli'")


def compose(app_args: list[str], settings: Settings | None = None, entry: str = "runner",
            name: str | None = None, archive: Path | None = None) -> SubmitCommand:
    """The spark-submit command line: master and jars from the settings, every other platform
    setting as --conf (so driver memory and JVM options apply at launch), the code archive."""
    settings = settings or get_settings()
    archive = archive or code_archive(build_wheel(settings))
    words = [arg for arg in app_args if not arg.startswith("-")][:2]
    conf = spark_conf(settings, app_name=name or "-".join(["touchpoint", *words]))
    argv = [str(spark_submit_path()), "--master", settings.spark_master, "--deploy-mode", "client",
            "--name", conf["spark.app.name"]]
    if conf["spark.jars"]:
        argv += ["--jars", conf["spark.jars"]]
    argv += ["--archives", f"{archive}#{ARCHIVE_ALIAS}"]
    for key, value in conf.items():
        if key not in FLAG_KEYS:
            argv += ["--conf", f"{key}={value}"]
    argv += [str(main_script(entry)), *app_args]
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_submit_path().parents[1]),
        # The driver and the Python workers run this interpreter unless told otherwise.
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON") or sys.executable,
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON") or sys.executable,
        # The driver builds its session from the same settings the command was composed from.
        **settings_env(settings),
        "TOUCHPOINT_LAKE_ROOT": settings.lake_uri,
        "TOUCHPOINT_STATE_DIR": str(settings.state_path),
        "TOUCHPOINT_JARS_DIR": str(settings.jars_dir.resolve()),
    }
    if settings.spark_driver_host == "127.0.0.1":
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return SubmitCommand(argv, env)


def job_args(job: str, logical_date: str) -> list[str]:
    from touchpoint.jobs.runner import JOBS

    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; known jobs: {', '.join(sorted(JOBS))}")
    return [job, "--date", logical_date]


def run(command: SubmitCommand, timeout: float | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(command.argv, env=command.env, timeout=timeout, capture_output=capture, text=True)
