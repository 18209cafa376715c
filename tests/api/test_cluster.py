"""deploy/local-cluster.sh: three `agent-memory serve` instances behind the real HAProxy (Debian's package),
sharing a real Redis. Agents stick to one instance while it lives; after it is killed -9 its agents move
to the others and resume from the shared tier. The balancer's settings send a request an instance drops
unanswered to another."""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, REPO_ROOT, free_port
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


class _Instance(http.server.BaseHTTPRequestHandler):
    """A healthy instance as the balancer sees it: /health answers, a POST is answered with its body's size."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer(b"{}")

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.posts += 1
        self._answer(json.dumps({"bytes": len(body)}).encode())

    def _answer(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class _DyingInstance(_Instance):
    """An instance in its last moment: its health check still passes, a request is read and the connection
    closes with no answer, as a killed process's socket does."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        self.server.posts += 1
        self.close_connection = True


def test_the_balancer_sends_a_large_request_an_instance_dropped_to_another(tmp_path):
    """deploy/haproxy.cfg in the real HAProxy, in front of two stand-in instances (the balancer's settings
    are under test, not the engine): a request the dying one drops unanswered is answered by the other,
    up to the buffer size, as a coding agent's long conversation needs."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed: `make test` installs it (Debian's package) as root")
    instances = []
    for handler in (_DyingInstance, _Instance):
        instance = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        instance.posts = 0
        threading.Thread(target=instance.serve_forever, daemon=True).start()
        instances.append(instance)
    dying, healthy = instances
    port = free_port()
    config = (REPO_ROOT / "deploy" / "haproxy.cfg").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    config = re.sub(r"(?m)^    server instance.*\n", "", config)
    config += "".join(f"    server instance{i} 127.0.0.1:{s.server_address[1]}\n" for i, s in enumerate(instances))
    (tmp_path / "haproxy.cfg").write_text(config)
    balancer = subprocess.Popen(["haproxy", "-f", str(tmp_path / "haproxy.cfg")], stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        body = json.dumps({"messages": [{"role": "user", "content": "x" * 600_000}]}).encode()
        # Agents spread over both instances by their session id: some are sent to the dying one first
        for agent in range(8):
            headers = {"x-session-id": f"agent{agent}", "content-type": "application/json"}
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", content=body, headers=headers, timeout=60)
            assert answer.status_code == 200 and answer.json() == {"bytes": len(body)}, (agent, answer.text)
        assert dying.posts >= 1 and healthy.posts == 8, (dying.posts, healthy.posts)
    finally:
        balancer.terminate()
        balancer.wait(timeout=30)
        for instance in instances:
            instance.shutdown()
