"""Restoring full-attention layers from the warm tier into float32 MLX arrays (the CPU backend).

    engine thread                           reader threads (KVTier.read_blocks)
    size the arrays (from the tail, else      read + checksum every block, ahead
    the first block), mx.zeros on two
    streams: filled on two cores while
    the blocks are read ───────────────────┐  helper thread
    upcast even blocks into their tokens ◄─┴─► upcast odd blocks into their tokens

The float16 → float32 upcast writes each block once, straight into the new cache's arrays (numpy
views; only the engine thread calls MLX), on two threads. The arrays have room for more tokens than
they are given, so the new turn is written in place (mlx-lm grows a full cache by copying it).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.cpu.upcast import float16_into_float32
from engine.kv.codec import INT8_GROUP, decode_from_disk
from engine.kv.tier import Layers


def restore_float32(
    reading: Iterator[Layers],
    tail: dict | None,
    full_layers: list[int],
    block_tokens: int,
    tokens: int,
    capacity: int,
) -> dict[int, tuple]:
    """Every full layer's (keys, values) as float32 MLX arrays of shape (heads, max(capacity,
    tokens), dim) holding the first `tokens` tokens: the blocks `reading` yields (KVTier.read_blocks,
    closed here), then `tail` (decoded disk parts by layer). Raises MissingBlock when a block is missing
    or damaged."""
    import mlx.core as mx

    from engine.cpu import blas

    # OpenBLAS's workers still spin after the last forward pass (the one at load, or the last turn):
    # on few cores they take CPU time from the restore's reader threads.
    mx.synchronize()
    blas.park_workers()
    arrays: dict[int, tuple] = {}
    copied = []  # (start token, layers left to the engine thread) per piece
    block_count = 0
    with ThreadPoolExecutor(max_workers=1) as helper, contextlib.closing(reading) as blocks:
        pieces = enumerate(blocks)
        sizing = tail
        if sizing is None:  # sized from the first block
            first = next(pieces)
            pieces, sizing = itertools.chain([first], pieces), first[1]
        size = max(capacity, tokens)
        # Keys on this stream, values on a second one: on the CPU each stream runs on its own thread,
        # so the new arrays are filled (and paged in, unless the engine did that at load) on two cores.
        streams = (None, _second_stream())
        for layer in full_layers:
            shapes = [(heads, size, dim) for heads, dim in _heads_and_dims(sizing[layer])]
            arrays[layer] = tuple(mx.zeros(shape, stream=stream) for shape, stream in zip(shapes, streams, strict=True))
        mx.eval(list(arrays.values()))
        targets = {layer: tuple(np.asarray(array) for array in pair) for layer, pair in arrays.items()}
        pending = []
        for index, piece in pieces:
            block_count = index + 1
            start = index * block_tokens
            if index % 2:
                pending.append((start, helper.submit(_copy_piece, piece, targets, start, tokens)))
            else:
                copied.append((start, _copy_piece(piece, targets, start, tokens)))
        copied.extend((start, future.result()) for start, future in pending)
    if tail is not None:
        start = block_count * block_tokens
        copied.append((start, _copy_piece(tail, targets, start, tokens)))
    for start, leftover in copied:
        _copy_leftover(leftover, targets, start, tokens)
    return arrays


_thread_streams = threading.local()


def _second_stream():
    """Another stream on the current device, made once per thread (MLX streams belong to the thread
    that made them)."""
    import mlx.core as mx

    device = mx.default_device()
    streams = getattr(_thread_streams, "by_device", None)
    if streams is None:
        streams = _thread_streams.by_device = {}
    if str(device) not in streams:
        streams[str(device)] = mx.new_stream(device)
    return streams[str(device)]


def _copy_piece(piece: dict, targets: dict, start: int, tokens: int) -> dict:
    """Copy a piece's float parts into the arrays from token `start` on; returns the layers whose
    parts are 8-bit (MLX dequantizes them, on the engine thread)."""
    leftover = {}
    for layer, (keys_view, values_view) in targets.items():
        parts = piece[layer]
        if "k" not in parts:
            leftover[layer] = parts
            continue
        _copy_tokens(parts["k"], keys_view, start, tokens)
        _copy_tokens(parts["v"], values_view, start, tokens)
    return leftover


def _copy_leftover(leftover: dict, targets: dict, start: int, tokens: int) -> None:
    for layer, parts in leftover.items():
        keys, values = _float_parts(parts)
        _copy_tokens(keys, targets[layer][0], start, tokens)
        _copy_tokens(values, targets[layer][1], start, tokens)


def _copy_tokens(source: np.ndarray, target: np.ndarray, start: int, tokens: int) -> None:
    """target[:, start:] = source (heads, count, dim), cut at `tokens`."""
    count = min(source.shape[1], tokens - start)
    if count <= 0:
        return
    part, window = source[:, :count], target[:, start : start + count]
    if part.dtype == np.float16:
        float16_into_float32(part, window)
    else:
        np.copyto(window, part)


def _heads_and_dims(parts: dict) -> tuple:
    """(heads, head dim) of a piece's keys and of its values, read off its disk parts (8-bit ones
    are not dequantized for it)."""
    if "k" in parts:
        return tuple((parts[name].shape[0], parts[name].shape[2]) for name in ("k", "v"))
    return tuple((parts[f"{name}s"].shape[0], parts[f"{name}s"].shape[2] * INT8_GROUP) for name in ("k", "v"))


def _float_parts(parts: dict) -> tuple:
    """A piece's keys and values as float numpy arrays (8-bit disk parts dequantized by MLX)."""
    import mlx.core as mx

    if "k" in parts:
        return parts["k"], parts["v"]
    keys, values = decode_from_disk({name: mx.array(array) for name, array in parts.items()}, mx.float32)
    mx.eval(keys, values)
    return np.asarray(keys), np.asarray(values)
