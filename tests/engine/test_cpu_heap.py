"""Memory paged in at model load serves the arrays MLX allocates afterwards, on any thread, without
page faults (engine/cpu/heap.py): what makes a warm restore in a fresh process read-bound."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = """
import json, resource, sys
import engine
engine.setup_process()
from engine.cpu import heap
import mlx.core as mx

if sys.argv[1] == "paged-in":
    heap.page_in_heap(160 << 20)
stream = mx.new_stream(mx.cpu)  # evaluated on its own thread, as the engine's are
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
arrays = [mx.zeros((3, 4096, 64), stream=stream) for _ in range(40)]  # 120 MB in 3 MB arrays
mx.eval(arrays)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["faults"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_memory_paged_in_first_serves_later_arrays_without_page_faults():
    fresh, paged_in = faults("fresh"), faults("paged-in")
    assert fresh > 120 * 256 * 0.9  # one fault per new 4 KB page
    assert paged_in < fresh / 10
