"""Auth, health, metrics, malformed input, disconnects and model hot-swap on a real server."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, API_KEY, ServerProcess, hub_repo, run_cli

CHAT = "/v1/chat/completions"
HELLO = {"model": "x", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


def samples(http, name: str) -> dict:
    families = text_string_to_metric_families(http.get("/metrics", headers={"X-API-Key": API_KEY}).text)
    return {tuple(sorted(s.labels.items())): s.value for f in families for s in f.samples if s.name == name}


def wait_for_queue_depth(http, wanted, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not wanted(samples(http, "agent_memory_queue_depth")[()]):
        assert time.monotonic() < deadline, "the engine's queue never reached the expected depth"
        time.sleep(0.01)


def test_auth_accepts_both_header_styles(http):
    assert http.post(CHAT, json=HELLO).status_code == 401
    assert http.post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert http.post(CHAT, json=HELLO, headers={"X-API-Key": API_KEY}).status_code == 200
    wrong = http.post("/v1/messages", json=HELLO, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    # Open routes: probes carry no key (/metrics needs it: tests/api/test_hardening.py).
    for path in ("/health", "/"):
        assert http.get(path).status_code == 200
    assert http.head("/").status_code == 200


def test_health_reports_model(http):
    health = http.get("/health").json()
    assert health["status"] == "ready" and health["model_id"] == "default"
    assert len(health["fingerprint"]) >= 16 and health["queue_depth"] >= 0 and health["uptime_s"] > 0


def test_metrics_count_requests(http):
    key = {"X-API-Key": API_KEY}
    route = (("method", "POST"), ("route", CHAT), ("status", "200"))
    before = samples(http, "agent_memory_requests_total").get(route, 0)
    tokens_before = sum(samples(http, "agent_memory_generated_tokens_total").values())
    for _ in range(3):
        assert http.post(CHAT, json=HELLO, headers=key).status_code == 200
    after = samples(http, "agent_memory_requests_total")
    assert after[route] == before + 3
    assert sum(samples(http, "agent_memory_generated_tokens_total").values()) >= tokens_before + 3
    assert sum(samples(http, "agent_memory_cache_hits_total").values()) >= 3
    assert samples(http, "agent_memory_time_to_first_token_seconds_count")
    info = samples(http, "agent_memory_model_info")
    assert any(dict(labels)["model_id"] == "default" for labels in info)
    assert samples(http, "agent_memory_hot_bytes")[()] > 0


MALFORMED = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'"text"',
    b"\xff\xfe",
    b'{"model": "x"}',
    b'{"model": "x", "messages": "hi"}',
    b'{"model": "x", "messages": []}',
    b'{"model": "x", "messages": [{"role": "user"}]}',
    b'{"model": "x", "messages": [{"role": 7, "content": "hi"}]}',
    b'{"model": "x", "messages": [{"role": "user", "content": 5}]}',
    b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}',
    b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
    b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "stop": [""]}',
    b'{"model": "x", "messages": [{"role": "user", "content": "  "}]}',
    b'{"model": "x", "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
    b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}',
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_malformed_bodies_get_400_in_the_api_shape(http, path):
    headers = {"X-API-Key": API_KEY, "content-type": "application/json"}
    for body in MALFORMED:
        response = http.post(path, content=body, headers=headers)
        assert response.status_code == 400, (body, response.status_code, response.text)
        error = response.json()
        if path == "/v1/messages":
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        else:
            assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]


def test_unknown_route_and_method_are_json(http):
    missing = http.get("/v2/nothing", headers={"X-API-Key": API_KEY})
    assert missing.status_code == 404 and "no route" in missing.json()["error"]["message"]
    wrong_method = http.get(CHAT, headers={"X-API-Key": API_KEY})
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


def test_openapi_document_covers_the_routes(http):
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    for path in ("/v1/messages", "/v1/chat/completions", "/v1/agents/{agent_id}/messages", "/admin/swap"):
        assert path in document["paths"]
    schemas = document["components"]["schemas"]
    assert "max_tokens" in schemas["MessagesRequest"]["required"]
    operations = [op for methods in document["paths"].values() for op in methods.values()]
    bodies = [op["requestBody"]["content"] for op in operations if "requestBody" in op]
    refs = [body["application/json"]["schema"]["$ref"] for body in bodies if "application/json" in body]
    assert refs and all(ref.rsplit("/", 1)[1] in schemas for ref in refs)
    agent_file = document["paths"]["/v1/agents/import"]["post"]["requestBody"]["content"]
    assert agent_file == {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}


def test_disconnect_cancels_generation(http):
    body = {
        "model": "x",
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    }
    with http.stream("POST", CHAT, json=body, headers={"X-API-Key": API_KEY}) as response:
        for line in response.iter_lines():
            if '"content"' in line and '""' not in line:
                break  # one token arrived: now hang up
    started = time.monotonic()
    quick = http.post(CHAT, json=HELLO, headers={"X-API-Key": API_KEY})
    assert quick.status_code == 200
    # 2000 tokens take ~100 s on a CPU; the freed engine answers at once.
    assert time.monotonic() - started < 20


def test_an_agent_deleted_right_after_its_client_hung_up_stays_deleted(http):
    key = {"X-API-Key": API_KEY}
    agent = "hung-up-agent"
    body = {
        "model": "x",
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    }
    with http.stream("POST", CHAT, json=body, headers={**key, "X-Session-ID": agent}) as response:
        for line in response.iter_lines():
            if '"content"' in line and '""' not in line:
                break  # one token arrived: hang up, then delete at once
    # The DELETE waits for the cancelled turn to end, so it finds (and removes) the cache that turn left
    deleted = http.delete(f"/v1/agents/{agent}", headers=key)
    assert deleted.status_code == 200, deleted.text
    time.sleep(1.5)
    assert http.get(f"/v1/agents/{agent}", headers=key).status_code == 404
    listed = http.get("/v1/agents", headers=key).json()
    assert agent not in {row["id"] for row in listed["data"]}


def test_non_streaming_clients_that_hang_up_free_the_engine_and_count_as_499(server, http):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(server.base_url)
    body = json.dumps(
        {"model": "x", "max_tokens": 400, "messages": [{"role": "user", "content": "Write a long story."}]}
    ).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {address.netloc}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    route = (("method", "POST"), ("route", CHAT))
    before = samples(http, "agent_memory_requests_total")
    # One client after another, each hanging up at a later stage once the engine holds its request (a client that
    # leaves before the server has read its request never made one): as its turn starts, while prefilling, decoding
    delays = [0.0, 0.05, 0.3, 0.8, 1.5, 2.5]
    for delay in delays:
        wait_for_queue_depth(http, lambda depth: depth == 0)  # the previous client's turn has ended
        with socket.create_connection((address.hostname, address.port)) as sock:
            sock.sendall(head + body)
            wait_for_queue_depth(http, lambda depth: depth >= 1)
            time.sleep(delay)
    started = time.monotonic()
    assert http.post(CHAT, json=HELLO, headers={"X-API-Key": API_KEY}).status_code == 200
    # Each of them uncancelled would hold the engine for 400 tokens (~20 s on a CPU)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 15  # a handler counts its request once its turn has ended
    while True:
        after = samples(http, "agent_memory_requests_total")
        gone = after.get((*route, ("status", "499")), 0) - before.get((*route, ("status", "499")), 0)
        if gone >= len(delays) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert gone == len(delays)
    assert after.get((*route, ("status", "500")), 0) == before.get((*route, ("status", "500")), 0)


def test_admin_needs_its_key(http):
    assert http.post("/admin/swap", json={"model_id": "default"}).status_code == 401
    wrong = http.post("/admin/swap", json={"model_id": "default"}, headers={"X-Admin-Key": "wrong"})
    assert wrong.status_code == 403


def test_admin_lists_the_models_a_swap_may_name(server, http, data_dir):
    """GET /admin/models: the server machine's models (what the remote TUI's model screen offers)."""
    from engine.model_catalog import swap_choices
    from engine.settings import Settings
    from workbench.tui.remote import RemoteSource

    assert http.get("/admin/models").status_code == 401
    assert http.get("/admin/models", headers={"X-Admin-Key": "wrong"}).status_code == 403
    listed = http.get("/admin/models", headers={"X-Admin-Key": ADMIN_KEY}).json()
    assert listed["model_id"] == "default" and {"default", "gemma3-270m"} <= set(listed["models"])
    assert listed["models"] == swap_choices(Settings(data_dir=data_dir).models_path)
    remote = RemoteSource(server.base_url, api_key=API_KEY, admin_key=ADMIN_KEY)
    try:
        assert remote.model_choices() == listed["models"]
        assert RemoteSource(server.base_url, api_key=API_KEY).model_choices() == []  # no admin key: no swaps
    finally:
        remote.close()


def test_failed_swap_keeps_the_old_model(http):
    response = http.post("/admin/swap", json={"model_id": "/no/such/model.gguf"}, headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code == 400 and "still serving 'default'" in response.json()["error"]["message"]
    assert http.get("/health").json()["model_id"] == "default"
    assert http.post(CHAT, json=HELLO, headers={"X-API-Key": API_KEY}).status_code == 200


def test_swap_to_gemma_and_back_while_streaming(server, http):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
    session = {"X-Session-ID": "swap-session"}
    question = [{"role": "user", "content": "Name three colours."}]
    client.chat.completions.create(model="x", messages=question, max_tokens=8, temperature=0, extra_headers=session)

    stream = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=48, stream=True
    )
    first = next(iter(stream))  # the request is running on the old model
    results = {}
    swapper = threading.Thread(
        target=lambda: results.update(
            swap=http.post("/admin/swap", json={"model_id": "gemma3-270m"}, headers={"X-Admin-Key": ADMIN_KEY})
        )
    )
    swapper.start()
    chunks = [first, *stream]
    swapper.join(timeout=600)
    assert all(chunk.model == "default" for chunk in chunks)  # finished on the model it started on
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    swap = results["swap"]
    assert swap.status_code == 200, swap.text
    assert swap.json()["model_id"] == "gemma3-270m" and swap.json()["previous_model_id"] == "default"

    on_gemma = client.chat.completions.create(model="x", messages=question, max_tokens=4, extra_headers=session)
    assert on_gemma.model == "gemma3-270m"
    assert on_gemma.usage.prompt_tokens_details.cached_tokens == 0  # another model's cache never matches

    back = http.post("/admin/swap", json={"model_id": "default"}, headers={"X-Admin-Key": ADMIN_KEY})
    assert back.status_code == 200 and http.get("/health").json()["model_id"] == "default"
    again = client.chat.completions.create(
        model="x", messages=question, max_tokens=8, temperature=0, extra_headers=session
    )
    assert again.model == "default"
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the default model's cache, found on disk


@pytest.fixture(scope="module")
def strict_server(default_engine, data_dir):
    """No keys; strict model names, a 1 MB body limit, CORS for one origin, KV memory off, frequent pings,
    two requests at a time and one waiting."""
    cache_dir = data_dir / "strict-caches"
    cache_dir.mkdir(exist_ok=True)
    env = {
        "SEMANTIC_STRICT_MODEL_NAMES": "true",
        "SEMANTIC_MAX_REQUEST_MB": "1",
        "SEMANTIC_CORS_ORIGINS": "http://app.example",
        "SEMANTIC_KV_MEMORY": "false",
        "SEMANTIC_SSE_KEEPALIVE_S": "0.02",  # shorter than one decode step: keep-alives between tokens
        "SEMANTIC_MLX_MAX_BATCH_SIZE": "2",
        "SEMANTIC_MAX_QUEUE": "1",
    }
    running = ServerProcess(data_dir, cache_dir, env)
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop() == 0, running.log()


def test_strict_names_limits_and_cors(strict_server):
    url = strict_server.base_url
    unknown = httpx.post(f"{url}/v1/chat/completions", json=HELLO)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    anthropic_unknown = httpx.post(f"{url}/v1/messages", json={**HELLO, "max_tokens": 2})
    assert anthropic_unknown.json()["error"]["type"] == "not_found_error"
    served = httpx.post(f"{url}/v1/chat/completions", json={**HELLO, "model": "default"})
    assert served.status_code == 200 and served.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    big = {**HELLO, "model": "default", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    too_large = httpx.post(f"{url}/v1/messages", json=big)
    assert too_large.status_code == 413 and too_large.json()["error"]["type"] == "request_too_large"

    preflight = httpx.options(f"{url}/v1/chat/completions", headers={"Origin": "http://app.example"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert httpx.post(f"{url}/admin/swap", json={"model_id": "default"}).status_code == 403


def test_keepalives_reach_clients_and_sdks_ignore_them(strict_server):
    url = strict_server.base_url
    body = {"model": "default", "max_tokens": 12, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{url}/v1/messages", json=body) as response:
        raw = response.read().decode()
    assert "event: ping" in raw and raw.rstrip().endswith('data: {"type": "message_stop"}')
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        raw = response.read().decode()
    assert ": keep-alive" in raw and raw.rstrip().endswith("data: [DONE]")

    import anthropic

    sdk_body = {key: value for key, value in body.items() if key != "stream"}
    with anthropic.Anthropic(base_url=url, api_key="unused").messages.stream(**sdk_body) as stream:
        assert "".join(stream.text_stream) == stream.get_final_message().content[0].text
    chunks = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(**body)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_queue_overflow_gets_429_with_retry_after(strict_server):
    url = strict_server.base_url
    body = {"model": "default", "max_tokens": 40, "messages": [{"role": "user", "content": "Tell me a story."}]}
    statuses, retry_after = [], []

    def one():
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(response.headers.get("retry-after"))
            assert response.json()["error"]["type"] == "rate_limit_error"

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 429 in statuses and 200 in statuses
    assert all(status in (200, 429) for status in statuses)
    assert all(value and 0 < int(value) <= 60 for value in retry_after)


def test_sigterm_finishes_the_running_turn_and_keeps_its_cache(default_engine, data_dir, tmp_path):
    cache_dir = tmp_path / "kv"
    cache_dir.mkdir()
    first = ServerProcess(data_dir, cache_dir)
    first.wait_ready()
    session = {"X-Session-ID": "sigterm-agent"}
    history = [{"role": "user", "content": "Tell me about the moon."}]
    body = {"model": "m", "max_tokens": 40, "temperature": 0, "messages": history, "stream": True}
    text = []
    with httpx.stream("POST", f"{first.base_url}/v1/chat/completions", json=body, headers=session) as response:
        signalled = False
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line.removeprefix("data: "))["choices"]
            text += [choice["delta"].get("content") or "" for choice in choices]
            if not signalled and "".join(text).strip():
                first.process.send_signal(signal.SIGTERM)  # mid-generation
                signalled = True
    assert first.process.wait(timeout=120) == 0, first.log()
    first.stop()
    assert "".join(text).strip()  # the running turn was finished, not cut

    second = ServerProcess(data_dir, cache_dir)
    try:
        second.wait_ready()
        follow_up = history + [
            {"role": "assistant", "content": "".join(text)},
            {"role": "user", "content": "And the sun?"},
        ]
        reply = httpx.post(
            f"{second.base_url}/v1/chat/completions",
            json={"model": "m", "max_tokens": 4, "messages": follow_up},
            headers=session,
            timeout=300,
        ).json()
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # read back from disk
    finally:
        assert second.stop() == 0


def test_turns_still_running_past_the_grace_period_end_with_an_error_and_the_server_exits(
    default_engine, data_dir, tmp_path
):
    cache_dir = tmp_path / "kv"
    cache_dir.mkdir()
    running = ServerProcess(data_dir, cache_dir, {"SEMANTIC_SHUTDOWN_GRACE_S": "1"})
    running.wait_ready()
    long_tale = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
    agent_answer = {}

    def agent_turn() -> None:  # not streamed: its client waits for the whole answer
        body = {"content": "Tell me a very long story.", "max_tokens": 3000, "temperature": 0}
        response = httpx.post(f"{running.base_url}/v1/agents/grace/messages", json=body, timeout=120)
        agent_answer.update(status=response.status_code, body=response.json())

    waiting = threading.Thread(target=agent_turn)
    lines = []
    body = {"model": "m", "max_tokens": 3000, "stream": True, "temperature": 0, "messages": long_tale}
    with httpx.stream("POST", f"{running.base_url}{CHAT}", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and not lines:
                waiting.start()
                time.sleep(0.5)
                running.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
            if line.startswith("data: "):
                lines.append(line)
                ended = time.monotonic()
    waiting.join(timeout=120)
    assert running.process.wait(timeout=60) == 0, running.log()
    assert time.monotonic() - signalled < 20, running.log()  # no wait on a turn nobody will read
    last = json.loads(lines[-1].removeprefix("data: "))
    assert "shutting down" in last["error"]["message"], lines[-3:]
    assert ended - signalled >= 1  # the turn ran on through the grace period
    assert agent_answer["status"] == 503 and "shutting down" in agent_answer["body"]["error"]["message"]
    running.stop()


def test_a_second_sigterm_exits_at_once_and_leaves_a_clean_cache(default_engine, data_dir, tmp_path):
    cache_dir = tmp_path / "kv"
    cache_dir.mkdir()
    running = ServerProcess(data_dir, cache_dir)
    running.wait_ready()
    # A finished turn first, so the cache dir holds files, then a long one that is still running.
    httpx.post(
        f"{running.base_url}/v1/chat/completions",
        json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], "user": "two-sig"},
        timeout=300,
    )
    # Greedy, so the answer is long every time (sampled, "A long tale." sometimes ends after 4 tokens).
    long_tale = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
    body = {"model": "m", "max_tokens": 2000, "stream": True, "temperature": 0, "messages": long_tale}
    first_signal = second_signal = None
    try:
        with httpx.stream("POST", f"{running.base_url}/v1/chat/completions", json=body, timeout=300) as response:
            for line in response.iter_lines():  # read on: a client that stops reading would cancel the turn
                if not line.startswith("data: {"):
                    continue
                if first_signal is None:
                    running.process.send_signal(signal.SIGTERM)  # graceful: the stream goes on
                    first_signal = time.monotonic()
                elif second_signal is None and time.monotonic() - first_signal > 1:
                    running.process.send_signal(signal.SIGTERM)
                    second_signal = time.monotonic()
    except httpx.HTTPError:
        pass  # the server went away mid-stream
    code = running.process.wait(timeout=60)
    assert second_signal is not None and time.monotonic() - second_signal < 15, running.log()
    assert code == 128 + signal.SIGTERM, running.log()
    assert "second SIGTERM" in running.log()
    running.stop()
    check = run_cli("cache", "check", data_dir=data_dir, env={"SEMANTIC_AGENT_CACHE_DIR": str(cache_dir)})
    clean = "0 damaged (checksum or contents), 0 missing"
    assert check.returncode == 0 and clean in check.stdout, check.stdout + check.stderr


def test_serve_flags_set_the_key_the_batch_and_the_memory_budget(default_engine, data_dir):
    """`serve --api-key --max-batch-size --cache-budget-mb` win over the environment's settings."""
    cache_dir = data_dir / "flag-caches"
    cache_dir.mkdir(exist_ok=True)
    flags = ("--api-key", "flag-key", "--max-batch-size", "2", "--cache-budget-mb", "64", "--log-level", "warning")
    env = {"SEMANTIC_API_KEY": "env-key", "SEMANTIC_AGENT_DISK_BUDGET_MB": "256"}
    running = ServerProcess(data_dir, cache_dir, env, args=flags)
    try:
        running.wait_ready()
        assert httpx.get(f"{running.base_url}/v1/models", headers={"x-api-key": "env-key"}).status_code == 401
        metrics = httpx.get(f"{running.base_url}/metrics", headers={"x-api-key": "flag-key"})
        assert metrics.status_code == 200
        lines = metrics.text.splitlines()
        budget = next(line for line in lines if line.startswith("agent_memory_hot_budget_bytes"))
        assert float(budget.split()[-1]) == 64 * 1024 * 1024
        disk = next(line for line in lines if line.startswith("agent_memory_warm_budget_bytes"))
        assert float(disk.split()[-1]) == 256 * 1024 * 1024
        assert httpx.get(f"{running.base_url}/health").json()["max_batch_size"] == 2
        assert "req=" not in running.log()  # --log-level warning: no access lines
    finally:
        running.stop()


def test_a_request_loads_the_model_it_names_when_loading_on_demand(default_engine, data_dir, tiny_model_dir, tmp_path):
    cache_dir = tmp_path / "caches"
    cache_dir.mkdir()
    hub = tmp_path / "hub"
    config = {"model_type": "llama", "quantization": {"group_size": 64, "bits": 4}}
    weights = b"\1" * 1000
    hub_repo(hub, "mlx-community/Tiny-4bit", {"config.json": json.dumps(config).encode(), "model.safetensors": weights})
    hub_repo(hub, "someone/tokenizer-only", {"tokenizer.json": b"{}"})  # mlx-lm cannot load it: not listed
    env = {"SEMANTIC_LOAD_ON_DEMAND": "true", "HF_HUB_CACHE": str(hub)}
    running = ServerProcess(data_dir, cache_dir, env)
    try:
        running.wait_ready()
        url = running.base_url

        def listed() -> tuple[list[str], dict]:
            """The ids /v1/models lists, in order, and /api/tags's entries by name."""
            models = [row["id"] for row in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
            tags = {row["name"]: row for row in httpx.get(f"{url}/api/tags", timeout=30).json()["models"]}
            assert list(tags) == models
            return models, tags

        # The served model first, then what a request may name to load: packaged models, downloaded repos
        models, tags = listed()
        assert models == ["default", "gemma3-270m", "mlx-community/Tiny-4bit"]
        gemma, repo = tags["gemma3-270m"], tags["mlx-community/Tiny-4bit"]
        assert gemma["details"]["family"] == "gemma3_text" and gemma["details"]["quantization_level"] == "Q4_K_M"
        assert gemma["size"] > 200_000_000 and len(gemma["digest"]) == 64
        assert repo["details"]["family"] == "llama" and repo["details"]["quantization_level"] == "Q4"
        assert repo["size"] == len(weights) + len(json.dumps(config))
        one = httpx.get(f"{url}/v1/models/mlx-community/Tiny-4bit", timeout=30).json()
        assert one["id"] == "mlx-community/Tiny-4bit" and one["created"] > 0

        def ask(model: str) -> httpx.Response:
            body = {**HELLO, "model": model, "max_tokens": 4}
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)

        def serving() -> str:
            return httpx.get(f"{url}/health", timeout=30).json()["model_id"]

        tiny = str(tiny_model_dir)
        loaded = ask(tiny)
        assert loaded.status_code == 200 and loaded.json()["model"] == tiny, loaded.text
        assert serving() == tiny
        models, _ = listed()
        assert models == [tiny, "default", "gemma3-270m", "mlx-community/Tiny-4bit"]
        # A name that is not a model here (another server's, a missing file) is served by the loaded one
        for other in ("gpt-4o", "claude-sonnet-4-5", "/no/such/model.gguf", "some-org/not-downloaded"):
            answer = ask(other)
            assert answer.status_code == 200 and answer.json()["model"] == tiny, (other, answer.text)
        back = httpx.post(f"{url}/api/chat", json={"model": "default:latest", "messages": []}, timeout=600)
        assert back.status_code == 200 and back.json()["done_reason"] == "load", back.text
        assert serving() == "default"
    finally:
        running.stop()
