"""deploy/local-cluster.sh: three `agent-memory serve` instances behind the real HAProxy (Debian's package),
sharing a real Redis. Agents stick to one instance while it lives; after it is killed -9 its agents move
to the others and resume from the shared tier."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, REPO_ROOT
from tests.kv.test_kv_memory import FACTS

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "deploy" / "local-cluster.sh"
AGENT_MEMORY = Path(sys.executable).parent / "agent-memory"
HEADERS = {"x-api-key": API_KEY}


@pytest.fixture
def cluster(tmp_path):
    missing = [tool for tool in ("redis-server", "haproxy", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: `make test` installs them (Debian packages) as root")
    base = random.randrange(20000, 40000, 10)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEMANTIC_")}
    env.update(
        {
            "BASE_PORT": str(base),
            "REDIS_PORT": str(base + 9),
            "CLUSTER_DIR": str(tmp_path / "cluster"),
            "AGENT_MEMORY": str(AGENT_MEMORY),
            "SEMANTIC_API_KEY": API_KEY,
            "HF_HUB_OFFLINE": "1",
        }
    )

    def script(*args: str) -> None:
        done = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        script("up", "3")
        yield f"http://127.0.0.1:{base}", tmp_path / "cluster", script
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)


def turns_by_instance(cluster_dir: Path, agent: str) -> dict[int, int]:
    """How many turns of `agent` each instance's access log has."""
    line = re.compile(rf"POST /v1/agents/{agent}/messages 200")
    counts = {}
    for i in (1, 2, 3):
        entries = (cluster_dir / f"instance{i}.log").read_text(errors="replace").splitlines()
        if found := sum(1 for entry in entries if line.search(entry)):
            counts[i] = found
    return counts


def say(url: str, agent: str, content: str, **extra) -> dict:
    body = {"content": content, "max_tokens": 6, "temperature": 0.0, **extra}
    response = httpx.post(f"{url}/v1/agents/{agent}/messages", json=body, headers=HEADERS, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_agents_stick_to_an_instance_and_move_when_it_dies(cluster):
    url, cluster_dir, script = cluster
    system = "You are a careful assistant. " + FACTS * 12
    agents = [f"agent{i}" for i in range(6)]
    for agent in agents:
        say(url, agent, f"I am {agent}. Which year was it built?", system=system)
        say(url, agent, "Who kept the log?")
    homes = {}
    for agent in agents:
        counts = turns_by_instance(cluster_dir, agent)
        assert list(counts.values()) == [2], (agent, counts)  # both turns on one instance
        homes[agent] = next(iter(counts))
    assert len(set(homes.values())) >= 2, homes  # spread over the instances

    victim = max((1, 2, 3), key=lambda i: list(homes.values()).count(i))
    moved = [agent for agent, home in homes.items() if home == victim]
    victim_url = f"http://127.0.0.1:{int(url.rsplit(':', 1)[1]) + victim}"
    # Its last turns are pushed behind the responses: wait for them, as draining an instance would
    for _ in range(100):
        if httpx.get(f"{victim_url}/health", timeout=10).json()["shared_tier"]["sessions_pushed"] >= 2 * len(moved):
            break
        time.sleep(0.2)
    script("kill", str(victim))  # SIGKILL: no drain

    for agent in agents:
        before = turns_by_instance(cluster_dir, agent)
        turn = say(url, agent, "And the fog?")
        after = turns_by_instance(cluster_dir, agent)
        (now,) = [i for i in after if after[i] != before.get(i, 0)]
        if agent in moved:
            assert now != victim
            assert turn["cache"]["source"] == "shared", (agent, turn["cache"])
            assert turn["usage"]["cached_tokens"] >= 0.9 * turn["usage"]["prompt_tokens"], (agent, turn["usage"])
        else:
            assert now == homes[agent], (agent, now, homes[agent])
            assert turn["cache"]["source"] == "hot", (agent, turn["cache"])
        transcript = httpx.get(f"{url}/v1/agents/{agent}", headers=HEADERS, timeout=30).json()
        assert len(transcript["messages"]) == 6, (agent, transcript)
