"""Hostile input on a real server: a 4xx in the called API's shape, never a 500 or a wrong status;
/metrics behind the key with label values from a closed set; over-long request heads; the OpenAPI
document's statuses. Raw sockets where a client library would refuse to send the request."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY

KEY = {"X-API-Key": API_KEY}
SURROGATE = "\\ud800"  # as JSON spells it: a lone UTF-16 surrogate once parsed

# One cheap request per API, and where each puts the conversation, the system prompt and a session id.
APIS = {
    "anthropic": {
        "path": "/v1/messages",
        "body": {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]},
        "content": ("messages", 0, "content"),
        "system": ("system",),
        "session": ("metadata", "user_id"),
    },
    "chat": {
        "path": "/v1/chat/completions",
        "body": {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]},
        "content": ("messages", 0, "content"),
        "system": None,  # a system message is content
        "session": ("user",),
    },
    "responses": {
        "path": "/v1/responses",
        "body": {"model": "x", "max_output_tokens": 1, "input": "Hi", "store": False},
        "content": ("input",),
        "system": ("instructions",),
        "session": ("prompt_cache_key",),
    },
    "agents": {
        "path": "/v1/agents/hardening-agent/messages",
        "body": {"content": "Hi", "max_tokens": 1},
        "content": ("content",),
        "system": ("system",),
        "session": None,  # the id is in the path
    },
}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


def with_value(body: dict, location: tuple, value) -> dict:
    body = json.loads(json.dumps(body))
    target = body
    for part in location[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[location[-1]] = value
    return body


def with_surrogate(body: dict, location: tuple) -> bytes:
    return json.dumps(with_value(body, location, "MARK")).replace("MARK", f"a{SURROGATE}b").encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_400_in_shape(response: httpx.Response, api: str, request_label) -> None:
    assert response.status_code == 400, (request_label, response.status_code, response.text)
    body = response.json()
    if api == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    else:
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"], body


def raw_request(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer (the server closes after it)."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head_bytes, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


def request_head(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def metric_samples(http, name: str) -> dict:
    families = text_string_to_metric_families(http.get("/metrics", headers=KEY).text)
    return {tuple(sorted(s.labels.items())): s.value for f in families for s in f.samples if s.name == name}


# -- item 8: bodies and headers that used to be a 500 ----------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_deep_nesting_is_a_400(http, api):
    spec = APIS[api]
    plain = json.dumps(spec["body"])[:-1]
    for depth in (5000, 100_000, 101):  # past Python's recursion limit (RecursionError); past our cap
        body = f'{plain}, "extra": {nested(depth)}}}'.encode()
        response = http.post(spec["path"], content=body, headers={**KEY, "content-type": "application/json"})
        assert_400_in_shape(response, api, depth)
        assert "nests deeper than 100 levels" in response.json()["error"]["message"]
    # Within the cap, an unknown field is ignored as ever.
    body = f'{plain}, "extra": {{"x": {nested(98)}}}}}'.encode()
    response = http.post(spec["path"], content=body, headers={**KEY, "content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("api", APIS)
def test_a_lone_surrogate_is_a_400(http, api):
    spec = APIS[api]
    for field in ("content", "system", "session"):
        if spec[field] is None:
            continue
        response = http.post(
            spec["path"],
            content=with_surrogate(spec["body"], spec[field]),
            headers={**KEY, "content-type": "application/json"},
        )
        assert_400_in_shape(response, api, field)
        message = response.json()["error"]["message"]
        assert "surrogate" in message and ".".join(map(str, spec[field])) in message, message
    # A surrogate in a key, too; and an escaped pair is one valid character.
    key_body = json.dumps({**spec["body"], "MARK": 1}).replace("MARK", SURROGATE).encode()
    response = http.post(spec["path"], content=key_body, headers={**KEY, "content-type": "application/json"})
    assert_400_in_shape(response, api, "key")
    pair = json.dumps(with_value(spec["body"], spec["content"], "MARK")).replace("MARK", "Hi \\ud83d\\ude00")
    response = http.post(spec["path"], content=pair.encode(), headers={**KEY, "content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("api", APIS)
def test_a_session_header_that_is_not_utf8_is_a_400(http, api):
    spec = APIS[api]
    for header in ("X-Session-ID", "x-claude-code-session-id"):
        response = http.post(spec["path"], json=spec["body"], headers={**KEY, header: b"agent-\xff\xfe"})
        if api == "agents":  # the path names the agent; session headers are not read
            assert response.status_code == 200, response.text
            continue
        assert_400_in_shape(response, api, header)
        assert "not valid UTF-8" in response.json()["error"]["message"]


def test_an_agent_id_whose_escapes_are_not_utf8_is_a_400(http):
    """Ids that differ only in bytes that are not UTF-8 would all decode (with replacement) to one agent."""
    for raw in ("user%FEalpha", "user%C0alpha"):
        response = http.post(f"/v1/agents/{raw}/messages", json={"content": "Hi", "max_tokens": 2}, headers=KEY)
        assert response.status_code == 400 and "agent_id" in response.json()["error"]["message"], response.text
        assert http.get(f"/v1/agents/{raw}", headers=KEY).status_code == 400
    assert not [row for row in http.get("/v1/agents", headers=KEY).json()["data"] if "\ufffd" in row["id"]]
    imported = http.post("/v1/agents/import?as=%FF", content=b"not read", headers=KEY)
    assert imported.status_code == 400 and "as: " in imported.json()["error"]["message"], imported.text
    # A percent-encoded character that is valid UTF-8 names its agent as before
    assert http.get("/v1/agents/%C3%A9-no-such-agent", headers=KEY).status_code == 404


def test_a_key_that_is_not_utf8_is_a_401(http):
    for header in ({"X-API-Key": b"\xff"}, {"Authorization": b"Bearer \xff"}):
        response = http.post("/v1/messages", json=APIS["anthropic"]["body"], headers=header)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    response = http.post("/admin/swap", json={"model_id": "default"}, headers={"X-Admin-Key": b"\xff"})
    assert response.status_code == 403


def server_rss_mb(server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


@pytest.mark.parametrize("api", APIS)
def test_a_prompt_of_many_megabytes_is_refused_before_it_is_tokenized(server, http, api):
    # 20 MB (under the body limit): tokenizing it would hold the GIL for ~30 s and take GBs of memory
    spec = APIS[api]
    before = server_rss_mb(server)
    body = with_value(spec["body"], spec["content"], "lorem ipsum " * 1_700_000)
    response = http.post(spec["path"], json=body, headers=KEY)
    assert_400_in_shape(response, api, "20 MB")
    assert "prompt is too long: at least" in response.json()["error"]["message"]
    assert server_rss_mb(server) - before < 500  # no token list of millions was built


@pytest.mark.parametrize("api", ["chat", "agents"])
def test_seed_is_an_unsigned_64_bit_integer(http, api):
    spec = APIS[api]
    body = {**spec["body"], "temperature": 1.0}
    for seed in (-1, 2**64, 2**70, True, False, 1.5, "7"):
        response = http.post(spec["path"], json={**body, "seed": seed}, headers=KEY)
        assert_400_in_shape(response, api, seed)
        assert response.json()["error"]["message"].startswith("seed: "), response.text
    for seed in (0, 2**64 - 1):
        response = http.post(spec["path"], json={**body, "seed": seed}, headers=KEY)
        assert response.status_code == 200, (seed, response.text)


# Each API's length and stream fields, given in another JSON type than the schema's
LENGTH_FIELD = {
    "anthropic": "max_tokens",
    "chat": "max_tokens",
    "responses": "max_output_tokens",
    "agents": "max_tokens",
}


@pytest.mark.parametrize("api", APIS)
def test_values_are_taken_as_the_json_types_sent(http, api):
    spec = APIS[api]
    length = LENGTH_FIELD[api]
    for field, value in ((length, "1"), (length, 1.5), (length, True), ("stream", "false"), ("stream", 0)):
        response = http.post(spec["path"], json={**spec["body"], field: value}, headers=KEY)
        assert_400_in_shape(response, api, (field, value))
        assert response.json()["error"]["message"].startswith(f"{field}: "), response.text
    response = http.post(spec["path"], json={**spec["body"], "temperature": 0}, headers=KEY)
    assert response.status_code == 200, response.text  # an integer is a number
    response = http.post(spec["path"], json={**spec["body"], length: 1.0}, headers=KEY)
    assert response.status_code == 200, response.text  # and 1.0 an integer, as JSON Schema has it


@pytest.mark.parametrize(("api", "field"), [("anthropic", "stop_sequences"), ("chat", "stop"), ("agents", "stop")])
def test_an_empty_stop_sequence_is_a_400_naming_it(http, api, field):
    spec = APIS[api]
    response = http.post(spec["path"], json={**spec["body"], field: ["END", ""]}, headers=KEY)
    assert_400_in_shape(response, api, field)
    assert response.json()["error"]["message"].startswith(f"{field}.1: "), response.text


def test_top_k_beyond_the_vocabulary_is_a_400_and_sampling_goes_on(http):
    spec = APIS["anthropic"]
    sampled = {**spec["body"], "max_tokens": 3, "temperature": 1.0}
    response = http.post(spec["path"], json={**sampled, "top_k": 10**7}, headers=KEY)
    assert_400_in_shape(response, "anthropic", "top_k")
    assert response.json()["error"]["message"].startswith("top_k"), response.text
    for _ in range(2):  # unseeded sampled requests after it: the random state is intact
        response = http.post(spec["path"], json={**sampled, "top_k": 40}, headers=KEY)
        assert response.status_code == 200, response.text


# -- session ids: at most 256 characters, wherever they come from ----------------------------------------


@pytest.mark.parametrize("api", ["anthropic", "chat", "responses"])
def test_session_ids_are_capped(http, api):
    spec = APIS[api]
    long_id, longest = "s" * 257, "t" * 256
    sources = [({"X-Session-ID": long_id}, spec["body"]), ({"x-claude-code-session-id": long_id}, spec["body"])]
    sources.append(({}, with_value(spec["body"], spec["session"], long_id)))
    if api == "anthropic":  # Claude Code's JSON user_id: its session_id is the id
        claude_code = json.dumps({"device_id": "d", "session_id": long_id})
        sources.append(({}, with_value(spec["body"], ("metadata", "user_id"), claude_code)))
    if api != "anthropic":
        sources.append(({}, {**spec["body"], "safety_identifier": long_id}))
    for headers, body in sources:
        response = http.post(spec["path"], json=body, headers={**KEY, **headers})
        assert_400_in_shape(response, api, (headers, body))
        assert "at most 256 characters" in response.json()["error"]["message"]
    accepted = http.post(spec["path"], json=spec["body"], headers={**KEY, "X-Session-ID": longest})
    assert accepted.status_code == 200, accepted.text


def test_agent_ids_in_the_path_are_capped(http):
    long_id = "%41" * 257  # counted once decoded: 257 characters
    for method, path in (("POST", f"/v1/agents/{long_id}/messages"), ("GET", f"/v1/agents/{long_id}")):
        response = http.request(method, path, json=APIS["agents"]["body"], headers=KEY)
        assert_400_in_shape(response, "agents", path)
        assert response.json()["error"]["param"] == "agent_id"
    assert http.delete(f"/v1/agents/{long_id}", headers=KEY).status_code == 400
    longest = "%41" * 256
    response = http.post(f"/v1/agents/{longest}/messages", json=APIS["agents"]["body"], headers=KEY)
    assert response.status_code == 200 and response.json()["agent_id"] == "A" * 256
    assert http.delete(f"/v1/agents/{longest}", headers=KEY).status_code == 200


# -- item 9: /metrics behind the key, label values from a closed set ---------------------------------------


def test_metrics_need_the_key_and_health_does_not(http):
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = http.get("/metrics", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert http.get("/metrics", headers=KEY).status_code == 200
    assert http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert http.get("/health").status_code == 200
    assert http.get("/openapi.json").status_code == 200


def test_metric_labels_come_from_a_closed_set(server, http):
    for number in range(40):
        status, _, _ = raw_request(server.base_url, request_head(f"BREW{number}", "/health"))
        assert status == 405
        target = f"/no-such-route-{number}/{'x' * 50}"
        status, _, _ = raw_request(server.base_url, request_head(f"BREW{number}", target, f"X-API-Key: {API_KEY}"))
        assert status == 404
    assert http.get(f"/v1/agents/agent-id-{'q' * 40}", headers=KEY).status_code == 404
    requests = metric_samples(http, "agent_memory_requests_total")
    methods = {dict(labels)["method"] for labels in requests}
    routes = {dict(labels)["route"] for labels in requests}
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert not any("no-such-route" in route or "agent-id-" in route for route in routes), routes
    assert "/v1/agents/<agent_id:str>" in routes and "unmatched" in routes
    assert requests[(("method", "other"), ("route", "unmatched"), ("status", "405"))] >= 40


# -- item 10: an over-long request head is a 431 (or 414), not a 401 ---------------------------------------


@pytest.mark.parametrize("path", ["/health", "/v1/messages", "/v1/chat/completions"])
def test_an_oversized_head_is_431_or_414(server, path):
    big_header = f"X-Padding: {'p' * 10_000}"
    status, headers, body = raw_request(server.base_url, request_head("GET", path, big_header))
    assert status == 431, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert "headers are too large" in error["error"]["message"]
    assert (error.get("type") == "error") == (path == "/v1/messages"), error  # the called API's shape
    many = [f"X-Pad-{n}: {'p' * 90}" for n in range(100)]
    assert raw_request(server.base_url, request_head("POST", path, f"X-API-Key: {API_KEY}", *many))[0] == 431
    status, _, body = raw_request(server.base_url, request_head("GET", f"{path}?q={'u' * 10_000}"))
    assert status == 414, body
    assert "URL is too long" in json.loads(body)["error"]["message"]
    # Just under the limit, the request is read and answered as usual.
    fits = raw_request(server.base_url, request_head("GET", "/health", f"X-Padding: {'p' * 7_000}"))
    assert fits[0] == 200


def test_an_unreadable_request_line_is_a_400(server):
    status, _, body = raw_request(server.base_url, b"NONSENSE\r\nHost: x\r\n\r\n")
    assert status == 400, body


# -- smaller ones --------------------------------------------------------------------------------------------


def test_405_names_the_allowed_methods(http):
    wrong = http.get("/v1/chat/completions", headers=KEY)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.headers
    anthropic = http.get("/v1/messages", headers=KEY)
    assert anthropic.status_code == 405 and anthropic.headers["allow"] == "POST"
    assert anthropic.json()["type"] == "error"
    health = http.delete("/health")
    assert health.status_code == 405 and "GET" in health.headers["allow"]
    # Routes with a parameter in the path, too (Sanic leaves their Allow out)
    agent = http.request("PUT", "/v1/agents/someone", headers=KEY)
    assert agent.status_code == 405 and agent.headers["allow"] == "GET, PATCH, DELETE", agent.headers


def test_openapi_documents_metrics_and_the_auth_statuses(http):
    paths = http.get("/openapi.json").json()["paths"]
    metrics = paths["/metrics"]["get"]["responses"]
    assert list(metrics["200"]["content"]) == ["text/plain"] and "401" in metrics
    assert "401" not in paths["/health"]["get"]["responses"]
    assert {"401", "403"} <= set(paths["/admin/swap"]["post"]["responses"])
    assert "403" not in paths["/v1/messages"]["post"]["responses"]
    assert "401" in paths["/v1/messages"]["post"]["responses"]
    for methods in paths.values():
        for operation in methods.values():
            assert {"200", "201"} & set(operation["responses"])  # 201: what makes something (a fork, an import)


def test_openapi_lists_only_what_is_served(http):
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    parts = {name: schema["properties"]["type"]["enum"] for name, schema in schemas.items() if "ContentPart" in name}
    assert sorted(map(sorted, parts.values())) == [["input_text", "output_text", "refusal"], ["refusal", "text"]]
    responses = schemas["ResponsesRequest"]
    assert "input" in responses["required"] and responses["properties"]["conversation"]["type"] == "null"
    # What the schema leaves out is refused by name, never as a bare validation error
    for part in ({"type": "file", "file": {"file_id": "f"}}, {"type": "image_url", "image_url": {"url": "data:,"}}):
        body = {**APIS["chat"]["body"], "messages": [{"role": "user", "content": [part]}]}
        response = http.post(APIS["chat"]["path"], json=body, headers=KEY)
        assert_400_in_shape(response, "chat", part)
        assert f"{part['type']} input is not supported" in response.json()["error"]["message"], response.text


def test_ids_in_paths_that_are_not_utf8_are_not_a_500(http):
    for method, path in (
        ("GET", "/v1/agents/%FF%FE"),
        ("DELETE", "/v1/agents/%FF"),
        ("GET", "/v1/responses/resp_%FF"),
        ("DELETE", "/v1/responses/resp_%ED%A0%80"),  # a surrogate, encoded as UTF-8 would if it could
        ("GET", "/v1/models/%FF"),
    ):
        response = http.request(method, path, headers=KEY)
        assert response.status_code in (200, 400, 404), (method, path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
