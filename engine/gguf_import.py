"""Convert a GGUF file into an ordinary mlx-lm model directory, once.

GGUF stores llama.cpp's tensor names and layouts; mlx-lm wants Hugging Face's. This is the inverse of
`mlx_lm.gguf` (its export): names are translated back, Llama's Q/K rows are un-permuted (llama.cpp
interleaves rotary pairs), and Gemma's norm weights lose the +1 that llama.cpp folds in. Weights are
dequantized with the `gguf` package, so every GGUF type works; the CPU backend keeps float32 (MLX's
quantized CPU kernels are slow), GPUs re-quantize to 4-bit.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np

from engine.errors import ModelLoadError

Progress = Callable[[str, int, int], None]  # (stage, done, total)

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
GGUF_MAGIC = b"GGUF"
# Chat-turn terminators that should stop generation besides the GGUF's declared EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_ARCH_LAYER_NAMES = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def file_digest(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, read in 8 MiB chunks."""
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress("hashing", done, total)
    return digest.hexdigest()


def hf_tensor_name(gguf_name: str, architecture: str) -> str:
    """Translate a llama.cpp tensor name (`blk.3.attn_q.weight`) to Hugging Face's."""
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, kind = match.groups()
        names = {**_LAYER_NAMES, **_ARCH_LAYER_NAMES[architecture]}
        if part not in names:
            raise ModelLoadError(f"GGUF tensor {gguf_name!r} is not known for {architecture} models")
        return f"model.layers.{layer}.{names[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base not in _TOP_NAMES:
        raise ModelLoadError(f"GGUF tensor {gguf_name!r} is not known for {architecture} models")
    return f"{_TOP_NAMES[base]}.{kind}"


def unpermute_rotary(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (inverse of `mlx_lm.gguf.permute_weights`)."""
    head_rows = weights.shape[0] // num_heads
    split = weights.reshape(num_heads, head_rows // 2, 2, *weights.shape[1:])
    return split.swapaxes(1, 2).reshape(weights.shape)


def permute_rotary(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (what the export applies); used to show a broken import."""
    head_rows = weights.shape[0] // num_heads
    split = weights.reshape(num_heads, 2, head_rows // 2, *weights.shape[1:])
    return split.swapaxes(1, 2).reshape(weights.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_architecture(reader) -> str:
    architecture = _field(reader, "general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ModelLoadError(
            f"GGUF architecture {architecture!r} is not supported yet (supported: {supported}); "
            "use an mlx-lm model directory or Hugging Face repo id instead"
        )
    return architecture


def model_config(reader, architecture: str) -> dict:
    """config.json for mlx-lm from the GGUF's metadata."""

    def arch(key, default=None):
        return _field(reader, f"{architecture}.{key}", default)

    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    hidden = int(arch("embedding_length"))
    heads = int(arch("attention.head_count"))
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": int(arch("block_count")),
        "intermediate_size": int(arch("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(arch("attention.head_count_kv", heads)),
        "rms_norm_eps": float(arch("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(arch("rope.freq_base", 10000.0)),
        "vocab_size": int(arch("vocab_size", len(tokens))),
        "max_position_embeddings": int(arch("context_length", 2048)),
        "head_dim": int(arch("attention.key_length", hidden // heads)),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "eos_token_id": eos_token_ids(reader),
    }
    if architecture == "llama":
        config.update(model_type="llama", rope_traditional=False, attention_bias=False, mlp_bias=False)
    else:
        # llama.cpp hard-codes Gemma 3's layout: 5 sliding-window layers, then 1 global one.
        config.update(
            model_type="gemma3_text",
            sliding_window=int(arch("attention.sliding_window", 512)),
            sliding_window_pattern=6,
            query_pre_attn_scalar=config["head_dim"],
            rope_local_base_freq=10000.0,
        )
    return config


def eos_token_ids(reader) -> list[int]:
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    ids = []
    declared = _field(reader, "tokenizer.ggml.eos_token_id")
    if declared is not None:
        ids.append(int(declared))
    index = {token: i for i, token in enumerate(tokens) if token in END_OF_TURN_TOKENS}
    for token in END_OF_TURN_TOKENS:
        if token in index and index[token] not in ids:
            ids.append(index[token])
    return ids


def tokenizer_files(reader, architecture: str) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config) built from the GGUF's vocabulary and merges."""
    from tokenizers import processors
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    grouped = {
        group: {
            name: _field(reader, f"tokenizer.{key}")
            for key, name in renames.items()
            if f"tokenizer.{key}" in reader.fields
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    tokens = tokenizer_dict["tokens"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)

    special = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            special[name] = tokens[int(token_id)]
    if tokenizer_config.get("add_bos_token") and "bos_token" in special:
        bos = special["bos_token"]
        bos_id = tokens.index(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    template = tokenizer_config.get("chat_template") or default_chat_template(architecture)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(_field(reader, f"{architecture}.context_length", 2048)),
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(tokenizer_config.get("add_bos_token", False)),
        "add_eos_token": bool(tokenizer_config.get("add_eos_token", False)),
        "chat_template": template,
        **special,
    }
    return backend.to_str(), config


def default_chat_template(architecture: str) -> str:
    """Some GGUFs carry no chat template; use the family's published one, else ChatML."""
    name = "gemma3.jinja" if architecture == "gemma3" else "chatml.jinja"
    return files("engine").joinpath("templates", name).read_text(encoding="utf-8")


def dequantized_weights(reader, architecture: str, config: dict, progress: Progress | None):
    """Yield (hf_name, float32 array) for every tensor, fixed up for mlx-lm."""
    from gguf.quants import dequantize

    total = len(reader.tensors)
    for done, tensor in enumerate(reader.tensors, start=1):
        name = hf_tensor_name(tensor.name, architecture)
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = values.reshape(shape)
        if architecture == "llama" and name.endswith("q_proj.weight"):
            values = unpermute_rotary(values, config["num_attention_heads"])
        elif architecture == "llama" and name.endswith("k_proj.weight"):
            values = unpermute_rotary(values, config["num_key_value_heads"])
        elif architecture == "gemma3" and name.endswith("norm.weight"):
            values = values - 1.0
        if progress:
            progress("converting", done, total)
        yield name, np.ascontiguousarray(values)


def check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)")


def open_reader(path: Path):
    from gguf import GGUFReader

    check_gguf_file(path)
    try:
        reader = GGUFReader(str(path))
        # A truncated file often parses its header but not its last tensors: touch them all.
        for tensor in reader.tensors:
            expected = int(tensor.n_bytes)
            if tensor.data.nbytes != expected:
                raise ValueError(f"tensor {tensor.name} has {tensor.data.nbytes} of {expected} bytes")
    except (ValueError, IndexError, OSError, KeyError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable GGUF file (truncated or corrupt: {exc}); download it again"
        ) from None
    return reader


def convert_gguf(gguf_path: Path, out_dir: Path, quantize_bits: int | None, progress: Progress | None = None) -> Path:
    """Write an mlx-lm directory for `gguf_path` at `out_dir` (atomically: temp dir, then rename)."""
    from safetensors.numpy import save_file

    reader = open_reader(gguf_path)
    architecture = read_architecture(reader)
    config = model_config(reader, architecture)
    tokenizer_json, tokenizer_config = tokenizer_files(reader, architecture)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        weights = dict(dequantized_weights(reader, architecture, config, progress))
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "mlx"})
        del weights
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (staging / "chat_template.jinja").write_text(tokenizer_config["chat_template"], encoding="utf-8")
        if quantize_bits:
            _quantize_in_place(staging, quantize_bits)
        (staging / "source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "architecture": architecture, "bits": quantize_bits})
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# Groups of 32 weights, as in GGUF's Q4_0/Q4_1/Q8_0 blocks and the K-quants' sub-blocks: re-quantizing
# their values in groups of 64 lost enough that the default model stopped answering sensibly.
GPU_GROUP_SIZE = 32


def _quantize_in_place(model_dir: Path, bits: int) -> None:
    """Re-quantize the float32 weights for a GPU backend with mlx-lm's own quantizer; the rest (norms,
    scales) and so the activations and KV caches in float16, exact on the warm tier's float16 disk."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(model_dir)
    model.set_dtype(mx.float16)
    model, config = quantize_model(model, config, group_size=GPU_GROUP_SIZE, bits=bits)
    (model_dir / "model.safetensors").unlink()
    save_model(model_dir, model)
    save_config(config, config_path=model_dir / "config.json")
