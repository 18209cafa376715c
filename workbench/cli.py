"""The `agent-memory` command. Heavy imports (MLX, Textual, Sanic) stay inside the commands so that
`--help` and `version` are instant."""

from __future__ import annotations

import errno
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from workbench import __version__
from workbench.output import EXIT_BAD_INPUT, report_error

# Plain help (Click's own layout): Typer's boxed layout labels every flag, --help too, as taking a <bool>
PLAIN_HELP = {"rich_markup_mode": None}
app = typer.Typer(
    name="agent-memory",
    help="A local LLM engine with a persistent per-agent KV cache.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    **PLAIN_HELP,
)
agents_app = typer.Typer(
    help="List, show, fork, pin, export, import, prune and delete agents.", invoke_without_command=True, **PLAIN_HELP
)
app.add_typer(agents_app, name="agents")
cache_app = typer.Typer(help="Inspect, verify and clear the KV cache on disk.", no_args_is_help=True, **PLAIN_HELP)
app.add_typer(cache_app, name="cache")
models_app = typer.Typer(
    help="List, pull and remove models; see what a running server has loaded.",
    invoke_without_command=True,
    **PLAIN_HELP,
)
app.add_typer(models_app, name="models")
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model id: 'default', a .gguf path, an mlx-lm dir or a HF repo id."),
]


def checked_new_id(value: str | None) -> str | None:
    """An id that may name a new session, refused as the API refuses it (engine/session_ids.py)."""
    from engine.session_ids import id_problem

    if value is not None and (problem := id_problem(value)) is not None:
        raise typer.BadParameter(problem)
    return value


def checked_known_id(value: str | None) -> str | None:
    """An id that may name a session already there (to resume, show or change): any text it could have
    been stored under (an id from an earlier version may be empty or long), not bytes that are not UTF-8."""
    from engine.session_ids import has_surrogate

    if value is not None and has_surrogate(value):
        raise typer.BadParameter("the session id is not valid UTF-8 text")
    return value


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    report_error(message)
    return typer.Exit(code)


def settings_or_exit(**overrides):
    from engine.settings import SettingsError, load_settings

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def runs_the_engine() -> None:
    """This process will run the engine: set it up before anything imports MLX (engine/process.py)."""
    import engine

    engine.setup_process()


@app.command()
def version() -> None:
    """Print the version, the MLX backend, its compute dtype and whether a fast BLAS is active."""
    from workbench.platform_info import platform_summary

    typer.echo(f"agent-memory {__version__}")
    for key, value in platform_summary().items():
        typer.echo(f"{key}: {value}")


@app.command()
def chat(
    message: Annotated[str | None, typer.Argument(help="Send one message and exit; omit for interactive chat.")] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="Session (agent) id to use or resume.", callback=checked_known_id),
    ] = None,
    continue_last: Annotated[bool, typer.Option("--continue", "-c", help="Continue the most recent session.")] = False,
    new: Annotated[bool, typer.Option("--new", help="Start the session over (forget its transcript).")] = False,
    system: Annotated[str | None, typer.Option("--system", help="System prompt (kept with the session).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON result object.")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Most tokens to generate.")] = 512,
    # Unset sampling values are the model's defaults (`agent-memory models` shows them).
    temperature: Annotated[
        float | None, typer.Option("--temperature", "-t", min=0.0, max=5.0, help="0 is greedy. [default: the model's]")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="[default: the model's]")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0, help="0 is off. [default: the model's]")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", min=0.0, max=1.0, help="[default: the model's]")] = None,
    repetition_penalty: Annotated[
        float,
        typer.Option(
            "--repetition-penalty", min=0.0, help="Above 1 discourages repeating the answer's tokens; 1 is off."
        ),
    ] = 1.1,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, max=2**64 - 1, help="Random seed for reproducible sampling.")
    ] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence (repeatable).")] = None,
    model: ModelOption = None,
) -> None:
    """Chat with an agent; its conversation is kept under --session and resumed next time."""
    runs_the_engine()
    from workbench.chat import ChatOptions, run_chat

    settings = settings_or_exit(mlx_model_id=model)
    options = ChatOptions(
        message=message,
        session_id=session,
        continue_last=continue_last,
        new=new,
        system=system,
        json_output=json_output,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=stop or [],
    )
    raise typer.Exit(run_chat(settings, options))


@app.command()
def tui(
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Agent to open first.", callback=checked_known_id)
    ] = None,
    model: ModelOption = None,
    connect: Annotated[
        str | None, typer.Option("--connect", help="Attach to a running `agent-memory serve` at this URL.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SEMANTIC_API_KEY", help="The server's API key (--connect).")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option("--admin-key", envvar="SEMANTIC_ADMIN_KEY", help="Admin key, for model swaps.")
    ] = None,
) -> None:
    """The workbench: chat with many agents and look inside their KV memory (Textual)."""
    from workbench.tui.app import WorkbenchApp

    if connect is not None:
        if model is not None:
            raise fail("--model picks the model of this process; with --connect, swap on the Model screen (F4)")
        from workbench.tui.remote import RemoteSource

        source = RemoteSource(connect, api_key=api_key, admin_key=admin_key)
    else:
        runs_the_engine()
        from workbench.tui.source import LocalSource

        source = LocalSource(settings_or_exit(mlx_model_id=model))
    WorkbenchApp(source, initial_agent=session).run()


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 8000,
    model: ModelOption = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level", case_sensitive=False, help="Least severe log lines shown; info: a line per request."
        ),
    ] = LogLevel.info,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Key clients must send (default: SEMANTIC_API_KEY; none: open).")
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size", min=1, max=256, help="Requests decoded at once (SEMANTIC_MLX_MAX_BATCH_SIZE)."
        ),
    ] = None,
    cache_budget_mb: Annotated[
        int | None,
        typer.Option(
            "--cache-budget-mb", min=1, help="KV caches kept in memory, in MB (SEMANTIC_MLX_CACHE_BUDGET_MB)."
        ),
    ] = None,
) -> None:
    """Serve the Anthropic, OpenAI and agent APIs over HTTP (one process, one model in memory)."""
    runs_the_engine()
    from workbench.serve_cmd import run_server

    settings = settings_or_exit(
        mlx_model_id=model, api_key=api_key, mlx_max_batch_size=max_batch_size, mlx_cache_budget_mb=cache_budget_mb
    )
    raise typer.Exit(run_server(settings, host, port, log_level.value))


@app.command()
def batch(
    jobs: Annotated[Path, typer.Argument(help="JSONL file: one job per line ({id, session?, messages|prompt, ...}).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL results, appended as jobs finish.")],
    model: ModelOption = None,
) -> None:
    """Run many requests through the batching scheduler; a rerun skips jobs already in the output."""
    runs_the_engine()
    from workbench.batch_cmd import run_batch

    raise typer.Exit(run_batch(settings_or_exit(mlx_model_id=model), jobs, output))


@models_app.callback()
def models_default(
    ctx: typer.Context,
    model: ModelOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Without a subcommand: the same as `models list`."""
    if ctx.invoked_subcommand is None:
        models_list(model, json_output)


@models_app.command("list")
def models_list(
    model: ModelOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Packaged, prepared (converted) and Hugging Face cache models, their sampling defaults, the platform."""
    from workbench.models_cmd import list_models

    list_models(settings_or_exit(mlx_model_id=model), json_output)


@models_app.command("pull")
def models_pull(
    repo_id: Annotated[str, typer.Argument(metavar="REPO", help="Hugging Face repo id (ORG/NAME).")],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit.")] = None,
) -> None:
    """Download a Hugging Face repo into the hub cache, for `--model REPO` to load offline."""
    from workbench.models_remote import pull_model

    raise typer.Exit(pull_model(settings_or_exit(), repo_id, revision))


@models_app.command("rm")
def models_rm(
    name: Annotated[str, typer.Argument(help="A prepared directory's name or a hub repo id (see `models list`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a prepared model or a hub-cache repo (agents' KV caches for it stay on disk)."""
    from workbench.models_cmd import remove_model

    raise typer.Exit(remove_model(settings_or_exit(), name, yes))


@models_app.command("ps")
def models_ps(
    connect: Annotated[str, typer.Option("--connect", help="The `agent-memory serve` to ask.")] = DEFAULT_SERVER_URL,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SEMANTIC_API_KEY", help="The server's API key.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """What a running server holds: its model and weights, the agents in its hot tier, its requests."""
    from workbench.models_remote import show_running

    raise typer.Exit(show_running(connect, api_key, json_output))


@agents_app.callback()
def agents_default(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Without a subcommand: the same as `agents ls`."""
    if ctx.invoked_subcommand is None:
        agents_ls(json_output)


@agents_app.command("ls")
def agents_ls(json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False) -> None:
    """List sessions: id, turns, tokens, last used."""
    from workbench.agents_cmd import list_agents

    list_agents(settings_or_exit(), json_output)


@agents_app.command("show")
def agents_show(session_id: Annotated[str, typer.Argument(help="Session id.", callback=checked_known_id)]) -> None:
    """Print one session's transcript and metadata."""
    from workbench.agents_cmd import show_agent

    raise typer.Exit(show_agent(settings_or_exit(), session_id))


@agents_app.command("fork")
def agents_fork(
    session_id: Annotated[str, typer.Argument(help="Session id to fork.", callback=checked_known_id)],
    new_id: Annotated[str, typer.Argument(help="The fork's session id (a new one).", callback=checked_new_id)],
) -> None:
    """Fork a session: its transcript copied, its KV cache shared (no block is copied)."""
    from workbench.agents_cmd import fork_agent

    raise typer.Exit(fork_agent(settings_or_exit(), session_id, new_id))


@agents_app.command("rename")
def agents_rename(
    session_id: Annotated[str, typer.Argument(help="Session id to rename.", callback=checked_known_id)],
    new_id: Annotated[str, typer.Argument(help="Its new session id (not in use).", callback=checked_new_id)],
) -> None:
    """Rename a session: its transcript, KV cache and pinning move, so its next turn resumes."""
    from workbench.agents_cmd import rename_agent

    raise typer.Exit(rename_agent(settings_or_exit(), session_id, new_id))


@agents_app.command("export")
def agents_export(
    session_id: Annotated[str, typer.Argument(help="Session id to export.", callback=checked_known_id)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file (or folder) to write (default: ID.agent.tar here).")
    ] = None,
) -> None:
    """Write a session's agent file: its transcript and KV cache, to resume elsewhere without recompute."""
    from workbench.agents_cmd import export_agent_file

    raise typer.Exit(export_agent_file(settings_or_exit(), session_id, output))


@agents_app.command("import")
def agents_import(
    source: Annotated[Path, typer.Argument(help="An agent file (from `agents export`).")],
    new_id: Annotated[
        str | None, typer.Option("--as", help="The session id to import it as.", callback=checked_new_id)
    ] = None,
) -> None:
    """Add the session of an agent file; blocks already stored are not stored twice."""
    from workbench.agents_cmd import import_agent_file

    raise typer.Exit(import_agent_file(settings_or_exit(), source, new_id))


@agents_app.command("pin")
def agents_pin(session_id: Annotated[str, typer.Argument(help="Session id.", callback=checked_known_id)]) -> None:
    """Keep a session's KV caches: evicted last from memory, never by the disk budget."""
    from workbench.agents_cmd import pin_agent

    raise typer.Exit(pin_agent(settings_or_exit(), session_id, True))


@agents_app.command("unpin")
def agents_unpin(session_id: Annotated[str, typer.Argument(help="Session id.", callback=checked_known_id)]) -> None:
    """Let a session's KV caches be evicted like any other's."""
    from workbench.agents_cmd import pin_agent

    raise typer.Exit(pin_agent(settings_or_exit(), session_id, False))


@agents_app.command("prune")
def agents_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Unused for longer than this: 7d, 12h, 30m.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete stale agents (transcripts and KV caches); pinned ones stay."""
    from workbench.agents_cmd import prune_agents

    raise typer.Exit(prune_agents(settings_or_exit(), older_than, dry_run))


@agents_app.command("rm")
def agents_rm(session_id: Annotated[str, typer.Argument(help="Session id.", callback=checked_known_id)]) -> None:
    """Delete a session's transcript and its KV caches (blocks other sessions use stay)."""
    from workbench.agents_cmd import remove_agent

    raise typer.Exit(remove_agent(settings_or_exit(), session_id))


@cache_app.command("stats")
def cache_stats(json_output: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False) -> None:
    """Hot pool limits and the warm tier: files, bytes, dtype, shared bytes saved."""
    from workbench.cache_cmd import show_stats

    show_stats(settings_or_exit(), json_output)


@cache_app.command("check")
def cache_check(
    no_repair: Annotated[bool, typer.Option("--no-repair", help="Only report, change nothing.")] = False,
) -> None:
    """Verify every warm file (checksum and contents) and the index against the files; repair the index."""
    from workbench.cache_cmd import run_check

    raise typer.Exit(run_check(settings_or_exit(), repair=not no_repair))


@cache_app.command("clear")
def cache_clear(yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete every KV block and snapshot on disk (transcripts are kept)."""
    from workbench.cache_cmd import run_clear

    if not yes and not typer.confirm("Delete all stored KV caches?"):
        raise typer.Exit(1)
    raise typer.Exit(run_clear(settings_or_exit()))


FILE_SYSTEM_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)  # its reader is gone (`| head`): nothing to say to it
    except OSError as exc:
        # The data dir read-only, a full disk, no permission: the system's own words, not a traceback
        # (every file is written temp + rename, so what was stored before is intact). Others are bugs.
        if exc.errno not in FILE_SYSTEM_ERRORS:
            raise
        report_error(f"{exc.strerror}: {exc.filename}" if exc.filename else f"{exc.strerror or exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
