"""kill -9 while caches are being written: the next start loads nothing corrupt and resumes correctly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from engine.engine import Engine
from engine.kv.warm import WarmTier
from engine.settings import Settings
from tests.conftest import REPO_ROOT, run_cli
from tests.kv.kv_writer_child import SESSIONS, request

pytestmark = pytest.mark.slow


def test_kill_9_during_writes_leaves_a_clean_cache(data_dir, tmp_path, tiny_model_dir):
    cache_dir = tmp_path / "kv"
    rng = random.Random(1234)
    for _ in range(8):
        child = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tests" / "kv" / "kv_writer_child.py"),
                str(data_dir),
                str(cache_dir),
                str(tiny_model_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        # Wait for the first finished turn, then kill at a random point of the following writes.
        first = child.stdout.readline()
        assert first.startswith("turn "), child.stderr.read()
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

        warm = WarmTier(cache_dir, 1000, clean_up=True)  # what the next start does: clean up, then verify
        try:
            report = warm.check(repair=False)
        finally:
            warm.close()
        assert report["bad"] == [] and report["missing"] == [] and report["orphans"] == [], report

    settings = dict(data_dir=data_dir, mlx_model_id=str(tiny_model_dir), kv_block_tokens=16)
    with (
        Engine(Settings(agent_cache_dir=cache_dir, **settings)) as resumed,
        Engine(Settings(kv_memory=False, **settings)) as cold,
    ):
        for session in SESSIONS:
            for turns in (1, 5, 12):
                again = resumed.generate(request(session, turns))
                assert again.text == cold.generate(request(session, turns)).text
                resumed.check_integrity()
        assert resumed.memory_stats().hits.warm > 0

    result = run_cli(
        "cache", "check", "--no-repair", data_dir=data_dir, env={"SEMANTIC_AGENT_CACHE_DIR": str(cache_dir)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 damaged (checksum or contents), 0 missing, 0 not in the index" in result.stdout


DISK_FULL_CHILD = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
import engine
engine.setup_process()
from engine.engine import Engine
from engine.settings import Settings
from tests.kv.kv_writer_child import request
with Engine(Settings(data_dir=sys.argv[1], agent_cache_dir=sys.argv[2])) as eng:
    sources = [eng.generate(request("full", turns)).cache.source for turns in (1, 2, 3)]
    eng.flush()
print(json.dumps(sources))
"""


def test_full_disk_keeps_serving_hot_only(default_engine, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(default_engine.settings.data_path), str(tmp_path / "kv")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["cold", "hot", "hot"]
    assert "serving continues hot-only" in result.stderr
