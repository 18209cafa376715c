"""MLX's CPU backend runs on OpenBLAS when the system has it, and says so when it does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.backend import installed_backend
from engine.cpu.blas import OPENBLAS_CANDIDATES
from tests.conftest import REPO_ROOT, run_cli

HAVE_OPENBLAS = any(Path(p).exists() for p in OPENBLAS_CANDIDATES)
linux_cpu = pytest.mark.skipif(
    not sys.platform.startswith("linux") or installed_backend() != "cpu", reason="only the Linux CPU wheel"
)

PROBE = (
    "import engine; engine.setup_process()\n"
    "import mlx.core as mx\n"
    "from engine.cpu import blas\n"
    "a = mx.ones((64, 64)); mx.eval(a @ a)\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(blas.state().name, 'libopenblas' in maps)\n"
)


def probe(env_extra: dict) -> str:
    env = {**os.environ, **env_extra}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@linux_cpu
@pytest.mark.skipif(not HAVE_OPENBLAS, reason="OpenBLAS is not installed (make setup installs it)")
@pytest.mark.slow
def test_openblas_is_loaded_before_mlx():
    assert probe({}) == "openblas True"


@linux_cpu
@pytest.mark.slow
def test_without_openblas_the_reference_blas_is_reported():
    assert probe({"AGENT_MEMORY_NO_OPENBLAS": "1"}) == "reference False"


@linux_cpu
def test_chat_warns_once_without_a_fast_blas(default_engine):
    result = run_cli(
        "chat",
        "-s",
        "blas",
        "-n",
        "2",
        "hi",
        data_dir=default_engine.settings.data_path,
        env={"AGENT_MEMORY_NO_OPENBLAS": "1"},
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "libopenblas0-pthread" in warnings[0]


PARK_PROBE = (
    "import os, engine; engine.setup_process()\n"
    "import mlx.core as mx\n"
    "from engine.cpu import blas\n"
    "def threads(): return len(os.listdir('/proc/self/task'))\n"
    "a = mx.ones((512, 512)); mx.eval(a @ a)\n"
    "working = threads()\n"
    "with blas.computing_thread(), blas.computing_thread():\n"
    "    blas.park_workers()\n"
    "    beside_another = threads()\n"
    "with blas.computing_thread():\n"
    "    blas.park_workers()\n"
    "    parked = threads()\n"
    "b = a @ a; mx.eval(b)\n"
    "print(working - beside_another, working - parked, threads() - parked, b[0, 0].item())\n"
)


@linux_cpu
@pytest.mark.skipif(not HAVE_OPENBLAS, reason="OpenBLAS is not installed (make setup installs it)")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no worker threads on one core")
@pytest.mark.slow
def test_parked_openblas_workers_stop_and_come_back_for_the_next_call():
    result = subprocess.run([sys.executable, "-c", PARK_PROBE], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    beside_another, stopped, restarted, value = result.stdout.split()
    assert int(beside_another) == 0  # another computing thread could be inside a BLAS call
    assert int(stopped) >= 1 and int(restarted) == int(stopped)
    assert float(value) == 512.0
