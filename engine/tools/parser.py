"""Finding tool calls in a turn's text as it streams.

Text outside calls is passed on as soon as it cannot be the beginning of a call tag. A call's body is
held until its end tag and parsed; one that does not parse is passed on as text and counted, never
reported as a broken call. With `stream_arguments` (a grammar guarantees the body is valid), a JSON
body's arguments are passed on piece by piece while they are written.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from engine.tools.formats import ToolFormat

log = logging.getLogger(__name__)

# The head of a JSON call body, up to where the arguments value begins.
_JSON_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


Output = Text | CallStart | CallArguments


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text


class ToolCallParser:
    def __init__(self, fmt: ToolFormat, stream_arguments: bool = False):
        self.fmt = fmt
        self.stream_arguments = stream_arguments and fmt.json_body
        self.calls: list[ParsedCall] = []
        self.invalid = 0
        self._buffer = ""  # text not yet passed on (it may begin a tag)
        self._in_call = False
        self._body = ""
        self._whitespace = ""  # whitespace-only text, passed on only when more text follows
        self._streaming: _ArgumentStream | None = None

    def feed(self, text: str) -> list[Output]:
        out: list[Output] = []
        self._buffer += text
        while self._buffer:
            tag = self.fmt.end if self._in_call else self.fmt.start
            at = self._buffer.find(tag) if tag else -1
            if at >= 0:
                before, self._buffer = self._buffer[:at], self._buffer[at + len(tag) :]
                if self._in_call:
                    self._body += before
                    self._close(out)
                else:
                    self._text(before, out)
                    self._in_call, self._body = True, ""
                continue
            keep = _partial_tag_suffix(self._buffer, tag) if tag else 0
            ready, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
            if self._in_call:
                self._body += ready
                self._stream(out)
            else:
                self._text(ready, out)
            break
        return out

    def finish(self) -> list[Output]:
        """The turn ended: a call still open is closed if its format has no end tag, kept (cut short) if its
        arguments were already streamed, dropped if a grammar wrote it (it cannot be text), and otherwise
        passed on as text."""
        out: list[Output] = []
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._body += rest
            if not self.fmt.end:
                self._close(out)
            elif self._streaming is not None:
                self._stream(out)
                self.calls.append(ParsedCall(self._streaming.name, self._streaming.text))
                self._streaming, self._in_call = None, False
            elif self.stream_arguments:
                self._in_call = False  # a grammar's call cut before its name was complete: nothing to show
            else:
                self.invalid += 1
                self._in_call = False
                self._text(self.fmt.start + self._body, out)
        else:
            self._text(rest, out)
        if self._whitespace and not self.calls:
            out.append(Text(self._whitespace))
        self._whitespace = ""
        return out

    # -- text ------------------------------------------------------------------------------------
    def _text(self, text: str, out: list[Output]) -> None:
        if not text:
            return
        if not text.strip():
            self._whitespace += text  # e.g. the newline between two calls
            return
        out.append(Text(self._whitespace + text))
        self._whitespace = ""

    # -- calls -----------------------------------------------------------------------------------
    def _stream(self, out: list[Output]) -> None:
        if not self.stream_arguments:
            return
        if self._streaming is None:
            head = _JSON_HEAD.match(self._body)
            if head is None:
                return
            try:
                name = json.loads(f'"{head.group(1)}"')
            except ValueError:
                return
            self._streaming = _ArgumentStream(name, head.end())
            out.append(CallStart(len(self.calls), name))
        piece = self._streaming.advance(self._body)
        if piece:
            out.append(CallArguments(len(self.calls), piece))

    def _close(self, out: list[Output]) -> None:
        self._in_call = False
        streaming, self._streaming = self._streaming, None
        if streaming is not None:
            piece = streaming.advance(self._body)
            if piece:
                out.append(CallArguments(len(self.calls), piece))
            if _parse_json_body(self._body) is None:
                log.warning("a constrained tool call did not parse: %r", self._body[:200])
            self.calls.append(ParsedCall(streaming.name, streaming.text))
            return
        parsed = _parse_json_body(self._body) if self.fmt.json_body else _parse_native(self.fmt, self._body)
        if not parsed:
            self.invalid += 1
            self._text(self.fmt.start + self._body + self.fmt.end, out)
            return
        for call in parsed:
            index = len(self.calls)
            out.append(CallStart(index, call.name))
            out.append(CallArguments(index, call.arguments))
            self.calls.append(call)


class _ArgumentStream:
    """The arguments value of a JSON body, passed on as it grows, up to where the value ends."""

    def __init__(self, name: str, begins_at: int):
        self.name = name
        self.begins_at = begins_at
        self.text = ""
        self._seen = 0  # characters of the value region looked at
        self._depth = 0
        self._in_string = self._escaped = self._done = False

    def advance(self, body: str) -> str:
        region = body[self.begins_at :]
        piece = []
        for char in region[self._seen :]:
            self._seen += 1
            if self._done:
                break
            if not self.text and not piece and char.isspace():
                continue
            piece.append(char)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
                    self._done = self._depth == 0
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                self._done = self._depth == 0
        text = "".join(piece)
        self.text += text
        return text


def _parse_json_body(body: str) -> list[ParsedCall] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return _calls([value])


def _parse_native(fmt: ToolFormat, body: str) -> list[ParsedCall] | None:
    try:
        parsed = fmt.parse_body(body)
    except Exception:  # noqa: BLE001 - mlx-lm's parsers raise many kinds; all mean "not a call"
        return None
    return _calls(parsed if isinstance(parsed, list) else [parsed])


def _calls(values: list) -> list[ParsedCall] | None:
    """Calls from parsed {"name", "arguments" (or "parameters")} objects; None unless all are well formed."""
    calls = []
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the beginning of `tag` (held back: it may grow into it)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
