"""Two processes on one data dir: the transcripts both write keep every turn either accepted."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

TURNS_PER_SERVER = 6


@pytest.fixture
def two_servers(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    cache = data / "caches"
    cache.mkdir(parents=True)
    env = {"SEMANTIC_MLX_MODEL_ID": str(tiny_model_dir)}
    servers = [ServerProcess(data, cache, env) for _ in range(2)]
    try:
        for running in servers:
            running.wait_ready()
        yield servers
    finally:
        for running in servers:
            running.stop()


def test_turns_sent_to_one_agent_through_two_servers_are_all_kept(two_servers):
    servers = two_servers
    answers: list[tuple[str, int]] = []

    def send(base_url: str, text: str) -> None:
        body = {"content": text, "max_tokens": 3, "temperature": 0}
        response = httpx.post(f"{base_url}/v1/agents/shared/messages", json=body, timeout=300)
        answers.append((text, response.status_code))

    threads = [
        threading.Thread(target=send, args=(running.base_url, f"turn {n} via {index}"))
        for n in range(TURNS_PER_SERVER)
        for index, running in enumerate(servers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for _, status in answers] == [200] * len(threads)

    agent = httpx.get(f"{servers[0].base_url}/v1/agents/shared", timeout=60).json()
    asked = [m["content"] for m in agent["messages"] if m["role"] == "user"]
    assert sorted(asked) == sorted(text for text, _ in answers)  # none lost, none twice
    assert agent["turns"] == len(threads)
    # Each turn saw every turn stored before it: user and assistant messages alternate in order.
    assert [m["role"] for m in agent["messages"]] == ["user", "assistant"] * len(threads)
