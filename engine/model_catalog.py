"""The models this machine can load without the network, read from disk only (no model is loaded):
installed packaged models and Hugging Face repos already in the hub cache. `agent-memory models list`
shows them; a server that loads models on demand lists them beside the one it serves, and
`GET /admin/models` lists what a swap may name."""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.model_source import PACKAGED_MODELS, PackagedModel, package_dir

# How a checkpoint's config.json (or a model's compute dtype) names a float type, and Ollama's level for it
FLOAT_LEVELS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class LocalModel:
    name: str  # the model id a request (or --model) names
    kind: str  # "packaged" | "hub"
    path: str
    size_bytes: int
    modified: float  # the last change to its files (Unix time)
    family: str  # the architecture (config.json's model_type); "" when unknown
    parameter_size: str  # "135M"; "" when unknown
    quantization: str  # "Q4_1", "Q4", "BF16"; "" when unknown


def local_models() -> list[LocalModel]:
    """Every model that loads here without the network: packaged ones first, then hub repos by id."""
    packaged = [packaged_model(alias, model) for alias, model in PACKAGED_MODELS.items()]
    return [*(model for model in packaged if model is not None), *(hub_model(repo) for repo in hub_repos())]


def swap_choices(models_path: Path) -> list[str]:
    """The model ids a swap may name here: installed packaged models by alias, hub repos already
    downloaded, then models already prepared under `models_path` (the data dir's converted models)."""
    choices = [model.name for model in local_models()]
    if models_path.is_dir():
        choices += sorted(str(config.parent) for config in models_path.glob("*/config.json"))
    return choices


def packaged_model(alias: str, packaged: PackagedModel) -> LocalModel | None:
    """The packaged model as installed, None when its package is not."""
    folder = package_dir(packaged.module)
    if folder is None:
        return None
    files = [Path(file.locate()) for dist in distributions(packaged.package) for file in dist.files or ()]
    present = [file for file in files if file.is_file()]
    return LocalModel(
        name=alias,
        kind="packaged",
        path=str(folder),
        size_bytes=sum(file.stat().st_size for file in present),
        modified=max((file.stat().st_mtime for file in present), default=folder.stat().st_mtime),
        family=packaged.family,
        parameter_size=packaged.parameter_size,
        quantization=packaged.quantization,
    )


def distributions(package: str) -> list:
    """The installed distributions of `package` and of its `-partN` chunk packages (Gemma ships its GGUF
    in five)."""
    wanted = re.compile(re.escape(normalized(package)) + r"(-part\d+)?")
    return [dist for dist in importlib.metadata.distributions() if wanted.fullmatch(normalized(dist.metadata["Name"]))]


def normalized(name: str | None) -> str:
    return (name or "").lower().replace("_", "-")


def hub_cache():
    """The Hugging Face hub cache's contents (huggingface_hub's HFCacheInfo), None before its first download.
    An unreadable entry is left out (scan_cache_dir collects it as a warning)."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        return scan_cache_dir()
    except CacheNotFound:
        return None


def hub_repos() -> list:
    """Model repos in the hub cache that mlx-lm can load: a revision with config.json and safetensors weights."""
    cache = hub_cache()
    repos = cache.repos if cache else ()
    loadable = (repo for repo in repos if repo.repo_type == "model" and _loadable_revision(repo) is not None)
    return sorted(loadable, key=lambda r: r.repo_id)


def hub_model(repo) -> LocalModel:
    """A loadable hub repo (from hub_repos), described from its config.json."""
    config = _config(repo)
    quantization = config.get("quantization")
    if isinstance(quantization, dict) and "bits" in quantization:
        level = f"Q{quantization['bits']}"
    else:
        level = FLOAT_LEVELS.get(str(config.get("torch_dtype", "")), "")
    return LocalModel(
        name=repo.repo_id,
        kind="hub",
        path=str(repo.repo_path),
        size_bytes=repo.size_on_disk,
        modified=repo.last_modified,
        family=str(config.get("model_type", "")),
        parameter_size="",
        quantization=level,
    )


def _loadable_revision(repo):
    for revision in repo.revisions:
        names = {f.file_name for f in revision.files if f.file_path.parent == revision.snapshot_path}
        if "config.json" in names and any(name.endswith(".safetensors") for name in names):
            return revision
    return None


def _config(repo) -> dict:
    """The repo's config.json; {} when it cannot be read as a JSON object."""
    try:
        config = json.loads((_loadable_revision(repo).snapshot_path / "config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}
