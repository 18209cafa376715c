"""KV memory: find the longest cached prefix of a prompt, restore it, and keep every turn's cache.

acquire(session, prompt) -- engine thread, before prefill
    1. the session's own hot cache            (trimmed to the match, no copy)
    2. another agent's hot cache               (prefix copied, theirs untouched)
    3. the session's warm snapshot + blocks     (read from disk, checksums verified)
    4. shared warm blocks, by chained name     (any agent's, same model and layout)
    else a cold cache. At least one prompt token is always left to prefill.
release(session, tokens, cache) -- engine thread, after the turn's last event
    the cache becomes the session's hot entry; its new blocks, tail and sliding windows are
    copied to numpy and handed to the writer thread (the client never waits for the disk).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

from engine.backend import hot_budget_bytes, installed_backend
from engine.cpu.restore import restore_float32
from engine.kv.blocks import block_names, common_prefix_length, root_name
from engine.kv.codec import decode_from_disk, encode_for_disk
from engine.kv.cost import CostModel, Plan
from engine.kv.hot import HotEntry, HotPool
from engine.kv.layout import (
    CacheLayout,
    UnsupportedCache,
    build_cache,
    cache_offset,
    full_layer_slice,
    kv_dtype,
    sliding_window_snapshot,
)
from engine.kv.restore import restore_by_block
from engine.kv.tier import MissingBlock, SessionSnapshot, WriteJob
from engine.kv.warm import WarmTier
from engine.kv.writer import WarmWriter

log = logging.getLogger(__name__)

# Hot slots that are no session (ids never hold a NUL): per tenant, the last request without a session
# id, and a prefix offered to waiting requests (share()).
ANONYMOUS = "\x00anonymous"
SHARED_PREFIX = "\x00shared-prefix"


def _slot(name: str, tenant: str) -> str:
    return f"{name}\x00{tenant}" if tenant else name


def _hot_key(session_id: str | None, tenant: str) -> str:
    """A request's hot slot: its session's, or its tenant's slot for requests without one."""
    return session_id or _slot(ANONYMOUS, tenant)


@dataclass
class Restored:
    cache: list
    reused_tokens: int
    source: str  # "cold" | "hot" | "warm"
    restore_s: float
    # "restore" (a cache was used), "recompute" (the whole prompt is prefilled) or "partial" (the first
    # warm blocks were read, the rest is prefilled), with its estimated seconds (engine/kv/cost.py; 0.0
    # when it was not estimated)
    decision: str = "recompute"
    estimate_s: float = 0.0


class KVMemory:
    def __init__(self, settings, fingerprint: str, model):
        import mlx.core as mx

        self.fingerprint = fingerprint
        self.block_tokens = settings.kv_block_tokens
        self.model = model
        self.compute_dtype = kv_dtype(model)
        self.kv_bits = settings.kv_bits
        self.disk_dtype = settings.kv_disk_encoding
        if self.disk_dtype == "float16" and self.compute_dtype == mx.bfloat16:
            # float16 would round a bfloat16 cache (its exponent is narrower); bfloat16's own bits take
            # as many bytes.
            self.disk_dtype = "bfloat16"
        try:
            self.layout = CacheLayout.of(model, settings.kv_bits, settings.kv_group_size)
            self.disabled_reason = None
        except UnsupportedCache as exc:
            self.layout = None
            self.disabled_reason = f"KV memory is off for this model: cache kind {exc} cannot be stored"
            log.warning(self.disabled_reason)
        # The disk encoding is part of every block name: blocks of another encoding never match.
        layout_text = f"{self.layout.describe() if self.layout else 'unsupported'}|{self.disk_dtype}"
        self._layout_text = layout_text
        self.root = root_name(fingerprint, layout_text, self.block_tokens)
        self.hot = HotPool(
            hot_budget_bytes(settings, model),
            settings.agent_max_agents_in_memory,
            layout=self.layout,
            block_tokens=self.block_tokens,
            namer=lambda entry: block_names(entry.tokens, self.root_of(entry.tenant), self.block_tokens),
            live_agents=settings.kv_hot_live_agents,
        )
        self.warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb, clean_up=True)
        self.writer = WarmWriter(self.warm)
        self.hits = {"hot": 0, "warm": 0, "cold": 0}
        self._speeds_path = settings.cache_path / "speeds.json"
        self._speeds_key = f"{fingerprint}|{installed_backend()}"
        self.cost = CostModel.load(self._speeds_path, self._speeds_key)

    @property
    def enabled(self) -> bool:
        return self.layout is not None

    def resume_mode(self) -> str:
        """How this model's caches resume: at any block edge, or only at a session's exact end."""
        if not self.enabled:
            return "recompute (unsupported cache kind)"
        if self.layout.resumable_everywhere():
            return "any prefix (full-attention layers only)"
        return (
            f"sliding-window layers (window {self.layout.min_window}): hot caches resume at any prefix "
            "until the window wraps, warm caches at a session's exact end; otherwise recompute"
        )

    # -- acquire ---------------------------------------------------------------------------------------
    def root_of(self, tenant: str) -> str:
        """The root of a tenant's block names: blocks, and so prefixes, are shared within a tenant only
        (its name is part of every block's chained name, as vLLM's cache_salt is)."""
        if not tenant:
            return self.root
        return root_name(self.fingerprint, f"{self._layout_text}|tenant:{tenant}", self.block_tokens)

    def acquire(self, session_id: str | None, prompt: list[int], tenant: str = "") -> Restored:
        from mlx_lm.models.cache import make_prompt_cache

        started = time.perf_counter()
        key = _hot_key(session_id, tenant)
        limit = len(prompt) - 1
        if not self.enabled or limit <= 0:
            return Restored(make_prompt_cache(self.model), 0, "cold", 0.0)

        # A request without a session id takes the longest match, not its last slot's few shared tokens.
        anonymous_elsewhere = session_id is None and self._another_holds_more(key, prompt, limit, tenant)
        own = None if anonymous_elsewhere else self.hot.checkout(key)
        if own is not None:
            matched = common_prefix_length(prompt[:limit], own.tokens)
            if matched > 0 and _trim(own.cache, len(own.tokens) - matched):
                self.hits["hot"] += 1
                return Restored(own.cache, matched, "hot", time.perf_counter() - started, "restore")
            # Unusable as is; its turns are on disk already.

        candidates = [
            self._from_other_hot(key, prompt, limit, tenant),
            self._from_warm(session_id, prompt, limit, tenant),
        ]
        decision, estimate_s = "recompute", self.cost.prefill_s(0, len(prompt)) or 0.0
        # Longest match first; one that cannot be built (damaged, wrapped window) yields to the next.
        pending = sorted((c for c in candidates if c), key=lambda c: -c[0])
        while pending:
            matched, source, build, partial_ok = found = pending.pop(0)
            plan = self.cost.plan(source, matched, len(prompt), self.block_tokens) if source == "warm" else None
            if plan is not None and plan.decision == "partial" and not partial_ok:
                plan = min(
                    (Plan("recompute", 0, estimate_s), Plan("restore", matched, plan.estimate_s)),
                    key=lambda option: option.estimate_s,
                )
            if plan is not None:
                log.info(
                    "%r: %s from the warm tier (%d of %d tokens cached): est. %.3f s, recompute est. %.3f s",
                    key,
                    plan.decision,
                    matched,
                    len(prompt),
                    plan.estimate_s,
                    estimate_s,
                )
                if plan.decision == "recompute":
                    continue
                matched = plan.restore_tokens
            try:
                cache = build(matched)
            except Exception:  # noqa: BLE001 - a damaged entry means recompute, never a failed request
                log.exception("restoring %s KV for %r failed; trying the next source", source, key)
                cache = None
            if cache is None and source == "warm":
                # A damaged block was dropped as it was read: the intact blocks before it may still resume.
                shorter = self._from_warm(session_id, prompt, limit, tenant)
                if shorter is not None and shorter[0] < found[0]:
                    pending = sorted([*pending, shorter], key=lambda c: -c[0])
            if cache is not None:
                self.hits[source] += 1
                restore_s = time.perf_counter() - started
                if source == "warm":
                    self.cost.observe_restore(source, matched, restore_s)
                decision = plan.decision if plan is not None else "restore"
                return Restored(cache, matched, source, restore_s, decision, plan.estimate_s if plan else 0.0)
        self.hits["cold"] += 1
        return Restored(make_prompt_cache(self.model), 0, "cold", time.perf_counter() - started, decision, estimate_s)

    def observe_prefill(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        """A turn prefilled `new_tokens` in `seconds`, ending at `context_tokens`: the cost model learns."""
        self.cost.observe_prefill(new_tokens, context_tokens, seconds)

    def _another_holds_more(self, key: str, prompt: list[int], limit: int, tenant: str) -> bool:
        own = next((entry for entry in self.hot.entries() if entry.session_id == key), None)
        own_matched = common_prefix_length(prompt[:limit], own.tokens) if own is not None else 0
        other = self._from_other_hot(key, prompt, limit, tenant)
        return other is not None and other[0] > own_matched

    def _from_other_hot(self, key: str, prompt: list[int], limit: int, tenant: str):
        best_entry, best_match = None, 0
        for entry in self.hot.entries():
            if entry.session_id == key or entry.tenant != tenant:
                continue
            matched = common_prefix_length(prompt[:limit], entry.tokens)
            if matched > best_match:
                best_entry, best_match = entry, matched
        if best_entry is None:
            return None
        return best_match, "hot", lambda tokens: self.hot.prefix_cache(best_entry, tokens), False

    def _from_warm(self, session_id: str | None, prompt: list[int], limit: int, tenant: str):
        if not self.warm.enabled:
            return None
        root = self.root_of(tenant)
        snapshot = self.warm.read_session(self.fingerprint, session_id) if session_id else None
        if snapshot is not None and snapshot.root != root:
            # Written under another cache layout or disk encoding (SEMANTIC_KV_BITS or
            # SEMANTIC_KV_DISK_DTYPE changed since; the fingerprint names only the model): recomputed.
            log.info("session %r was stored under another KV encoding; recomputing it", session_id)
            snapshot = None
        if snapshot is not None and not self._chain_stored(snapshot):
            snapshot = None  # a block of its chain was dropped (damaged): the blocks before it may serve
        if snapshot is not None:
            matched = common_prefix_length(prompt[:limit], snapshot.tokens)
            end = len(snapshot.tokens)
            window = self.layout.min_window
            usable = window is None or matched == end or end < window
            if matched > 0 and usable:
                # A prefix of it ends in the middle of the sliding windows: partial only without them.
                build = lambda tokens: self._build_from_snapshot(snapshot, tokens, len(prompt))  # noqa: E731
                return matched, "warm", build, window is None
        if not self.layout.resumable_everywhere():
            return None
        names = block_names(prompt[:limit], root, self.block_tokens)
        count = self.warm.match(self.fingerprint, names).blocks
        if count == 0:
            return None
        block = self.block_tokens
        return (
            count * block,
            "warm",
            lambda tokens: self._build_from_blocks(names[: tokens // block], len(prompt)),
            True,
        )

    def _chain_stored(self, snapshot: SessionSnapshot) -> bool:
        return self.warm.match(self.fingerprint, list(snapshot.chain)).blocks == len(snapshot.chain)

    def _build_from_blocks(self, names: list[str], prompt_tokens: int):
        tokens = len(names) * self.block_tokens
        full = self._full_layers(names, None, tokens, prompt_tokens)
        return None if full is None else build_cache(self.layout, full, {}, tokens, self.compute_dtype)

    def _full_layers(
        self, names: list[str], tail: dict | None, tokens: int, prompt_tokens: int
    ) -> dict[int, tuple] | None:
        """Every full-attention layer's (keys, values) for the first `tokens` tokens: the named blocks in
        order, then `tail`. None if a block is missing or damaged. Float32 arrays have room for the
        rest of a `prompt_tokens` prompt and the start of the answer."""
        import mlx.core as mx

        layers = self.layout.full_layers
        try:
            reading = self.warm.read_blocks(self.fingerprint, names)
            if self.compute_dtype == mx.float32 and not self.kv_bits:
                capacity = _capacity(prompt_tokens)
                return restore_float32(reading, tail, layers, self.block_tokens, tokens, capacity)
            return restore_by_block(reading, tail, layers, tokens, self.compute_dtype, bool(self.kv_bits))
        except MissingBlock:
            return None

    def _window(self, parts: dict):
        """A sliding-window layer's (keys, values) in MLX from its disk parts."""
        import mlx.core as mx

        return decode_from_disk(
            {name: mx.array(array) for name, array in parts.items()}, self.compute_dtype, quantized=bool(self.kv_bits)
        )

    def _build_from_snapshot(self, snapshot: SessionSnapshot, matched: int, prompt_tokens: int):
        block_count = min(len(snapshot.chain), -(-matched // self.block_tokens))
        covered = block_count * self.block_tokens
        tail = snapshot.tail if matched > covered else None
        full = self._full_layers(snapshot.chain[:block_count], tail, matched, prompt_tokens)
        if full is None:
            return None
        sliding = {}
        end = len(snapshot.tokens)
        for layer in self.layout.sliding_layers:
            keys, values = self._window(snapshot.windows[layer])
            # Windows hold the last min(end, window) tokens; below the window they start at token 0.
            drop = end - matched
            sliding[layer] = (keys[:, : keys.shape[1] - drop], values[:, : values.shape[1] - drop])
        return build_cache(self.layout, full, sliding, matched, self.compute_dtype)

    # -- release ---------------------------------------------------------------------------------------
    def release(
        self, session_id: str | None, tokens: list[int], cache: list, key: str | None = None, tenant: str = ""
    ) -> None:
        """Keep a finished turn's cache: hot now, warm behind the response."""
        key = key or _hot_key(session_id, tenant)
        if not self.enabled:
            self.hot.release_pin(key)
            return
        offset = cache_offset(cache)
        tokens = list(tokens[:offset])
        if len(tokens) != offset:
            log.warning("KV cache of %r holds %d tokens but %d are known; not keeping it", key, offset, len(tokens))
            self.hot.release_pin(key)
            return
        if session_id is not None and self.warm.writable:
            self.writer.submit(self._write_job(session_id, tokens, cache, tenant))
        elif session_id is None and self.warm.writable and self.layout.resumable_everywhere():
            # Anonymous requests still leave their blocks for others of their tenant to share.
            job = self._write_job(ANONYMOUS, tokens, cache, tenant)
            job.snapshot = None
            self.writer.submit(job)
        nbytes = sum(c.nbytes for c in cache)
        self.hot.put(HotEntry(key, tokens, cache, nbytes, tenant=tenant))

    def share(self, tokens: list[int], cache: list, tenant: str = "") -> bool:
        """Offer the first len(tokens) tokens of a running turn's freshly prefilled cache (extracted from
        the batch; `cache` may hold more and is trimmed) to requests that wait for that prefix. They find
        it as another agent's hot cache; its blocks go to the warm tier like an anonymous turn's."""
        if not self.enabled or not _trim(cache, cache_offset(cache) - len(tokens)):
            return False  # a wrapped sliding window cannot be cut
        self.release(None, tokens, cache, key=_slot(SHARED_PREFIX, tenant), tenant=tenant)
        return True

    def cached_prefix_length(self, prompt: list[int], tenant: str = "") -> int:
        """How much of `prompt` could be restored now for `tenant` from the hot tier or shared warm blocks
        (cheap: a session's own warm snapshot is not read)."""
        limit = len(prompt) - 1
        entries = [entry for entry in self.hot.entries() if entry.tenant == tenant]
        best = max((common_prefix_length(prompt[:limit], e.tokens) for e in entries), default=0)
        if self.warm.enabled and self.layout.resumable_everywhere():
            names = block_names(prompt[:limit], self.root_of(tenant), self.block_tokens)
            best = max(best, self.warm.match(self.fingerprint, names).blocks * self.block_tokens)
        return best

    def _write_job(self, session_id: str, tokens: list[int], cache: list, tenant: str) -> WriteJob:
        root = self.root_of(tenant)
        names = block_names(tokens, root, self.block_tokens)
        stored = self.warm.match(self.fingerprint, names).blocks
        new_blocks = {}
        full_layers = self.layout.full_layers
        for index in range(stored, len(names)):
            start, end = index * self.block_tokens, (index + 1) * self.block_tokens
            new_blocks[names[index]] = {
                layer: encode_for_disk(*full_layer_slice(cache[layer], start, end), self.disk_dtype)
                for layer in full_layers
            }
        covered = len(names) * self.block_tokens
        tail = {
            layer: encode_for_disk(*full_layer_slice(cache[layer], covered, len(tokens)), self.disk_dtype)
            for layer in full_layers
        }
        windows = {
            layer: encode_for_disk(*sliding_window_snapshot(cache[layer]), self.disk_dtype)
            for layer in self.layout.sliding_layers
        }
        snapshot = SessionSnapshot(session_id, tokens, names, tail, windows, root)
        return WriteJob(self.fingerprint, snapshot, new_blocks)

    def abandon(self, session_id: str | None, tenant: str = "") -> None:
        """A request failed mid-way: its cache state is unknown, so it is not kept."""
        self.hot.release_pin(_hot_key(session_id, tenant))

    def forget(self, session_id: str) -> Future[bool]:
        """Drop a session's hot cache now and its warm snapshot behind the writes queued before (so
        none of them brings it back); shared blocks stay while others use them. The Future (wait on it
        off the engine thread) says whether the session had a cache in either tier."""
        was_hot = self.hot.drop(session_id)
        return self.writer.run(lambda warm: warm.forget_session(None, session_id) or was_hot)

    # -- inspection ------------------------------------------------------------------------------------
    def flush(self) -> Future[None]:
        """Done once every turn released so far is on disk (wait on it off the engine thread)."""
        return self.writer.run(lambda warm: None)

    def close(self) -> None:
        self.writer.flush()  # every finished turn reaches the disk, however long that takes
        self.writer.close()
        if self.warm.writable:
            self.cost.save(self._speeds_path, self._speeds_key)

    def stats(self) -> Future[dict]:
        """The hot tier and hits as of now, the warm tier once the writes queued before are done (wait
        on the Future off the engine thread)."""
        hot, hits = self._hot_totals(), dict(self.hits)
        return self.writer.run(
            lambda warm: {
                "hot": hot,
                "warm": {**warm.stats(), "dtype": self.disk_dtype},
                "hits": hits,
                "block_tokens": self.block_tokens,
                "resume": self.resume_mode(),
            }
        )

    def hot_view(self) -> dict:
        """The hot tier as plain data (engine thread; others read the copy the engine publishes)."""
        return {
            **self._hot_totals(),
            "hits": dict(self.hits),
            "sessions": {
                entry.session_id: {
                    "tokens": len(entry.tokens),
                    "bytes": entry.nbytes,
                    "live": not entry.compact,
                    "blocks": len(entry.chain),
                    "last_used": entry.last_used,
                }
                for entry in self.hot.entries()
                if not entry.session_id.startswith("\x00")
            },
        }

    def _hot_totals(self) -> dict:
        return {
            "budget_bytes": self.hot.budget_bytes,
            "used_bytes": self.hot.used_bytes,
            "agents": len(self.hot),
            "max_agents": self.hot.max_agents,
            "evictions": self.hot.evictions,
            "shared_bytes_saved": self.hot.shared_bytes_saved,
        }

    def check_integrity(self) -> Future[None]:
        """Check the hot tier now (raises AssertionError); the Future raises it for the warm tier, checked
        once the writes queued before are done."""
        self.hot.check_integrity()
        return self.writer.run(lambda warm: warm.check_integrity())


def _capacity(prompt_tokens: int) -> int:
    """Tokens a restored cache has room for: the whole prompt and one growth step of mlx-lm's KVCache."""
    from mlx_lm.models.cache import KVCache

    return (prompt_tokens // KVCache.step + 2) * KVCache.step


def _trim(cache: list, count: int) -> bool:
    if count == 0:
        return True
    if not all(c.is_trimmable() for c in cache):
        return False
    for c in cache:
        c.trim(count)
    return True
