"""Prometheus metrics: counters and histograms updated per request, KV and queue gauges read at scrape time.

Every label value comes from a closed set (a method outside METHODS is "other"; a route is its template or
"unmatched", never a raw path), so no client can grow the registry by sending odd requests.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from engine.events import TurnFinished
from engine.kv.miss import KINDS as MISS_KINDS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, engine_getter):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agent_memory_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.tenant_requests = Counter(
            "agent_memory_tenant_requests",
            "HTTP requests by tenant (named keys, SEMANTIC_API_KEYS) and status.",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "agent_memory_request_duration_seconds",
            "Time from request to the end of its response.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "agent_memory_time_to_first_token_seconds",
            "Time to the first generated token, by cache source.",
            ["cache"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "agent_memory_prompt_tokens", "Prompt tokens, cached ones included.", registry=self.registry
        )
        self.cached_tokens = Counter(
            "agent_memory_cached_tokens", "Prompt tokens read from the KV memory.", registry=self.registry
        )
        self.generated_tokens = Counter("agent_memory_generated_tokens", "Generated tokens.", registry=self.registry)
        self.cache_hits = Counter(
            "agent_memory_cache_hits", "Turns by where their KV prefix came from.", ["tier"], registry=self.registry
        )
        self.cache_decisions = Counter(
            "agent_memory_cache_decisions",
            "Turns by how their prompt was reached: restore, recompute or partial (engine/kv/cost.py).",
            ["decision"],
            registry=self.registry,
        )
        for decision in ("restore", "recompute", "partial"):
            self.cache_decisions.labels(decision)
        self.cache_misses = Counter(
            "agent_memory_cache_misses",
            "Turns whose cache gave less than their prompt, by why (engine/kv/miss.py).",
            ["reason"],
            registry=self.registry,
        )
        for kind in MISS_KINDS:
            self.cache_misses.labels(kind)
        self.tool_calls = Counter(
            "agent_memory_tool_calls",
            "Tool calls the model wrote: valid ones, and invalid ones returned as text.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("valid", "invalid"):  # both series exist from the first scrape
            self.tool_calls.labels(outcome)
        self.registry.register(_EngineCollector(engine_getter))

    def observe_turn(self, finished: TurnFinished) -> None:
        self.prompt_tokens.inc(finished.usage.prompt_tokens)
        self.cached_tokens.inc(finished.usage.cached_tokens)
        self.generated_tokens.inc(finished.usage.completion_tokens)
        self.cache_hits.labels(finished.cache.source).inc()
        self.cache_decisions.labels(finished.cache.decision).inc()
        if finished.cache.miss_kind is not None:
            self.cache_misses.labels(finished.cache.miss_kind).inc()
        self.tool_calls.labels("valid").inc(len(finished.tool_calls))
        self.tool_calls.labels("invalid").inc(finished.invalid_tool_calls)
        if finished.finish_reason != "cancelled":
            self.ttft.labels(finished.cache.source).observe(finished.timing.ttft_s)

    def observe_request(self, route: str, method: str, status: int, seconds: float, tenant: str = "") -> None:
        """`route` is a route template or "unmatched"; `method` is any string the client sent; `tenant` is a
        configured tenant's name (a closed set) or "" for none."""
        self.requests.labels(route, method if method in METHODS else "other", str(status)).inc()
        if tenant:
            self.tenant_requests.labels(tenant, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Values the engine owns, read when Prometheus scrapes (never waits for the engine thread)."""

    def __init__(self, engine_getter):
        self._engine = engine_getter
        self._started = time.time()

    def collect(self):
        engine = self._engine()
        yield GaugeMetricFamily(
            "agent_memory_uptime_seconds", "Seconds since the server started.", value=time.time() - self._started
        )
        if engine is None:
            return
        yield GaugeMetricFamily("agent_memory_queue_depth", "Requests waiting or running.", value=engine.queue_depth)
        ready = engine.state == "ready"
        yield GaugeMetricFamily("agent_memory_ready", "1 when the model is loaded and serving.", value=int(ready))
        if engine.state in ("ready", "swapping"):
            info = engine.info
            yield InfoMetricFamily(
                "agent_memory_model",
                "The serving model.",
                value={
                    "model_id": engine.model_id,
                    "fingerprint": info.fingerprint,
                    "backend": info.backend,
                    "dtype": info.compute_dtype,
                },
            )
        overview = engine.kv_overview(sessions=False)  # totals only: a scrape must stay cheap
        hot, warm = overview.hot.totals, overview.warm
        yield GaugeMetricFamily("agent_memory_hot_bytes", "KV bytes in the hot tier.", value=hot.used_bytes)
        yield GaugeMetricFamily("agent_memory_hot_budget_bytes", "Hot tier byte budget.", value=hot.budget_bytes)
        yield GaugeMetricFamily("agent_memory_resident_agents", "Agents whose KV is in the hot tier.", value=hot.agents)
        yield GaugeMetricFamily(
            "agent_memory_max_resident_agents", "Most agents the hot tier holds.", value=hot.max_agents
        )
        yield GaugeMetricFamily(
            "agent_memory_hot_shared_saved_bytes",
            "Hot bytes saved because agents share prefix blocks.",
            value=hot.shared_bytes_saved,
        )
        yield CounterMetricFamily(
            "agent_memory_hot_evictions", "Agents evicted from the hot tier.", value=hot.evictions
        )
        yield GaugeMetricFamily("agent_memory_warm_bytes", "KV bytes in the warm tier on disk.", value=warm.bytes)
        yield GaugeMetricFamily("agent_memory_warm_blocks", "KV blocks in the warm tier.", value=warm.blocks)
        yield GaugeMetricFamily(
            "agent_memory_warm_budget_bytes", "Warm tier byte budget on disk (0: none).", value=warm.budget_bytes
        )
        shared = overview.shared
        if shared is not None:  # SEMANTIC_SHARED_TIER_URL is set
            yield GaugeMetricFamily(
                "agent_memory_shared_tier_up", "1 while the shared KV tier (Redis) answers.", value=int(shared.up)
            )
            yield CounterMetricFamily(
                "agent_memory_shared_tier_failures", "Shared tier calls that failed.", value=shared.failures
            )
            yield GaugeMetricFamily(
                "agent_memory_shared_tier_behind",
                "Sessions written while the shared tier was down, to push when it is back.",
                value=shared.behind,
            )
