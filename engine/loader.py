"""Load a model for generation: resolve the id, convert a GGUF once, load with mlx-lm, fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backend import compute_dtype_name, current_backend, installed_backend
from engine.errors import ModelLoadError
from engine.fingerprint import DigestCache, model_fingerprint
from engine.gguf_import import Progress, convert_gguf
from engine.model_source import ModelSource, resolve
from engine.prompt_tokens import PromptEncoder
from engine.requests import SamplingParams
from engine.sampling import ENGINE_DEFAULTS, model_sampling_defaults


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    path: str
    source_kind: str
    model_type: str
    fingerprint: str
    backend: str
    compute_dtype: str
    blas: str
    context_length: int
    num_layers: int
    num_parameters: int
    kv_bytes_per_token: int
    vocab_size: int = 0  # logits per token (0: unknown)
    # What a request that leaves a sampling value unset gets (every value set), and where they come from.
    sampling_defaults: SamplingParams = ENGINE_DEFAULTS
    sampling_source: str = "engine defaults"


@dataclass
class LoadedModel:
    model: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    info: ModelInfo
    prompt_encoder: PromptEncoder | None = None  # tokenizes prompts reusing recent ones (None: plainly)
    # The vocabulary's longest token in characters: a prompt longer than this many per context token
    # cannot fit, whatever its tokens (0: no such bound)
    longest_token_chars: int = 0


def converted_dir(models_path: Path, gguf_path: Path, digest: str, backend: str) -> Path:
    variant = "f32" if backend == "cpu" else "q4g32-f16"
    return models_path / f"{gguf_path.stem}-{digest[:12]}-{variant}"


def prepare(source: ModelSource, models_path: Path, progress: Progress | None = None) -> Path:
    """A local mlx-lm directory for `source`, converting or downloading it as needed."""
    if source.kind == "directory":
        return Path(source.location)
    if source.kind == "hub":
        return _download(source.location)
    gguf_path = Path(source.location)
    digests = DigestCache(models_path / "digests.json")
    digest = digests.digest(gguf_path, progress)
    target = converted_dir(models_path, gguf_path, digest, installed_backend())
    if not (target / "config.json").is_file():
        convert_gguf(gguf_path, target, current_backend().gguf_bits, progress)
    return target


def _download(repo_id: str) -> Path:
    from mlx_lm.utils import _download as mlx_lm_download

    try:
        return Path(mlx_lm_download(repo_id))
    except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
        raise ModelLoadError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); check the repo id and your "
            "network, or pass a local path to a .gguf file or an mlx-lm model directory"
        ) from None


def load(model_id: str, models_path: Path, progress: Progress | None = None) -> LoadedModel:
    """Runs on the engine thread: it imports and uses MLX."""
    from mlx_lm.utils import load_model, load_tokenizer

    source = resolve(model_id, models_path)
    model_dir = prepare(source, models_path, progress)
    if progress:
        progress("loading", 0, 1)
    try:
        model, config = load_model(model_dir)
        tokenizer = load_tokenizer(model_dir, eos_token_ids=config.get("eos_token_id"))
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"cannot load the model at {model_dir}: {exc}") from None
    backend = installed_backend()
    model = current_backend().prepare_model(model, config)
    if progress:
        progress("loading", 1, 1)

    digests = DigestCache(models_path / "digests.json")
    template = getattr(tokenizer, "chat_template", None)
    sampling_defaults, sampling_source = model_sampling_defaults(model_dir, (source.location, model_dir.name))
    info = ModelInfo(
        model_id=model_id,
        path=str(model_dir),
        source_kind=source.kind,
        model_type=str(config.get("model_type")),
        fingerprint=model_fingerprint(model_dir, digests, template),
        backend=backend,
        compute_dtype=compute_dtype_name(backend, model),
        blas=current_backend().blas_name(),
        context_length=_context_length(config, model_dir),
        num_layers=len(model.layers),
        num_parameters=_num_parameters(model),
        kv_bytes_per_token=_kv_bytes_per_token(config, model),
        vocab_size=int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0),
        sampling_defaults=sampling_defaults,
        sampling_source=sampling_source,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=info,
        prompt_encoder=PromptEncoder(tokenizer),
        longest_token_chars=longest_entry_chars(tokenizer),
    )


def longest_entry_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry. An entry's text is at least as long as the text it
    stands for (byte-level entries spell one character per byte, `<0x0A>` byte pieces more), so no
    prompt has fewer tokens than its characters over this; 0 if the vocabulary cannot be listed."""
    try:
        return max(map(len, tokenizer.get_vocab()), default=0)
    except (AttributeError, NotImplementedError, TypeError):
        return 0


def _context_length(config: dict, model_dir: Path) -> int:
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    text_config = config.get("text_config") or {}
    if isinstance(text_config.get("max_position_embeddings"), int):
        return text_config["max_position_embeddings"]
    try:
        tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        return int(tokenizer_config.get("model_max_length", 4096))
    except (OSError, ValueError, TypeError):
        return 4096


def _num_parameters(model) -> int:
    from mlx.utils import tree_flatten

    return sum(value.size for _, value in tree_flatten(model.parameters()))


def _kv_bytes_per_token(config: dict, model) -> int:
    from engine.kv.layout import kv_dtype

    layers = len(model.layers)
    heads = config.get("num_attention_heads", 1)
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    return 2 * layers * kv_heads * head_dim * kv_dtype(model).size
