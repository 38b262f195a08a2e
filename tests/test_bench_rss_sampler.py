"""bench.faults.RssSampler: a JVM's child caught between fork and exec is not counted as a second JVM."""

import os
import signal
import subprocess
import sys

import psutil

JVM = ["/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-cp", "jars/*", "org.apache.spark.deploy.SparkSubmit",
       "pyspark-shell"]


def test_the_rule_skips_only_a_jvm_child_with_its_parents_command_line():
    from bench.faults import unexeced_jvm_fork

    assert unexeced_jvm_fork("spark_driver_jvm", JVM, JVM)
    assert not unexeced_jvm_fork("spark_driver_jvm", JVM, ["python", "-m", "touchpoint", "stream", "speed"])
    assert not unexeced_jvm_fork("spark_driver_jvm", JVM, None)  # a root of the sampled trees
    daemon = ["python", "-m", "pyspark.daemon"]  # Python's workers fork without exec and hold memory of their own
    assert not unexeced_jvm_fork("python_workers", daemon, daemon)


def test_a_forked_copy_of_a_driver_jvm_is_counted_once():
    from bench.faults import RssSampler

    # A process the sampler takes for a Spark driver JVM ("pyspark-shell" in its command line) that
    # holds 200 MB and forks a copy of itself that does not exec, as a JVM does for an instant.
    script = ("import os, sys, time\n"
              "ballast = b'x' * (200 * 2**20)\n"
              "child = os.fork()\n"
              "if child == 0:\n"
              "    time.sleep(60)\n"
              "    os._exit(0)\n"
              "sys.stdout.write(f'{child}\\n'); sys.stdout.flush()\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, "pyspark-shell"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert psutil.Process(child).cmdline() == psutil.Process(parent.pid).cmdline()
        sampler = RssSampler(roots=lambda: [parent.pid])
        counted = sampler.sample()["spark_driver_jvm"]
        own = psutil.Process(parent.pid).memory_info().rss / 2**20
        copy = psutil.Process(child).memory_info().rss / 2**20
        assert copy > 200  # the copy's resident set shows the parent's pages
        assert abs(counted - own) < 1  # ...and is not added to it
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(10)
