"""`agent-memory batch jobs.jsonl -o results.jsonl`: many requests through the engine's batching scheduler.

Each input line is one job; results are written as they finish, one line each. A rerun skips the jobs
already in the output, so an interrupted run resumes. A bad line is reported in the output with its line
number and skipped.
"""

from __future__ import annotations

import contextlib
import json
import queue
from dataclasses import dataclass
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import EngineBusy, EngineError
from engine.events import TurnFailed, TurnFinished
from engine.requests import ChatMessage, GenerationRequest, SamplingParams, ToolSpec
from engine.session_ids import has_surrogate, id_problem
from engine.settings import Settings
from workbench.format import json_result
from workbench.output import report_error
from workbench.progress import ModelProgress


class BatchJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    session: str | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: int = Field(default=256, ge=1)
    # None: the model's default (engine.sampling.model_sampling_defaults), as for chat and the APIs
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    # ToolSpec objects ({"name", "description", "parameters"}) or OpenAI's {"type": "function", "function": ...}
    tools: list[ToolSpec] = Field(default_factory=list)
    # "auto", "required", "none", or the name of the tool to call
    tool_choice: str = "auto"

    @field_validator("session")
    @classmethod
    def _session_id(cls, session: str | None) -> str | None:
        if not session:
            return None  # "" as absent: a job without an agent
        problem = id_problem(session)
        if problem is not None:
            raise ValueError(problem)
        return session

    @field_validator("tools", mode="before")
    @classmethod
    def _openai_tool_shape(cls, tools):
        if tools is None:
            return []
        if not isinstance(tools, list):
            return tools
        return [t["function"] if isinstance(t, dict) and t.get("type") == "function" else t for t in tools]

    @model_validator(mode="after")
    def _one_input(self) -> BatchJob:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        return self

    def request(self) -> GenerationRequest:
        messages = self.messages or [ChatMessage(role="user", content=self.prompt)]
        return GenerationRequest(
            messages=messages,
            max_tokens=self.max_tokens,
            sampling=SamplingParams(temperature=self.temperature),  # the rest: the model's defaults
            session_id=self.session,
            tools=self.tools,
            tool_choice=self.tool_choice if self.tool_choice in ("auto", "required", "none") else "required",
            tool_name=None if self.tool_choice in ("auto", "required", "none") else self.tool_choice,
        )


@dataclass
class _Line:
    number: int
    key: str  # the job id, or "line:N" for a line without one
    job: BatchJob | None = None
    error: str | None = None


def read_jobs(jobs: str) -> list[_Line]:
    """The jobs file's lines: each a job, or the error it is reported with (a job id used by an earlier
    line is one: results are matched to jobs by id)."""
    lines = []
    first_line_of: dict[str, int] = {}
    for number, text in enumerate(jobs.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            lines.append(_Line(number, f"line:{number}", error=f"line {number}: not JSON ({exc.msg})"))
            continue
        key = str(data["id"]) if isinstance(data, dict) and data.get("id") not in (None, "") else f"line:{number}"
        if has_surrogate(key):
            lines.append(_Line(number, f"line:{number}", error=f"line {number}: id: the id is not valid UTF-8 text"))
            continue
        if key in first_line_of:
            error = f"line {number}: id {key!r} is the id of line {first_line_of[key]} already"
            lines.append(_Line(number, f"line:{number}", error=error))
            continue
        first_line_of[key] = number
        try:
            job = BatchJob.model_validate(data)
            job.request()  # the engine's own checks (empty message, ...)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            lines.append(_Line(number, key, error=f"line {number}: {where + ': ' if where else ''}{message}"))
            continue
        lines.append(_Line(number, key, job=job))
    return lines


def done_keys(results: str) -> set[str]:
    """Jobs already in the output (a torn last line from a killed run is ignored)."""
    keys = set()
    for text in results.splitlines():
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            keys.add(str(row["id"]))
    return keys


def run_batch(settings: Settings, jobs_path: Path, output_path: Path) -> int:
    existed = output_path.exists()
    try:
        return _checked_and_run(settings, jobs_path, output_path)
    finally:
        # The output is opened before the model loads, to find a mistake early; a run that wrote nothing
        # (no jobs, a model that did not load) leaves no empty file behind.
        with contextlib.suppress(OSError):
            if not existed and output_path.is_file() and output_path.stat().st_size == 0:
                output_path.unlink()


def _checked_and_run(settings: Settings, jobs_path: Path, output_path: Path) -> int:
    if not jobs_path.is_file():
        return report_error(f"no such file: {jobs_path}")
    # Both files are checked before the model loads: a mistake costs no wait
    try:
        lines = read_jobs(jobs_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return report_error(f"cannot read the jobs in {jobs_path}: {exc}")
    try:
        with output_path.open("a+", encoding="utf-8") as output:  # made if new; its results so far if not
            output.seek(0)
            finished_keys = done_keys(output.read())
    except (OSError, UnicodeDecodeError) as exc:
        return report_error(f"cannot write the results to {output_path}: {exc}")
    todo = [line for line in lines if line.key not in finished_keys]
    skipped = len(lines) - len(todo)
    if not todo:
        typer.echo(f"Nothing to do: all {len(lines)} jobs are in {output_path}.", err=True)
        return 0

    from engine.engine import Engine

    progress_bar = ModelProgress()
    engine = Engine(settings, progress=progress_bar)
    try:
        engine.start()
    except EngineError as exc:
        return report_error(str(exc))
    finally:
        progress_bar.close()
    try:
        failures = _run(engine, todo, output_path, skipped)
    finally:
        engine.close()
    return 1 if failures else 0


def _run(engine, todo: list[_Line], output_path: Path, skipped: int) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    results: queue.Queue = queue.Queue()
    pending = [line for line in todo if line.job is not None]
    failures = 0
    # Enough in flight to keep the batch full, never more than the engine's queue takes.
    in_flight_limit = max(1, engine.settings.mlx_max_batch_size * 2)
    in_flight: dict[str, _Line] = {}
    with (
        output_path.open("a", encoding="utf-8") as output,
        Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        ) as progress,
    ):
        task = progress.add_task("jobs", total=len(todo), rate="")

        def write(row: dict) -> None:
            output.write(json.dumps(row, ensure_ascii=False) + "\n")
            output.flush()
            progress.advance(task)

        for line in todo:
            if line.error is not None:
                failures += 1
                write({"id": line.key, "line": line.number, "error": line.error})
        tokens = 0
        started = progress.get_time()
        while pending or in_flight:
            while pending and len(in_flight) < in_flight_limit:
                line = pending[0]
                try:
                    engine.submit(line.job.request(), on_event=lambda event, key=line.key: results.put((key, event)))
                except EngineBusy:
                    break
                pending.pop(0)
                in_flight[line.key] = line
            key, event = results.get()
            if not isinstance(event, TurnFinished | TurnFailed):
                continue
            line = in_flight.pop(key)
            if isinstance(event, TurnFailed):
                failures += 1
                write({"id": line.key, "line": line.number, "error": event.message})
                continue
            tokens += event.usage.completion_tokens
            elapsed = max(progress.get_time() - started, 1e-6)
            progress.update(task, rate=f"{tokens / elapsed:.1f} tok/s")
            write({"id": line.key, **json_result(line.job.session or "", event), "session": line.job.session})
    done = len(todo) - failures
    note = f", {skipped} already done" if skipped else ""
    typer.echo(f"{done} jobs done, {failures} failed{note}: {output_path}", err=True)
    return failures
