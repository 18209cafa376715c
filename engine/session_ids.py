"""What may name a session (an agent), however the id arrives: the API (paths, headers, bodies), the
command line, batch files. Ids name files only through a hash, but each is kept in memory, in SQLite, in
transcripts and in the access log."""

from __future__ import annotations

import re

MAX_CHARS = 256
# A lone UTF-16 surrogate: an escaped "\ud800" in JSON, or a byte that is not UTF-8 (Python decodes
# command-line arguments and HTTP heads with surrogateescape). Such text cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """True when `text` holds a lone surrogate, so cannot be written as UTF-8. Every message of every
    request is checked: ASCII text (most of it) is answered without the scan."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def id_problem(session_id: str) -> str | None:
    """Why `session_id` cannot name a session, or None when it can."""
    if not session_id:
        return "a session id cannot be empty"
    if len(session_id) > MAX_CHARS:
        return f"a session id is at most {MAX_CHARS} characters; this one has {len(session_id)}"
    if has_surrogate(session_id):
        return "the session id is not valid UTF-8 text"
    return None
