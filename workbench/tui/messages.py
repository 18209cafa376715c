"""Messages posted to the UI from worker threads and the engine thread (never widget calls)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.message import Message

from engine.events import TurnEvent
from engine.sessions import Session
from workbench.tui.turn_log import TurnRecord


@dataclass
class EngineEvent(Message):
    event: TurnEvent


@dataclass
class ModelReady(Message):
    summary: dict
    evictions: int = 0  # the hot tier's evictions so far: this model's turns count theirs from here


@dataclass
class ModelFailed(Message):
    error: str


@dataclass
class AgentsLoaded(Message):
    rows: list[dict]


@dataclass
class SwapProgress(Message):
    text: str  # plain text: it may quote a model id or an error


@dataclass
class Problem(Message):
    """A call to the source failed (a server gone, a refused API key, a disk error): said, not fatal."""

    text: Content


@dataclass
class TranscriptLoaded(Message):
    session: Session


@dataclass
class TurnRecorded(Message):
    turn: TurnRecord
