"""The workbench app: agents on the left, the selected agent's conversation on the right.

The engine runs on its own thread; model loading and disk reads run in worker threads; the engine's
events arrive as messages. Nothing here blocks the UI thread.
"""

from __future__ import annotations

import time

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Input, Label, ListItem, ListView, Markdown, Static

from engine.events import PrefillProgress, TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.sessions import Session
from workbench.format import turn_footer
from workbench.tui.dialogs import AskName, Confirm
from workbench.tui.help_screen import HelpScreen
from workbench.tui.inspector import InspectorScreen
from workbench.tui.messages import AgentsLoaded, EngineEvent, ModelFailed, ModelReady, SwapProgress, TranscriptLoaded
from workbench.tui.model_screen import ModelScreen

TIER_BADGE = {"hot": "[green]hot [/]", "warm": "[cyan]warm[/]", "cold": "[dim]cold[/]"}


class WorkbenchApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "agent-memory"
    BINDINGS = [
        Binding("ctrl+n", "new_agent", "New agent"),
        Binding("f2", "rename_agent", "Rename"),
        Binding("f8", "delete_agent", "Delete"),  # not Ctrl+D: the input box uses it
        Binding("f3", "inspector", "Memory"),
        Binding("f4", "model", "Model"),
        Binding("f1", "help", "Help"),
        Binding("escape", "stop_reply", "Stop reply (the partial text is not kept)", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]
    # Command palette entries: (title, help, action)
    PALETTE = [
        ("New agent", "Create an agent and switch to it", "new_agent"),
        ("Rename agent", "Rename the selected agent", "rename_agent"),
        ("Delete agent", "Delete the selected agent, its transcript and caches", "delete_agent"),
        ("Memory inspector", "KV pool, the agent's blocks, time to first token", "inspector"),
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
        self.ttfts: dict[str, list[tuple[str, float]]] = {}
        self._stream = None
        self._reply: Markdown | None = None
        self._pending_text = ""
        self._shown_agent: str | None = None  # whose transcript the log shows
        self._session = None  # the shown agent's transcript, once loaded

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Input(placeholder="filter agents", id="filter")
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
        try:
            self.post_message(ModelReady(self.source.start()))
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self.post_message(ModelFailed(str(exc)))

    @work(thread=True, exclusive=True, group="agents")
    def refresh_agents(self) -> None:
        self.post_message(AgentsLoaded(self.source.agents()))

    # -- model and agent list --------------------------------------------------------------------
    def on_model_ready(self, message: ModelReady) -> None:
        self.ready = True
        summary = self.summary = message.summary
        if isinstance(self.screen, ModelScreen):
            self.screen.show_summary(summary)
        self.sub_title = f"{summary['model_id']} · {summary['backend']} · {summary['context_length']} ctx"
        self.set_status(f"Ready: {summary['model_id']}. Ctrl+N creates an agent; type to talk.")
        self.refresh_agents()

    def on_model_failed(self, message: ModelFailed) -> None:
        self.set_status(f"[red]Model failed to load:[/] {message.error}")

    def on_agents_loaded(self, message: AgentsLoaded) -> None:
        self.rows = message.rows
        if self.agent_id is None and self.rows:
            self.select_agent(self.rows[0]["id"])
        elif self.agent_id is not None and self._shown_agent != self.agent_id:
            self.select_agent(self.agent_id)  # the agent named on the command line
        self.render_agents()

    def render_agents(self) -> None:
        text = self.query_one("#filter", Input).value.strip().lower()
        rows = [r for r in self.rows if text in r["id"].lower()]
        if self.agent_id and all(r["id"] != self.agent_id for r in self.rows):
            rows.insert(0, {"id": self.agent_id, "tier": "cold", "tokens": 0, "turns": 0})
        view = self.query_one("#agents", ListView)
        view.clear()
        for row in rows:
            label = f"{row['id']}\n  {TIER_BADGE[row['tier']]} {row['tokens']} tok · {row['turns']} turns"
            view.append(ListItem(Label(label), name=row["id"]))
        for index, row in enumerate(rows):
            if row["id"] == self.agent_id:
                view.index = index

    @on(Input.Changed, "#filter")
    def filter_changed(self) -> None:
        self.render_agents()

    @on(ListView.Selected, "#agents")
    def agent_chosen(self, event: ListView.Selected) -> None:
        if event.item.name and event.item.name != self.agent_id:
            self.select_agent(event.item.name)

    def select_agent(self, agent_id: str) -> None:
        self.agent_id = self._shown_agent = agent_id
        self._session = None
        self.query_one("#log", VerticalScroll).remove_children()
        self.set_status(f"Opening {agent_id}…")
        self.load_transcript(agent_id)

    @work(thread=True, exclusive=True, group="transcript")
    def load_transcript(self, agent_id: str) -> None:
        try:
            self.post_message(TranscriptLoaded(self.source.session(agent_id)))
        except Exception as exc:  # noqa: BLE001 - an unreadable transcript is shown, not fatal
            self.post_message(SwapProgress(f"[red]Cannot open {agent_id}:[/] {exc}"))

    async def on_transcript_loaded(self, message: TranscriptLoaded) -> None:
        session = message.session
        if session.id != self.agent_id:
            return  # the user moved on to another agent meanwhile
        self._session = session
        log = self.query_one("#log", VerticalScroll)
        await log.mount_all([Markdown(m.content, classes=m.role) for m in session.messages])
        log.scroll_end(animate=False)
        self.set_status(f"Agent {session.id}: {session.turns} turns.")

    @work(thread=True, group="keep")
    def keep_turn(self, session, text: str, finished: TurnFinished) -> None:
        self.source.keep(session, text, finished)
        self.post_message(AgentsLoaded(self.source.agents()))

    # -- a turn ----------------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not self.ready:
            self.set_status("The model is still loading…")
            return
        if self.handle is not None:
            self.set_status("A reply is running; Esc stops it.")
            return
        if self.agent_id is None:  # no agent yet: this message creates one
            self.agent_id = self._shown_agent = time.strftime("agent-%H%M%S")
            self._session = Session(id=self.agent_id)
        if self._session is None:
            self.set_status("Opening the agent; send again in a moment.")
            return
        event.input.value = ""
        log = self.query_one("#log", VerticalScroll)
        await log.mount(Markdown(text, classes="user"))
        self._reply = Markdown("", classes="assistant")
        await log.mount(self._reply)
        log.scroll_end(animate=False)
        self._stream = Markdown.get_stream(self._reply)
        self._pending_text = text
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
            self.set_status(f"Prefilling {event.prompt_tokens - cached} tokens, {source}…")
        elif isinstance(event, PrefillProgress):
            self.set_status(f"Prefilling: {event.done_tokens} of {event.total_tokens} prompt tokens…")
        elif isinstance(event, TurnChunk):
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
            self.ttfts.setdefault(self.agent_id, []).append((event.cache.source, event.timing.ttft_s))
            self.set_status(f"Agent {self.agent_id}: {turns} turns.")
        elif isinstance(event, TurnFailed):
            await self._stream.stop()
            self.handle = None
            self.set_status(f"[red]Error:[/] {event.message}")

    def action_stop_reply(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.set_status("Stopping…")

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    # -- agent actions ---------------------------------------------------------------------------
    @work
    async def action_new_agent(self) -> None:
        name = await self.push_screen_wait(AskName("New agent name:", time.strftime("agent-%H%M%S")))
        if name:
            self.select_agent(name)
            self.render_agents()

    @work
    async def action_rename_agent(self) -> None:
        if self.agent_id is None or self.handle is not None:
            return
        name = await self.push_screen_wait(AskName(f"Rename {self.agent_id} to:", self.agent_id))
        if not name or name == self.agent_id:
            return
        try:
            await self.run_in_thread(self.source.rename, self.agent_id, name)
        except (LookupError, ValueError) as exc:
            self.set_status(f"[red]{exc}[/]")
            return
        self.select_agent(name)
        self.refresh_agents()

    @work
    async def action_delete_agent(self) -> None:
        if self.agent_id is None or self.handle is not None:
            return
        agent_id = self.agent_id
        if not await self.push_screen_wait(Confirm(f"Delete agent {agent_id}, its transcript and its caches?")):
            return
        await self.run_in_thread(self.source.delete, agent_id)
        self.agent_id = None
        self.query_one("#log", VerticalScroll).remove_children()
        self.set_status(f"Deleted {agent_id}.")
        self.refresh_agents()

    @work
    async def action_inspector(self) -> None:
        if not self.ready or isinstance(self.screen, InspectorScreen):
            return
        inspection = await self.run_in_thread(self.source.inspect, self.agent_id)
        await self.push_screen(InspectorScreen(inspection, self.ttfts.get(self.agent_id, [])))

    @work
    async def action_model(self) -> None:
        if not self.summary or isinstance(self.screen, ModelScreen):
            return
        choices = await self.run_in_thread(self.source.model_choices)
        await self.push_screen(ModelScreen(self.summary, choices))

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
        self.post_message(ModelReady(summary))

    def on_swap_progress(self, message: SwapProgress) -> None:
        self.set_status(message.text)
        if isinstance(self.screen, ModelScreen):
            self.screen.show_progress(message.text)

    async def run_in_thread(self, function, *args):
        import asyncio

        return await asyncio.to_thread(function, *args)

    def on_unmount(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.source.close()
