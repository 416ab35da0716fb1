"""`nimsforest bench stack` runs end to end and prints its figures (never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_bench_stack_reports_up_against_the_bare_sum_and_a_reload() -> None:
    out = subprocess.run([sys.executable, "-m", "nimsforest", "bench", "stack", "--rounds", "1"],
                         capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"bare, one after another -> ready: median \d+\.\d+s", text)
    assert re.search(r"node, pocketbase, caddy healthy: median \d+\.\d+s", text)
    assert re.search(r"stack/bare: \d+\.\d+x \(target <= 1\.2x: (met|NOT met)\)", text)
    assert re.search(r"reload of caddy \(restart\): back to healthy in median \d+\.\d+s; "
                     r"the others' longest downtime \d+\.\d+s", text)
    assert re.search(r"applied in median \d+\.\d+s", text)
