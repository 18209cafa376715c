"""Child process for the crash test: takes turns for four agents forever, writing KV as it goes.

Usage: python tests/kv/kv_writer_child.py DATA_DIR CACHE_DIR MODEL_DIR
Prints "turn <session> <n>" after each finished turn. The parent kills it with SIGKILL at random.
"""

from __future__ import annotations

import sys

import engine
from engine.engine import Engine
from engine.requests import ChatMessage, GenerationRequest, SamplingParams
from engine.settings import Settings

engine.setup_process()

SESSIONS = ("s0", "s1", "s2", "s3")


def conversation(session: str, turns: int) -> list[ChatMessage]:
    """The deterministic prompt of `session` at turn `turns` (the crash test rebuilds it)."""
    messages = [ChatMessage(role="system", content="Shared system prompt for every agent. " * 6)]
    for turn in range(turns):
        messages.append(ChatMessage(role="user", content=f"{session} asks question {turn} " * 3))
        if turn < turns - 1:
            messages.append(ChatMessage(role="assistant", content=f"answer {turn} for {session}"))
    return messages


def request(session: str, turns: int) -> GenerationRequest:
    return GenerationRequest(
        messages=conversation(session, turns),
        session_id=session,
        max_tokens=6,
        sampling=SamplingParams(temperature=0.0),
    )


def main() -> None:
    data_dir, cache_dir, model_dir = sys.argv[1:4]
    settings = Settings(
        data_dir=data_dir,
        agent_cache_dir=cache_dir,
        mlx_model_id=model_dir,
        kv_block_tokens=16,
        agent_max_agents_in_memory=2,
    )
    eng = Engine(settings).start()
    turn = 1
    while True:
        for session in SESSIONS:
            eng.generate(request(session, turn))
            print(f"turn {session} {turn}", flush=True)
        turn = turn % 12 + 1


if __name__ == "__main__":
    main()
