"""Operations on a whole agent, its transcript and its KV caches together: one set of rules for the API,
the command line and the TUI, which differ only in how they reach the caches."""

from __future__ import annotations

from collections.abc import Callable

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
    id has a cache. Both transcripts' turn locks are held, in one order for every caller: the parent is
    between two turns (its transcript and its cache agree), and nothing is created under the new id
    meanwhile. NoSuchAgent or AgentExists when refused; nothing is written then."""
    if new_id == session_id:
        raise AgentExists("a fork needs an id of its own")
    first, second = sorted((session_id, new_id))
    with store.turn_lock(first).held(), store.turn_lock(second).held():
        parent = store.get(session_id)
        if parent is None and not cached(session_id):
            raise NoSuchAgent(f"no agent {session_id!r}")
        if store.get(new_id) is not None or cached(new_id):
            raise AgentExists(f"agent {new_id!r} exists already; fork under a new id")
        store.fork(parent or Session(id=session_id), new_id)
        return share(session_id, new_id)
