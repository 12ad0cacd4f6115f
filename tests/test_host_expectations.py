"""The testinfra suite's own /proc reading: any process a target shows is read, whatever its arguments.

A container sharing the host's PID namespace (node-exporter) shows every host process; CI's host once
ran one whose arguments decoded to a byte that is not UTF-8, and testinfra failed on the output."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).parent / "host"))
from host_expectations import processes  # noqa: E402

ODD_ARGUMENTS = ["a\\0200b", b"c\x80d", "two\nlines", "\\c tail"]


@pytest.fixture
def odd_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "odd-process-marker", *ODD_ARGUMENTS])
    yield proc
    proc.kill()
    proc.wait()


def test_processes_reads_arguments_with_any_bytes_verbatim(odd_process):
    found = {p.pid: p for p in processes(testinfra.get_host("local://"))}
    assert odd_process.pid in found, "the spawned process is missing from the list"
    mine = found[odd_process.pid]
    assert mine.cmdline.endswith("odd-process-marker a\\0200b c\ufffdd two lines \\c tail"), mine.cmdline
    assert mine.uid == os.getuid()
