"""Restoring full-attention layers from the warm tier in the dtype the model computes (GPU backends, and
the CPU with a quantized cache; float32 CPU caches take engine/cpu/restore.py).

    reader threads (KVTier.read_blocks)       engine thread
    read + checksum blocks ahead ───────────► each block's parts become MLX arrays as it comes in
                                              (one host copy per part, while the next blocks are read)
                                              after the last block and the tail: per layer, the pieces
                                              joined on the device, cut at `tokens`, decoded

A block is taken as soon as it is read, so copying it overlaps the reads of the blocks behind it; the
join runs where the cache lives (a device copy on a GPU). The whole restore waited for the last read
before it joined every layer in numpy and copied each joined layer again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from engine.kv.codec import decode_from_disk
from engine.kv.tier import Layers


def restore_by_block(
    reading: Iterator[Layers], tail: Layers | None, full_layers: list[int], tokens: int, dtype, quantized: bool
) -> dict[int, tuple]:
    """Every full layer's (keys, values) in `dtype` (or quantized triples) for the first `tokens` tokens:
    the blocks `reading` yields (KVTier.read_blocks, closed here), then `tail`. Raises MissingBlock when
    a block is missing or damaged."""
    import mlx.core as mx

    pieces: dict[int, list[dict]] = {layer: [] for layer in full_layers}

    def take(piece: Layers) -> None:
        for layer, taken in pieces.items():
            taken.append({name: mx.array(array) for name, array in piece[layer].items()})

    with contextlib.closing(reading) as blocks:
        for block in blocks:
            take(block)
    if tail is not None:
        take(tail)
    layers = {}
    for layer, taken in pieces.items():
        joined = {name: _join([parts[name] for parts in taken], tokens) for name in taken[0]}
        layers[layer] = decode_from_disk(joined, dtype, quantized=quantized)
    return layers


def _join(arrays: list, tokens: int):
    """Pieces of one part joined along the token axis (1: heads, tokens, ...) and cut at `tokens`."""
    import mlx.core as mx

    joined = arrays[0] if len(arrays) == 1 else mx.concatenate(arrays, axis=1)
    return joined if joined.shape[1] == tokens else joined[:, :tokens]
