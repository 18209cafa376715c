"""A process that used MLX on two engine threads and on its main thread exits with status 0.

mlx 0.32 can crash at exit (compile-cache destructors after finalization, OpenBLAS workers racing
MLX's teardown); engine/process.py and engine/cpu/blas.py prevent it. Without the
exit hook this script segfaults every time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = """
import sys
import engine
engine.setup_process()
from engine.engine import Engine
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings
request = GenerationRequest(messages=[ChatMessage(role="user", content="Hello")], max_tokens=6,
                            sampling=SamplingParams(temperature=0.8))
first = Engine(Settings(data_dir=sys.argv[1])).start()
from mlx_lm import generate, load
model, tokenizer = load(first.info.path)
generate(model, tokenizer, "Hello", max_tokens=4)
second = Engine(Settings(data_dir=sys.argv[1])).start()
second.generate(request)
first.generate(request)
second.close()
first.close()
print("done")
"""


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_engine_process_exits_cleanly(default_engine, attempt):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(default_engine.settings.data_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.stdout.strip() == "done", result.stderr
    assert result.returncode == 0, result.stderr[-2000:]
