"""Every `bash` and `python` example in the API docs runs against a real server and succeeds."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import API_KEY, REPO_ROOT

DOCS = ["docs/api-reference.md", "docs/user-guide.md", "docs/tool-calling.md", "docs/agent-memory.md"]
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list:
    found = []
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        for number, match in enumerate(FENCE.finditer(text)):
            found.append(pytest.param(match.group(1), match.group(2), id=f"{doc}#{number}-{match.group(1)}"))
    return found


def test_docs_have_examples():
    kinds = {param.values[0] for param in examples()}
    assert kinds == {"bash", "python"} and len(examples()) >= 12


@pytest.mark.parametrize(("language", "code"), examples())
def test_example_runs(server, language, code):
    code = code.replace("http://127.0.0.1:8000", server.base_url).replace("sk-local", API_KEY)
    command = ["bash", "-c", "set -euo pipefail\n" + code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.stdout.strip()
