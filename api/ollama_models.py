"""What Ollama's model routes (/api/tags, /api/show, /api/ps) say about the served model, from the engine's
ModelInfo. Front-ends read a model's family, size and capabilities from them, and its context length from
`model_info["<architecture>.context_length"]`."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from api.ollama_format import timestamp
from engine.model_catalog import FLOAT_LEVELS

# Every model takes tools: in its own template's format, or the engine's fallback format for templates
# without tool support (engine/tools/formats.py). Images are refused: the models read text only.
CAPABILITIES = ["completion", "tools"]
# The model stays loaded: Ollama shows a model kept forever (keep_alive -1) with a far-future expiry.
NEVER_EXPIRES = "2318-01-01T00:00:00Z"
# Ollama's names for the sampling defaults shown in /api/show's `parameters`
OLLAMA_PARAMETER_NAMES = {"repetition_penalty": "repeat_penalty", "penalty_context_tokens": "repeat_last_n"}
_WEIGHT_BITS = re.compile(r"\((\d+)")


@lru_cache(maxsize=8)
def weight_files(path: str) -> tuple[int, float]:
    """(bytes, last modified time) of the model directory's weights. Reads the disk: call it off the event
    loop (the answer is remembered per directory)."""
    files = list(Path(path).glob("*.safetensors"))
    size = sum(file.stat().st_size for file in files)
    modified = max((file.stat().st_mtime for file in files), default=Path(path).stat().st_mtime)
    return size, modified


def details(info) -> dict:
    # MLX's weights: a GGUF is converted once, when first loaded
    return _details(
        "safetensors", info.model_type, parameter_size(info.num_parameters), quantization_level(info.compute_dtype)
    )


def _details(weights_format: str, family: str, size: str, quantization: str) -> dict:
    return {
        "parent_model": "",
        "format": weights_format,
        "family": family,
        "families": [family] if family else [],
        "parameter_size": size,
        "quantization_level": quantization,
    }


def parameter_size(parameters: int) -> str:
    """Ollama's way: "135M", "1.1B"."""
    if parameters >= 1_000_000_000:
        return f"{parameters / 1e9:.1f}B"
    if parameters >= 1_000_000:
        return f"{parameters / 1e6:.0f}M"
    return f"{parameters / 1e3:.0f}K"


def quantization_level(compute_dtype: str) -> str:
    """ "float16 (4-bit weights)" -> "Q4", "float32" -> "F32"."""
    bits = _WEIGHT_BITS.search(compute_dtype)
    if bits:
        return f"Q{bits.group(1)}"
    return FLOAT_LEVELS.get(compute_dtype, compute_dtype.upper())


def listed_model(name: str, info, files: tuple[int, float]) -> dict:
    """One entry of /api/tags."""
    size, modified = files
    return {
        "name": name,
        "model": name,
        "modified_at": timestamp(modified),
        "size": size,
        "digest": info.fingerprint,
        "details": details(info),
    }


def listed_local(model) -> dict:
    """One entry of /api/tags for a model that is not loaded (engine/model_catalog.py's LocalModel), read
    off its files. Its digest names the files, not their contents: hashing gigabytes per listing is not
    worth it, and the fingerprint the engine computes exists only once it is loaded."""
    identity = f"{model.name}\0{model.path}\0{model.size_bytes}\0{model.modified}"
    weights_format = "gguf" if model.kind == "packaged" else "safetensors"
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": timestamp(model.modified),
        "size": model.size_bytes,
        "digest": hashlib.sha256(identity.encode()).hexdigest(),
        "details": _details(weights_format, model.family, model.parameter_size, model.quantization),
    }


def running_model(name: str, info, files: tuple[int, float]) -> dict:
    """One entry of /api/ps. On the CPU backend no weight is in GPU memory."""
    size, _ = files
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": info.fingerprint,
        "details": details(info),
        "expires_at": NEVER_EXPIRES,
        "size_vram": 0 if info.backend == "cpu" else size,
        "context_length": info.context_length,
    }


def shown_model(name: str, info, chat_template: str, files: tuple[int, float]) -> dict:
    """/api/show: `template` is the Jinja chat template the prompts are rendered with (not a Go template, as
    Ollama's are); `parameters` the sampling values a request that sets none gets."""
    architecture = info.model_type
    model_info = {
        "general.architecture": architecture,
        "general.basename": name,
        "general.parameter_count": info.num_parameters,
        f"{architecture}.context_length": info.context_length,
        f"{architecture}.block_count": info.num_layers,
    }
    if info.vocab_size:
        model_info[f"{architecture}.vocab_size"] = info.vocab_size
    defaults = {
        OLLAMA_PARAMETER_NAMES.get(setting, setting): value
        for setting, value in info.sampling_defaults.values().items()
        if value is not None
    }
    _, modified = files
    return {
        "modelfile": "",
        "parameters": "\n".join(f"{setting} {value}" for setting, value in defaults.items()),
        "template": chat_template,
        "details": details(info),
        "model_info": model_info,
        "capabilities": CAPABILITIES,
        "modified_at": timestamp(modified),
    }
