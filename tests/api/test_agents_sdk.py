"""The OpenAI Agents SDK (`openai-agents`) running a tool-using agent against a real server on loopback.

The SDK speaks the Responses API. A forced first call (`tool_choice="required"`, which the SDK resets to
`auto` once the tool ran) makes even the 135M default model use its tool every time.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI

from tests.conftest import API_KEY

pytestmark = pytest.mark.slow  # a real client running whole agent loops

agents = pytest.importorskip("agents", reason="the OpenAI Agents SDK is not installed: pip install -e '.[dev]'")


def weather_agent(server, calls: list[str], **settings):
    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"Sunny, 21 C in {city}"

    agents.set_tracing_disabled(True)  # traces go to OpenAI's servers otherwise
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    return agents.Agent(
        name="weather",
        instructions="You answer questions about the weather. Use the get_weather tool.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="local", openai_client=client),
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=60, **settings),
    )


def test_agent_calls_its_tool_and_answers(server):
    calls: list[str] = []
    # prompt_cache_key names the agent session: every model call of the run resumes its KV cache
    agent = weather_agent(server, calls, extra_args={"prompt_cache_key": "sdk-weather"})
    result = asyncio.run(agents.Runner.run(agent, "What's the weather in Paris?", max_turns=4))

    assert calls == ["Paris"]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    first, second = result.raw_responses  # the call, then the answer after its result
    assert first.output[0].type == "function_call" and second.output[-1].type == "message"
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens

    transcript = httpx.get(
        f"{server.base_url}/v1/agents/sdk-weather", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    assert [m["role"] for m in transcript["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert transcript["messages"][1]["tool_calls"][0]["name"] == "get_weather"
    assert transcript["messages"][2]["content"] == "Sunny, 21 C in Paris"


def test_streamed_run_then_a_previous_response_id_chain(server):
    calls: list[str] = []
    agent = weather_agent(server, calls)

    async def both():
        streamed = agents.Runner.run_streamed(agent, "What's the weather in Rome?", max_turns=4)
        kinds = {event.data.type async for event in streamed.stream_events() if event.type == "raw_response_event"}
        # The SDK sends only the new items and names the last response; the server rebuilds the rest.
        chained = await agents.Runner.run(agent, "And in Oslo?", max_turns=4, auto_previous_response_id=True)
        return kinds, streamed, chained

    kinds, streamed, chained = asyncio.run(both())
    assert calls == ["Rome", "Oslo"]
    assert {"response.function_call_arguments.delta", "response.output_text.delta", "response.completed"} <= kinds
    assert streamed.final_output.strip() and chained.final_output.strip()
    first, second = chained.raw_responses
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
