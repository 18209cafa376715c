"""`agent-memory models pull` and `models ps`: the model commands that talk to another machine. A pull fetches
a Hugging Face repo into the hub cache; ps asks a running server what it holds in memory (its model, the
agents in its hot tier, its requests) through /health, /api/ps, /v1/agents and /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import typer

from engine.settings import Settings
from workbench.models_cmd import dir_bytes, failed
from workbench.output import report_error

TIMEOUT_S = 10  # each request of `ps`: the server answers these from memory

# The files mlx-lm's loader fetches (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS, compared in the tests): a pull that
# fetches the same set is what a later offline `--model REPO` finds complete.
MLX_LM_FILES = [
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]


def pull_model(settings: Settings, repo_id: str, revision: str | None) -> int:
    """Download the repo's mlx-lm files into the hub cache, where `--model REPO` finds them offline."""
    from engine.errors import ModelLoadError
    from engine.model_source import PACKAGED_MODELS, packaged_alias, resolve

    if packaged_alias(repo_id) in PACKAGED_MODELS:
        return report_error(f"{repo_id!r} is a packaged model: nothing to pull (see `agent-memory models`)")
    try:
        kind = resolve(repo_id, settings.models_path).kind
    except ModelLoadError:
        kind = None
    if kind != "hub":
        return report_error(f"{repo_id!r} is not a Hugging Face repo id: pass one as ORG/NAME")
    try:
        snapshot = Path(_download(repo_id, revision))
    except PullError as exc:
        return failed(str(exc))
    typer.echo(f"Pulled {repo_id} ({dir_bytes(snapshot) / 1e6:,.0f} MB) into {snapshot}")
    if not (snapshot / "config.json").is_file():
        typer.echo(f"warning: {repo_id} has no config.json: mlx-lm cannot load it (for a GGUF, pass the file's path)")
    elif revision:
        typer.echo(f"`--model {repo_id}` loads the repo's main revision; for this one pass --model {snapshot}")
    else:
        typer.echo(f"Use it with: agent-memory chat --model {repo_id}  (no network needed now)")
    return 0


class PullError(Exception):
    """The hub gave nothing; the message says why and what to do."""


def _download(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import is_offline_mode, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=MLX_LM_FILES)
    except LocalEntryNotFoundError:
        if is_offline_mode():
            raise PullError(f"cannot pull {repo_id}: HF_HUB_OFFLINE is set; unset it to download") from None
        raise PullError(f"cannot pull {repo_id}: the Hugging Face hub cannot be reached; check your network") from None
    except GatedRepoError:
        raise PullError(f"{repo_id} is gated: accept its terms on huggingface.co, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise PullError(f"no repo {repo_id} on the Hugging Face hub (a private one needs `hf auth login`)") from None
    except RevisionNotFoundError:
        raise PullError(f"{repo_id} has no revision {revision!r}") from None
    except (HfHubHTTPError, HFValidationError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PullError(f"cannot pull {repo_id}: {first_line}") from None


def show_running(base_url: str, api_key: str | None, json_output: bool) -> int:
    from workbench.tui.remote import RemoteSource

    try:
        source = RemoteSource(base_url, api_key=api_key)
    except httpx.InvalidURL as exc:
        return failed(f"{base_url!r} is not a server URL ({exc})")
    source.client.timeout = httpx.Timeout(TIMEOUT_S)
    try:
        report = _running(source)
    except httpx.HTTPStatusError as exc:
        return failed(f"{source.base_url} answered {exc.response.status_code} to {exc.request.url.path}")
    except httpx.HTTPError as exc:
        return failed(
            f"no agent-memory server answers at {source.base_url} ({exc}); start one with `agent-memory serve`"
        )
    except PermissionError as exc:
        return failed(str(exc))
    except ValueError:
        return failed(f"{source.base_url} does not answer as an agent-memory server")
    finally:
        source.close()
    if json_output:
        typer.echo(json.dumps(report))
    else:
        _print(report)
    return 0


def _running(source) -> dict:
    """The server's state; raises httpx.HTTPError (no answer), PermissionError (a key is wanted) or
    ValueError (a reply that is not the server's JSON)."""
    health = source.client.get("/health").json()
    if not isinstance(health, dict) or "status" not in health:
        raise ValueError("not an agent-memory /health")
    report = {"url": source.base_url, "status": health["status"], "model": None, "hot": None, "requests": None}
    if "model_id" not in health:  # loading, or failed to load: nothing else to ask
        report["error"] = health.get("error")
        return report
    report["requests"] = health["queue_depth"]
    hot_agents = [
        {"id": row["id"], "bytes": row["bytes"], "tokens": row["tokens"]}
        for row in source.agents()
        if row["tier"] == "hot"
    ]
    loaded = source.client.get("/api/ps")
    loaded.raise_for_status()
    running = next(iter(loaded.json()["models"]), {})
    report["model"] = {
        "id": health["model_id"],
        "fingerprint": health["fingerprint"],
        "backend": health["backend"],
        "dtype": health["dtype"],
        "parameters": health["parameters"],
        "context_length": health["context_length"],
        "weights_bytes": running.get("size"),
    }
    pool = source.pool().hot
    report["hot"] = {
        "agents": pool.agents,
        "max_agents": pool.max_agents,
        "bytes": pool.used_bytes,
        "budget_bytes": pool.budget_bytes,
        # Only the caller's own agents when the server has tenants
        "resident": hot_agents,
    }
    return report


def _print(report: dict) -> None:
    model = report["model"]
    if model is None:
        detail = f": {report['error']}" if report.get("error") else ""
        typer.echo(f"{report['url']}: {report['status']}, no model loaded yet{detail}")
        return
    weights = f"{model['weights_bytes'] / 1e6:,.0f} MB" if model["weights_bytes"] is not None else "?"
    typer.echo(f"server   {report['url']} ({report['status']})")
    typer.echo(
        f"model    {model['id']}  weights {weights} ({model['backend']}, {model['dtype']}), "
        f"{model['parameters'] / 1e6:,.0f}M parameters, context {model['context_length']}"
    )
    hot = report["hot"]
    typer.echo(
        f"hot tier {hot['agents']} of at most {hot['max_agents']} agents, "
        f"{hot['bytes'] / 1e6:,.1f} of {hot['budget_bytes'] / 1e6:,.0f} MB"
    )
    for agent in hot["resident"]:
        typer.echo(f"  {agent['id']:<32} {agent['bytes'] / 1e6:8.1f} MB  {agent['tokens']:>7} tokens")
    typer.echo(f"requests {report['requests']} running or waiting")
