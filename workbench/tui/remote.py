"""`agent-memory tui --connect URL`: the same screens on a running `agent-memory serve`, through its agent
API, /health and /metrics. The server keeps the transcripts; this side only displays and sends."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from engine.events import CacheReport, Timing, TurnChunk, TurnEvent, TurnFailed, TurnFinished, TurnStarted, Usage
from engine.kv.stats import BlockCounts, HotTotals, StoredBlock, WarmStats
from engine.requests import ChatMessage
from engine.sessions import Session
from workbench.chat import CHAT_REPETITION_PENALTY
from workbench.tui.pool import Pool

_request_numbers = itertools.count(1)
MAX_CHAINS = 50  # agents whose block chains the overview fetches, one request each


class RemoteHandle:
    """A running remote turn: cancelling closes the connection, which stops the server's generation."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.response: httpx.Response | None = None
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        if self.response is not None:
            self.response.close()


def reaching(method):
    """`method`, with a lost connection raised as a ConnectionError that names the server: the TUI says it
    and keeps running (the next call may find the server back)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionError(f"cannot reach the server at {self.base_url}: {exc}") from exc

    return call


class RemoteSource:
    def __init__(self, base_url: str, api_key: str | None = None, admin_key: str | None = None):
        headers = {"x-api-key": api_key} if api_key else {}
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(30, read=None))
        self.admin_key = admin_key
        self.block_tokens = 256

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, on_wait: Callable[[str], None] | None = None, timeout_s: float = 600) -> dict:
        """Wait until the server is ready, telling `on_wait` why at each try; returns its model summary."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = self.client.get("/health")
                if response.status_code == 200:
                    summary = response.json()
                    self.block_tokens = summary.get("kv_block_tokens", self.block_tokens)
                    return summary
                detail = response.json().get("error") or response.json().get("status")
            except httpx.HTTPError as exc:
                detail = f"cannot reach the server at {self.base_url} ({exc})"
            if time.monotonic() > deadline:
                raise ConnectionError(detail)
            if on_wait is not None:
                on_wait(detail)
            time.sleep(1)

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str) -> dict:
        response = self.client.get(path)
        self._check_key(response)
        response.raise_for_status()
        return response.json()

    def _check_key(self, response: httpx.Response) -> None:
        if response.status_code == 401:
            if self.api_key:
                raise PermissionError("the server refused the API key: check --api-key")
            raise PermissionError("the server wants an API key: pass --api-key")

    # -- agents ----------------------------------------------------------------------------------
    @reaching
    def agents(self) -> list[dict]:
        return self._get("/v1/agents")["data"]

    @reaching
    def session(self, agent_id: str) -> Session:
        response = self.client.get(f"/v1/agents/{quote(agent_id, safe='')}")
        if response.status_code == 404:
            return Session(id=agent_id)
        self._check_key(response)
        response.raise_for_status()
        detail = response.json()
        messages = [ChatMessage(**m) for m in detail["messages"]]
        return Session(id=agent_id, system=detail.get("system"), messages=messages)

    @reaching
    def delete(self, agent_id: str) -> None:
        response = self.client.delete(f"/v1/agents/{quote(agent_id, safe='')}")
        self._check_key(response)
        if response.status_code != 404:  # 404: nothing stored yet, nothing to delete
            response.raise_for_status()

    @reaching
    def rename(self, old_id: str, new_id: str) -> None:
        """POST /v1/agents/{id}/rename: the transcript and the KV cache move to `new_id`. LookupError for an
        unknown agent, ValueError for an id in use (the server writes nothing then)."""
        self._to_new_id(old_id, "rename", new_id)

    @reaching
    def fork(self, agent_id: str, new_id: str) -> int:
        """POST /v1/agents/{id}/fork; how many warm snapshots the fork shares. LookupError for an unknown
        agent, ValueError for an id in use (the server writes nothing then)."""
        return self._to_new_id(agent_id, "fork", new_id)["kv_snapshots"]

    def _to_new_id(self, agent_id: str, verb: str, new_id: str) -> dict:
        response = self.client.post(f"/v1/agents/{quote(agent_id, safe='')}/{verb}", json={"new_id": new_id})
        self._check_key(response)
        if response.status_code == 404:
            raise LookupError(response.json()["error"]["message"])
        if response.status_code in (400, 409):
            raise ValueError(response.json()["error"]["message"])
        response.raise_for_status()
        return response.json()

    @reaching
    def set_pinned(self, agent_id: str, pinned: bool) -> None:
        """PATCH /v1/agents/{id}: pin the agent's caches or unpin them."""
        response = self.client.patch(f"/v1/agents/{quote(agent_id, safe='')}", json={"pinned": pinned})
        self._check_key(response)
        if response.status_code in (404, 409):
            raise LookupError(response.json()["error"]["message"])
        response.raise_for_status()

    @reaching
    def inspect(self, agent_id: str | None) -> dict:
        row = None
        if agent_id is not None:
            response = self.client.get(f"/v1/agents/{quote(agent_id, safe='')}")
            row = response.json() if response.status_code == 200 else None
        if row is not None:  # the same records the local source gives
            row["blocks"] = BlockCounts.from_json(row["blocks"])
            row["chain"] = _chain(row["chain"])
        return {"pool": self.pool(), "row": row, "block_tokens": self.block_tokens}

    @reaching
    def overview(self) -> dict:
        """The pool, and every agent's row with its stored chain (one request per agent, the first
        MAX_CHAINS of them; the rest are drawn from their token counts)."""
        rows = self.agents()
        for row in rows[:MAX_CHAINS]:
            response = self.client.get(f"/v1/agents/{quote(row['id'], safe='')}")
            found = response.json().get("chain") if response.status_code == 200 else None
            row["chain"] = _chain(found or [])
        return {"pool": self.pool(), "rows": rows, "block_tokens": self.block_tokens}

    @reaching
    def pool(self) -> Pool:
        """The tiers from the server's /metrics (which leaves out the warm tier's path, files and encoding)."""
        metrics = self._metrics()
        hot = HotTotals(
            used_bytes=metrics.get("agent_memory_hot_bytes", 0),
            budget_bytes=metrics.get("agent_memory_hot_budget_bytes", 0),
            agents=metrics.get("agent_memory_resident_agents", 0),
            max_agents=metrics.get("agent_memory_max_resident_agents", 0),
            evictions=metrics.get("agent_memory_hot_evictions_total", 0),
            shared_bytes_saved=metrics.get("agent_memory_hot_shared_saved_bytes", 0),
        )
        warm = WarmStats(
            enabled=True,
            bytes=metrics.get("agent_memory_warm_bytes", 0),
            blocks=metrics.get("agent_memory_warm_blocks", 0),
            budget_bytes=metrics.get("agent_memory_warm_budget_bytes", 0),
        )
        return Pool(hot, warm)

    def _metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.client.get("/metrics").text
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.labels:
                    values[sample.name] = int(sample.value)
        return values

    # -- models ----------------------------------------------------------------------------------
    @reaching
    def model_choices(self) -> list[str]:
        """What the server may swap to (none without its admin key: the TUI then offers no swap)."""
        if not self.admin_key:
            return []
        response = self.client.get("/admin/models", headers={"X-Admin-Key": self.admin_key})
        if response.status_code != 200:
            raise RuntimeError(response.json()["error"]["message"])
        return response.json()["models"]

    @reaching
    def swap(self, model_id: str, progress=None) -> dict:
        if not self.admin_key:
            raise PermissionError("swapping needs the server's admin key: pass --admin-key")
        response = self.client.post(
            "/admin/swap", json={"model_id": model_id}, headers={"X-Admin-Key": self.admin_key}, timeout=None
        )
        if response.status_code != 200:
            raise RuntimeError(response.json()["error"]["message"])
        return self.start()

    # -- turns -----------------------------------------------------------------------------------
    def send(self, session: Session, text: str, on_event: Callable[[TurnEvent], None], max_tokens: int = 512):
        handle = RemoteHandle(f"remote-{next(_request_numbers)}")
        # The server's model samples with its defaults, and chat's mild repetition penalty.
        body = {
            "content": text,
            "max_tokens": max_tokens,
            "stream": True,
            "repetition_penalty": CHAT_REPETITION_PENALTY,
        }
        thread = threading.Thread(target=self._stream, args=(session.id, body, handle, on_event), daemon=True)
        thread.start()
        return handle

    def _stream(self, agent_id: str, body: dict, handle: RemoteHandle, on_event) -> None:
        request_id, started, text = handle.request_id, time.perf_counter(), []
        try:
            with self.client.stream("POST", f"/v1/agents/{quote(agent_id, safe='')}/messages", json=body) as response:
                handle.response = response
                if response.status_code != 200:
                    response.read()
                    on_event(TurnFailed(request_id, response.json()["error"]["message"], "request"))
                    return
                name = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data = json.loads(line.removeprefix("data: "))
                        if name == "started":
                            cache = CacheReport(
                                data["cache"]["source"],
                                data["cache"]["reused_tokens"],
                                miss_reason=data["cache"].get("miss_reason"),
                            )
                            on_event(TurnStarted(request_id, data["prompt_tokens"], cache))
                        elif name == "delta":
                            text.append(data["text"])
                            on_event(TurnChunk(request_id, data["text"]))
                        elif name == "finished":
                            on_event(_finished(request_id, data))
                            return
                        elif name == "error":
                            on_event(TurnFailed(request_id, data["error"]["message"], "internal"))
                            return
        except httpx.HTTPError as exc:
            if not handle.cancelled.is_set():
                on_event(TurnFailed(request_id, f"connection to the server failed: {exc}", "internal"))
                return
        # Stopped from this side: the server drops the partial turn; show it as stopped.
        elapsed = time.perf_counter() - started
        on_event(
            TurnFinished(
                request_id,
                "".join(text),
                "cancelled",
                Usage(0, len(text)),
                CacheReport(),
                Timing(elapsed, 0.0, 0.0, elapsed),
            )
        )

    def keep(self, session: Session, text: str, finished: TurnFinished) -> None:
        """The server stored the turn; mirror it in the local copy for the turn count."""
        if finished.finish_reason != "cancelled":
            session.messages.extend(
                [ChatMessage(role="user", content=text), ChatMessage(role="assistant", content=finished.text)]
            )


def _finished(request_id: str, data: dict) -> TurnFinished:
    return TurnFinished(
        request_id=request_id,
        text=data["content"],
        finish_reason=data["finish_reason"],
        usage=Usage.from_json(data["usage"]),
        cache=CacheReport.from_json(data["cache"]),
        timing=Timing.from_json(data["timing"]),
        stop_sequence=data.get("stop_sequence"),
    )


def _chain(blocks: list[dict]) -> list[StoredBlock]:
    """An agent's stored chain from the server's JSON, as the local source gives it."""
    return [StoredBlock.from_json(block) for block in blocks]
