"""The numpy attention used on MLX's CPU backend: same results as MLX's kernel, for every mask mlx-lm makes."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest
from mlx_lm.models.base import create_causal_mask

from engine.cpu import attention as cpu_attention
from engine.engine import Engine
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings

LEFT_PADDING = mx.array([0, 5, 17])


def random_qkv(batch, num_heads, num_kv_heads, num_queries, num_keys, head_dim):
    mx.random.seed(7)
    shapes = [(batch, num_heads, num_queries, head_dim)] + [(batch, num_kv_heads, num_keys, head_dim)] * 2
    arrays = [mx.random.normal(shape) * 3 for shape in shapes]
    mx.eval(arrays)
    return arrays


CASES = {
    # name: (batch, heads, kv heads, queries, keys, head dim, mask)
    "resume over a long cache": (1, 9, 3, 45, 4096, 64, "causal"),
    "prefill chunk, several slabs": (1, 9, 3, 512, 1536, 64, "causal"),
    "no mask, one kv head": (2, 4, 1, 40, 700, 256, None),
    "batched prefill, left padding": (3, 9, 3, 20, 30, 64, create_causal_mask(20, 10, left_padding=LEFT_PADDING)),
    "batched decode, left padding": (3, 9, 3, 1, 3000, 64, create_causal_mask(1, 2999, left_padding=LEFT_PADDING)),
    "sliding window": (1, 4, 1, 200, 900, 64, create_causal_mask(200, 700, window_size=512)),
    "bfloat16 additive mask": (
        1, 4, 1, 20, 30, 64, mx.where(create_causal_mask(20, 10), 0.0, -1e9).astype(mx.bfloat16)[None, None]
    ),
    "slabs across sequences": (3, 9, 3, 300, 4096, 64, create_causal_mask(300, 3796, left_padding=LEFT_PADDING)),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_numpy_attention_matches_mlx(name):
    batch, heads, kv_heads, queries, keys, head_dim, mask = CASES[name]
    q, k, v = random_qkv(batch, heads, kv_heads, queries, keys, head_dim)
    scale = head_dim**-0.5
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    got = cpu_attention.attention(q, k, v, scale, mask)
    assert got.shape == expected.shape
    # float32 sums in another order (the BLAS's kernels differ by CPU): a few units in the 5th digit
    assert mx.allclose(got, expected, atol=1e-4, rtol=1e-4).item()


@pytest.mark.parametrize("kind", ["boolean", "additive"])
def test_a_fully_masked_row_gets_uniform_weights_not_nan(kind):
    """Left padding in a batch masks whole rows; their outputs must stay finite, as in MLX."""
    q, k, v = random_qkv(3, 9, 3, 20, 30, 64)
    mask = create_causal_mask(20, 10, left_padding=LEFT_PADDING)
    if kind == "additive":
        mask = mx.where(mask, 0.0, -mx.inf)
    got = cpu_attention.attention(q, k, v, 0.125, mask)
    assert not mx.isnan(got).any().item()
    uniform = mx.mean(v[2], axis=1)  # sequence 2, query 0: every key is padding
    assert mx.allclose(got[2, 0::3, 0], uniform, atol=1e-5).item()


def test_a_causal_mask_with_left_padding_is_applied_by_columns():
    """mlx-lm's batch caches pass causal masks with left padding as arrays: recognised (the masked
    columns are then set by slicing), and anything else is applied score by score."""
    padded = create_causal_mask(20, 10, left_padding=LEFT_PADDING)
    view = cpu_attention._mask_view(padded, 3, 3, 3, 20, 30)
    assert isinstance(view, cpu_attention._PaddedCausal)
    assert view.left.tolist() == LEFT_PADDING.tolist()
    window = create_causal_mask(200, 700, window_size=512)
    assert not isinstance(cpu_attention._mask_view(window, 1, 1, 4, 200, 900), cpu_attention._PaddedCausal)


def test_dispatch_uses_numpy_only_on_threads_that_asked():
    calls = []
    original = cpu_attention.attention
    q, k, v = random_qkv(1, 9, 3, 45, 1024, 64)

    def counting(*args):
        calls.append(threading.get_ident())
        return original(*args)

    cpu_attention.attention = counting
    try:
        cpu_attention.enable_on_this_thread(False)
        off = cpu_attention.dispatch(q, k, v, None, 0.125, "causal")
        cpu_attention.enable_on_this_thread(True)
        on = cpu_attention.dispatch(q, k, v, None, 0.125, "causal")
    finally:
        cpu_attention.enable_on_this_thread(False)
        cpu_attention.attention = original
    assert calls == [threading.get_ident()]
    assert mx.allclose(off, on, atol=1e-4, rtol=1e-4).item()


def test_greedy_output_is_the_same_with_either_attention(tiny_model_dir, data_dir):
    """A prompt long enough that its prefill goes through numpy attention."""
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content="the harbour letters " * 90)],
        max_tokens=24,
        sampling=SamplingParams(temperature=0.0),
    )
    outputs = {}
    for mode in ("numpy", "mlx"):
        settings = Settings(
            data_dir=data_dir, mlx_model_id=str(tiny_model_dir), kv_memory=False, mlx_cpu_attention=mode
        )
        with Engine(settings) as eng:
            outputs[mode] = eng.generate(request).text
    assert outputs["numpy"] == outputs["mlx"]
    assert outputs["numpy"]
