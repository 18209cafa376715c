"""The shared tier on a real `redis-server` (Debian's package, installed by `make test`'s set-up): two
`agent-memory serve` processes with their own data dirs on one Redis. An agent served by one continues on
the other after the first is killed -9, reading its prompt from the shared tier with its whole transcript;
an instance whose Redis is down serves from its own tiers, says so, and catches up when Redis is back
(without bringing back an agent removed meanwhile)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, REPO_ROOT, ServerProcess, free_port
from tests.kv.test_kv_memory import FACTS

pytestmark = pytest.mark.slow

HEADERS = {"x-api-key": API_KEY}


class RedisProcess:
    """`redis-server` on a loopback port, nothing persisted."""

    def __init__(self, port: int | None = None):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed: `make test` installs it (Debian's redis-server) as root")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def keys(self, pattern: str) -> list[bytes]:
        return list(self.client.scan_iter(match=pattern))

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def redis_server():
    running = RedisProcess()
    yield running
    running.stop()


def instance(tmp_path: Path, name: str, shared_url: str) -> ServerProcess:
    """A server with its own data dir (its own transcripts and warm tier): another machine, as far as the
    shared tier can tell."""
    data_dir = tmp_path / name
    (data_dir / "caches").mkdir(parents=True)
    env = {"SEMANTIC_API_KEY": API_KEY, "SEMANTIC_SHARED_TIER_URL": shared_url}
    return ServerProcess(data_dir, data_dir / "caches", env)


def shared_tier_when(server: ServerProcess, ready, timeout: float = 60) -> dict:
    """The instance's shared tier figures once `ready(figures)` holds, or at the deadline: its writes and
    its catch-up list run on the warm tier's writer thread, behind the responses."""
    deadline = time.monotonic() + timeout
    while True:
        shared = httpx.get(f"{server.base_url}/health", timeout=10).json()["shared_tier"]
        if ready(shared) or time.monotonic() > deadline:
            return shared
        time.sleep(0.2)


def pushed(server: ServerProcess, sessions: int) -> dict:
    return shared_tier_when(server, lambda shared: shared["sessions_pushed"] >= sessions)


def say(server: ServerProcess, agent: str, content: str, **extra) -> dict:
    body = {"content": content, "max_tokens": 8, "temperature": 0.0, **extra}
    response = httpx.post(f"{server.base_url}/v1/agents/{agent}/messages", json=body, headers=HEADERS, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_agent_continues_on_another_instance_after_a_kill(tmp_path, redis_server):
    first, second = instance(tmp_path, "a", redis_server.url), instance(tmp_path, "b", redis_server.url)
    try:
        first.wait_ready()
        second.wait_ready()
        system = "You are a careful assistant. " + FACTS * 12  # ~700 tokens: a few shared blocks
        turn_1 = say(first, "mover", "Which year was the lighthouse built?", system=system)
        messages = [
            {"role": "user", "content": "Who kept the log? " + FACTS},
            {"role": "assistant", "content": "Ada kept it."},
            {"role": "user", "content": "And the fog?"},
        ]
        anthropic_body = {"model": "m", "max_tokens": 8, "system": system, "messages": messages}
        anthropic_headers = {**HEADERS, "x-session-id": "mover-messages"}
        response = httpx.post(
            f"{first.base_url}/v1/messages", json=anthropic_body, headers=anthropic_headers, timeout=600
        )
        assert response.status_code == 200, response.text
        assert pushed(first, 2)["sessions_pushed"] >= 2
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)

        turn_2 = say(second, "mover", "And who kept the log?")
        assert turn_2["cache"]["source"] == "shared", turn_2["cache"]
        assert turn_2["usage"]["cached_tokens"] >= 0.9 * turn_2["usage"]["prompt_tokens"], turn_2["usage"]
        assert turn_2["usage"]["cached_tokens"] > turn_1["usage"]["prompt_tokens"]
        transcript = httpx.get(f"{second.base_url}/v1/agents/mover", headers=HEADERS, timeout=30).json()
        contents = [message["content"] for message in transcript["messages"]]
        assert contents == [
            "Which year was the lighthouse built?",
            turn_1["content"],
            "And who kept the log?",
            turn_2["content"],
        ], transcript

        messages += [
            {"role": "assistant", "content": response.json()["content"][0]["text"]},
            {"role": "user", "content": "Where does it come from?"},
        ]
        again = httpx.post(
            f"{second.base_url}/v1/messages", json={**anthropic_body, "messages": messages}, headers=anthropic_headers
        )
        usage = again.json()["usage"]
        prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
        assert usage["cache_read_input_tokens"] >= 0.9 * prompt, usage
    finally:
        for server in (first, second):
            server.stop()


def test_a_down_shared_tier_degrades_to_local_tiers_and_catches_up(tmp_path):
    port = free_port()
    server = instance(tmp_path, "alone", f"redis://127.0.0.1:{port}/0")
    redis_server = None
    try:
        server.wait_ready()
        first = say(server, "patient", "Hello there.")
        assert first["finish_reason"] in ("stop", "length")
        shared = shared_tier_when(server, lambda shared: shared["behind"] >= 1)
        assert shared["up"] is False and shared["behind"] == 1, shared
        metrics = httpx.get(f"{server.base_url}/metrics", headers=HEADERS, timeout=10).text
        assert "agent_memory_shared_tier_up 0.0" in metrics
        assert server.log().count("the shared KV tier at") == 1  # logged once, not per call

        redis_server = RedisProcess(port)
        time.sleep(6)  # past RETRY_S: the next call tries again
        say(server, "other", "Hello again.")
        shared = pushed(server, 2)
        assert shared["up"] is True and shared["behind"] == 0, shared
        assert len(redis_server.keys("am:*:session:*")) == 2  # the one written while down, caught up
        # The transcript saved while it was down is stored once it answers, beside the new one
        deadline = time.monotonic() + 30
        while len(redis_server.keys("am:transcript:*")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        transcripts = [json.loads(redis_server.client.get(key)) for key in redis_server.keys("am:transcript:*")]
        assert sorted(t["id"] for t in transcripts) == ["other", "patient"], transcripts
        patient = next(t for t in transcripts if t["id"] == "patient")
        assert [m["content"] for m in patient["messages"]] == ["Hello there.", first["content"]], patient
    finally:
        server.stop()
        if redis_server is not None:
            redis_server.stop()


@pytest.mark.parametrize("deleter", ["this process", "another process"])
def test_a_transcript_deleted_while_it_is_caught_up_stays_deleted(tmp_path, deleter):
    """An agent deleted while the shared tier stores again a transcript saved when Redis was down: the copy
    read from its file just before it went does not bring the agent back on the other instances. The
    deletion comes from this process (DELETE /v1/agents/{id}) or from another on the same data dir
    (`agent-memory agents rm`, with a shared tier of its own)."""
    from engine.kv.shared import RETRY_S, SharedTier, shared_key
    from engine.sessions import SessionStore

    read, removed = threading.Event(), threading.Event()

    class HeldPath(type(Path())):
        """A transcript file whose read returns only once the agent has been removed."""

        def read_text(self, *args, **kwargs):
            text = super().read_text(*args, **kwargs)
            read.set()
            removed.wait(30)
            return text

    port = free_port()
    tier = SharedTier(f"redis://127.0.0.1:{port}/0")  # nothing listens there yet: down
    text = json.dumps({"id": "gone", "updated_at": time.time(), "messages": []})
    root = tmp_path / "sessions"
    root.mkdir()
    path = HeldPath(SessionStore(root).path_for("gone"))
    Path(path).write_text(text, encoding="utf-8")
    assert tier.write_transcript("gone", text, path) is False  # remembered, stored again once Redis answers
    redis_server = RedisProcess(port)
    try:
        time.sleep(RETRY_S + 0.5)
        assert tier.read_transcript("someone else") is None and tier.up  # back: the catch-up thread starts
        assert read.wait(30)
        other = None if deleter == "this process" else SharedTier(f"redis://127.0.0.1:{port}/0")
        assert SessionStore(root, other or tier).delete("gone")  # the file, then the shared copy
        if other is not None:
            other.close()
        removed.set()
        catching_up(tier)
        assert redis_server.client.get(f"am:transcript:{shared_key('gone')}") is None
    finally:
        removed.set()
        tier.close()
        redis_server.stop()


def test_a_transcript_deleted_while_redis_does_not_answer_is_deleted_there_once_it_does(tmp_path):
    """The shared copy of an agent deleted while Redis was unreachable would bring the agent back (a read
    takes the shared copy when there is no file): it is deleted once Redis answers again."""
    from engine.kv.shared import RETRY_S, SharedTier, shared_key
    from engine.sessions import Session, SessionStore

    redis_server = RedisProcess()
    tier = SharedTier(redis_server.url)
    store = SessionStore(tmp_path / "sessions", tier)
    try:
        store.save(Session(id="paused"))
        key = f"am:transcript:{shared_key('paused')}"
        assert redis_server.client.get(key) is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # alive, not answering: each call times out
        try:
            assert store.delete("paused")  # the file; the shared copy cannot be reached
            assert not tier.up
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        time.sleep(RETRY_S + 0.5)
        assert tier.read_transcript("someone else") is None and tier.up  # back: the catch-up thread starts
        catching_up(tier)
        assert redis_server.client.get(key) is None
        assert store.get("paused") is None
    finally:
        tier.close()
        redis_server.stop()


def catching_up(tier) -> None:
    """Wait for the shared tier's catch-up thread to end."""
    for thread in threading.enumerate():
        if thread.name == "shared-transcripts":
            thread.join(30)


def test_an_agent_runs_one_turn_at_a_time_across_instances(tmp_path, redis_server):
    """Two instances with data dirs of their own get a turn of one agent at the same moment (no balancer
    affinity): one waits for the other's turn and reads it, and the transcript keeps both."""
    servers = [instance(tmp_path, name, redis_server.url) for name in ("first", "second")]
    try:
        for server in servers:
            server.wait_ready()
        answers = {}

        def ask(server: ServerProcess, name: str) -> None:
            answers[name] = say(server, "twin", f"Hello from the {name} instance.")

        threads = [threading.Thread(target=ask, args=(server, f"s{i}")) for i, server in enumerate(servers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        earlier, later = sorted(answers.values(), key=lambda answer: answer["usage"]["prompt_tokens"])
        # The later turn's prompt holds the earlier exchange: it started once that turn had ended
        assert later["usage"]["prompt_tokens"] >= earlier["usage"]["prompt_tokens"] + 8, answers
        assert not redis_server.keys("am:turn:*")  # both claims given up
        for server in servers:
            transcript = httpx.get(f"{server.base_url}/v1/agents/twin", headers=HEADERS, timeout=30).json()
            contents = [message["content"] for message in transcript["messages"]]
            assert len(contents) == 4 and contents[1::2] == [earlier["content"], later["content"]], contents
    finally:
        for server in servers:
            server.stop()


def test_a_killed_instances_turn_claim_frees_itself(redis_server):
    """A claim held by a process killed -9 stops being renewed and ends TTL_MS later; until then another
    instance cannot take the agent's turn."""
    import sys

    from engine.kv.shared import SharedTier
    from engine.kv.shared_turns import RENEW_S, TTL_MS, claim_turn

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from engine.kv.shared import SharedTier; from engine.kv.shared_turns import claim_turn; "
            "claim = claim_turn(SharedTier(sys.argv[1]), 'held-agent'); print(claim is not None, flush=True); "
            "time.sleep(600)",
            redis_server.url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    other = SharedTier(redis_server.url)
    try:
        assert holder.stdout.readline().strip() == "True"
        time.sleep(TTL_MS / 1000 + RENEW_S)  # past the claim's first lifetime: renewed, still held
        assert claim_turn(other, "held-agent") is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        killed = time.monotonic()
        while (claim := claim_turn(other, "held-agent")) is None:
            assert time.monotonic() - killed < TTL_MS / 1000 + 5, "the dead holder's claim did not end"
            time.sleep(0.2)
        claim.release()
        assert not redis_server.keys("am:turn:*")
    finally:
        holder.kill()
        other.close()
