"""float16 → float32 in numpy, about twice as fast as numpy's own cast.

numpy converts half floats one value at a time (~0.6 G values/s here), which made the upcast of a
restored cache as slow as reading it. Here the conversion is done with integer and float ufuncs, which
numpy vectorises: the half's exponent and mantissa are moved into a float's bit positions and the
exponent bias is fixed with one multiplication by 2^112 (exact, subnormals included), then the sign is
copied over. Infinities and NaNs cannot be rebiased that way; a piece holding one takes numpy's cast.
"""

from __future__ import annotations

import numpy as np

_REBIAS = np.float32(2.0**112)  # 2^(127 - 15): float32 exponent bias over float16's
_EXPONENT_AND_MANTISSA = np.uint32(0x7FFF << 13)
_INFINITY = np.uint32(0x7C00 << 13)  # the float16 exponent of infinities and NaNs, shifted
_SIGN = np.uint32(0x8000)


def float16_into_float32(source: np.ndarray, target: np.ndarray) -> None:
    """target[...] = source, for a float16 `source` and a float32 `target` of the same shape (any
    strides), bit for bit what `source.astype(np.float32)` gives."""
    if source.shape != target.shape:
        raise ValueError(f"shapes differ: {source.shape} and {target.shape}")
    if source.size == 0:
        return
    halves = np.empty(source.shape, np.uint32)
    np.copyto(halves, source.view(np.uint16))
    bits = target.view(np.uint32)
    np.left_shift(halves, 13, out=bits)
    np.bitwise_and(bits, _EXPONENT_AND_MANTISSA, out=bits)
    if bits.max() >= _INFINITY:
        np.copyto(target, source)
        return
    np.multiply(target, _REBIAS, out=target)
    np.bitwise_and(halves, _SIGN, out=halves)
    np.left_shift(halves, 16, out=halves)
    np.bitwise_or(bits, halves, out=bits)
