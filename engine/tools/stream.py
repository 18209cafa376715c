"""A tool-offering turn's events as text and tool-call events: the engine's one place where parsed calls
become TurnChunk / ToolCallStart / ToolCallDelta and a TurnFinished with `tool_calls`."""

from __future__ import annotations

import dataclasses
import uuid

from engine.events import ToolCallDelta, ToolCallStart, TurnChunk, TurnEvent, TurnFinished
from engine.requests import GenerationRequest, ToolCall
from engine.tools.formats import tool_format
from engine.tools.parser import CallArguments, CallStart, Output, Text, ToolCallParser


class ToolCallStream:
    def __init__(self, request: GenerationRequest, tokenizer):
        fmt = tool_format(tokenizer, constrained=request.constrained)
        # Arguments stream as written only when a grammar guarantees they parse.
        self.parser = ToolCallParser(fmt, stream_arguments=request.constrained)
        self.call_ids: list[str] = []
        self.text: list[str] = []

    def __call__(self, event: TurnEvent) -> list[TurnEvent]:
        if isinstance(event, TurnChunk):
            return self._events(event.request_id, self.parser.feed(event.text))
        if isinstance(event, TurnFinished):
            events = self._events(event.request_id, self.parser.finish())
            calls = tuple(
                ToolCall(id=call_id, name=call.name, arguments=call.arguments)
                for call_id, call in zip(self.call_ids, self.parser.calls, strict=True)
            )
            reason = "tool_calls" if calls and event.finish_reason in ("stop", "stop_sequence") else event.finish_reason
            finished = dataclasses.replace(
                event,
                text="".join(self.text),
                finish_reason=reason,
                tool_calls=calls,
                invalid_tool_calls=self.parser.invalid,
            )
            return [*events, finished]
        return [event]

    def _events(self, request_id: str, outputs: list[Output]) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for output in outputs:
            if isinstance(output, Text):
                self.text.append(output.text)
                events.append(TurnChunk(request_id, output.text))
            elif isinstance(output, CallStart):
                self.call_ids.append(f"call_{uuid.uuid4().hex[:24]}")
                events.append(ToolCallStart(request_id, output.index, self.call_ids[output.index], output.name))
            elif isinstance(output, CallArguments):
                events.append(ToolCallDelta(request_id, output.index, output.text))
        return events


def output_stream(request: GenerationRequest, tokenizer) -> ToolCallStream | None:
    """The shaper for a turn that offers tools; None when its text is passed on as is."""
    return ToolCallStream(request, tokenizer) if request.offers_tools else None
