"""Schemathesis over the server's own /openapi.json: generated requests for every operation, sent with
either auth header, must never get a 5xx or an answer its schema does not describe. Bounded (a few
examples per operation, derandomized so a run is repeatable; generation lengths capped) to stay cheap."""

from __future__ import annotations

import itertools

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (make setup installs it)")
from hypothesis import HealthCheck, settings, strategies  # noqa: E402 - after the skip above
from schemathesis.core.parameters import ParameterLocation  # noqa: E402

from tests.conftest import API_KEY  # noqa: E402

pytestmark = pytest.mark.slow

# The Anthropic SDK's header and the OpenAI SDK's, one request each in turn
TAKE_TURNS = itertools.cycle([{"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}])
# Generated lengths are any integer the schema allows, and an absent one means the server's default
# (hundreds of tokens, and the coverage phase sends every case the schema defines): every generation is
# capped, the API's behaviour is the same.
LENGTH_FIELDS = ("max_tokens", "max_output_tokens", "max_completion_tokens")
LENGTH_FIELD_BY_PATH = {
    "/v1/chat/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/agents/{agent_id}/messages": "max_tokens",
}
# Ollama's routes take theirs inside `options`
OPTIONS_LENGTH_PATHS = {"/api/chat", "/api/generate"}
MAX_GENERATED = 4
# The document states each field's own rules, and every part, format and option it lists is served (the
# others are parsed only to be refused by name). Rules across fields it does not state, so data it calls
# valid may still be refused: the last user message needs text; `tool_choice: required` needs tools.
# Data it calls invalid must be refused: bodies are read strictly.
NOT_STATED_IN_THE_SCHEMA = [schemathesis.checks.positive_data_acceptance]
# An agent file (POST /v1/agents/import) is a tar of our own making: any bytes a fuzzer sends are refused
schemathesis.openapi.media_type("application/x-tar", strategies.binary(max_size=4096))


@pytest.fixture(scope="module")
def api_schema(server):
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    # Admin routes swap the shared server's model: tested by hand in test_server_ops
    return schema.exclude(path_regex="^/admin")


schema = schemathesis.pytest.from_fixture("api_schema")


@schemathesis.auth()
class TheKey:
    """Our key, as schemathesis' auth: its auth check then probes each operation without it too."""

    def get(self, case, context) -> str:
        return API_KEY

    def set(self, case, key: str, context) -> None:
        case.headers = {**(case.headers or {}), **next(TAKE_TURNS)}


def capped(case) -> None:
    body = case.body
    if not isinstance(body, dict) or (case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY)):
        return  # a body the schema refuses is refused before it generates; what is wrong may be its length
    for field in LENGTH_FIELDS:
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_GENERATED:
            body[field] = MAX_GENERATED
    field = LENGTH_FIELD_BY_PATH.get(case.operation.path)
    if field and all(body.get(name) is None for name in LENGTH_FIELDS):
        body[field] = MAX_GENERATED
    if case.operation.path in OPTIONS_LENGTH_PATHS:
        if body.get("options") is None:
            body["options"] = {}
        if isinstance(body["options"], dict):
            body["options"]["num_predict"] = MAX_GENERATED


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_5xx_or_off_its_schema(case):
    capped(case)
    case.call_and_validate(timeout=120, excluded_checks=NOT_STATED_IN_THE_SCHEMA)
