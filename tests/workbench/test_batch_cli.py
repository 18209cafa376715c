"""`agent-memory batch` in a real subprocess: results as JSONL, bad lines reported, reruns resume."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}


@pytest.mark.slow
def test_batch_run_reports_bad_lines_and_resumes(data_dir, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"id": "a", "prompt": "What is the capital of France?", "max_tokens": 12, "temperature": 0},
        {"id": "b", "session": "batch-agent", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8},
        "this is not json",
        {"id": "c"},
        {"id": "d", "prompt": "Name a colour.", "max_tokens": 6},
        {"id": "t", "prompt": "Weather in Oslo?", "max_tokens": 40, "tools": [WEATHER], "tool_choice": "get_weather"},
        {"id": "u", "prompt": "Weather in Oslo?", "tools": [WEATHER], "tool_choice": "get_time"},
        {"id": "a", "prompt": "Again?", "max_tokens": 4},  # results are matched to jobs by id
        {"id": "s", "session": "\ud800", "prompt": "Hi", "max_tokens": 4},  # not text: JSON's escaped surrogate
    ]
    jobs.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "results.jsonl"

    first = run_cli("batch", str(jobs), "-o", str(output), data_dir=data_dir)
    assert first.returncode == 1, first.stderr  # five bad lines
    rows = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert set(rows) == {"a", "b", "line:3", "c", "d", "t", "u", "line:8", "s"}
    assert "Paris" in rows["a"]["text"] and rows["a"]["usage"]["completion_tokens"] > 0
    assert rows["b"]["session"] == "batch-agent"
    assert rows["line:3"]["line"] == 3 and "not JSON" in rows["line:3"]["error"]
    assert rows["c"]["line"] == 4 and "messages" in rows["c"]["error"]
    (call,) = rows["t"]["tool_calls"]
    assert rows["t"]["finish_reason"] == "tool_calls" and call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"])["city"], str)
    assert rows["u"]["line"] == 7 and "not among the tools" in rows["u"]["error"]
    assert "id 'a' is the id of line 1" in rows["line:8"]["error"]
    assert rows["s"]["line"] == 9 and "not valid UTF-8" in rows["s"]["error"]

    jobs.write_text(jobs.read_text() + json.dumps({"id": "e", "prompt": "Say yes.", "max_tokens": 4}) + "\n")
    second = run_cli("batch", str(jobs), "-o", str(output), data_dir=data_dir)
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert ids.count("a") == 1 and ids.count("e") == 1  # only the new job ran
    assert "1 jobs done" in second.stderr and "already done" in second.stderr

    missing = run_cli("batch", str(tmp_path / "nope.jsonl"), "-o", str(output), data_dir=data_dir)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    # Files it cannot use are said before the model loads: a folder for results, jobs that are not UTF-8
    folder = run_cli("batch", str(jobs), "-o", str(tmp_path), data_dir=data_dir)
    assert folder.returncode == 2 and "cannot write the results" in folder.stderr, folder.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\n")
    unreadable = run_cli("batch", str(binary), "-o", str(output), data_dir=data_dir)
    assert unreadable.returncode == 2 and "cannot read the jobs" in unreadable.stderr, unreadable.stderr
    # A run that writes nothing leaves no empty results file behind
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    nothing = run_cli("batch", str(empty), "-o", str(tmp_path / "none.jsonl"), data_dir=data_dir)
    assert nothing.returncode == 0 and "Nothing to do" in nothing.stderr, nothing.stderr
    assert not (tmp_path / "none.jsonl").exists()


def test_batch_job_samples_with_the_models_defaults_unless_it_sets_temperature():
    from workbench.batch_cmd import BatchJob

    unset = BatchJob(id="a", prompt="Hi").request().sampling
    assert all(value is None for value in unset.values().values())  # the engine fills in the model's
    assert BatchJob(id="b", prompt="Hi", temperature=0).request().sampling.temperature == 0
