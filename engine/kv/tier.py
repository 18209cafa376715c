"""What a KV tier that stores blocks is: the narrow interface the warm tier on disk implements, and a
shared tier (one store for many instances) would implement the same way.

A tier stores two kinds of things, both per model fingerprint:

    blocks    one block of full-attention layers, under its chained name (engine/kv/blocks.py): a name
              stands for the whole prefix, so a stored name is never written again and means the same
              bytes to every session and every instance
    sessions  a session's snapshot (the tail past its last block, its sliding windows, its tokens) and its
              chain: the names of the blocks that cover the rest, in order

    session A  ──chain──►  [b0][b1][b2]  + snapshot A           evictable: b3 (no chain names it)
    session B  ──chain──►  [b0][b1]      + snapshot B           protected: b0 b1 b2, snapshots A and B
    anonymous turns leave  [b3]          (blocks only)

The invariant every implementation keeps: a block that a session's chain names is never evicted on its
own (forgetting the session, dropping its caches for the budget or by expiry, or a damaged file is what
frees it), and a reader never sees a half-written thing (a snapshot and its chain change together; a
file is complete before it is indexed). An agent that is kept (engine/kv/policy.py) is never dropped.

Threads: reads (`match`, `read_blocks`, `read_session`) run on the engine thread; changes (`write`,
`forget_session`, `evict`, `clear`) on the tier's one writer (engine/kv/writer.py), in the order they
were submitted; `size_info` and `check_integrity` on any thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from engine.kv.policy import AgentPolicy

# One block's or one piece's layers: {layer: {part: array}} (parts: engine/kv/codec.py; numpy once on the host)
Layers = dict[int, dict[str, np.ndarray]]


@dataclass
class SessionSnapshot:
    """What a session needs to resume at the end of its sequence (or at its window checkpoint), besides its
    blocks."""

    session_id: str
    tokens: list[int]
    chain: list[str]  # block names covering tokens[: len(chain) * block_tokens]
    tail: Layers  # full layers: tokens after the last block, as disk parts
    windows: Layers  # sliding layers: last window at the end, as disk parts
    # The root block name of the cache layout and disk encoding it was written under ("": not recorded).
    root: str = ""
    # What the root was derived from (engine/kv/blocks.py, tenant_root): the cache layout and disk
    # encoding, and the block size ("", 0: not recorded)
    layout: str = ""
    block_tokens: int = 0
    # Sliding layers' windows at a point before the end (a window checkpoint, engine/kv/checkpoints.py:
    # the last prompt's end), as disk parts: a next prompt that diverges after it resumes there, where
    # the windows at the end cannot be cut back. 0 and {}: none.
    checkpoint_tokens: int = 0
    checkpoint_windows: Layers = field(default_factory=dict)


@dataclass
class EncodedRange:
    """The full layers' disk parts of a turn's new tokens, encoded as one range per layer: the new blocks
    in order, then the tail, cut apart on the writer thread (one encoding per layer, not per block and
    layer, is queued on the engine thread)."""

    names: list[str]  # the new blocks, each `block_tokens` long, from the range's first token
    block_tokens: int
    layers: Layers  # (heads, tokens, ...) parts: the token axis is 1


def _token_range(layers: Layers, first: int, end: int | None) -> Layers:
    return {layer: {name: part[:, first:end] for name, part in parts.items()} for layer, parts in layers.items()}


@dataclass
class WriteJob:
    fingerprint: str
    snapshot: SessionSnapshot | None  # None: blocks only (a request without a session)
    # Blocks not yet stored: name -> layers
    blocks: dict[str, Layers] = field(default_factory=dict)
    # More new blocks, and the snapshot's tail, still as one range per layer
    encoded: EncodedRange | None = None

    def on_host(self) -> WriteJob:
        """The job with every part in numpy (waiting for parts still computing on the device) and its
        encoded range cut into blocks and the snapshot's tail."""
        from engine.kv.codec import parts_on_host

        blocks = {name: parts_on_host(layers) for name, layers in self.blocks.items()}
        snapshot = self.snapshot
        tail = parts_on_host(snapshot.tail) if snapshot is not None else {}
        if self.encoded is not None:
            encoded, size = self.encoded, self.encoded.block_tokens
            host = parts_on_host(encoded.layers)
            for index, name in enumerate(encoded.names):
                blocks[name] = _token_range(host, index * size, (index + 1) * size)
            tail = _token_range(host, len(encoded.names) * size, None)
        if snapshot is not None:
            snapshot = replace(
                snapshot,
                tail=tail,
                windows=parts_on_host(snapshot.windows),
                checkpoint_windows=parts_on_host(snapshot.checkpoint_windows),
            )
        return WriteJob(self.fingerprint, snapshot, blocks)


@dataclass(frozen=True)
class MatchResult:
    """The stored prefix of a chain of block names."""

    names: tuple[str, ...]  # the first names asked about, each stored

    @property
    def blocks(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class SizeInfo:
    """A tier's bytes, by whether the budget may evict them."""

    evictable_bytes: int  # blocks that no session's chain names
    protected_bytes: int  # session snapshots and the blocks their chains name

    @property
    def total_bytes(self) -> int:
        return self.evictable_bytes + self.protected_bytes


class MissingBlock(Exception):
    """A block named in a chain is not stored (any more) or failed its checksum."""


class KVTier(ABC):
    """Blocks under their chained names and sessions' snapshots, per model fingerprint (see the module)."""

    @property
    @abstractmethod
    def enabled(self) -> bool:
        """Whether the tier can be used at all; one that cannot reads as empty and stores nothing."""

    @property
    @abstractmethod
    def writable(self) -> bool:
        """Whether this process may change the tier (another may own it; it is then read here only)."""

    @abstractmethod
    def match(self, fingerprint: str, names: list[str]) -> MatchResult:
        """How many of `names`, from the first, are stored. Changes nothing."""

    @abstractmethod
    def read_blocks(self, fingerprint: str, names: list[str]) -> Iterator[Layers]:
        """The layers of each named block in order, as each arrives; raises MissingBlock at the first
        one that is not stored or is damaged (a damaged one is dropped). Reading may start at the call,
        ahead of the caller; closing the iterator stops it. Marks the blocks read as used now."""

    @abstractmethod
    def read_session(self, fingerprint: str, session_id: str) -> SessionSnapshot | None:
        """The session's snapshot with its chain, or None (none stored, or damaged: then dropped).
        Marks it as used now."""

    @abstractmethod
    def write(self, job: WriteJob) -> None:
        """Store the job's blocks that are not stored yet, then replace the session's snapshot and chain
        (if it has one) in one step; then evict to the tier's budget."""

    @abstractmethod
    def forget_session(self, fingerprint: str | None, session_id: str) -> bool:
        """Delete the session's snapshot and chain (every model's when `fingerprint` is None); whether it
        had one. Its blocks stay; those no other chain names become evictable."""

    @abstractmethod
    def fork_session(self, session_id: str, new_session_id: str) -> int:
        """Give `new_session_id` the snapshot and chain of `session_id`, under every model it has one for
        (replacing any the new id had): its chain names the same blocks, so no block is copied. Returns
        how many snapshots were forked (0: the session had none)."""

    @abstractmethod
    def drop_caches(self, session_id: str) -> int:
        """Delete the session's snapshots and chains under every model, and the blocks no other chain
        names, but keep its policy; the bytes freed. (forget_session with no fingerprint is for a deleted
        agent: its policy goes too.)"""

    @abstractmethod
    def policies(self) -> dict[str, AgentPolicy]:
        """Every agent's policy that is not the default, by session id (engine/kv/policy.py)."""

    @abstractmethod
    def set_policy(self, session_id: str, policy: AgentPolicy) -> None:
        """Store an agent's policy (the default one deletes it)."""

    @abstractmethod
    def expire(self, now: float) -> list[str]:
        """drop_caches for every agent whose retention ran out since its last use; their session ids."""

    @abstractmethod
    def evict(self, nbytes: int) -> int:
        """Delete evictable blocks, least recently used first, until `nbytes` are freed or none is left;
        returns the bytes freed (0 for `nbytes` <= 0)."""

    @property
    @abstractmethod
    def size_info(self) -> SizeInfo:
        """The stored bytes, evictable and protected."""

    @abstractmethod
    def check_integrity(self) -> None:
        """Raise AssertionError if anything stored is missing, damaged or inconsistent with the index."""

    @abstractmethod
    def clear(self) -> int:
        """Delete everything stored; returns how many things (files, keys) were removed."""

    @abstractmethod
    def close(self) -> None:
        """Release what this process holds (connections, locks)."""
