"""Shared fixtures (a temporary data dir, the real default model loaded once, a tiny random model) and the test
tiers. Tests live by layer: engine/, kv/, api/ and workbench/.

    unit    no model, no subprocess, well under a second a test: `make test-unit` while you work
    model   loads a real or random-weight model in-process (a fixture in MODEL_FIXTURES, or a model marker)
    slow    subprocesses, servers, real clients, whole TUI runs

Every test gets one tier: its own marker if it has one (`pytestmark = pytest.mark.slow` for all of a file's
tests, `@pytest.mark.slow` for one; slow wins over model), else model if it uses a model fixture, else slow if
it takes snapshots, else unit. A unit test that starts an engine or a subprocess fails and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.engine import Engine
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings

engine.setup_process()  # before anything imports MLX (the CPU backend loads OpenBLAS)

REPO_ROOT = Path(__file__).resolve().parent.parent

# -- test tiers (see the module docstring) ----------------------------------------------------------------
TIERS = ("unit", "model", "slow")
# A test that uses one of these, directly or through its own fixtures, loads a model: the conftest ones, and
# test modules' own (an Engine of their own, a random-weight model built in-process).
MODEL_FIXTURES = frozenset(
    {
        "default_engine",
        "default_model_dir",
        "tiny_model_dir",
        "tiny_engine",
        "server",
        "http",
        "cold_engine",
        "gemma_cold_engine",
        "gemma_tokenizer",
        "exported",
        "default_model",
        "model",
    }
)
SLOW_FIXTURES = frozenset({"snap_compare"})  # a whole Textual app run per snapshot


def tier_of(item: pytest.Item) -> str:
    """The test's tier (see the module docstring); a unit marker on a test that uses a model is refused."""
    marked = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
    fixtures = set(getattr(item, "fixturenames", ()))
    if "unit" in marked and fixtures & MODEL_FIXTURES:
        raise pytest.UsageError(
            f"{item.nodeid} is marked unit but uses {sorted(fixtures & MODEL_FIXTURES)}: mark it model or slow"
        )
    if marked:
        return "slow" if "slow" in marked else marked[0]
    if fixtures & MODEL_FIXTURES:
        return "model"
    return "slow" if fixtures & SLOW_FIXTURES else "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def unit_tests_stay_unit(request, monkeypatch):
    """A unit test that starts an engine or a subprocess fails, naming where its tier is set."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise RuntimeError(
                f"{request.node.nodeid} is a unit test but {what}: mark it model or slow "
                "(`pytestmark` for its whole file, or a marker on the test)"
            )

        return refused

    monkeypatch.setattr(Engine, "start", refuse("starts an engine"))
    monkeypatch.setattr(subprocess, "Popen", refuse("starts a subprocess"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agent-memory-data")


@pytest.fixture(scope="session")
def default_engine(data_dir) -> Engine:
    """The embedded default model, converted into the session's data dir and loaded once."""
    with Engine(Settings(data_dir=data_dir)) as running:
        yield running


# A random-weight Llama small enough for unit tests, with SmolLM2's vocabulary size.
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
    "eos_token_id": [2],
}


@pytest.fixture(scope="session")
def default_model_dir(data_dir) -> Path:
    """The embedded default model as the mlx-lm directory default_engine loads (converted once, not loaded)."""
    from engine.loader import prepare
    from engine.model_source import resolve

    models_path = Settings(data_dir=data_dir).models_path
    return prepare(resolve("default", models_path), models_path)


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir, tmp_path_factory) -> Path:
    """A random-weight Llama with SmolLM2's tokenizer: fast, and its output is arbitrary tokens."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    target = tmp_path_factory.mktemp("tiny-llama")
    source = default_model_dir
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    config = TINY_LLAMA
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, data_dir, default_engine) -> Engine:
    """The tiny model in the same data dir. The default engine starts first whatever order tests ask in,
    so that it owns the cache dir and this one reads it only (tests rely on which one writes)."""
    with Engine(Settings(data_dir=data_dir, mlx_model_id=str(tiny_model_dir))) as running:
        yield running


def ask(text: str, max_tokens: int = 48, **kwargs) -> GenerationRequest:
    """A greedy single-message request."""
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
        **kwargs,
    )


def cli_env(data_dir: Path, env: dict | None = None) -> dict:
    """The environment of an `agent-memory` subprocess whose data dir is `data_dir`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMANTIC_")}
    # Its own KV cache dir: the test process's engines own (lock) the data dir's default one.
    full_env.update(
        {
            "SEMANTIC_DATA_DIR": str(data_dir),
            "SEMANTIC_AGENT_CACHE_DIR": str(data_dir / "cli-caches"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, data_dir: Path, env: dict | None = None, stdin: str | None = None, cwd=None):
    """Run `agent-memory ARGS` in a fresh process with its data dir pointed at `data_dir`."""
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(data_dir, env),
        cwd=cwd or data_dir.parent,
        timeout=300,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hub_repo(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repo in the hub cache's own layout: blobs named by content, a snapshot of links to them, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


class ServerProcess:
    """`agent-memory serve` in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, cache_dir: Path, env: dict | None = None, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMANTIC_")}
        full_env.update(
            {"SEMANTIC_DATA_DIR": str(data_dir), "SEMANTIC_AGENT_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
        )
        full_env.update(env or {})
        self.log_path = cache_dir.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", "serve", "--port", str(self.port), *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=data_dir.parent,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


API_KEY = "test-key-123"
ADMIN_KEY = "admin-key-456"


@pytest.fixture(scope="session")
def server(default_engine, data_dir) -> ServerProcess:
    """The default model behind a real server, with an API key and an admin key."""
    cache_dir = data_dir / "server-caches"
    cache_dir.mkdir(exist_ok=True)
    running = ServerProcess(data_dir, cache_dir, {"SEMANTIC_API_KEY": API_KEY, "SEMANTIC_ADMIN_KEY": ADMIN_KEY})
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def http(server):
    """An HTTP client of the shared server, with its API key (a module that needs another defines its own)."""
    import httpx

    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": API_KEY}, timeout=300) as client:
        yield client
