"""engine/kv/upcast.py: float16 → float32 bit for bit what numpy's cast gives, into strided targets."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kv.upcast import float16_into_float32


def test_every_float16_converts_exactly():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # infinities and NaNs included
    rng = np.random.default_rng(1)
    for source in (halves, rng.permutation(halves).reshape(16, 64, 64)):
        target = np.empty(source.shape, np.float32)
        float16_into_float32(source, target)
        assert np.array_equal(target.view(np.uint32), source.astype(np.float32).view(np.uint32))


def test_writes_a_token_range_of_a_larger_cache_array_only():
    rng = np.random.default_rng(0)
    source = (rng.standard_normal((3, 256, 64)) * 4).astype(np.float16)
    cache = np.full((3, 1024, 64), 7.0, np.float32)
    float16_into_float32(source, cache[:, 256:512])
    assert np.array_equal(cache[:, 256:512], source.astype(np.float32))
    assert (cache[:, :256] == 7.0).all() and (cache[:, 512:] == 7.0).all()
    # Strided on more than one axis (every other head, the last half of each row): still exact.
    float16_into_float32(source[::2, :, 32:], cache[::2, 600:856, 32:])
    assert np.array_equal(cache[::2, 600:856, 32:], source[::2, :, 32:].astype(np.float32))
    assert (cache[1, 600:856] == 7.0).all() and (cache[::2, 600:856, :32] == 7.0).all()


def test_refuses_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        float16_into_float32(np.zeros((2, 3), np.float16), np.zeros((3, 2), np.float32))
