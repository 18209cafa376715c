"""A finished turn's usage, cache report and timing read back from the JSON they give (the remote TUI
reads a server's this way)."""

from __future__ import annotations

from dataclasses import replace

from engine.events import CacheReport, Timing, Usage


def test_usage_cache_and_timing_read_back_their_own_json():
    usage = Usage(4431, 12, 4401)
    cache = CacheReport("warm", 4401, 0.1165, "partial", 0.2, "system prompt changed at token 12", "system_changed")
    timing = Timing(0.39, 11355.5, 38.25, 0.7)
    assert Usage.from_json(usage.to_json()) == usage
    assert Timing.from_json(timing.to_json()) == timing
    # The miss's kind is not in the JSON (it is for metrics)
    assert CacheReport.from_json(cache.to_json()) == replace(cache, miss_kind=None)


def test_keys_a_newer_server_adds_are_ignored_and_missing_ones_take_the_defaults():
    assert Usage.from_json({"prompt_tokens": 3, "completion_tokens": 1, "reasoning_tokens": 0}) == Usage(3, 1, 0)
    assert CacheReport.from_json({"source": "hot", "reused_tokens": 7, "restore_s": 0.001}) == CacheReport(
        "hot", 7, 0.001
    )
