"""`spendwatch demo --duration 20` runs broker, simulator and daemon and exits 0 with a summary."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_twenty_seconds_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "watcher", "demo", "--duration", "20", "--runaway-after", "5"],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"published ([\d,]+) records, consumed ([\d,]+), processed ([\d,]+), dead-lettered ([\d,]+)",
                  out)
    assert m, out[-3000:]
    published, consumed, processed, dead = (int(x.replace(",", "")) for x in m.groups())
    assert published > 500
    assert consumed == published == processed + dead
    assert "memory-only" in out.lower()
    assert "top spender over the last minute: agent-runaway" in out.replace("\n", " ")
    assert "FROZEN agent-runaway" in out and "cap_1m" in out
