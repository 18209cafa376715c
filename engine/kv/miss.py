"""Why a turn reused less of its prompt than a cache could have given it: its miss.

acquire (engine/kv/memory.py) notes what it sees on its way in Clues; miss_of names the one thing that
cut the reuse short. A turn that reused all its own stored cache could give has no miss. The kind is a
label from a closed set (a metric counts turns by it); engine/turn.py says it in words.

    the session's stored tokens    [s0 s1 s2 s3 s4 s5 s6 s7]            stored end
    the new prompt                 [s0 s1 s2 x3 ...........]
                                             ^ diverged at token 3: nothing past it can be reused
"""

from __future__ import annotations

from dataclasses import dataclass

# Every kind a miss can have
KINDS = (
    "new",  # nothing of the session's own is stored (a request without a session: nothing shared either)
    "diverged",  # the session's stored tokens differ from the prompt before their end
    "sliding_window",  # a sliding-window cache cannot be cut back to where the prompt matched
    "recomputed",  # the cost model chose to prefill what was cached (engine/kv/cost.py)
    "damaged",  # a stored block or snapshot failed its read or checksum and was dropped
    "model_changed",  # the session is stored only under another model
    "encoding_changed",  # the session was stored under another cache layout or disk encoding
    "evicted",  # the session's hot cache was evicted and the warm tier had no copy
    "expired",  # the session's caches were idle past its retention (engine/kv/policy.py)
)

# The words for each kind but "diverged" (said with the message that changed, engine/turn.py) and "new"
# (which depends on whether the request named a session).
REASONS = {
    "new": "new agent: nothing cached yet",
    "sliding_window": "sliding window: this model resumes only at a stored turn's or a recent prompt's end",
    "recomputed": "recomputed: cheaper than restore",
    "damaged": "damaged: a stored block failed its check",
    "model_changed": "model changed",
    "encoding_changed": "KV encoding changed",
    "evicted": "evicted: budget",
    "expired": "expired: idle past its retention",
}


@dataclass(frozen=True)
class Miss:
    kind: str  # one of KINDS
    token: int | None = None  # "diverged": the first prompt token that differs from the stored ones


@dataclass
class Clues:
    """What acquire saw of the session's own cache and of each way it tried to restore."""

    stored_match: int = 0  # prompt tokens the session's own stored cache (hot entry or snapshot) matched
    stored_end: int | None = None  # that cache's length; None when the session has nothing stored
    damaged: bool = False
    window_blocked: bool = False  # a match could not be cut back: a wrapped or warm sliding window
    recomputed: bool = False  # a plan restored fewer tokens than matched
    encoding_changed: bool = False
    other_models: bool = False  # the session has snapshots under other model fingerprints only
    evicted: bool = False
    expired: bool = False

    def saw_stored(self, matched: int, end: int) -> None:
        """The session's own stored cache (the longer match of its hot entry and warm snapshot wins)."""
        if self.stored_end is None or matched > self.stored_match:
            self.stored_match, self.stored_end = matched, end


def miss_of(clues: Clues, reused: int, limit: int, has_session: bool) -> Miss | None:
    """The miss of a turn that reused `reused` of at most `limit` tokens (the prompt but its last token)."""
    if reused >= limit:
        return None
    if not has_session:
        # No history of its own to lose: only a prefix that was there and not used is a miss.
        return None if reused else _first(clues, "damaged", "recomputed") or Miss("new")
    if clues.stored_end is not None:
        matched = clues.stored_match
        if matched < min(clues.stored_end, limit):
            return Miss("diverged", matched)
        if reused >= matched:
            return None  # all its own cache could give (more of the prompt was never stored)
        return _first(clues, "damaged", "sliding_window", "recomputed")
    return _first(clues, "expired", "damaged", "encoding_changed", "model_changed", "evicted") or Miss("new")


def _first(clues: Clues, *kinds: str) -> Miss | None:
    seen = {
        "damaged": clues.damaged,
        "sliding_window": clues.window_blocked,
        "recomputed": clues.recomputed,
        "encoding_changed": clues.encoding_changed,
        "model_changed": clues.other_models,
        "evicted": clues.evicted,
        "expired": clues.expired,
    }
    return next((Miss(kind) for kind in kinds if seen[kind]), None)
