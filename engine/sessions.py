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
from pydantic_core import PydanticSerializationError

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
    forked_from: str | None = None  # the session this one was forked from, as it was then
    title: str | None = None  # a readable name, for an agent its client names by an opaque id
    # The transcript is a conversation its client keeps and sends whole (a Responses chain), which a new
    # one of the client's may replace; not one whose turns were appended here (agent API, CLI, TUI).
    kept_by_client: bool = False

    @property
    def turns(self) -> int:
        return sum(1 for message in self.messages if message.role == "assistant")

    def conversation(self, user_text: str) -> list[ChatMessage]:
        """The messages to send for a new user turn: system prompt, history, the new message."""
        head = [ChatMessage(role="system", content=self.system)] if self.system else []
        return [*head, *self.messages, ChatMessage(role="user", content=user_text)]


def imported_session(data: dict, session_id: str) -> Session:
    """A transcript from an agent file (engine/kv/agent_file.py) under its new id; ValueError if it is not
    a transcript."""
    try:
        session = Session.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"its transcript is not a transcript ({where}: {error['msg']})") from None
    try:
        session.model_dump_json()  # as the store will write it: text must be valid Unicode (no lone surrogate)
    except PydanticSerializationError:
        raise ValueError("its transcript is not a transcript (text that is not valid Unicode)") from None
    return session.model_copy(update={"id": session_id, "forked_from": None})


class SessionStore:
    """One JSON file per session under `root`; every write is temp file + fsync + rename. With a shared
    tier (engine/kv/shared.py) every save is also written there, and a read takes whichever copy was
    saved last, so another instance continues an agent with its whole transcript."""

    def __init__(self, root: Path, shared=None):
        self.root = root
        self.shared = shared

    @classmethod
    def of(cls, settings) -> SessionStore:
        """The store `settings` name: its sessions dir, and the shared tier if one is set."""
        from engine.kv.shared import shared_tier

        url = settings.shared_tier_url
        return cls(settings.sessions_path, shared_tier(url) if url else None)

    def path_for(self, session_id: str) -> Path:
        return self.root / session_file_name(session_id)

    def get(self, session_id: str) -> Session | None:
        local = self._get_local(session_id)
        shared = self._get_shared(session_id)
        if shared is None or (local is not None and local.updated_at >= shared.updated_at):
            return local
        return shared

    def _get_local(self, session_id: str) -> Session | None:
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

    def _get_shared(self, session_id: str) -> Session | None:
        text = self.shared.read_transcript(session_id) if self.shared is not None else None
        if text is None:
            return None
        try:
            session = Session.model_validate_json(text)
        except (ValidationError, ValueError):
            return None  # not ours to repair: the local copy (or none) serves
        return session if session.id == session_id else None

    def get_or_new(self, session_id: str) -> Session:
        return self.get(session_id) or Session(id=session_id)

    def save(self, session: Session) -> None:
        session.updated_at = time.time()
        text = session.model_dump_json(indent=1)
        atomic_write_text(self.path_for(session.id), text)
        if self.shared is not None:
            # A down shared tier is logged there and given the file once it is back
            self.shared.write_transcript(session.id, text, self.path_for(session.id))

    def turn_lock(self, session_id: str) -> TurnLock:
        path = self.root / "locks" / session_file_name(session_id).replace(".json", ".lock")
        return TurnLock(path, self.shared, session_id)

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
            session.context_tokens, session.kept_by_client = context_tokens, False
            self.save(session)
        return session

    def record_conversation(
        self,
        session_id: str,
        system: str | None,
        messages: list[ChatMessage],
        context_tokens: int,
        model_id: str,
        fingerprint: str,
    ) -> bool:
        """Store `messages`, a whole conversation its client keeps (a Responses chain), as the session's
        transcript, with its `system` prompt and model: whether it was stored. It replaces a transcript
        kept the same way (the client went back, branched or compacted), and continues one whose turns
        were appended here; it never replaces those (the agent API's, the CLI's). Under the session's turn
        lock; SessionCorrupt if the stored transcript is unreadable."""
        with self.turn_lock(session_id).held():
            session = self.get_or_new(session_id)
            stored = session.messages
            if not session.kept_by_client and stored and messages[: len(stored)] != stored:
                return False
            session.system, session.messages, session.kept_by_client = system, list(messages), True
            session.model_id, session.model_fingerprint = model_id, fingerprint
            session.context_tokens = context_tokens
            self.save(session)
        return True

    def keep_turn(self, session: Session, user_text: str, finished: TurnFinished, model_id: str, fingerprint: str):
        """Record a finished turn with the model that ran it (a stopped one is not kept)."""
        if finished.finish_reason == "cancelled":
            return
        session.model_id, session.model_fingerprint = model_id, fingerprint
        context = finished.usage.prompt_tokens + finished.usage.completion_tokens
        self.record_turn(session, user_text, finished.text, context)

    def fork(self, session: Session, new_session_id: str) -> Session:
        """A copy of `session`'s transcript under `new_session_id`, recording where it came from; from
        here on the two grow apart."""
        now = time.time()
        fork = session.model_copy(
            update={"id": new_session_id, "created_at": now, "forked_from": session.id}, deep=True
        )
        self.save(fork)
        return fork

    def name(self, session_id: str, title: str) -> None:
        """Give a session without a stored transcript a title (a session that has one keeps its own)."""
        with self.turn_lock(session_id).held():
            if self.get(session_id) is None:
                self.save(Session(id=session_id, title=title))

    def delete(self, session_id: str) -> bool:
        # The file first: the shared tier's catch-up (engine/kv/shared.py), which may be storing a copy
        # read from it, in this process or another, looks for the file after storing.
        try:
            os.unlink(self.path_for(session_id))
            local = True
        except FileNotFoundError:
            local = False
        shared = self.shared is not None and self.shared.delete_transcript(session_id, self.path_for(session_id))
        return local or shared

    def all(self) -> list[Session]:
        """Every readable session, most recently used first; unreadable files are skipped."""
        texts = self._local_texts() + (self.shared.transcripts() if self.shared is not None else [])
        newest: dict[str, Session] = {}
        for text in texts:
            try:
                session = Session.model_validate(json.loads(text))
            except (ValueError, ValidationError):
                continue
            if session.id not in newest or session.updated_at > newest[session.id].updated_at:
                newest[session.id] = session
        return sorted(newest.values(), key=lambda s: s.updated_at, reverse=True)

    def _local_texts(self) -> list[str]:
        texts = []
        for path in self.root.glob("*.json") if self.root.is_dir() else []:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except OSError:
                continue
        return texts

    def last(self) -> Session | None:
        sessions = self.all()
        return sessions[0] if sessions else None


def _extends(longer: list[ChatMessage], shorter: list[ChatMessage]) -> bool:
    return len(longer) > len(shorter) and longer[: len(shorter)] == shorter


class SessionCorrupt(ValueError):
    """A session file exists but cannot be parsed."""
