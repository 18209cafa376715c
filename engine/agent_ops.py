"""Operations on a whole agent, its transcript and its KV caches together: one set of rules for the API,
the command line and the TUI, which differ only in how they reach the caches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.sessions import Session, SessionStore


class NoSuchAgent(LookupError):
    """Neither a transcript nor a cache has this id."""


class AgentExists(ValueError):
    """The id is taken (a transcript or a cache has it), or names the agent itself."""


def fork_agent(
    store: SessionStore,
    session_id: str,
    new_id: str,
    cached: Callable[[str], bool],
    share: Callable[[str, str], int],
) -> int:
    """Copy `session_id`'s transcript to `new_id` and `share(session_id, new_id)` its caches (the engine's
    fork_session, or the warm tier's); how many stored caches the fork shares. `cached(id)` says whether an
    id has a cache. NoSuchAgent or AgentExists when refused; nothing is written then."""
    with _two_agents(store, session_id, new_id, cached, "a fork needs an id of its own") as parent:
        store.fork(parent, new_id)
        return share(session_id, new_id)


def rename_agent(
    store: SessionStore,
    session_id: str,
    new_id: str,
    cached: Callable[[str], bool],
    move: Callable[[str, str], int],
) -> int:
    """Give `session_id` the id `new_id`: its transcript moves, and `move(session_id, new_id)` moves its
    caches (the engine's rename_session, or the warm tier's fork then forget), so its next turn resumes
    instead of recomputing. How many stored caches moved; refused as fork_agent is."""
    with _two_agents(store, session_id, new_id, cached, "the agent has that id already") as agent:
        store.save(agent.model_copy(update={"id": new_id}))
        moved = move(session_id, new_id)
        store.delete(session_id)
        return moved


@contextmanager
def _two_agents(
    store: SessionStore, session_id: str, new_id: str, cached: Callable[[str], bool], same_id: str
) -> Iterator[Session]:
    """The agent `session_id` (its transcript, or an empty one for a cache alone) while both ids' turn
    locks are held, in one order for every caller: it is between two turns (its transcript and its cache
    agree), and nothing is created under `new_id` meanwhile."""
    if new_id == session_id:
        raise AgentExists(same_id)
    first, second = sorted((session_id, new_id))
    with store.turn_lock(first).held(), store.turn_lock(second).held():
        agent = store.get(session_id)
        if agent is None and not cached(session_id):
            raise NoSuchAgent(f"no agent {session_id!r}")
        if store.get(new_id) is not None or cached(new_id):
            raise AgentExists(f"agent {new_id!r} exists already; choose a new id")
        yield agent or Session(id=session_id)
