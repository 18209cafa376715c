"""engine/mlx_lm_ext/ragged_decode.py: one decode step's attention for a left-padded batch in one CUDA
kernel, against MLX's fused attention on each row's own keys. It needs MLX's CUDA backend: elsewhere
the test says so and is skipped (decode_rows.py then keeps its calls per row)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from engine.backend import installed_backend
from engine.mlx_lm_ext import ragged_decode

pytestmark = pytest.mark.skipif(installed_backend() != "cuda", reason="the batch kernel needs MLX's CUDA backend")


@pytest.mark.parametrize(
    ("dtype", "heads", "kv_heads", "dim", "starts"),
    [
        (mx.bfloat16, 32, 8, 128, [0, 114, 229, 343, 457, 571, 686, 800]),
        (mx.float16, 9, 3, 64, [5, 0, 1000]),
        (mx.float32, 4, 4, 96, [1023, 0]),
    ],
)
def test_each_row_attends_its_own_keys(dtype, heads, kv_heads, dim, starts):
    assert ragged_decode.usable(dtype, dim, heads // kv_heads)
    length = 1024
    mx.random.seed(3)
    queries = mx.random.normal((len(starts), heads, 1, dim)).astype(dtype)
    # Keys and values as a batch cache holds them: a view of a longer buffer
    buffer = mx.random.normal((2, len(starts), kv_heads, length + 256, dim)).astype(dtype)
    keys, values = buffer[0][..., :length, :], buffer[1][..., :length, :]
    scale = dim**-0.5
    ours = ragged_decode.attend(queries, keys, values, scale, mx.array(starts, dtype=mx.int32))
    for row, start in enumerate(starts):
        expected = mx.fast.scaled_dot_product_attention(
            queries[row : row + 1], keys[row : row + 1, :, start:], values[row : row + 1, :, start:], scale=scale
        )
        difference = mx.abs(ours[row : row + 1].astype(mx.float32) - expected.astype(mx.float32)).max().item()
        assert difference < (1e-4 if dtype == mx.float32 else 2e-2), (row, difference)
