"""Tokenizing an agent's prompt turn after turn, from where its last prompt left off.

An agent's prompt is its whole conversation, rendered again for every turn, and tokenizing it all again
costs time that grows with the history, paid before the KV memory can even look it up. The next turn's
text almost always starts with the last turn's, so its tokens are reused up to the last special token
inside the common part (a chat template's turn marker) and only the rest is tokenized. That is exact: a
fast tokenizer cuts its input at special tokens before anything else (matched in the raw text, not
normalized, not taking their neighbours' spaces), then tokenizes each piece between them on its own, so
no token on one side of such a token depends on the other side.
Tokenizers without that pipeline (no `backend_tokenizer`) tokenize the whole text as before.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

# Recent prompts kept for reuse: a few agents' last turns (each ~0.2 MB at 4k tokens).
REMEMBERED_PROMPTS = 16


@dataclass
class _Encoded:
    text: str
    ids: list[int]
    cuts: list[tuple[int, int, int]]  # (start char, end char, token index) of each special token


class PromptEncoder:
    """`encode(text)` gives what `tokenizer.encode(text, add_special_tokens=False)` gives, reusing the
    tokens of a recent prompt that `text` starts with. Any thread may call it."""

    def __init__(self, tokenizer, remembered: int = REMEMBERED_PROMPTS):
        self._tokenizer = tokenizer
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        self._backend = getattr(hf, "backend_tokenizer", None)
        added = getattr(hf, "added_tokens_decoder", {}) or {}
        self._cut_ids = frozenset(
            token_id
            for token_id, token in added.items()
            if token.special and not (token.lstrip or token.rstrip or token.normalized)
        )
        if not self._cut_ids:
            self._backend = None
        self._recent: deque[_Encoded] = deque(maxlen=remembered)
        self._lock = threading.Lock()
        self.reused_tokens = 0  # tokens taken from recent prompts instead of tokenized, in all

    def encode(self, text: str) -> list[int]:
        if self._backend is None:
            return self._tokenizer.encode(text, add_special_tokens=False)
        with self._lock:
            base, cut = self._reusable(text)
        start, reused, ids, cuts = 0, 0, [], []
        if base is not None:  # tokenize from its special token number `cut` on
            start, _, reused = base.cuts[cut]
            ids, cuts = base.ids[:reused], base.cuts[:cut]
        rest = self._backend.encode(text[start:], add_special_tokens=False)
        ids += rest.ids
        for index, (token_id, (first, last)) in enumerate(zip(rest.ids, rest.offsets, strict=True)):
            if token_id in self._cut_ids:
                cuts.append((start + first, start + last, reused + index))
        with self._lock:
            self._recent.append(_Encoded(text, ids, cuts))
            self.reused_tokens += reused
        return list(ids)

    def _reusable(self, text: str) -> tuple[_Encoded | None, int]:
        """The recent prompt and the index of its special token from which `text` can be tokenized
        with the most tokens before it reused: `text` starts with that prompt's text through it."""
        best, best_cut, best_tokens = None, 0, 0
        for encoded in self._recent:
            cuts = encoded.cuts
            low, high = 0, len(cuts)  # cuts[:low] are all inside the common part; find how many
            while low < high:
                middle = (low + high + 1) // 2
                if text.startswith(encoded.text[: cuts[middle - 1][1]]):
                    low = middle
                else:
                    high = middle - 1
            if low and cuts[low - 1][2] > best_tokens:
                best, best_cut, best_tokens = encoded, low - 1, cuts[low - 1][2]
        return best, best_cut
