"""`agent-memory chat`: one message or an interactive loop on a persisted session."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import typer

from engine.errors import EngineError
from engine.events import TurnChunk, TurnFailed, TurnFinished
from engine.sessions import Session, SessionCorrupt, SessionStore
from engine.settings import Settings
from workbench.format import json_result, turn_footer
from workbench.output import report_error, waiting_for_another_process
from workbench.platform_info import blas_warning
from workbench.progress import ModelProgress

QUIT_WORDS = {"/quit", "/exit", "exit", "quit"}
# Chat (here and in the TUI) samples with the model's defaults and this mild penalty on tokens the
# answer already holds (its last 64), which keeps small models from looping on a phrase.
CHAT_REPETITION_PENALTY = 1.1
HELP_TEXT = "Commands: /new starts this session over, /quit (or exit, Ctrl-D) leaves. Ctrl-C stops a reply."


@dataclass
class ChatOptions:
    message: str | None
    session_id: str | None
    continue_last: bool = False
    new: bool = False
    system: str | None = None
    json_output: bool = False
    max_tokens: int = 512
    # None: the model's default (engine.sampling.model_sampling_defaults)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = CHAT_REPETITION_PENALTY
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def run_chat(settings: Settings, options: ChatOptions) -> int:
    if options.message is not None and not options.message.strip():
        return report_error("the message is empty; type something to send")
    store = SessionStore.of(settings)
    try:
        session = open_session(store, options)
    except (SessionCorrupt, LookupError) as exc:
        return report_error(str(exc))

    from engine.engine import Engine

    progress = ModelProgress(enabled=None if not options.json_output else False)
    engine = Engine(settings, progress=progress)
    try:
        engine.start()
    except EngineError as exc:
        progress.close()
        return report_error(str(exc))
    finally:
        progress.close()
    if warning := blas_warning():
        typer.echo(f"warning: {warning}", err=True)
    try:
        if options.message is not None:
            return one_turn(engine, store, session, options.message, options)
        return interactive(engine, store, session, options)
    finally:
        engine.close()


def open_session(store: SessionStore, options: ChatOptions) -> Session:
    """The session to talk in: named, the most recent (-c), or a fresh one with a generated id."""
    if options.continue_last and options.session_id is None:
        last = store.last()
        if last is None:
            raise LookupError("there is no session to continue; start one with --session NAME")
        session_id = last.id
    else:
        session_id = options.session_id or time.strftime("chat-%Y%m%d-%H%M%S")
    if options.new:  # started over now, so that the first turn is not appended to the old transcript
        session = Session(id=session_id, system=options.system)
        store.save(session)
        return session
    session = store.get_or_new(session_id)
    if options.system is not None:
        session.system = options.system
    return session


def build_request(engine, session: Session, text: str, options: ChatOptions):
    from engine.requests import GenerationRequest, SamplingParams

    return GenerationRequest(
        messages=session.conversation(text),
        max_tokens=options.max_tokens,
        sampling=SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
        ),
        stop=options.stop,
        session_id=session.id,
    )


def stream_turn(engine, store: SessionStore, session: Session, text: str, options: ChatOptions) -> TurnFinished:
    """Run one turn, echoing text unless --json; persist it unless it was cancelled. Another process
    sharing the data dir (a server, a second chat) may be in a turn of this session: it ends first, and
    the turns it stored are taken in before this one's prompt is built."""
    with store.turn_lock(session.id).held(on_wait=lambda: waiting_for_another_process(session.id)):
        store.refresh(session)
        handle = engine.submit(checked_request(engine, session, text, options))
        finished = None
        try:
            for event in handle.events():
                if isinstance(event, TurnChunk) and not options.json_output:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, TurnFailed):
                    raise EngineError(event.message)
                elif isinstance(event, TurnFinished):
                    finished = event
        except KeyboardInterrupt:
            handle.cancel()
            finished = handle.result()
        if not options.json_output:
            sys.stdout.write("\n" if finished.finish_reason != "cancelled" else " [stopped]\n")
            sys.stdout.flush()
        store.keep_turn(session, text, finished, engine.model_id, engine.info.fingerprint)
    return finished


def checked_request(engine, session: Session, text: str, options: ChatOptions):
    """The turn's request; sampling values the engine refuses become an EngineError naming the flag."""
    from pydantic import ValidationError

    try:
        return build_request(engine, session, text, options)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        field = error["loc"][-1] if error["loc"] and error["loc"][0] == "sampling" else None
        raise EngineError(f"{field}: {message}" if field else message) from None


def one_turn(engine, store: SessionStore, session: Session, text: str, options: ChatOptions) -> int:
    try:
        finished = stream_turn(engine, store, session, text, options)
    except EngineError as exc:
        return report_error(str(exc))
    if options.json_output:
        typer.echo(json.dumps(json_result(session.id, finished), ensure_ascii=False))
    return 0


def interactive(engine, store: SessionStore, session: Session, options: ChatOptions) -> int:
    tty = sys.stdin.isatty()
    if tty:
        turns = session.turns
        resumed = f", resuming {turns} turn{'s' if turns != 1 else ''}" if turns else ""
        typer.echo(f"Session {session.id!r} on {engine.info.model_id}{resumed}. {HELP_TEXT}", err=True)
    while True:
        try:
            line = input(f"{session.id}> " if tty else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            typer.echo("", err=True)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in QUIT_WORDS:
            return 0
        if text == "/new":
            session = Session(id=session.id, system=session.system)
            store.save(session)
            typer.echo(f"Session {session.id!r} started over.", err=True)
            continue
        if text in {"/help", "/?"}:
            typer.echo(HELP_TEXT, err=True)
            continue
        try:
            finished = stream_turn(engine, store, session, text, options)
        except EngineError as exc:
            report_error(str(exc))
            continue
        if tty:
            typer.secho(turn_footer(finished), err=True, dim=True)
