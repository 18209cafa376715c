"""Stored responses (`store: true`): what `previous_response_id` and `GET /v1/responses/{id}` read.

One JSON file per response under <data_dir>/responses, written like agent sessions (temp file, fsync,
rename), so a chain of responses continues after a restart. Response ids are user input when read back:
they name files only through a hash.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from engine.atomic import atomic_write_text
from engine.requests import ChatMessage

RESPONSE_FILE_VERSION = 1


class StoredResponse(BaseModel):
    id: str
    version: int = RESPONSE_FILE_VERSION
    created_at: float = Field(default_factory=time.time)
    # The agent session the chain's turns run under: the next response in the chain resumes its KV cache.
    session_id: str | None = None
    # Every turn up to and including this response's output, without `instructions` (they are not
    # carried over to the next response in a chain).
    conversation: list[ChatMessage] = Field(default_factory=list)
    response: dict[str, Any]


class ResponseStore:
    def __init__(self, root: Path):
        self.root = root

    def path_for(self, response_id: str) -> Path:
        return self.root / (hashlib.sha256(response_id.encode("utf-8")).hexdigest()[:40] + ".json")

    def get(self, response_id: str) -> StoredResponse | None:
        path = self.path_for(response_id)
        try:
            stored = StoredResponse.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as exc:
            raise StoredResponseCorrupt(
                f"stored response file {path} is unreadable ({exc.__class__.__name__}); move it away or delete it"
            ) from None
        return stored if stored.id == response_id else None

    def save(self, stored: StoredResponse) -> None:
        atomic_write_text(self.path_for(stored.id), stored.model_dump_json())

    def delete(self, response_id: str) -> bool:
        try:
            os.unlink(self.path_for(response_id))
            return True
        except FileNotFoundError:
            return False


class StoredResponseCorrupt(ValueError):
    """A stored response's file exists but cannot be parsed."""
