"""float16 → float32 in numpy, faster than numpy's own cast.

numpy converts half floats one value at a time (~0.6 G values/s here), which made the upcast of a
restored cache as slow as reading it. Moving a half's bits into place makes the float32 instead, in
three vectorized passes: sign-extended to 32 bits and shifted up 13 places, a half's sign (bit 31),
exponent and mantissa (bits 13-27) are those of a float32 exactly 2**112 times smaller, zeros and
subnormals included, and one multiply scales it back. Infinities and NaNs are the exception (their
exponent is not mapped: they come out as finite values of 2**16 or more, above the largest half),
so a piece holding one is converted again through a table of all 65,536 halves that numpy's own
cast filled. Either way every value converts bit for bit as the cast would. One call per piece also
keeps two upcasting threads from trading the GIL back and forth between many small calls.
"""

from __future__ import annotations

import threading

import numpy as np

_FLOAT32_OF_HALF_BITS = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_SIGN_EXPONENT_MANTISSA = np.int32(-0x70000001)  # 0x8FFFFFFF: bit 31 and bits 0-27
_TWO_TO_112 = np.float32(2.0**112)
_LARGEST_HALF = 65504.0
_SUBNORMAL_HALVES = np.arange(1, 1 << 10, dtype=np.uint16).view(np.float16)
_thread_checked = threading.local()


def float16_into_float32(source: np.ndarray, target: np.ndarray) -> None:
    """target[...] = source, for a float16 `source` and a float32 `target` of the same shape (any
    strides), bit for bit what `source.astype(np.float32)` gives."""
    if source.shape != target.shape:
        raise ValueError(f"shapes differ: {source.shape} and {target.shape}")
    if not target.size:
        return
    if not _subnormals_kept():
        _by_table(source, target)
        return
    _by_bits(source, target)
    if target.max() > _LARGEST_HALF or target.min() < -_LARGEST_HALF:
        _by_table(source, target)  # an infinity or a NaN among them


def _by_bits(source: np.ndarray, target: np.ndarray) -> None:
    """Exact for every finite half, given that float32 subnormals are not read as zero."""
    bits = target.view(np.int32)
    np.left_shift(source.view(np.int16), 13, out=bits, dtype=np.int32)
    np.bitwise_and(bits, _SIGN_EXPONENT_MANTISSA, out=bits)
    np.multiply(target, _TWO_TO_112, out=target)


def _subnormals_kept() -> bool:
    """Whether this thread reads float32 subnormals as they are (the bits of a half subnormal or zero
    make one). A library built with -ffast-math can set "denormals are zero" for the threads of a
    process; then the table does all the work. Checked once per thread: the setting is per thread."""
    kept = getattr(_thread_checked, "kept", None)
    if kept is None:
        converted = np.empty(_SUBNORMAL_HALVES.shape, np.float32)
        _by_bits(_SUBNORMAL_HALVES, converted)
        kept = _thread_checked.kept = bool(np.array_equal(converted, _SUBNORMAL_HALVES.astype(np.float32)))
    return kept


def _by_table(source: np.ndarray, target: np.ndarray) -> None:
    if target.ndim > 1 and not target.flags.c_contiguous:
        # numpy's take writes a non-contiguous `out` through a temporary copy (10-20% slower here): one
        # call per slice of the first axis instead, as each head's token range in a cache is contiguous.
        for source_part, target_part in zip(source, target, strict=True):
            _by_table(source_part, target_part)
        return
    # Every uint16 is a valid index: "wrap" only skips numpy's bounds check.
    np.take(_FLOAT32_OF_HALF_BITS, source.view(np.uint16), out=target, mode="wrap")
