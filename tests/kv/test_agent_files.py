"""Agent files: an agent exported from one cache dir resumes in another with nothing recomputed; a file
for another model, a truncated or an altered one is refused and writes nothing. Engine, HTTP and CLI."""

from __future__ import annotations

import io
import json

import pytest

from engine.kv.agent_file import AgentFileError, AgentFileMismatch, read_agent_file
from engine.kv.agent_transfer import Target, plan_import
from engine.requests import ChatMessage
from tests.conftest import run_cli
from tests.kv.test_kv_memory import engine_for, greedy, history


def warm_totals(engine) -> dict:
    engine.flush()
    stats = engine.memory.warm.stats()
    return {"blocks": stats.blocks, "sessions": stats.sessions, "bytes": stats.bytes}


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """An agent's turn in one cache dir, exported: (file bytes, the conversation so far, its turn)."""
    engine = engine_for(data_dir, tmp_path_factory.mktemp("exporter") / "caches")
    try:
        messages = history(1500, engine.tokenizer)
        turn = engine.generate(greedy(messages, "traveller"))
        transcript = {"id": "traveller", "system": None, "messages": [m.model_dump() for m in messages[1:]]}
        target = tmp_path_factory.mktemp("files") / "traveller.agent.tar"
        manifest = engine.export_agent("traveller", "traveller", transcript, target)
        assert manifest.snapshot is not None and manifest.fingerprint == engine.info.fingerprint
        return target.read_bytes(), [*messages, ChatMessage(role="assistant", content=turn.text)], turn
    finally:
        engine.close()


def test_an_imported_agent_resumes_warm_with_nothing_recomputed(exported, data_dir, tmp_path):
    data, conversation, turn = exported
    engine = engine_for(data_dir, tmp_path / "caches")
    try:
        agent_file = read_agent_file(io.BytesIO(data))
        plan = plan_import(agent_file, "arrived", engine.import_target())
        assert engine.import_agent(plan) == len(plan.blocks) > 0
        engine.check_integrity()
        again = engine.generate(greedy([*conversation, ChatMessage(role="user", content="One word?")], "arrived"))
        stored = turn.usage.prompt_tokens + turn.usage.completion_tokens
        assert again.cache.source == "warm" and again.cache.reused_tokens >= stored - 1, again.cache
        # The same agent again under another id: every block is there already
        twin = plan_import(agent_file, "twin", engine.import_target())
        before = warm_totals(engine)
        assert engine.import_agent(twin) == 0
        assert warm_totals(engine)["blocks"] == before["blocks"]
        engine.check_integrity()
    finally:
        engine.close()


def test_damaged_or_foreign_files_are_refused(exported):
    data = exported[0]
    with pytest.raises(AgentFileError, match="truncated"):
        read_agent_file(io.BytesIO(data[: len(data) // 2]))
    altered = bytearray(data)
    altered[len(altered) // 2] ^= 0x01
    with pytest.raises(AgentFileError, match="altered|checksum|not an agent file"):
        read_agent_file(io.BytesIO(bytes(altered)))
    with pytest.raises(AgentFileError):
        read_agent_file(io.BytesIO(b"not a tar file at all" * 100))
    agent_file = read_agent_file(io.BytesIO(data))
    with pytest.raises(AgentFileMismatch, match="fingerprint"):
        plan_import(agent_file, "x", Target(fingerprint="0" * 64))
    with pytest.raises(AgentFileMismatch, match="stored as"):
        plan_import(agent_file, "x", Target(layout="full|int8"))
    with pytest.raises(AgentFileMismatch, match="blocks of"):
        plan_import(agent_file, "x", Target(block_tokens=agent_file.manifest.cache.block_tokens * 2))


def test_export_and_import_over_http(http, tiny_engine, tmp_path):
    system = "You are terse. " + "The ledger lists every ship that docked. " * 40
    first = http.post("/v1/agents/file-a/messages", json={"content": "Hi.", "system": system, "max_tokens": 8})
    assert first.status_code == 200, first.text
    response = http.get("/v1/agents/file-a/export")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    assert "file-a.agent.tar" in response.headers["content-disposition"]
    data = response.content
    manifest = read_agent_file(io.BytesIO(data)).manifest
    assert manifest.agent_id == "file-a" and manifest.transcript and manifest.blocks

    imported = http.post("/v1/agents/import?as=file-b", content=data)
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert body["id"] == "file-b" and body["turns"] == 1 and body["blocks"] == len(manifest.blocks)
    assert body["new_blocks"] == 0  # the server holds file-a's blocks already
    turn = http.post("/v1/agents/file-b/messages", json={"content": "Again.", "max_tokens": 8}).json()
    assert turn["turns"] == 2 and turn["usage"]["cached_tokens"] >= first.json()["usage"]["prompt_tokens"], turn

    agents = lambda: {row["id"] for row in http.get("/v1/agents").json()["data"]}  # noqa: E731
    before = agents()
    assert http.post("/v1/agents/import?as=file-b", content=data).status_code == 409
    truncated = http.post("/v1/agents/import?as=file-c", content=data[: len(data) // 3])
    assert truncated.status_code == 400 and "truncated" in truncated.text
    altered = bytearray(data)
    altered[len(altered) // 2] ^= 0x01  # inside a block (the tail of a tar is padding)
    assert http.post("/v1/agents/import?as=file-c", content=bytes(altered)).status_code == 400
    assert http.post("/v1/agents/import?as=file-c", content=b"").status_code == 400
    # A transcript whose text is not valid Unicode (a lone surrogate, JSON-escaped) under a right digest:
    # refused before its cache is stored
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]
    unpaired = [(n, d.replace(b'"Hi."', b'"\\ud800"') if n == "transcript.json" else d) for n, d in members]
    assert unpaired != members
    manifest_json = json.loads(dict(members)["manifest.json"])
    rest = [(n, d) for n, d in unpaired if n not in ("manifest.json", "digest.sha256")]
    refused = http.post("/v1/agents/import?as=file-c", content=crafted(manifest_json, rest))
    assert refused.status_code == 400 and "its transcript is not a transcript" in refused.text, refused.text

    foreign = tmp_path / "foreign.agent.tar"
    tiny_engine.generate(greedy([ChatMessage(role="user", content="Hello " * 300)], "foreign"))
    tiny_engine.export_agent("foreign", "foreign", None, foreign)
    refused = http.post("/v1/agents/import?as=file-c", content=foreign.read_bytes())
    assert refused.status_code == 409 and "fingerprint" in refused.text
    assert agents() == before  # nothing refused was written
    assert http.get("/v1/agents/no-such-agent/export").status_code == 404
    for agent in ("file-a", "file-b"):
        assert http.delete(f"/v1/agents/{agent}").status_code == 200


def test_agents_export_and_import_on_the_command_line(default_engine, tmp_path):
    data = default_engine.settings.data_path
    own = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "caches")}  # a cache dir of its own: others start fresh
    text = "Remember the ledger. " + "The ledger lists every ship that docked. " * 40
    first = run_cli("chat", "-s", "file-cli", "--new", "-t", "0", "-n", "8", "--json", text, data_dir=data, env=own)
    assert first.returncode == 0, first.stderr
    target = tmp_path / "file-cli.agent.tar"
    exported = run_cli("agents", "export", "file-cli", "-o", str(target), data_dir=data, env=own)
    assert exported.returncode == 0 and target.exists(), exported.stderr
    assert "1 turns" in exported.stdout

    # Another cache dir and no transcript: as on another machine with the same model
    elsewhere = {"SEMANTIC_AGENT_CACHE_DIR": str(tmp_path / "other-caches")}
    imported = run_cli("agents", "import", str(target), "--as", "file-cli-moved", data_dir=data, env=elsewhere)
    assert imported.returncode == 0, imported.stderr
    assert " 0 blocks" not in imported.stdout and "new)" in imported.stdout
    again = run_cli("agents", "import", str(target), "--as", "file-cli-moved", data_dir=data, env=elsewhere)
    assert again.returncode == 2 and "exists already" in again.stderr
    damaged = tmp_path / "damaged.agent.tar"
    damaged.write_bytes(target.read_bytes()[:4096])
    refused = run_cli("agents", "import", str(damaged), "--as", "file-cli-3", data_dir=data, env=elsewhere)
    assert refused.returncode == 2 and "cannot be imported" in refused.stderr

    turn = run_cli(
        "chat", "-s", "file-cli-moved", "-t", "0", "-n", "8", "--json", "And again?", data_dir=data, env=elsewhere
    )
    result = json.loads(turn.stdout)
    assert result["cache"]["source"] == "warm", result
    assert result["usage"]["cached_tokens"] >= json.loads(first.stdout)["usage"]["prompt_tokens"]


def crafted(manifest: dict, members: list[tuple[str, bytes]]) -> bytes:
    """A tar laid out as an agent file, with a manifest and members of our choosing and a right digest."""
    import hashlib
    import tarfile

    target, digest = io.BytesIO(), hashlib.sha256()
    with tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *members]:
            digest.update(f"{name}\0{len(data)}\0".encode() + data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("digest.sha256")
        info.size = 64
        tar.addfile(info, io.BytesIO(digest.hexdigest().encode()))
    return target.getvalue()


def test_crafted_files_are_refused_before_anything_is_stored(exported, tmp_path):
    from engine.kv import codec
    from engine.kv.checksum import checksum_of

    manifest = json.loads(read_agent_file(io.BytesIO(exported[0])).manifest.model_dump_json())
    # A fingerprint names a folder of the cache dir: a path is not one
    with pytest.raises(AgentFileError, match="fingerprint"):
        read_agent_file(io.BytesIO(crafted({**manifest, "fingerprint": "../../elsewhere", "blocks": []}, [])))
    # Tokens that are not token ids
    payload = codec.pack({}, {"session": "x", "tokens": "5", "windows": "[]", "root": manifest["cache"]["root"]})
    snapshot = b"".join(bytes(chunk) for chunk in payload.chunks)
    entry = {"checksum": checksum_of([snapshot]), "bytes": len(snapshot), "tokens": 1}
    bad = {**manifest, "transcript": False, "snapshot": entry, "blocks": []}
    agent_file = read_agent_file(io.BytesIO(crafted(bad, [("session.safetensors", snapshot)])))
    with pytest.raises(AgentFileError, match="token ids"):
        plan_import(agent_file, "x", Target())
    # Only plain files: a link (or a sparse file, whose holes read back larger than the file) is refused
    import tarfile

    linked = io.BytesIO()
    with tarfile.open(fileobj=linked, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(AgentFileError, match="not a plain file"):
        read_agent_file(io.BytesIO(linked.getvalue()))
