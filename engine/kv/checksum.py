"""Checksums of warm-tier files: what catches a damaged file before its bytes reach a cache.

New files are checked with XXH3-128, an order of magnitude faster than sha256 (which cost a restore
a quarter of its CPU time, and the writer as much again). Index rows written before carry a
bare sha256 hex digest and are still verified with it. The checksum guards against damage (bit rot,
a torn or truncated file), not against someone who can write to the cache dir.
"""

from __future__ import annotations

import hashlib

import xxhash

_PREFIX = "xxh3-128:"


def checksum_of(chunks) -> str:
    """The checksum recorded for a file made of `chunks` (bytes-like, in order)."""
    digest = xxhash.xxh3_128()
    for chunk in chunks:
        digest.update(chunk)
    return _PREFIX + digest.hexdigest()


def matches(data, recorded: str) -> bool:
    """Whether `data` (bytes-like: the whole file) has the recorded checksum, of either kind."""
    if recorded.startswith(_PREFIX):
        return _PREFIX + xxhash.xxh3_128_hexdigest(data) == recorded
    return hashlib.sha256(data).hexdigest() == recorded
