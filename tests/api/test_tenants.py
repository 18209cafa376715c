"""Named tenants (SEMANTIC_API_KEYS): a tenant sees, resumes, deletes and shares prefixes only within
itself, so another tenant's prompts cannot be probed through cached-token counts; an unknown key is 401."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

KEYS = {"alice": "key-of-alice", "bob": "key-of-bob"}
# Long enough for a few 16-token blocks, so a shared prefix would be reused across sessions
SECRET_PROMPT = "The launch code for the northern lighthouse is 7-4-1-9. " * 6


@pytest.fixture(scope="module")
def tenants_server(default_engine, data_dir):
    cache_dir = data_dir / "tenant-caches"
    cache_dir.mkdir(exist_ok=True)
    env = {
        "SEMANTIC_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        "SEMANTIC_KV_BLOCK_TOKENS": "16",
    }
    running = ServerProcess(data_dir, cache_dir, env)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def client(server, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=120)


def conversation(secret: str) -> list[dict]:
    # The secret opens the prompt (a system prompt): different secrets share less than a block
    return [{"role": "system", "content": secret}, {"role": "user", "content": "Go on."}]


def cached_tokens(http: httpx.Client, session: str, secret: str) -> int:
    answer = http.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": conversation(secret), "max_tokens": 2, "temperature": 0},
        headers={"X-Session-ID": session},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_unknown_and_missing_keys_are_refused(tenants_server):
    for headers in ({"Authorization": "Bearer not-a-key"}, {"x-api-key": "key-of-alice2"}, {}):
        answer = httpx.get(f"{tenants_server.base_url}/v1/agents", headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
    with client(tenants_server, "alice") as alice:
        assert alice.get("/v1/agents").status_code == 200
    answer = httpx.get(f"{tenants_server.base_url}/v1/agents", headers={"x-api-key": KEYS["bob"]})
    assert answer.status_code == 200
    # Counted by tenant name (never by key); unknown keys are no tenant
    with client(tenants_server, "bob") as bob:
        counted = {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(bob.get("/metrics").text)
            for sample in family.samples
            if sample.name == "agent_memory_tenant_requests_total"
        }
    assert counted == {(("status", "200"), ("tenant", "alice")): 1, (("status", "200"), ("tenant", "bob")): 1}


def test_a_tenant_never_reads_another_tenants_cached_prefix(tenants_server):
    secrets = [f"Part {part}. {SECRET_PROMPT}" for part in range(3)]
    # What any two of these prompts share: the chat template's opening and "Part" (a few tokens); a
    # cached count past it would tell that the secret itself was seen
    opening = 12
    with client(tenants_server, "alice") as alice, client(tenants_server, "bob") as bob:
        for part, secret in enumerate(secrets):
            assert cached_tokens(alice, f"first-{part}", secret) < opening
        # Within a tenant, prefixes are shared (another session of alice reuses the blocks)
        assert cached_tokens(alice, "second", secrets[0]) >= 32
        # Bob guessing alice's prompts learns nothing: no more of them is cached for him than the
        # opening, under his own session, under the session name alice used, or without a session
        assert cached_tokens(bob, "guess", secrets[0]) < opening
        assert cached_tokens(bob, "first-1", secrets[1]) < opening
        anonymous = bob.post(
            "/v1/messages",
            json={"model": "default", "max_tokens": 2, "system": secrets[2], "messages": conversation("")[1:]},
        )
        assert anonymous.status_code == 200, anonymous.text
        assert anonymous.json()["usage"]["cache_read_input_tokens"] < opening
        # His own prompts he shares with himself
        assert cached_tokens(bob, "again", secrets[0]) >= 32


def test_agents_are_seen_and_deleted_only_by_their_tenant(tenants_server):
    with client(tenants_server, "alice") as alice, client(tenants_server, "bob") as bob:
        sent = alice.post("/v1/agents/helper/messages", json={"content": "Say hi.", "max_tokens": 3})
        assert sent.status_code == 200, sent.text
        assert sent.json()["agent_id"] == "helper"
        assert "helper" in [row["id"] for row in alice.get("/v1/agents").json()["data"]]
        assert alice.get("/v1/agents/helper").json()["id"] == "helper"

        assert "helper" not in [row["id"] for row in bob.get("/v1/agents").json()["data"]]
        assert all(":" not in row["id"] for row in bob.get("/v1/agents").json()["data"])
        assert bob.get("/v1/agents/helper").status_code == 404
        assert bob.delete("/v1/agents/helper").status_code == 404
        # Bob's own agent of the same name is another agent
        assert bob.post("/v1/agents/helper/messages", json={"content": "Hello.", "max_tokens": 3}).status_code == 200
        assert bob.get("/v1/agents/helper").json()["turns"] == 1
        assert alice.get("/v1/agents/helper").json()["turns"] == 1
        assert alice.delete("/v1/agents/helper").status_code == 200
        assert bob.get("/v1/agents/helper").status_code == 200


def test_forks_and_agent_files_stay_within_a_tenant(tenants_server):
    with client(tenants_server, "alice") as alice, client(tenants_server, "bob") as bob:
        sea = {"content": "Tell me about the sea. " * 12, "max_tokens": 3}
        first = alice.post("/v1/agents/root/messages", json=sea)
        assert first.status_code == 200, first.text
        forked = alice.post("/v1/agents/root/fork", json={"new_id": "branch"})
        assert forked.status_code == 201 and forked.json()["forked_from"] == "root", forked.text
        chain = alice.get("/v1/agents/branch").json()["chain"]
        assert chain and all(sorted(block["agents"]) == ["branch", "root"] for block in chain), chain
        assert bob.post("/v1/agents/root/fork", json={"new_id": "mine"}).status_code == 404
        assert bob.get("/v1/agents/root/export").status_code == 404

        # Alice's file imported by bob: blocks named under his tenant (deduplicated against his own), none
        # of hers
        exported = alice.get("/v1/agents/root/export")
        assert exported.status_code == 200
        assert b"alice" not in exported.content  # the file names the agent as its client knows it
        imported = bob.post("/v1/agents/import?as=copy", content=exported.content)
        assert imported.status_code == 201, imported.text
        assert imported.json()["blocks"] == len(chain) and imported.json()["new_blocks"] >= len(chain) - 1
        turn = bob.post("/v1/agents/copy/messages", json={"content": "More.", "max_tokens": 3}).json()
        assert turn["usage"]["cached_tokens"] >= first.json()["usage"]["prompt_tokens"], turn
        bobs = bob.get("/v1/agents/copy").json()["chain"]
        assert not {block["name"] for block in bobs} & {block["name"] for block in chain}
        assert all("root" not in block["agents"] and "copy" in block["agents"] for block in bobs)
        for agent in ("root", "branch"):
            assert alice.delete(f"/v1/agents/{agent}").status_code == 200
        assert bob.delete("/v1/agents/copy").status_code == 200


def test_a_response_chain_continues_only_within_its_tenant(tenants_server):
    with client(tenants_server, "alice") as alice, client(tenants_server, "bob") as bob:
        first = alice.post("/v1/responses", json={"model": "default", "input": "Hello there.", "max_output_tokens": 3})
        assert first.status_code == 200, first.text
        follow = {"model": "default", "input": "And again.", "max_output_tokens": 3}
        follow["previous_response_id"] = first.json()["id"]
        assert bob.post("/v1/responses", json=follow).status_code == 400
        assert alice.post("/v1/responses", json=follow).status_code == 200


def test_after_a_restart_the_disk_tier_alone_keeps_tenants_apart(default_engine, data_dir):
    # No hot copies left: whatever is cached now comes from the warm tier's block files
    cache_dir = data_dir / "tenant-restart-caches"
    cache_dir.mkdir(exist_ok=True)
    env = {"SEMANTIC_API_KEYS": ",".join(f"{n}:{k}" for n, k in KEYS.items()), "SEMANTIC_KV_BLOCK_TOKENS": "16"}
    secret = f"Restart. {SECRET_PROMPT}"
    for run in ("write", "probe"):
        running = ServerProcess(data_dir, cache_dir, env)
        try:
            running.wait_ready()
            with client(running, "alice") as alice, client(running, "bob") as bob:
                if run == "write":
                    assert cached_tokens(alice, "writer", secret) < 12
                else:
                    assert cached_tokens(bob, "guess", secret) < 12
                    assert cached_tokens(alice, "reader", secret) >= 32
        finally:
            running.stop()
