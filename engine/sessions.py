"""Agent sessions: a transcript and metadata per session id, persisted atomically as JSON.

Session ids are user input (any length, any character): they name files only through a hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from engine.atomic import atomic_write_text
from engine.requests import ChatMessage

SESSION_FILE_VERSION = 1


def session_file_name(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40] + ".json"


class Session(BaseModel):
    id: str
    version: int = SESSION_FILE_VERSION
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    system: str | None = None
    messages: list[ChatMessage] = Field(default_factory=list)
    model_id: str | None = None
    model_fingerprint: str | None = None
    # Tokens of the whole conversation as last prefilled plus generated (the KV length it implies).
    context_tokens: int = 0

    @property
    def turns(self) -> int:
        return sum(1 for message in self.messages if message.role == "assistant")

    def conversation(self, user_text: str) -> list[ChatMessage]:
        """The messages to send for a new user turn: system prompt, history, the new message."""
        head = [ChatMessage(role="system", content=self.system)] if self.system else []
        return [*head, *self.messages, ChatMessage(role="user", content=user_text)]


class SessionStore:
    """One JSON file per session under `root`; every write is temp file + fsync + rename."""

    def __init__(self, root: Path):
        self.root = root

    def path_for(self, session_id: str) -> Path:
        return self.root / session_file_name(session_id)

    def get(self, session_id: str) -> Session | None:
        path = self.path_for(session_id)
        try:
            return Session.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as exc:
            raise SessionCorrupt(
                f"session file {path} is unreadable ({exc.__class__.__name__}); "
                f"move it away or delete it with `agent-memory agents rm`"
            ) from None

    def get_or_new(self, session_id: str) -> Session:
        return self.get(session_id) or Session(id=session_id)

    def save(self, session: Session) -> None:
        session.updated_at = time.time()
        atomic_write_text(self.path_for(session.id), session.model_dump_json(indent=1))

    def record_turn(self, session: Session, user_text: str, reply: str, context_tokens: int) -> Session:
        """Append one finished exchange and persist it; the caller's object is updated too."""
        session.messages.extend(
            [ChatMessage(role="user", content=user_text), ChatMessage(role="assistant", content=reply)]
        )
        session.context_tokens = context_tokens
        self.save(session)
        return session

    def delete(self, session_id: str) -> bool:
        try:
            os.unlink(self.path_for(session_id))
            return True
        except FileNotFoundError:
            return False

    def all(self) -> list[Session]:
        """Every readable session, most recently used first; unreadable files are skipped."""
        sessions = []
        if not self.root.is_dir():
            return sessions
        for path in self.root.glob("*.json"):
            try:
                sessions.append(Session.model_validate(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, ValidationError):
                continue
        return sorted(sessions, key=lambda s: s.updated_at, reverse=True)

    def last(self) -> Session | None:
        sessions = self.all()
        return sessions[0] if sessions else None


class SessionCorrupt(ValueError):
    """A session file exists but cannot be parsed."""
