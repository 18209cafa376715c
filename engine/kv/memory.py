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
from dataclasses import dataclass, replace
from pathlib import Path

from engine.backend import hot_budget_bytes, hot_live_agents, installed_backend
from engine.cpu.restore import restore_float32
from engine.kv.agent_file import Manifest
from engine.kv.agent_transfer import ImportPlan, Target, export_agent
from engine.kv.blocks import block_names, common_prefix_length, tenant_root
from engine.kv.checkpoints import WindowCheckpoint, take_checkpoint
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
from engine.kv.miss import Clues, Miss, miss_of
from engine.kv.policy import AgentPolicy
from engine.kv.recent_ids import RecentIds
from engine.kv.restore import restore_by_block
from engine.kv.shared import shared_tier
from engine.kv.stats import HotSession, HotTotals, HotView, MemoryStats, TierHits
from engine.kv.tier import EncodedRange, MissingBlock, SessionSnapshot, WriteJob
from engine.kv.warm import WarmTier
from engine.kv.writer import WarmWriter

log = logging.getLogger(__name__)

# Hot slots that are no session (ids never hold a NUL): per tenant, the last request without a session
# id, and a prefix offered to waiting requests (share()).
ANONYMOUS = "\x00anonymous"
SHARED_PREFIX = "\x00shared-prefix"
# A client's keep hint is written to the warm tier only when it extends what is stored by this much
HINT_WRITE_S = 60


def _slot(name: str, tenant: str) -> str:
    return f"{name}\x00{tenant}" if tenant else name


def _log_failure(done: Future, what: str) -> None:
    """Log a writer task's error: nobody waits on its Future."""
    error = done.exception()
    if error is not None:
        log.error("%s failed: %s", what, error)


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
    # Why fewer tokens were reused than the session's own cache could have given (None: nothing lost)
    miss: Miss | None = None


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
        self.layout_text = f"{self.layout.describe() if self.layout else 'unsupported'}|{self.disk_dtype}"
        self.root = tenant_root(fingerprint, self.layout_text, self.block_tokens)
        self.hot = HotPool(
            hot_budget_bytes(settings, model),
            settings.agent_max_agents_in_memory,
            layout=self.layout,
            block_tokens=self.block_tokens,
            namer=lambda entry: block_names(entry.tokens, self.root_of(entry.tenant), self.block_tokens),
            live_agents=hot_live_agents(settings),
            kept=lambda session_id: self.policy(session_id).kept(time.time()),
            agent_max_bytes=settings.agent_max_mb * 1024 * 1024 if settings.agent_max_mb else None,
        )
        self.warm = WarmTier(settings.cache_path, settings.agent_disk_budget_mb, clean_up=True)
        # Redis behind the warm tier, for many instances (engine/kv/shared.py); None: local tiers only
        self.shared = shared_tier(settings.shared_tier_url) if settings.shared_tier_url else None
        self.writer = WarmWriter(self.warm, mirror=self.shared.push if self.shared is not None else None)
        # What users and clients set about each agent's caches (engine/kv/policy.py); stored in the warm
        # tier, read by other threads as a whole (replaced, never changed in place)
        self.policies: dict[str, AgentPolicy] = self.warm.policies()
        self._expired = RecentIds()  # dropped by the sweep: their next turn says why
        self.hits = {"hot": 0, "warm": 0, "shared": 0, "cold": 0}
        self._speeds_path = settings.cache_path / "speeds.json"
        self._speeds_key = f"{fingerprint}|{installed_backend()}"
        self.cost = CostModel.load(self._speeds_path, self._speeds_key)

    @property
    def enabled(self) -> bool:
        return self.layout is not None

    def resume_mode(self) -> str:
        """How this model's caches resume: at any prefix, or (sliding windows) only at chosen points."""
        if not self.enabled:
            return "recompute (unsupported cache kind)"
        if self.layout.resumable_everywhere():
            return "any prefix (full-attention layers only)"
        return (
            f"sliding-window layers (window {self.layout.min_window}): hot caches resume at any prefix "
            "until the window wraps, then at the end of one of the last prompts (window checkpoints); "
            "warm caches at a session's exact end or at its last prompt's end; otherwise recompute"
        )

    # -- acquire ---------------------------------------------------------------------------------------
    def root_of(self, tenant: str) -> str:
        """The root of a tenant's block names (engine/kv/blocks.py, tenant_root)."""
        return tenant_root(self.fingerprint, self.layout_text, self.block_tokens, tenant) if tenant else self.root

    def acquire(self, session_id: str | None, prompt: list[int], tenant: str = "") -> Restored:
        from mlx_lm.models.cache import make_prompt_cache

        started = time.perf_counter()
        key = _hot_key(session_id, tenant)
        limit = len(prompt) - 1
        if not self.enabled or limit <= 0:
            return Restored(make_prompt_cache(self.model), 0, "cold", 0.0)

        clues = Clues()  # what is seen on the way, for the turn's miss
        # Caches past their retention are dropped now; only other agents' may serve
        clues.expired = session_id is not None and (self._expire_if_idle(session_id) or self._expired.take(session_id))
        # A request without a session id takes the longest match, not its last slot's few shared tokens.
        anonymous_elsewhere = session_id is None and self._another_holds_more(key, prompt, limit, tenant)
        own = None if anonymous_elsewhere or clues.expired else self.hot.checkout(key)
        if own is not None:
            matched = common_prefix_length(prompt[:limit], own.tokens)
            clues.saw_stored(matched, len(own.tokens))
            # A wrapped sliding window cannot be cut back: it resumes at a window checkpoint if one is there.
            point = self.hot.resume_point(own, matched) if matched > 0 else 0
            clues.window_blocked = point < matched
            if point > 0:
                self.hits["hot"] += 1
                miss = self._miss(session_id, key, clues, point, limit)
                cache = self.hot.cut(own, point)
                return Restored(cache, point, "hot", time.perf_counter() - started, "restore", miss=miss)
            # Unusable as is; its turns are on disk already.

        candidates = [
            self._from_other_hot(key, prompt, limit, tenant),
            None if clues.expired else self._from_warm(session_id, prompt, limit, tenant, clues),
            None if clues.expired else self._from_shared(session_id, prompt, limit, tenant, clues),
        ]
        decision, estimate_s = "recompute", self.cost.prefill_s(0, len(prompt)) or 0.0
        # Longest match first; one that cannot be built (damaged, wrapped window) yields to the next.
        pending = sorted((c for c in candidates if c), key=lambda c: -c[0])
        while pending:
            matched, source, build, partial_ok = found = pending.pop(0)
            stored = source in ("warm", "shared")
            plan = self.cost.plan(source, matched, len(prompt), self.block_tokens) if stored else None
            if plan is not None and plan.decision == "partial" and not partial_ok:
                plan = min(
                    (Plan("recompute", 0, estimate_s), Plan("restore", matched, plan.estimate_s)),
                    key=lambda option: option.estimate_s,
                )
            if plan is not None:
                log.info(
                    "%r: %s from the %s tier (%d of %d tokens cached): est. %.3f s, recompute est. %.3f s",
                    key,
                    plan.decision,
                    source,
                    matched,
                    len(prompt),
                    plan.estimate_s,
                    estimate_s,
                )
                if plan.decision == "recompute":
                    clues.recomputed = True
                    continue
                clues.recomputed |= plan.restore_tokens < matched
                matched = plan.restore_tokens
            try:
                cache = build(matched)
            except Exception:  # noqa: BLE001 - a damaged entry means recompute, never a failed request
                log.exception("restoring %s KV for %r failed; trying the next source", source, key)
                cache = None
            if cache is None and source == "warm":
                # A damaged block was dropped as it was read: the intact blocks before it may still resume.
                clues.damaged = True
                shorter = self._from_warm(session_id, prompt, limit, tenant, clues)
                if shorter is not None and shorter[0] < found[0]:
                    pending = sorted([*pending, shorter], key=lambda c: -c[0])
            if cache is not None:
                self.hits[source] += 1
                restore_s = time.perf_counter() - started
                if stored:
                    self.cost.observe_restore(source, matched, restore_s)
                decision = plan.decision if plan is not None else "restore"
                miss = self._miss(session_id, key, clues, matched, limit)
                return Restored(cache, matched, source, restore_s, decision, plan.estimate_s if plan else 0.0, miss)
        self.hits["cold"] += 1
        miss = self._miss(session_id, key, clues, 0, limit)
        return Restored(
            make_prompt_cache(self.model), 0, "cold", time.perf_counter() - started, decision, estimate_s, miss
        )

    def observe_prefill(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        """A turn prefilled `new_tokens` in `seconds`, ending at `context_tokens`: the cost model learns."""
        self.cost.observe_prefill(new_tokens, context_tokens, seconds)

    def _another_holds_more(self, key: str, prompt: list[int], limit: int, tenant: str) -> bool:
        own = next((entry for entry in self.hot.entries() if entry.session_id == key), None)
        own_point = 0
        if own is not None:
            own_point = self.hot.resume_point(own, common_prefix_length(prompt[:limit], own.tokens))
        other = self._from_other_hot(key, prompt, limit, tenant)
        return other is not None and other[0] > own_point

    def _from_other_hot(self, key: str, prompt: list[int], limit: int, tenant: str):
        best_entry, best_match = None, 0
        for entry in self.hot.entries():
            if entry.session_id == key or entry.tenant != tenant:
                continue
            point = self.hot.resume_point(entry, common_prefix_length(prompt[:limit], entry.tokens))
            if point > best_match:
                best_entry, best_match = entry, point
        if best_entry is None:
            return None
        return best_match, "hot", lambda tokens: self.hot.prefix_cache(best_entry, tokens), False

    def _from_warm(self, session_id: str | None, prompt: list[int], limit: int, tenant: str, clues: Clues):
        if not self.warm.enabled:
            return None
        root = self.root_of(tenant)
        snapshot = self._own_snapshot(session_id, root, clues) if session_id else None
        return self._stored_candidate(self.warm, "warm", snapshot, prompt, limit, root, clues)

    def _from_shared(self, session_id: str | None, prompt: list[int], limit: int, tenant: str, clues: Clues):
        """What the shared tier holds of the prompt: the session's snapshot as another instance stored it,
        or blocks another computed."""
        if self.shared is None:
            return None
        root = self.root_of(tenant)
        snapshot = self.shared.read_session(self.fingerprint, session_id) if session_id else None
        if snapshot is not None and snapshot.root != root:
            snapshot = None  # another cache layout or disk encoding: its blocks are named otherwise too
        return self._stored_candidate(self.shared, "shared", snapshot, prompt, limit, root, clues)

    def _stored_candidate(self, tier, source: str, snapshot, prompt: list[int], limit: int, root: str, clues: Clues):
        """(matched, source, build, partial_ok) for a stored tier: the session's snapshot if it matches,
        else the prompt's blocks stored under their names (models with full attention only)."""
        if snapshot is not None:
            matched = common_prefix_length(prompt[:limit], snapshot.tokens)
            end = len(snapshot.tokens)
            clues.saw_stored(matched, end)
            window = self.layout.min_window
            usable = window is None or matched == end or end < window
            # Set before the checkpoint serves, as on the hot path: the turn still lost the tokens after it
            clues.window_blocked |= matched > 0 and not usable
            if matched > 0 and not usable and 0 < snapshot.checkpoint_tokens <= matched:
                matched, usable = snapshot.checkpoint_tokens, True  # its windows are stored there too
            if matched > 0 and usable:
                # A prefix of it ends in the middle of the sliding windows: partial only without them.
                build = lambda tokens: self._build_from_snapshot(snapshot, tokens, len(prompt), tier)  # noqa: E731
                return matched, source, build, window is None
        if not self.layout.resumable_everywhere():
            return None
        names = block_names(prompt[:limit], root, self.block_tokens)
        count = tier.match(self.fingerprint, names).blocks
        if count == 0:
            return None
        block = self.block_tokens
        return (
            count * block,
            source,
            lambda tokens: self._build_from_blocks(names[: tokens // block], len(prompt), tier),
            True,
        )

    def _own_snapshot(self, session_id: str, root: str, clues: Clues) -> SessionSnapshot | None:
        """The session's warm snapshot under this model, if it can serve; clues say why not otherwise."""
        fingerprints = self.warm.session_fingerprints(session_id)
        if self.fingerprint not in fingerprints:
            clues.other_models = bool(fingerprints)
            return None
        snapshot = self.warm.read_session(self.fingerprint, session_id)
        if snapshot is None:
            clues.damaged = True  # it has a row, so its file failed to read or to match its checksum
            return None
        if snapshot.root != root:
            # Written under another cache layout or disk encoding (SEMANTIC_KV_BITS or
            # SEMANTIC_KV_DISK_DTYPE changed since; the fingerprint names only the model): recomputed.
            log.info("session %r was stored under another KV encoding; recomputing it", session_id)
            clues.encoding_changed = True
            return None
        if not self._chain_stored(snapshot):
            clues.damaged = True  # a block of its chain was dropped (damaged): the blocks before it may serve
            return None
        return snapshot

    def _miss(self, session_id: str | None, key: str, clues: Clues, reused: int, limit: int) -> Miss | None:
        """The turn's miss; asks the hot tier whether it evicted the session only when nothing was stored."""
        if session_id is not None and clues.stored_end is None:
            clues.evicted = self.hot.was_evicted(key)
        return miss_of(clues, reused, limit, session_id is not None)

    def _chain_stored(self, snapshot: SessionSnapshot) -> bool:
        return self.warm.match(self.fingerprint, list(snapshot.chain)).blocks == len(snapshot.chain)

    def _build_from_blocks(self, names: list[str], prompt_tokens: int, tier):
        tokens = len(names) * self.block_tokens
        full = self._full_layers(names, None, tokens, prompt_tokens, tier)
        return None if full is None else build_cache(self.layout, full, {}, tokens, self.compute_dtype)

    def _full_layers(
        self, names: list[str], tail: dict | None, tokens: int, prompt_tokens: int, tier
    ) -> dict[int, tuple] | None:
        """Every full-attention layer's (keys, values) for the first `tokens` tokens: the named blocks in
        order from `tier`, then `tail`. None if a block is missing or damaged. Float32 arrays have room for the
        rest of a `prompt_tokens` prompt and the start of the answer."""
        import mlx.core as mx

        layers = self.layout.full_layers
        try:
            reading = tier.read_blocks(self.fingerprint, names)
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

    def _build_from_snapshot(self, snapshot: SessionSnapshot, matched: int, prompt_tokens: int, tier):
        block_count = min(len(snapshot.chain), -(-matched // self.block_tokens))
        covered = block_count * self.block_tokens
        tail = snapshot.tail if matched > covered else None
        full = self._full_layers(snapshot.chain[:block_count], tail, matched, prompt_tokens, tier)
        if full is None:
            return None
        sliding = {}
        end = len(snapshot.tokens)
        at_checkpoint = matched < end and matched == snapshot.checkpoint_tokens
        for layer in self.layout.sliding_layers:
            if at_checkpoint:
                sliding[layer] = self._window(snapshot.checkpoint_windows[layer])
                continue
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
            self.hot.check_in(key)
            return
        offset = cache_offset(cache)
        tokens = list(tokens[:offset])
        if len(tokens) != offset:
            log.warning("KV cache of %r holds %d tokens but %d are known; not keeping it", key, offset, len(tokens))
            self.hot.check_in(key)
            return
        if session_id is not None and self.warm.writable:
            checkpoint = self.hot.latest_checkpoint(key, tokens)
            self.writer.submit(self._write_job(session_id, tokens, cache, tenant, checkpoint))
        elif session_id is None and self.warm.writable and self.layout.resumable_everywhere():
            # Anonymous requests still leave their blocks for others of their tenant to share.
            job = self._write_job(ANONYMOUS, tokens, cache, tenant)
            job.snapshot = None
            self.writer.submit(job)
        nbytes = sum(c.nbytes for c in cache)
        self.hot.put(HotEntry(key, tokens, cache, nbytes, tenant=tenant))

    def checkpoint_layers(self, prompt_tokens: int, max_tokens: int) -> list[int]:
        """The layers a turn this long keeps a window checkpoint of: the sliding ones if it may run past
        a window (engine/kv/checkpoints.py), else none."""
        window = self.layout.min_window if self.enabled else None
        return self.layout.sliding_layers if window is not None and prompt_tokens + max_tokens > window else []

    def checkpoint(self, session_id: str | None, tokens: list[int], windows: dict, tenant: str = "") -> None:
        """A running turn's sliding-layer caches (layer -> cache, left as they are) have read a prefix of
        `tokens`: keep a copy of its windows there for the session's later prompts."""
        checkpoint = take_checkpoint(self.layout, tokens, windows)
        if checkpoint is not None:
            self.hot.add_checkpoint(_hot_key(session_id, tenant), checkpoint)

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

    def _write_job(
        self, session_id: str, tokens: list[int], cache: list, tenant: str, checkpoint: WindowCheckpoint | None = None
    ) -> WriteJob:
        root = self.root_of(tenant)
        names = block_names(tokens, root, self.block_tokens)
        stored = self.warm.match(self.fingerprint, names).blocks
        # The new blocks and the tail: tokens from the first block not stored to the end
        first = stored * self.block_tokens
        encoded = EncodedRange(
            names[stored:],
            self.block_tokens,
            {
                layer: encode_for_disk(*full_layer_slice(cache[layer], first, len(tokens)), self.disk_dtype)
                for layer in self.layout.full_layers
            },
        )
        windows = {
            layer: encode_for_disk(*sliding_window_snapshot(cache[layer]), self.disk_dtype)
            for layer in self.layout.sliding_layers
        }
        snapshot = SessionSnapshot(session_id, tokens, names, {}, windows, root, self.layout_text, self.block_tokens)
        window = self.layout.min_window
        if checkpoint is not None and window is not None and len(tokens) >= window:
            # The windows at the end cannot be cut back: a next prompt that diverges after the last
            # prompt's end (a re-rendered answer) resumes at its checkpoint, after a restart too.
            snapshot.checkpoint_tokens = checkpoint.position
            snapshot.checkpoint_windows = {
                layer: encode_for_disk(*sliding_window_snapshot(cache), self.disk_dtype)
                for layer, cache in checkpoint.windows.items()
            }
        return WriteJob(self.fingerprint, snapshot, encoded=encoded)

    def abandon(self, session_id: str | None, tenant: str = "") -> None:
        """A request failed mid-way: its cache state is unknown, so it is not kept."""
        self.hot.check_in(_hot_key(session_id, tenant))

    def forget(self, session_id: str) -> Future[bool]:
        """Drop a session's hot cache now and its warm snapshot behind the writes queued before (so
        none of them brings it back); shared blocks stay while others use them. The Future (wait on it
        off the engine thread) says whether the session had a cache in either tier."""
        was_hot = self.hot.drop(session_id)
        self._drop_policy(session_id)  # the tier deletes its row with the agent
        return self.writer.run(lambda warm: self._forget_stored(warm, session_id) or was_hot)

    def _forget_stored(self, warm, session_id: str) -> bool:
        if self.shared is not None:
            self.shared.forget_session(session_id)
        return warm.forget_session(None, session_id)

    def fork(self, session_id: str, new_session_id: str) -> Future[int]:
        """Give `new_session_id` the warm snapshots of `session_id`, behind the writes queued before (its
        last turn is in them): the fork shares every block. Nothing is copied in memory: the fork's first
        turn reads the parent's hot cache as another agent's, or the shared snapshot from disk. The
        Future (wait on it off the engine thread) says how many snapshots were forked."""
        self.hot.drop(new_session_id)
        self._drop_policy(new_session_id)  # a new agent: the tier forgets whatever the id had
        if not self.warm.writable:
            return self.writer.run(lambda warm: 0)
        return self.writer.run(lambda warm: warm.fork_session(session_id, new_session_id))

    def rename(self, session_id: str, new_session_id: str) -> Future[int]:
        """`session_id`'s caches and policy under `new_session_id`: its snapshots shared with the new id,
        then forgotten under the old one (the blocks stay, the new id uses them), behind the writes queued
        before. The hot copy moves too, so the next turn resumes from memory. The Future (wait on it off
        the engine thread) says how many snapshots moved, once all of it is done."""
        policy = self.policy(session_id)
        moved = self.fork(session_id, new_session_id)
        if not policy.is_default:
            self.set_policy(new_session_id, **policy.as_dict())
        self.hot.rename(session_id, new_session_id)
        self.forget(session_id)
        return self.writer.run(lambda warm: moved.result())

    def export_agent(self, session_id: str, agent_id: str, model_id: str, transcript: dict | None, path: Path):
        """Write the session's agent file to `path` behind the writes queued before (its last turn is in
        them). The Future (wait on it off the engine thread) holds its manifest."""

        def export(warm) -> Manifest:
            with path.open("wb") as target:
                return export_agent(warm, self.fingerprint, session_id, agent_id, model_id, transcript, target)

        return self.writer.run(export)

    def import_target(self, tenant: str) -> Target:
        """What an imported cache must fit here."""
        return Target(self.fingerprint, self.layout_text, self.block_tokens, tenant)

    def import_agent(self, plan: ImportPlan) -> Future[int]:
        """Store a checked import's blocks and snapshot; the Future says how many blocks were new."""
        self.hot.drop(plan.snapshot.session_id)
        self._drop_policy(plan.snapshot.session_id)
        return self.writer.run(lambda warm: warm.import_session(plan.fingerprint, plan.snapshot, plan.blocks))

    # -- policies (engine/kv/policy.py) ----------------------------------------------------------------
    def policy(self, session_id: str) -> AgentPolicy:
        return self.policies.get(session_id, AgentPolicy())

    def set_policy(self, session_id: str, **changes) -> AgentPolicy:
        """Change an agent's policy (`pinned`, `retention_s`, `keep_until`); kept in the warm tier."""
        policy = replace(self.policy(session_id), **changes)
        policies = {**self.policies, session_id: policy}
        if policy.is_default:
            del policies[session_id]
        self.policies = policies
        if self.warm.writable:
            stored = self.writer.run(lambda warm: warm.set_policy(session_id, policy))
            stored.add_done_callback(lambda done: _log_failure(done, f"storing the cache policy of {session_id!r}"))
        return policy

    def _drop_policy(self, session_id: str) -> None:
        if session_id in self.policies:
            self.policies = {sid: policy for sid, policy in self.policies.items() if sid != session_id}

    def take_hints(self, session_id: str | None, keep_s: int | None, retention_s: int | None) -> None:
        """A request's cache hints (Anthropic cache_control's ttl, OpenAI prompt_cache_retention): keep the
        session's caches at least `keep_s` from now; expire them after `retention_s` idle, unless the user
        set the retention."""
        if session_id is None or (keep_s is None and retention_s is None):
            return
        policy, changes = self.policy(session_id), {}
        until = time.time() + (keep_s or 0)
        if keep_s and until > policy.keep_until + HINT_WRITE_S:
            changes["keep_until"] = until
        if retention_s is not None and retention_s != policy.retention_s and not policy.retention_by_user:
            changes["retention_s"] = retention_s
        if changes:
            self.set_policy(session_id, **changes)

    def expire_idle(self, now: float) -> bool:
        """Drop the caches of agents idle past their retention (the engine thread calls this now and then);
        whether the hot tier changed. A client's keep hint that has run out leaves no policy behind."""
        for session_id, policy in list(self.policies.items()):
            if policy.keep_until and policy.keep_until <= now:
                self.set_policy(session_id, keep_until=0.0)
        if not any(policy.retention_s is not None for policy in self.policies.values()):
            return False
        dropped = [
            entry.session_id
            for entry in self.hot.entries()
            if self.policy(entry.session_id).expired(entry.last_used, now)
        ]
        for session_id in dropped:
            self.hot.drop(session_id)
        self._expired.add(dropped)
        if self.warm.writable:
            self.writer.run(lambda warm: warm.expire(now)).add_done_callback(
                lambda done: self._expired.add(done.result()) if done.exception() is None else None
            )
        return bool(dropped)

    def _expire_if_idle(self, session_id: str) -> bool:
        """Drop the session's caches if it has been idle past its retention; whether it had."""
        policy = self.policies.get(session_id)
        if policy is None or policy.retention_s is None:
            return False
        used = [t for t in (self.hot.last_used(session_id), self.warm.last_used(session_id)) if t is not None]
        if not used or not policy.expired(max(used), time.time()):
            return False
        self.hot.drop(session_id)
        if self.warm.writable:
            self.writer.run(lambda warm: warm.drop_caches(session_id))
        return True

    # -- inspection ------------------------------------------------------------------------------------
    def flush(self) -> Future[None]:
        """Done once every turn released so far is on disk (wait on it off the engine thread)."""
        return self.writer.run(lambda warm: None)

    def close(self) -> None:
        self.writer.flush()  # every finished turn reaches the disk, however long that takes
        self.writer.close()
        if self.warm.writable:
            self.cost.save(self._speeds_path, self._speeds_key)

    def stats(self) -> Future[MemoryStats]:
        """The hot tier and hits as of now, the warm tier once the writes queued before are done (wait
        on the Future off the engine thread)."""
        hot, hits = self._hot_totals(), TierHits(**self.hits)
        return self.writer.run(
            lambda warm: MemoryStats(
                enabled=self.enabled,
                hot=hot,
                warm=warm.stats(dtype=self.disk_dtype),
                hits=hits,
                block_tokens=self.block_tokens,
                resume=self.resume_mode(),
            )
        )

    def hot_view(self) -> HotView:
        """The hot tier as a record (engine thread; others read the copy the engine publishes)."""
        sessions = {
            entry.session_id: HotSession(
                tokens=len(entry.tokens),
                bytes=entry.nbytes,
                live=not entry.compact,
                blocks=len(entry.chain),
                last_used=entry.last_used,
            )
            for entry in self.hot.entries()
            if not entry.session_id.startswith("\x00")
        }
        return HotView(self._hot_totals(), TierHits(**self.hits), sessions)

    def _hot_totals(self) -> HotTotals:
        return HotTotals(
            budget_bytes=self.hot.budget_bytes,
            used_bytes=self.hot.used_bytes,
            agents=len(self.hot),
            max_agents=self.hot.max_agents,
            evictions=self.hot.evictions,
            shared_bytes_saved=self.hot.shared_bytes_saved,
        )

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
