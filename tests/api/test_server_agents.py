"""The agent API: the server keeps transcripts; a returning agent resumes from its KV cache."""

from __future__ import annotations

import json
from urllib.parse import quote


def test_agent_keeps_transcript_and_resumes(http):
    agent = "srv-agent/ünïcode id?"  # ids are user input: any character is fine
    path = f"/v1/agents/{quote(agent, safe='')}"
    first = http.post(f"{path}/messages", json={"content": "My favourite colour is green.", "max_tokens": 12})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["agent_id"] == agent and body["turns"] == 1 and body["content"]
    assert body["cache"]["source"] in ("cold", "hot", "warm")

    second = http.post(f"{path}/messages", json={"content": "What is my favourite colour?", "max_tokens": 12})
    reply = second.json()
    assert reply["turns"] == 2
    assert reply["usage"]["cached_tokens"] > 0 and reply["cache"]["source"] == "hot"

    rows = http.get("/v1/agents").json()["data"]
    row = next(r for r in rows if r["id"] == agent)
    assert row["turns"] == 2 and row["tier"] == "hot" and row["tokens"] > 0 and row["model"] == "default"

    detail = http.get(path).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["messages"][0]["content"] == "My favourite colour is green."
    assert detail["blocks"]["hot_live"] is True

    assert http.delete(path).json() == {"id": agent, "deleted": True}
    assert http.get(path).status_code == 404
    assert http.delete(path).status_code == 404


def test_agent_stream_events(http):
    with http.stream("POST", "/v1/agents/srv-streamer/messages", json={"content": "Hi!", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = [f.split("\n") for f in raw.strip().split("\n\n") if not f.startswith(":")]
    names = [lines[0].removeprefix("event: ") for lines in frames]
    assert names[0] == "started" and names[-1] == "finished" and set(names[1:-1]) <= {"delta"}
    finished = json.loads(frames[-1][1].removeprefix("data: "))
    deltas = "".join(json.loads(lines[1].removeprefix("data: "))["text"] for lines in frames[1:-1])
    assert finished["content"] == deltas and finished["turns"] >= 1


def test_agent_bad_input(http):
    assert http.post("/v1/agents/srv-bad/messages", json={"content": ""}).status_code == 400
    response = http.post("/v1/agents/srv-bad/messages", json={"content": "hi", "max_tokens": "many"})
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]
    assert http.get("/v1/agents/srv-never-seen").status_code == 404
