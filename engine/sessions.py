"""Agent sessions: a transcript and metadata per session id, persisted atomically as JSON.

Session ids are user input (any length, any character): they name files only through a hash. Several
processes may share the store: a turn is recorded under the session's `TurnLock` onto the transcript as
stored then, so a turn another process stored meanwhile is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from engine.atomic import atomic_write_text
from engine.events import TurnFinished
from engine.requests import ChatMessage
from engine.session_lock import TurnLock

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

    def turn_lock(self, session_id: str) -> TurnLock:
        return TurnLock(self.root / "locks" / session_file_name(session_id).replace(".json", ".lock"))

    def refresh(self, session: Session) -> Session:
        """Take in turns another process appended to the stored transcript since `session` was read.
        A stored transcript that does not extend this one (started over meanwhile) is left alone."""
        stored = self.get(session.id)
        if stored is not None and _extends(stored.messages, session.messages):
            session.messages = stored.messages
            session.context_tokens = stored.context_tokens
        return session

    def record_turn(self, session: Session, user_text: str, reply: str, context_tokens: int) -> Session:
        """Append one finished exchange and persist it; the caller's object is updated too. Under the
        session's turn lock: turns stored by another process since `session` was read are kept, before
        this one."""
        with self.turn_lock(session.id).held():
            self.refresh(session)
            session.messages.extend(
                [ChatMessage(role="user", content=user_text), ChatMessage(role="assistant", content=reply)]
            )
            session.context_tokens = context_tokens
            self.save(session)
        return session

    def keep_turn(self, session: Session, user_text: str, finished: TurnFinished, model_id: str, fingerprint: str):
        """Record a finished turn with the model that ran it (a stopped one is not kept)."""
        if finished.finish_reason == "cancelled":
            return
        session.model_id, session.model_fingerprint = model_id, fingerprint
        context = finished.usage.prompt_tokens + finished.usage.completion_tokens
        self.record_turn(session, user_text, finished.text, context)

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


def _extends(longer: list[ChatMessage], shorter: list[ChatMessage]) -> bool:
    return len(longer) > len(shorter) and longer[: len(shorter)] == shorter


class SessionCorrupt(ValueError):
    """A session file exists but cannot be parsed."""
