"""Block names: a chained hash per block of tokens, so one name stands for a whole prefix.

    root = H(model fingerprint, cache layout, block size)
    name[0] = H(root, tokens[0:B])      name[i] = H(name[i-1], tokens[i*B:(i+1)*B])

Equal prefixes under the same model and layout give equal names, so agents that share a system prompt
share its blocks; any other model or layout gives different names, so a cache never meets it.
"""

from __future__ import annotations

import hashlib
from array import array


def root_name(fingerprint: str, layout: str, block_tokens: int) -> str:
    return hashlib.sha256(f"agent-memory/v1|{fingerprint}|{layout}|{block_tokens}".encode()).hexdigest()[:32]


def tenant_root(fingerprint: str, layout: str, block_tokens: int, tenant: str = "") -> str:
    """The root of a tenant's block names: blocks, and so prefixes, are shared within a tenant only (its
    name is part of every block's chained name, as vLLM's cache_salt is)."""
    return root_name(fingerprint, f"{layout}|tenant:{tenant}" if tenant else layout, block_tokens)


def block_names(tokens: list[int], root: str, block_tokens: int) -> list[str]:
    """Names of every complete block of `tokens`."""
    names = []
    parent = root
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        digest = hashlib.sha256(parent.encode())
        digest.update(array("i", tokens[start : start + block_tokens]).tobytes())
        parent = digest.hexdigest()[:32]
        names.append(parent)
    return names


def common_prefix_length(first: list[int], second: list[int]) -> int:
    limit = min(len(first), len(second))
    for index in range(limit):
        if first[index] != second[index]:
            return index
    return limit
