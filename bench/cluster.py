"""Three instances behind HAProxy, with and without the shared tier on Redis, one killed at half time.

Workload (default model): 3 instances (deploy/local-cluster.sh) x 8 agents x 4 turns through HAProxy's
port, every agent with the same 1k-token system prompt and its own first question, 32 new tokens per turn.
The first agent's first turn runs alone (the prompt's first appearance); then all agents run their turns
concurrently, each agent's turns one after another. After every agent has had two turns, the instance
serving the most agents is killed with SIGKILL (no drain); the agents it served move to the others.

`--json` prints one line with, per configuration (`shared`, `no_shared`), wall_s, turns and ttft_p50_s,
and the figures the scale-out asks for:
- `shared_prompt_computations`: turns that prefilled the shared system prompt instead of reading it (1 is
  the ideal: the first appearance);
- `failover_resumed_fraction`: for each moved agent's first turn after the kill, prompt tokens read from a
  cache over all its prompt tokens (with the shared tier);
- `wall_over_no_shared`: wall time with the shared tier over without it;
- `lost_turns`: turns answered but missing from their agent's transcript at the end (with the tier).

    python bench/cluster.py [--agents 8] [--turns 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from engine.kv.stats import SharedTierStats

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
INSTANCES = 3
FACTS = (
    "The lighthouse on the northern cape was built in 1874. Its keeper, Ada, kept a log of every ship. "
    "Tides there rise twice a day and the fog comes in from the west most mornings in autumn. "
)
SYSTEM = "You are a careful assistant for the harbour office. " + FACTS * 17  # about 1k tokens
QUESTIONS = ["Which year was it built?", "Who kept the log?", "Where does the fog come from?", "How many tides?"]


def run(shared: bool, agents: int, turns: int, work: Path) -> dict:
    base = random.randrange(20000, 40000, 10)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEMANTIC_")}
    env.update({"BASE_PORT": str(base), "REDIS_PORT": str(base + 9), "CLUSTER_DIR": str(work), "HF_HUB_OFFLINE": "1"})
    env["AGENT_MEMORY"] = str(Path(sys.executable).parent / "agent-memory")
    if not shared:
        env["NO_SHARED_TIER"] = "1"
    up = subprocess.run([str(SCRIPT), "up", str(INSTANCES)], env=env, capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        raise SystemExit(f"the cluster did not start:\n{up.stdout}{up.stderr}")
    url = f"http://127.0.0.1:{base}"
    try:
        return drive(url, work, agents, turns, env)
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)


def drive(url: str, work: Path, agents: int, turns: int, env: dict) -> dict:
    # A connection per request: a kept-alive connection that last went to the killed instance can be closed
    # by HAProxy just as the next POST is sent on it (clients that retry, as the SDKs do, recover from that;
    # this bench counts turns, so it never retries)
    client = httpx.Client(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0))
    results: list[dict] = []  # every answered turn
    errors: list[BaseException] = []
    lock = threading.Lock()
    half = threading.Barrier(agents + 1, timeout=3600)  # every agent has had half its turns
    resumed = threading.Barrier(agents + 1, timeout=3600)  # the instance is killed

    def turn(agent: str, number: int) -> dict:
        body = {"content": QUESTIONS[number % len(QUESTIONS)], "max_tokens": 32, "temperature": 0.0}
        if number == 0:
            body.update(system=SYSTEM, content=f"I am {agent}. {body['content']}")
        response = client.post(f"{url}/v1/agents/{agent}/messages", json=body)
        response.raise_for_status()
        answer = response.json()
        answer.update(agent=agent, number=number)
        with lock:
            results.append(answer)
        return answer

    def agent_loop(agent: str, start: int) -> None:
        try:
            for number in range(start, turns):
                if number == turns // 2:
                    half.wait()
                    resumed.wait()
                turn(agent, number)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            half.abort()
            resumed.abort()

    started = time.perf_counter()
    first = turn("agent0", 0)  # the system prompt's first appearance, alone
    sessions_pushed(url, at_least=1)  # its blocks reach the shared tier behind the response
    threads = [threading.Thread(target=agent_loop, args=(f"agent{i}", 1 if i == 0 else 0)) for i in range(agents)]
    for thread in threads:
        thread.start()
    half.wait()
    homes = {agent: instance_of(work, agent) for agent in (f"agent{i}" for i in range(agents))}
    victim = max(range(1, INSTANCES + 1), key=lambda i: list(homes.values()).count(i))
    time.sleep(2)  # no drain: the victim keeps what it wrote behind its responses in two seconds
    subprocess.run([str(SCRIPT), "kill", str(victim)], env=env, check=True, capture_output=True, timeout=60)
    resumed.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]

    moved = {agent for agent, home in homes.items() if home == victim}
    after_kill = [r for r in results if r["agent"] in moved and r["number"] == turns // 2]
    transcripts = {}
    for agent in homes:
        response = client.get(f"{url}/v1/agents/{agent}")
        transcripts[agent] = len(response.json().get("messages", [])) // 2 if response.status_code == 200 else 0
    return {
        "wall_s": round(wall, 2),
        "turns": len(results),
        "ttft_p50_s": round(statistics.median(r["timing"]["ttft_s"] for r in results), 3),
        # A turn that read less than half the first prompt (the system prompt, mostly) computed it
        "shared_prompt_computations": sum(
            1 for r in results if r["usage"]["cached_tokens"] < first["usage"]["prompt_tokens"] / 2
        ),
        "failover_resumed_fraction": round(
            sum(r["usage"]["cached_tokens"] for r in after_kill)
            / max(sum(r["usage"]["prompt_tokens"] for r in after_kill), 1),
            3,
        ),
        "moved_agents": len(moved),
        "lost_turns": sum(turns - count for count in transcripts.values()),
    }


def sessions_pushed(url: str, at_least: int, within_s: float = 30.0) -> None:
    """Until the instances have pushed `at_least` sessions (with their blocks) to the shared tier; at
    once without one."""
    base = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = [
            httpx.get(f"http://127.0.0.1:{base + i}/health", timeout=10).json().get("shared_tier")
            for i in range(1, INSTANCES + 1)
        ]
        if None in found:  # an instance without the shared tier: nothing to wait for
            return
        if sum(SharedTierStats.from_json(tier).sessions_pushed for tier in found) >= at_least:
            return
        time.sleep(0.1)
    raise RuntimeError(f"fewer than {at_least} sessions reached the shared tier in {within_s:.0f} s")


def instance_of(work: Path, agent: str) -> int:
    """The instance whose access log has the agent's turns."""
    line = re.compile(rf"POST /v1/agents/{agent}/messages 200")
    for i in range(1, INSTANCES + 1):
        if any(line.search(entry) for entry in (work / f"instance{i}.log").read_text(errors="replace").splitlines()):
            return i
    raise RuntimeError(f"no instance served {agent}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4, help="at least 2: the kill comes at half of them")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-memory-cluster-") as work:
        shared = run(True, args.agents, args.turns, Path(work) / "shared")
        no_shared = run(False, args.agents, args.turns, Path(work) / "no-shared")
    report = {
        "shared": shared,
        "no_shared": no_shared,
        "shared_prompt_computations": shared["shared_prompt_computations"],
        "failover_resumed_fraction": shared["failover_resumed_fraction"],
        "wall_over_no_shared": round(shared["wall_s"] / no_shared["wall_s"], 3),
        "lost_turns": shared["lost_turns"],
    }
    if args.json:
        print(json.dumps(report))
        return
    for name in ("shared", "no_shared"):
        print(f"{name:>10}: " + ", ".join(f"{key} {value}" for key, value in report[name].items()))
    for key in ("shared_prompt_computations", "failover_resumed_fraction", "wall_over_no_shared", "lost_turns"):
        print(f"{key}: {report[key]}")


if __name__ == "__main__":
    main()
