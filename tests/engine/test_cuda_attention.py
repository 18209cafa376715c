"""The CUDA backend's prefill attention by matmuls: same results as MLX's kernel for every mask mlx-lm
makes, and used only where it is meant to be (runs on any backend: it is plain MLX)."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest
from mlx_lm.models import llama
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import make_prompt_cache

from engine.cuda import attention as cuda_attention

LEFT_PADDING = mx.array([0, 5, 17])

CASES = {
    # name: (batch, heads, kv heads, queries, keys, head dim, mask, dtype)
    "resumed turn, grouped heads": (1, 9, 3, 45, 700, 64, "causal", mx.float32),
    "no mask, one kv head": (2, 4, 1, 40, 70, 128, None, mx.float32),
    "batched prefill, left padding": (
        3, 8, 2, 20, 30, 64, create_causal_mask(20, 10, left_padding=LEFT_PADDING), mx.float32
    ),
    "per-head additive mask": (
        1, 4, 2, 20, 30, 64, mx.where(create_causal_mask(20, 10), 0.0, -1e9)[None, None] * mx.ones((1, 4, 1, 1)),
        mx.float32,
    ),
    "sliding window": (1, 4, 1, 200, 900, 64, create_causal_mask(200, 700, window_size=512), mx.float32),
    "bfloat16": (1, 8, 2, 33, 300, 64, "causal", mx.bfloat16),
}  # fmt: skip


def random_qkv(batch, num_heads, num_kv_heads, num_queries, num_keys, head_dim, dtype):
    mx.random.seed(11)
    shapes = [(batch, num_heads, num_queries, head_dim)] + [(batch, num_kv_heads, num_keys, head_dim)] * 2
    arrays = [(mx.random.normal(shape) * 3).astype(dtype) for shape in shapes]
    mx.eval(arrays)
    return arrays


@pytest.mark.parametrize("name", CASES)
def test_matmul_attention_matches_mlx(name):
    batch, heads, kv_heads, queries, keys, head_dim, mask, dtype = CASES[name]
    q, k, v = random_qkv(batch, heads, kv_heads, queries, keys, head_dim, dtype)
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5, mask=mask)
    got = cuda_attention.attention(q, k, v, head_dim**-0.5, mask)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    tolerance = 2e-2 if dtype == mx.bfloat16 else 1e-4
    assert mx.allclose(got.astype(mx.float32), expected.astype(mx.float32), atol=tolerance, rtol=tolerance).item()


def test_fully_masked_rows_get_uniform_weights():
    """Left padding's own query rows see no key: they must come out finite, as from MLX's kernels."""
    q, k, v = random_qkv(3, 4, 2, 20, 30, 64, mx.float32)
    got = cuda_attention.attention(q, k, v, 0.125, create_causal_mask(20, 10, left_padding=LEFT_PADDING))
    assert mx.isfinite(got).all().item()


def tiny_llama():
    args = llama.ModelArgs(
        model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=100, rope_theta=10000.0, tie_word_embeddings=True,
    )  # fmt: skip
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def test_dispatch_takes_short_prefills_on_enabled_threads_only(monkeypatch):
    """Chunks shorter than a full step (on the engine thread) go by matmuls; full steps and single
    queries, and every other thread, keep MLX's kernel; the model's output is the same either way."""
    model = tiny_llama()
    # mlx-lm's own function for this test only (another backend's may be installed; it is put back after)
    monkeypatch.setattr(llama, "scaled_dot_product_attention", cuda_attention._mlx_attention)
    cuda_attention.install(model)
    assert llama.scaled_dot_product_attention is cuda_attention.dispatch
    calls, matmul_attention = [], cuda_attention.attention
    monkeypatch.setattr(
        cuda_attention, "attention", lambda q, *rest: calls.append(q.shape[2]) or matmul_attention(q, *rest)
    )

    def run(lengths):
        cache = make_prompt_cache(model)
        outputs = [model(mx.arange(n)[None] % 100, cache=cache) for n in lengths]
        mx.eval(outputs)
        return outputs

    reference = run([8, 5, 1])
    assert calls == []  # not enabled on this thread
    cuda_attention.enable_on_this_thread(8)
    try:
        enabled = run([8, 5, 1])
        assert calls == [5, 5]  # the 5-token chunk, once per layer; not the full step nor the one query
        other_thread = []
        thread = threading.Thread(target=lambda: other_thread.extend(run([5])))
        thread.start()
        thread.join()
        assert calls == [5, 5]
    finally:
        cuda_attention.enable_on_this_thread(None)
    for got, expected in zip(enabled, reference, strict=True):
        assert mx.allclose(got, expected, atol=1e-4).item()
