"""GGUF import: names, layouts and numbers must come out as the model was trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelLoadError
from engine.gguf_import import hf_tensor_name, permute_rotary, unpermute_rotary
from engine.loader import load
from tests.conftest import ask

# A fixed English paragraph; the converted SmolLM2 scores ~9 on it. Broken conversions score far above.
PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital and most populous city of France. "
    "It is located on the Seine River, in the north of the country. The city has been one of the world's "
    "major centres of finance, diplomacy, commerce, culture, fashion, and gastronomy for centuries."
)
PERPLEXITY_LIMIT = 20.0


def perplexity(model, tokenizer, text: str = PARAGRAPH) -> float:
    import mlx.core as mx
    import mlx.nn as nn

    ids = mx.array(tokenizer.encode(text))[None]
    logits = model(ids[:, :-1]).astype(mx.float32)
    return float(mx.exp(nn.losses.cross_entropy(logits, ids[:, 1:]).mean()).item())


def test_unpermute_is_the_inverse_of_mlx_lm_export():
    import mlx.core as mx
    from mlx_lm.gguf import permute_weights

    rows = np.random.default_rng(0).standard_normal((3 * 64, 10)).astype(np.float32)
    exported = np.array(permute_weights(mx.array(rows), 3))
    np.testing.assert_array_equal(unpermute_rotary(exported, 3), rows)
    np.testing.assert_array_equal(permute_rotary(rows, 3), exported)


@pytest.mark.parametrize(
    ("gguf_name", "architecture", "expected"),
    [
        ("token_embd.weight", "llama", "model.embed_tokens.weight"),
        ("blk.7.attn_q.weight", "llama", "model.layers.7.self_attn.q_proj.weight"),
        ("blk.0.ffn_norm.weight", "llama", "model.layers.0.post_attention_layernorm.weight"),
        ("blk.0.ffn_norm.weight", "gemma3", "model.layers.0.pre_feedforward_layernorm.weight"),
        ("blk.3.post_ffw_norm.weight", "gemma3", "model.layers.3.post_feedforward_layernorm.weight"),
        ("output_norm.weight", "gemma3", "model.norm.weight"),
    ],
)
def test_tensor_names(gguf_name, architecture, expected):
    assert hf_tensor_name(gguf_name, architecture) == expected


def test_unknown_tensor_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="not known"):
        hf_tensor_name("blk.0.mystery.weight", "llama")


def test_default_model_answers_paris(default_engine):
    finished = default_engine.generate(ask("What is the capital of France?"))
    assert "Paris" in finished.text
    assert finished.finish_reason == "stop"


def test_default_model_info(default_engine):
    info = default_engine.info
    assert info.model_type == "llama"
    assert info.backend in {"cpu", "metal", "cuda"}
    assert len(info.fingerprint) == 32
    assert info.context_length == 8192
    assert info.kv_bytes_per_token > 0
    config = json.loads((Path(info.path) / "config.json").read_text())
    assert config["tie_word_embeddings"] is True


@pytest.fixture(scope="module")
def default_model(default_engine):
    """The converted default model loaded again on this thread, for forward passes."""
    loaded = load(str(Path(default_engine.info.path)), Path(default_engine.settings.models_path))
    return loaded.model, loaded.tokenizer


def test_perplexity_of_the_conversion(default_model):
    model, tokenizer = default_model
    assert perplexity(model, tokenizer) < PERPLEXITY_LIMIT


def test_wrong_permutation_fails_the_perplexity_check(default_model):
    import mlx.core as mx

    model, tokenizer = default_model
    layers = model.model.layers
    originals = [(layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight) for layer in layers]
    try:
        for layer in layers:
            attn = layer.self_attn
            # What a converter that forgot to undo llama.cpp's row permutation would produce.
            attn.q_proj.weight = mx.array(permute_rotary(np.array(attn.q_proj.weight), attn.n_heads))
            attn.k_proj.weight = mx.array(permute_rotary(np.array(attn.k_proj.weight), attn.n_kv_heads))
        assert perplexity(model, tokenizer) > PERPLEXITY_LIMIT
    finally:
        for layer, (q, k) in zip(layers, originals, strict=True):
            layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight = q, k
    assert perplexity(model, tokenizer) < PERPLEXITY_LIMIT


def test_wrong_quantization_fails_the_perplexity_check(default_model):
    import mlx.core as mx

    model, tokenizer = default_model
    layers = model.model.layers
    originals = [layer.mlp.down_proj.weight for layer in layers]
    try:
        for layer in layers:
            # A dequantizer that reads Q4_1 blocks without their minimums shifts every weight.
            weight = layer.mlp.down_proj.weight
            layer.mlp.down_proj.weight = weight - mx.min(weight, axis=1, keepdims=True)
        assert perplexity(model, tokenizer) > PERPLEXITY_LIMIT
    finally:
        for layer, weight in zip(layers, originals, strict=True):
            layer.mlp.down_proj.weight = weight


@pytest.mark.slow
def test_gemma3_converts_with_sliding_window_layers(data_dir):
    loaded = load("gemma3-270m", data_dir / "models")
    config = json.loads((Path(loaded.info.path) / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["sliding_window"] == 512
    kinds = {type(cache).__name__ for cache in loaded.model.make_cache()}
    assert kinds == {"KVCache", "RotatingKVCache"}
    assert perplexity(loaded.model, loaded.tokenizer) < PERPLEXITY_LIMIT
    assert loaded.tokenizer.encode("hi")[0] == loaded.tokenizer.bos_token_id


def test_truncated_gguf_is_a_clear_error_and_writes_nothing(tmp_path, default_engine):
    from engine.model_source import PACKAGED_MODELS

    source = PACKAGED_MODELS["default"].gguf_path(tmp_path)
    truncated = tmp_path / "broken.gguf"
    truncated.write_bytes(source.read_bytes()[:20_000_000])
    models = tmp_path / "models"
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load(str(truncated), models)
    leftovers = [p for p in models.rglob("*") if p.name != "digests.json"] if models.exists() else []
    assert leftovers == []


def test_unknown_model_id_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model"):
        load("no-such-model", tmp_path)
    with pytest.raises(ModelLoadError, match="File name too long"):  # the file system's refusal, not a traceback
        load("x" * 5000, tmp_path)
