"""Readable names for agents that clients name by an opaque id: a Claude Code session is a UUID, so its
agent is titled from what the session is about (its project and its first request), e.g.
"Claude Code · project: Say hello". The title is set once, by the session's first request."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

MAX_TITLE_WORDS_CHARS = 60
# Claude Code's system prompt names the directory it runs in ("Primary working directory: /home/me/app")
WORKING_DIRECTORY = re.compile(r"working directory: (\S+)", re.IGNORECASE)
# Context Claude Code adds to a user turn, not what the user asked
REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def claude_code_title(body: dict) -> str:
    """`Claude Code · <project>: <the first request's words>` (without the project when none is named)."""
    project = next((_project(text) for text in _system_texts(body) if _project(text)), None)
    asked = " ".join(_first_user_text(body).split())
    if len(asked) > MAX_TITLE_WORDS_CHARS:
        asked = asked[: MAX_TITLE_WORDS_CHARS - 1].rstrip() + "…"
    head = f"Claude Code · {project}" if project else "Claude Code"
    return f"{head}: {asked}" if asked else head


def _project(text: str) -> str | None:
    found = WORKING_DIRECTORY.search(text)
    return PurePosixPath(found[1]).name or None if found else None


def _system_texts(body: dict) -> list[str]:
    system = body.get("system")
    if isinstance(system, str):
        return [system]
    return [block.get("text", "") for block in system or [] if isinstance(block, dict)]


def _first_user_text(body: dict) -> str:
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        texts = (
            [content]
            if isinstance(content, str)
            else [
                block.get("text", "")
                for block in content or []
                if isinstance(block, dict) and block.get("type") == "text"
            ]
        )
        asked = " ".join(REMINDER.sub("", text).strip() for text in texts).strip()
        if asked:
            return asked
    return ""
