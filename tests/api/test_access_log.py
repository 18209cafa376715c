"""`agent-memory serve` writes one access line per request, and each Sanic line once."""

from __future__ import annotations

import re
import time

import httpx
import openai

from tests.conftest import API_KEY

LINE = re.compile(
    r"agent_memory\.access: req=(?P<id>\S+) (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d+) "
    r"tenant=(?P<tenant>\S+) session=(?P<session>\S+) prompt=(?P<prompt>\S+) cached=(?P<cached>\S+) "
    r"generated=(?P<generated>\S+) ttft=(?P<ttft>\S+) duration=(?P<duration>\S+) "
    r'miss=(?:-|"(?P<miss>[^"]*)")$'
)


def access_lines(server, request_id: str) -> list[dict]:
    """The parsed access lines of one request, waiting briefly: a stream's line follows its last event."""
    for _ in range(50):
        found = [m.groupdict() for m in map(LINE.search, server.log().splitlines()) if m and m["id"] == request_id]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_one_line_per_request_with_its_turn(server):
    headers = {"x-api-key": API_KEY, "x-session-id": "access-log-agent"}
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{server.base_url}/v1/messages", json=body, headers=headers, timeout=300)
    assert response.status_code == 200
    (line,) = access_lines(server, response.headers["x-request-id"])
    usage = response.json()["usage"]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/messages", "200")
    assert line["session"] == "access-log-agent"
    assert int(line["prompt"]) == usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert int(line["cached"]) == usage["cache_read_input_tokens"]
    assert int(line["generated"]) == usage["output_tokens"]
    assert float(line["ttft"].removesuffix("s")) <= float(line["duration"].removesuffix("s"))
    assert line["miss"] == response.headers["x-cache-miss-reason"] and line["miss"].startswith("new agent")


def test_streams_and_failures_are_logged_once(server):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="m", max_tokens=4, stream=True, messages=[{"role": "user", "content": "Hi"}], user="access-log-stream"
    ) as response:
        request_id = response.headers["x-request-id"]
        assert "[DONE]" in "".join(response.iter_text())
    (line,) = access_lines(server, request_id)
    assert line["status"] == "200" and line["session"] == "access-log-stream" and line["generated"] != "-"
    missing = httpx.get(f"{server.base_url}/v1/nothing-here", headers={"x-api-key": API_KEY})
    (line,) = access_lines(server, missing.headers["x-request-id"])
    assert (line["status"], line["session"], line["prompt"], line["ttft"]) == ("404", "-", "-", "-")
    body = {
        "model": "m",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "word " * 9000}],
        "metadata": {"user_id": "a session\nwith a line break"},  # session ids are user input
    }
    too_long = httpx.post(f"{server.base_url}/v1/messages", json=body, headers={"x-api-key": API_KEY})
    (line,) = access_lines(server, too_long.headers["x-request-id"])
    assert line["status"] == "400" and line["session"] == "a%20session%0Awith%20a%20line%20break"
    assert line["generated"] == "-"


def test_sanic_lines_are_not_doubled(server):
    log = server.log()
    assert log.count("Starting worker") == 1 and log.count("Worker ready") == 1
