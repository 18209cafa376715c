"""The workbench app: agents on the left, grouped by where they come from (forks under the agent they were
forked from), the selected agent's conversation on the right; F3 opens the memory overview.

The engine runs on its own thread; model loading and disk reads run in worker threads; the engine's
events arrive as messages. Nothing here blocks the UI thread.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Footer, Header, Input, ListView, Markdown, Static

from engine.events import PrefillProgress, TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.session_ids import id_problem
from engine.sessions import Session
from workbench.format import turn_footer
from workbench.tui.dialogs import AskName, Confirm
from workbench.tui.help_screen import HelpScreen
from workbench.tui.inspector import InspectorScreen
from workbench.tui.messages import (
    AgentsLoaded,
    EngineEvent,
    ModelFailed,
    ModelReady,
    Problem,
    SwapProgress,
    TranscriptLoaded,
    TurnRecorded,
)
from workbench.tui.model_screen import ModelScreen
from workbench.tui.overview import OverviewScreen
from workbench.tui.sidebar import counted, filtered, sidebar_items
from workbench.tui.turn_log import TurnRecord, for_agent


class WorkbenchApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "agent-memory"
    BINDINGS = [
        # Early: a narrow footer cuts off what comes last
        Binding("f1", "help", "Help"),
        Binding("f3", "memory", "Memory"),
        Binding("ctrl+n", "new_agent", "New agent"),
        Binding("f2", "rename_agent", "Rename"),
        Binding("f5", "fork_agent", "Fork"),  # not a letter: the message box has the focus
        Binding("f6", "toggle_pin", "Pin"),
        Binding("f7", "inspector", "Inspect"),
        Binding("f8", "delete_agent", "Delete"),  # not Ctrl+D: the input box uses it
        Binding("f4", "model", "Model"),
        # Over the input boxes' own Ctrl+F (delete a word)
        Binding("ctrl+f", "find_agent", "Filter the agents (or type in the agent list)", show=False, priority=True),
        Binding("escape", "stop_reply", "Stop the running reply (it is not kept)", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]
    # Command palette entries: (title, help, action)
    PALETTE = [
        ("New agent", "Create an agent and switch to it", "new_agent"),
        ("Rename agent", "Rename the selected agent", "rename_agent"),
        ("Fork agent", "A new agent that starts where the selected one is, sharing its KV cache", "fork_agent"),
        (
            "Pin or unpin agent",
            "Keep the selected agent's KV cache: evicted last, never by the disk budget",
            "toggle_pin",
        ),
        ("Delete agent", "Delete the selected agent, its transcript and caches", "delete_agent"),
        (
            "Memory overview",
            "Every agent's KV blocks, budgets, time to first token, evictions, forks",
            "memory",
        ),
        ("Memory inspector", "The selected agent's blocks, forks, and time to first token", "inspector"),
        ("Filter agents", "Type to narrow the agent list", "find_agent"),
        ("Model", "The serving model; swap to another", "model"),
        ("Stop reply", "Stop the running reply", "stop_reply"),
        ("Help", "Every key binding", "help"),
    ]

    def __init__(self, source, initial_agent: str | None = None):
        super().__init__()
        self.source = source
        self.agent_id = initial_agent
        self.rows: list[dict] = []
        self.ready = False
        self.summary: dict = {}
        self.handle = None  # the running turn
        self.turns: list[TurnRecord] = []  # this run's turns, every agent's, oldest first
        self.evictions_before = 0  # the hot tier's evictions when the model came up
        self._stream = None
        self._reply: Markdown | None = None
        self._turn_widgets: list = []  # the running turn's message and reply in the log
        self._pending_text = ""
        self._generating = False  # the running reply's first text has arrived
        self._shown_agent: str | None = None  # whose transcript the log shows
        self._session = None  # the shown agent's transcript, once loaded
        # Agents made with Ctrl+N have no transcript until their first turn: listed from here till then
        self._new_agents: list[str] = []

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Input(placeholder="filter agents (Ctrl+F)", id="filter", select_on_focus=False)
                yield ListView(id="agents")
            with Vertical(id="main"):
                yield VerticalScroll(id="log")
                yield Static("Loading model…", id="status")
                yield Input(placeholder="Message (Enter sends, Esc stops a reply)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()
        self.load_model()

    # -- workers (threads) -----------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="model")
    def load_model(self) -> None:
        def waiting(why: str) -> None:
            self.post_message(SwapProgress(f"Loading model… {why}; trying again"))

        try:
            summary = self.source.start(waiting)
            self.post_message(ModelReady(summary, self.evictions_now()))
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self.post_message(ModelFailed(str(exc)))

    def evictions_now(self) -> int:
        """The hot tier's evictions so far (worker thread); 0 when the pool cannot be read."""
        try:
            return self.source.pool().hot.evictions
        except Exception:  # noqa: BLE001 - a chart's count is not worth failing a turn or the model for
            return 0

    @work(thread=True, exclusive=True, group="agents")
    def refresh_agents(self) -> None:
        self.post_agents()

    def post_agents(self) -> None:
        """Read the agent list (worker thread) and post it, or post why it cannot be read."""
        try:
            self.post_message(AgentsLoaded(self.source.agents()))
        except Exception as exc:  # noqa: BLE001 - shown: a server gone, a refused API key
            self.post_message(Problem(Content.from_markup("[red]Cannot list the agents:[/] $error", error=str(exc))))

    # -- model and agent list --------------------------------------------------------------------
    def on_model_ready(self, message: ModelReady) -> None:
        self.ready = True
        summary = self.summary = message.summary
        self.evictions_before = message.evictions
        if isinstance(self.screen, ModelScreen):
            self.screen.show_summary(summary)
        self.sub_title = f"{summary['model_id']} · {summary['backend']} · {summary['context_length']} ctx"
        self.set_status("Ready: $model. Ctrl+N creates an agent; type to talk.", model=summary["model_id"])
        self.refresh_agents()

    def on_model_failed(self, message: ModelFailed) -> None:
        self.set_status("[red]Model failed to load:[/] $error", error=message.error)

    def on_agents_loaded(self, message: AgentsLoaded) -> None:
        if self.closing():
            return
        self.rows = message.rows
        if self.agent_id is None and self.rows:
            self.select_agent(self.rows[0]["id"])
        elif self.agent_id is not None and self._shown_agent != self.agent_id:
            self.select_agent(self.agent_id)  # the agent named on the command line
        self.render_agents()

    def render_agents(self) -> None:
        rows = list(self.rows)
        known = {r["id"] for r in self.rows}
        self._new_agents = [agent_id for agent_id in self._new_agents if agent_id not in known]
        for agent_id in dict.fromkeys([*self._new_agents, self.agent_id]):
            if agent_id and agent_id not in known:
                rows.insert(0, {"id": agent_id, "tier": "cold", "tokens": 0, "turns": 0})
        view = self.query_one("#agents", ListView)
        view.clear()
        items = sidebar_items(filtered(rows, self.query_one("#filter", Input).value))
        view.extend(items)
        for index, item in enumerate(items):
            if item.name is not None and item.name == self.agent_id:
                view.index = index

    @on(Input.Changed, "#filter")
    def filter_changed(self) -> None:
        self.render_agents()

    @on(Input.Submitted, "#filter")
    def filter_submitted(self) -> None:
        """Enter in the filter opens the first agent it lists, and goes back to the message box."""
        first = next((item.name for item in self.query_one("#agents", ListView).children if item.name), None)
        if first is not None and first != self.agent_id:
            self.select_agent(first)
            self.render_agents()
        self.query_one("#prompt", Input).focus()

    def action_find_agent(self) -> None:
        self.query_one("#filter", Input).focus()

    def on_key(self, event) -> None:
        """Typing in the agent list types into its filter."""
        if event.is_printable and event.character and self.focused is self.query_one("#agents", ListView):
            search = self.query_one("#filter", Input)
            search.focus()
            search.insert_text_at_cursor(event.character)
            event.stop()

    @on(ListView.Selected, "#agents")
    def agent_chosen(self, event: ListView.Selected) -> None:
        if event.item.name and event.item.name != self.agent_id:
            self.select_agent(event.item.name)

    def select_agent(self, agent_id: str) -> bool:
        """Show `agent_id`'s transcript. Refused (False) while a reply runs: the reply, its log and the
        transcript it is kept in belong to the agent shown, until it finishes or is stopped."""
        if self.reply_running():
            self.render_agents()  # the list's highlight back on the agent shown
            return False
        self.agent_id = self._shown_agent = agent_id
        self._session = None
        self.query_one("#log", VerticalScroll).remove_children()
        self.set_status("Opening $agent…", agent=agent_id)
        self.load_transcript(agent_id)
        return True

    @work(thread=True, exclusive=True, group="transcript")
    def load_transcript(self, agent_id: str) -> None:
        try:
            self.post_message(TranscriptLoaded(self.source.session(agent_id)))
        except Exception as exc:  # noqa: BLE001 - an unreadable transcript is shown, not fatal
            self.post_message(
                Problem(Content.from_markup("[red]Cannot open $agent:[/] $error", agent=agent_id, error=str(exc)))
            )

    async def on_transcript_loaded(self, message: TranscriptLoaded) -> None:
        session = message.session
        if session.id != self.agent_id or self._session is not None or self.closing():
            return  # the user moved on to another agent meanwhile, or back to this one and it came already
        self._session = session
        log = self.query_one("#log", VerticalScroll)
        await log.mount_all([widget for m in session.messages for widget in message_widgets(m.role, m.content)])
        log.scroll_end(animate=False)
        self.set_status("Agent $agent: $turns.", agent=session.id, turns=counted(session.turns, "turn"))

    @work(thread=True, group="keep")
    def keep_turn(self, session, text: str, finished: TurnFinished) -> None:
        try:
            self.source.keep(session, text, finished)
        except Exception as exc:  # noqa: BLE001 - shown: a full disk, a server gone
            self.post_message(Problem(Content.from_markup("[red]The turn was not kept:[/] $error", error=str(exc))))
            return
        evictions = self.evictions_now()
        cache = finished.cache
        self.post_message(
            TurnRecorded(TurnRecord(session.id, cache.source, cache.decision, finished.timing.ttft_s, evictions))
        )
        self.post_agents()

    async def kept(self) -> None:
        """Wait for the last reply's transcript write, which would otherwise bring back an agent deleted,
        renamed or forked meanwhile (or leave the reply out of a fork's copy)."""
        for worker in [w for w in self.workers if w.group == "keep"]:
            await worker.wait()

    def on_turn_recorded(self, message: TurnRecorded) -> None:
        self.turns.append(message.turn)

    # -- a turn ----------------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not self.ready:
            self.set_status("The model is still loading…")
            return
        if self.reply_running():
            return
        if any(worker.group == "agent" for worker in self.workers):
            # A rename, fork or delete under way: the turn would go to an agent about to change
            self.set_status("The agent is being changed; send again in a moment.")
            return
        if self.agent_id is None:  # no agent yet: this message creates one, under an id no agent has
            taken = {row["id"] for row in self.rows} | set(self._new_agents)
            self.agent_id = self._shown_agent = free_id(time.strftime("agent-%H%M%S"), taken)
            self._session = Session(id=self.agent_id)
        if self._session is None:
            self.set_status("Opening the agent; send again in a moment.")
            return
        event.input.value = ""
        log = self.query_one("#log", VerticalScroll)
        reply = message_widgets("assistant", "")
        self._reply = reply[-1]
        self._turn_widgets = [*message_widgets("user", text), *reply]
        await log.mount_all(self._turn_widgets)
        log.scroll_end(animate=False)
        self._stream = Markdown.get_stream(self._reply)
        self._pending_text = text
        self._generating = False
        self.handle = self.source.send(self._session, text, lambda e: self.post_message(EngineEvent(e)))
        self.set_status("Thinking…")

    async def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if self.handle is None or event.request_id != self.handle.request_id:
            return
        log = self.query_one("#log", VerticalScroll)
        if isinstance(event, TurnStarted):
            cached = event.cache.reused_tokens
            source = f"{cached} cached ({event.cache.source})" if cached else "cold"
            missed = f"; {event.cache.miss_reason}" if event.cache.miss_reason else ""
            # The cache's words may come from a server: text, not markup
            self.set_status(
                "Prefilling $tokens tokens, $source…", tokens=event.prompt_tokens - cached, source=source + missed
            )
        elif isinstance(event, PrefillProgress):
            self.set_status(f"Prefilling: {event.done_tokens} of {event.total_tokens} prompt tokens…")
        elif isinstance(event, TurnChunk):
            if not self._generating:  # the prompt is read: say so once, not at every piece
                self._generating = True
                self.set_status("Generating… (Esc stops)")
            follow = log.max_scroll_y - log.scroll_y < 3
            await self._stream.write(event.text)
            if follow:
                log.scroll_end(animate=False)
        elif isinstance(event, TurnFinished):
            await self._stream.stop()
            self.handle = None
            self.keep_turn(self._session, self._pending_text, event)
            turns = self._session.turns + (event.finish_reason != "cancelled")
            footer = turn_footer(event) + (" [stopped]" if event.finish_reason == "cancelled" else "")
            await log.mount(Static(footer, classes="turn-footer", markup=False))
            log.scroll_end(animate=False)
            self.set_status("Agent $agent: $turns.", agent=self.agent_id, turns=counted(turns, "turn"))
        elif isinstance(event, TurnFailed):
            await self._stream.stop()
            self.handle = None
            # Nothing was stored: the log drops the turn, and the message goes back to be sent again
            await log.remove_children(self._turn_widgets)
            prompt = self.query_one("#prompt", Input)
            if not prompt.value:
                prompt.value = self._pending_text
            self.set_status("[red]Error:[/] $error", error=event.message)

    def action_stop_reply(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.set_status("Stopping…")

    def closing(self) -> bool:
        """The app is shutting down: its widgets are gone, and a worker's late answer has nothing to show."""
        return not self.query("#log")

    def set_status(self, markup: str | Content, **values) -> None:
        """Show `markup` in the status line, each `$name` in it replaced by `values[name]` as plain text
        (agent ids, model ids and errors are not markup)."""
        self.query_one("#status", Static).update(Content.from_markup(markup, **values))

    def report(self, markup: str | Content, **values) -> None:
        """A failed call to the source, in the status line and, where another screen hides that, in a
        notification too. The app keeps running: the next call may succeed."""
        self.set_status(markup, **values)
        if len(self.screen_stack) > 1:
            self.notify(Content.from_markup(markup, **values).plain, severity="error", timeout=10, markup=False)

    def on_problem(self, message: Problem) -> None:
        self.report(message.text)

    def id_refused(self, agent_id: str) -> bool:
        """True, with the reason in the status line, for an id that the API and the CLI refuse too."""
        problem = id_problem(agent_id)
        if problem is not None:
            self.set_status("[red]Not a usable agent id:[/] $problem", problem=problem)
        return problem is not None

    def reply_running(self) -> bool:
        """True, and said, while a reply runs: agents are not switched, renamed or deleted under it."""
        if self.handle is not None:
            self.set_status("A reply is running; Esc stops it.")
        return self.handle is not None

    # -- agent actions ---------------------------------------------------------------------------
    @work
    async def action_new_agent(self) -> None:
        if self.reply_running():
            return
        name = await self.push_screen_wait(AskName("New agent name:", time.strftime("agent-%H%M%S")))
        if not name or self.id_refused(name):
            return
        exists = name in self._new_agents or any(row["id"] == name for row in self.rows)
        if not self.select_agent(name):
            return
        if exists:
            self.notify(f"{name} exists already: opened it.", title="New agent", markup=False)
        else:
            self._new_agents.append(name)
        self.render_agents()

    @work(group="agent")
    async def action_rename_agent(self) -> None:
        if self.agent_id is None or self.reply_running():
            return
        old = self.agent_id
        name = await self.push_screen_wait(AskName(f"Rename {old} to:", old))
        if not name or name == old or self.id_refused(name):
            return
        await self.kept()
        try:
            await self.run_in_thread(self.source.rename, old, name)
        except Exception as exc:  # noqa: BLE001 - shown: an id taken, an unknown agent, no server
            self.report("[red]Cannot rename $old:[/] $error", old=old, error=str(exc))
            return
        self.select_agent(name)
        self.refresh_agents()

    @work(group="agent")
    async def action_fork_agent(self) -> None:
        if self.agent_id is None:
            return
        if not self.ready:
            self.set_status("The model is still loading; fork when it is ready.")
            return
        if self.handle is not None:
            self.set_status("A reply is running; fork when it is done (Esc stops it).")
            return
        parent = self.agent_id
        taken = {row["id"] for row in self.rows}
        name = await self.push_screen_wait(AskName(f"Fork {parent} as:", free_id(f"{parent}-fork", taken)))
        if not name or self.id_refused(name):
            return
        await self.kept()  # so that the fork's copy has the last reply
        try:
            snapshots = await self.run_in_thread(self.source.fork, parent, name)
        except Exception as exc:  # noqa: BLE001 - shown: an id taken, an unknown agent, no server
            message = f"Cannot fork {parent} as {name}: {exc}"
            self.notify(message, title="Fork", severity="error", timeout=10, markup=False)
            return
        shared = "its KV cache shared" if snapshots else "no KV cache to share yet (its next turn is prefilled)"
        self.notify(f"Forked {parent} as {name}: transcript copied, {shared}.", title="Fork", markup=False)
        self.select_agent(name)
        self.refresh_agents()

    @work
    async def action_toggle_pin(self) -> None:
        if self.agent_id is None or not self.ready:
            return
        agent_id = self.agent_id
        row = next((r for r in self.rows if r["id"] == agent_id), {})
        pinned = not row.get("pinned", False)
        try:
            await self.run_in_thread(self.source.set_pinned, agent_id, pinned)
        except Exception as exc:  # noqa: BLE001 - shown: an agent with nothing stored yet, no server
            self.notify(f"Cannot pin {agent_id}: {exc}", title="Pin", severity="error", timeout=10, markup=False)
            return
        what = "pinned: its KV cache is evicted last" if pinned else "unpinned"
        self.notify(f"{agent_id} {what}.", title="Pin", markup=False)
        self.refresh_agents()

    @work(group="agent")
    async def action_delete_agent(self) -> None:
        if self.agent_id is None or self.reply_running():
            return
        agent_id = self.agent_id
        if not await self.push_screen_wait(Confirm(f"Delete agent {agent_id}, its transcript and its caches?")):
            return
        await self.kept()
        try:
            await self.run_in_thread(self.source.delete, agent_id)
        except Exception as exc:  # noqa: BLE001 - shown: a server gone, a refused API key
            self.report("[red]Cannot delete $agent:[/] $error", agent=agent_id, error=str(exc))
            return
        self._new_agents = [new for new in self._new_agents if new != agent_id]
        self.agent_id = None
        self.query_one("#log", VerticalScroll).remove_children()
        self.set_status("Deleted $agent.", agent=agent_id)
        self.refresh_agents()

    def action_inspector(self) -> None:
        if not isinstance(self.screen, InspectorScreen):
            self.open_inspector(self.agent_id, instead=True)

    @work
    async def open_inspector(self, agent_id: str | None, instead: bool = False) -> None:
        """The inspector of one agent: the sidebar's (F7; `instead` of the screen open) or the overview's
        highlighted one (Enter: Escape goes back to the overview)."""
        if not self.ready:
            return
        try:
            inspection = await self.run_in_thread(self.source.inspect, agent_id)
        except Exception as exc:  # noqa: BLE001 - shown: a server gone
            self.report("[red]Cannot inspect the memory:[/] $error", error=str(exc))
            return
        await self.open_screen(InspectorScreen(inspection, for_agent(self.turns, agent_id), self.rows), instead)

    async def open_screen(self, screen, instead: bool = True) -> None:
        """Open `screen`; `instead` of the screens open over the main one (F3, F4 and F7 switch between
        them: Escape then goes back to the conversation, not to the screen before)."""
        while instead and len(self.screen_stack) > 1:
            await self.pop_screen()
        await self.push_screen(screen)

    @work
    async def action_memory(self) -> None:
        if not self.ready or isinstance(self.screen, OverviewScreen):
            return
        try:
            overview = await self.run_in_thread(self.source.overview)
        except Exception as exc:  # noqa: BLE001 - shown: a server gone
            self.report("[red]Cannot read the memory:[/] $error", error=str(exc))
            return
        await self.open_screen(OverviewScreen(overview, self.turns, self.evictions_before))

    @work(exclusive=True, group="overview")
    async def reload_overview(self, screen: OverviewScreen) -> None:
        """Read the memory again for the open overview `screen`."""
        if not self.ready:
            return
        try:
            overview = await self.run_in_thread(self.source.overview)
        except Exception as exc:  # noqa: BLE001 - shown once, not at every refresh: a server gone
            if screen.problem != str(exc):
                self.report("[red]Cannot read the memory:[/] $error", error=str(exc))
            screen.problem = str(exc)
            return
        screen.problem = None
        if self.screen is screen:
            await screen.show(overview, self.turns)

    @work
    async def action_model(self) -> None:
        if not self.summary or isinstance(self.screen, ModelScreen):
            return
        try:
            choices = await self.run_in_thread(self.source.model_choices)
        except Exception as exc:  # noqa: BLE001 - shown; the screen opens without choices
            self.set_status("No models to swap to: $error", error=str(exc))
            choices = []
        await self.open_screen(ModelScreen(self.summary, choices))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.BINDINGS))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for title, help_text, action in self.PALETTE:
            yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))

    @work(thread=True, exclusive=True, group="model")
    def swap_model(self, model_id: str) -> None:
        if self.handle is not None:
            self.post_message(SwapProgress("A reply is running; stop it (Esc) or wait, then swap."))
            return
        self.ready = False
        self.post_message(SwapProgress(f"Swapping to {model_id}…"))

        def progress(stage: str, done: int, total: int) -> None:
            self.post_message(SwapProgress(f"{stage}: {100 * done // max(total, 1)}%"))

        try:
            summary = self.source.swap(model_id, progress)
        except Exception as exc:  # noqa: BLE001 - shown; the old model keeps serving
            self.ready = True
            self.post_message(SwapProgress(f"Swap failed: {exc}"))
            return
        self.post_message(ModelReady(summary, self.evictions_now()))

    def on_swap_progress(self, message: SwapProgress) -> None:
        self.set_status(Content(message.text))
        if isinstance(self.screen, ModelScreen):
            self.screen.show_progress(message.text)

    async def run_in_thread(self, function, *args):
        import asyncio

        return await asyncio.to_thread(function, *args)

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None, time_format=None):
        """The palette's Screenshot: Textual saves into the Downloads folder, which servers and containers
        often lack (it then fails); there, into the working directory."""
        if path is None:
            from platformdirs import user_downloads_path

            downloads = user_downloads_path()
            path = str(downloads if downloads.is_dir() else Path.cwd())
        return super().deliver_screenshot(filename, path, time_format)

    def on_unmount(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.source.close()


ROLE_LABELS = {"user": "you", "assistant": "assistant", "system": "system"}


def message_widgets(role: str, text: str) -> list:
    """A message in the log: who said it, then what was said."""
    return [Static(ROLE_LABELS.get(role, role), classes="role", markup=False), Markdown(text, classes=role)]


def free_id(wanted: str, taken: set[str]) -> str:
    """`wanted`, or with the first number after it that no agent has."""
    number = 2
    candidate = wanted
    while candidate in taken:
        candidate, number = f"{wanted}-{number}", number + 1
    return candidate
