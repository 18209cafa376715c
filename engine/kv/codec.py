"""The warm tier's file format: a cache layer's keys and values as numpy parts, and parts as files.

    MLX keys, values ──encode_for_disk──► parts {k, v} (float16, float32, bfloat16 bits)
                     ◄─decode_from_disk──       or {kq ks kb vq vs vb} (8-bit, or the model's own quantization)
                                         ──parts_on_host──► the same parts as numpy (on the writer thread)
    {layer: parts} ──pack──► Payload: safetensors header, then each array's own memory, and its checksum
                   ◄─decode── a file's bytes (numpy views of them: no copy)

A block file holds one block's full-attention layers; a session snapshot file holds the tail past its
last block and the sliding-window layers (and those at its window checkpoint, if it has one), with the
tokens and the root block name in its metadata. Tensors are named `<part>.<layer>` (`k.3`, `vq.3`).
Never pickle: a file is only ever read as numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.kv.checksum import checksum_of, matches
from engine.kv.tier import SessionSnapshot

INT8_GROUP = 64
# A snapshot's window checkpoint is stored beside the windows at its end: `at-k.3` beside `k.3`.
CHECKPOINT_PREFIX = "at-"

SAFETENSORS_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,  # bfloat16 KV parts, as bits
    "U32": np.uint32,
}
SAFETENSORS_NAMES = {np.dtype(dtype): name for name, dtype in SAFETENSORS_DTYPES.items()}

# What decoding a file that is not one of ours raises (bad JSON, missing keys, sizes that disagree).
UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError)


def encode_for_disk(keys, values, disk_dtype: str) -> dict:
    """(heads, tokens, dim) MLX keys/values as named MLX parts: `k`/`v` (float16, float32, or bfloat16 as
    uint16 bits), or 8-bit `kq ks kb vq vs vb`. Their computation is only queued (on the calling thread's
    stream): `parts_on_host` waits for it and copies them out, on the thread that writes them, so the
    engine thread never waits for a device-to-host copy.

    Keys already quantized by the model (SEMANTIC_KV_BITS) are stored as they are.
    """
    import mlx.core as mx

    if isinstance(keys, tuple | list):
        parts = {
            f"{name}{suffix}": array
            for name, triple in (("k", keys), ("v", values))
            for suffix, array in zip("qsb", triple, strict=True)
        }
    elif disk_dtype == "int8" and keys.shape[-1] % INT8_GROUP == 0:
        parts = {}
        for name, array in (("k", keys), ("v", values)):
            packed, scales, biases = mx.quantize(array, group_size=INT8_GROUP, bits=8)
            parts.update(
                {f"{name}q": packed, f"{name}s": scales.astype(mx.float16), f"{name}b": biases.astype(mx.float16)}
            )
    elif disk_dtype == "bfloat16":  # as its bits: numpy has no bfloat16
        parts = {"k": keys.astype(mx.bfloat16).view(mx.uint16), "v": values.astype(mx.bfloat16).view(mx.uint16)}
    else:
        dtype = mx.float32 if disk_dtype == "float32" else mx.float16
        parts = {"k": keys.astype(dtype), "v": values.astype(dtype)}
    # Each part in memory of its own, in order: the writer's copy is then one plain read
    parts = {name: mx.contiguous(array) for name, array in parts.items()}
    mx.async_eval(list(parts.values()))
    return parts


def parts_on_host(layers: dict) -> dict:
    """{layer: parts} with MLX parts (from encode_for_disk) copied into numpy; numpy parts stay."""
    return {layer: {name: np.asarray(array) for name, array in parts.items()} for layer, parts in layers.items()}


def decode_from_disk(parts: dict, dtype, quantized: bool = False):
    """Named parts (MLX arrays) back to (keys, values) in the compute dtype, or as quantized triples."""
    import mlx.core as mx

    if quantized:
        return tuple(
            (parts[f"{name}q"], parts[f"{name}s"].astype(dtype), parts[f"{name}b"].astype(dtype)) for name in ("k", "v")
        )
    if "k" in parts:
        keys, values = parts["k"], parts["v"]
        if keys.dtype == mx.uint16:  # bfloat16 bits
            keys, values = keys.view(mx.bfloat16), values.view(mx.bfloat16)
        return keys.astype(dtype), values.astype(dtype)
    return tuple(
        mx.dequantize(parts[f"{name}q"], parts[f"{name}s"], parts[f"{name}b"], group_size=INT8_GROUP, bits=8).astype(
            dtype
        )
        for name in ("k", "v")
    )


@dataclass
class Payload:
    """A safetensors file as the chunks to write (header, then each tensor's own memory) and its checksum."""

    chunks: list
    checksum: str
    size: int


def pack(layers: dict[int, dict[str, np.ndarray]], metadata: dict[str, str]) -> Payload:
    """Tensors named `<part>.<layer>` (e.g. `k.3`, `vq.3`) in the safetensors format.

    Written straight from the arrays rather than joined into one bytes object first: no second copy
    of a 100 MB cache, and hashing and writing release the GIL the engine thread needs.
    """
    header: dict = {"__metadata__": metadata}
    arrays = []
    offset = 0
    for layer, parts in layers.items():
        for part, array in parts.items():
            array = np.ascontiguousarray(array)
            header[f"{part}.{layer}"] = {
                "dtype": SAFETENSORS_NAMES[array.dtype],
                "shape": list(array.shape),
                "data_offsets": [offset, offset + array.nbytes],
            }
            arrays.append(array)
            offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    chunks = [len(encoded).to_bytes(8, "little") + encoded, *(memoryview(a).cast("B") for a in arrays if a.nbytes)]
    return Payload(chunks, checksum_of(chunks), sum(len(c) for c in chunks))


def decode(payload) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, str]]:
    """A payload's layers as numpy parts (views of `payload`, any bytes-like object: no copy), and its
    metadata.

    bfloat16 parts (quantization scales of a bfloat16 model) come back as float32, exactly.
    """
    header_size = int.from_bytes(payload[:8], "little")
    header = json.loads(bytes(payload[8 : 8 + header_size]))
    metadata = header.pop("__metadata__", {})
    base = 8 + header_size
    layers: dict[int, dict[str, np.ndarray]] = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        part, layer = name.rsplit(".", 1)
        if info["dtype"] == "BF16":
            raw = np.frombuffer(payload, np.uint16, (end - start) // 2, base + start)
            array = (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
            array = np.frombuffer(payload, dtype, (end - start) // dtype.itemsize, base + start).reshape(shape)
        layers.setdefault(int(layer), {})[part] = array
    return layers, metadata


def pack_block(layers: dict[int, dict[str, np.ndarray]], name: str, fingerprint: str) -> Payload:
    return pack(layers, {"block": name, "fingerprint": fingerprint})


def decode_block(payload) -> dict[int, dict[str, np.ndarray]]:
    return decode(payload)[0]


def pack_snapshot(snapshot: SessionSnapshot) -> Payload:
    """A session snapshot's file: its tail and windows (and its window checkpoint's, as `at-` parts of the
    same layers), its tokens and root in the metadata (its chain is in the index)."""
    metadata = {
        "session": snapshot.session_id,
        "tokens": json.dumps(snapshot.tokens),
        "windows": json.dumps([str(layer) for layer in snapshot.windows]),
        "root": snapshot.root,
        "layout": snapshot.layout,
        "block_tokens": str(snapshot.block_tokens),
    }
    layers = {**snapshot.tail, **snapshot.windows}
    if snapshot.checkpoint_windows:
        metadata["checkpoint_tokens"] = str(snapshot.checkpoint_tokens)
        for layer, parts in snapshot.checkpoint_windows.items():
            layers[layer] = {**layers[layer], **{CHECKPOINT_PREFIX + name: part for name, part in parts.items()}}
    return pack(layers, metadata)


def decode_snapshot(session_id: str, payload, chain: list[str]) -> SessionSnapshot:
    """A session snapshot from its file's bytes and its chain from the index."""
    layers, metadata = decode(payload)
    window_layers = json.loads(metadata["windows"])
    tail, windows, checkpoint_windows = {}, {}, {}
    for layer, parts in layers.items():
        if str(layer) not in window_layers:
            tail[layer] = parts
            continue
        windows[layer] = {name: part for name, part in parts.items() if not name.startswith(CHECKPOINT_PREFIX)}
        prefixed = {name: part for name, part in parts.items() if name.startswith(CHECKPOINT_PREFIX)}
        at_checkpoint = {name.removeprefix(CHECKPOINT_PREFIX): part for name, part in prefixed.items()}
        if at_checkpoint:
            checkpoint_windows[layer] = at_checkpoint
    return SessionSnapshot(
        session_id=session_id,
        tokens=json.loads(metadata["tokens"]),
        chain=chain,
        tail=tail,
        windows=windows,
        root=metadata.get("root", ""),
        layout=metadata.get("layout", ""),
        block_tokens=int(metadata.get("block_tokens", "0")),
        checkpoint_tokens=int(metadata.get("checkpoint_tokens", "0")) if checkpoint_windows else 0,
        checkpoint_windows=checkpoint_windows,
    )


def intact(kind: str, data, recorded: str) -> bool:
    """Whether a file has its recorded checksum and decodes as what its index row says it is (`kind`:
    "blocks" or "sessions")."""
    if not matches(data, recorded):
        return False
    try:
        if kind == "sessions":
            decode_snapshot("", data, [])
        else:
            decode(data)
    except UNDECODABLE:
        return False
    return True


def read_file(path: Path) -> memoryview:
    """A file's bytes, in a buffer of their own.

    The first 8 bytes (the safetensors header's size) are read on their own: after a small first read
    the kernel streams the rest of the file with read-ahead, where one read of a whole few-MB file, or
    faulting in a mapping of it, ran at about half the disk's speed. The
    buffer is numpy's uninitialized memory, not a bytearray, which would be zero-filled first."""
    with path.open("rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = memoryview(np.empty(size, np.uint8))
        done = 0
        for stop in (min(8, size), size):
            while done < stop:
                got = handle.readinto(data[done:stop])
                if not got:
                    raise OSError(f"{path} ended after {done} of {size} bytes")
                done += got
    return data
