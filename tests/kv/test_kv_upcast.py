"""engine/cpu/upcast.py: float16 → float32 bit for bit what numpy's cast gives, into strided targets."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import upcast
from engine.cpu.upcast import float16_into_float32


def test_every_float16_converts_exactly():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # infinities and NaNs included
    rng = np.random.default_rng(1)
    for source in (halves, rng.permutation(halves).reshape(16, 64, 64)):
        target = np.empty(source.shape, np.float32)
        float16_into_float32(source, target)
        assert np.array_equal(target.view(np.uint32), source.astype(np.float32).view(np.uint32))


def test_finite_values_convert_exactly_without_the_table():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]  # zeros of both signs and every subnormal included
    target = np.empty(finite.shape, np.float32)
    float16_into_float32(finite, target)
    assert np.array_equal(target.view(np.uint32), finite.astype(np.float32).view(np.uint32))
    # The shifted bits alone, before a table could mend them, are already exact.
    shifted = np.empty(finite.shape, np.float32)
    upcast._by_bits(finite, shifted)
    assert np.array_equal(shifted.view(np.uint32), target.view(np.uint32))


def test_one_nan_or_infinity_among_many_values_converts_exactly():
    rng = np.random.default_rng(2)
    for odd in (np.inf, -np.inf, np.nan):
        source = (rng.standard_normal((3, 256, 64)) * 100).astype(np.float16)
        source[1, 200, 5] = odd
        cache = np.full((3, 512, 64), 7.0, np.float32)
        float16_into_float32(source, cache[:, 100:356])
        assert np.array_equal(cache[:, 100:356].view(np.uint32), source.astype(np.float32).view(np.uint32))
        assert (cache[:, :100] == 7.0).all() and (cache[:, 356:] == 7.0).all()


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
