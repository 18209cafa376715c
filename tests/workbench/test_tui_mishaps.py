"""The TUI when things go wrong: agents switched while a reply runs, ids that look like markup, a server
that goes away or refuses the key, a transcript write still running, ids the project refuses, a failed
turn. Driven by Textual's pilot, on the real default model and a real server where the turn matters."""

from __future__ import annotations

import asyncio
import threading

import pytest
from textual.widgets import Input, Label, ListView, Static

from engine.events import TurnFinished
from engine.kv.stats import BlockCounts
from engine.settings import Settings
from tests.conftest import API_KEY, ServerProcess, free_port
from tests.workbench.test_tui import notices, open_agent, send, sidebar, until
from tests.workbench.tui_frozen import FrozenSource, row_of
from workbench.tui.app import WorkbenchApp
from workbench.tui.dialogs import AskName, Confirm
from workbench.tui.inspector import InspectorScreen
from workbench.tui.overview import OverviewScreen
from workbench.tui.remote import RemoteSource
from workbench.tui.source import LocalSource
from workbench.tui.turn_log import TurnRecord

RUNNING = "A reply is running; Esc stops it."


def status(app) -> str:
    return str(app.query_one("#status", Static).content)


async def new_agent(app, pilot, name: str) -> None:
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(app.screen, AskName), timeout=30)
    app.screen.query_one("#name").value = name
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, AskName), timeout=30)


@pytest.fixture
def source(default_engine, data_dir, tmp_path):
    return LocalSource(Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv"))


def hold_finish(source) -> list:
    """Hold back the end of every turn the source runs until the test calls what it appends here: the
    reply stays running for as long as the test needs."""
    held = []
    send_turn = source.send

    def send_and_hold(session, text, on_event, **options):
        def hold(event):
            if isinstance(event, TurnFinished):
                held.append(lambda: on_event(event))
            else:
                on_event(event)

        return send_turn(session, text, hold, **options)

    source.send = send_and_hold
    return held


def test_a_reply_stays_with_its_agent_and_a_failed_turn_leaves_nothing_behind(source):
    held = hold_finish(source)

    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-busy")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await new_agent(app, pilot, "tui-busy-other")
            await new_agent(app, pilot, "tui-busy")  # both new: listed while neither has a transcript
            await until(pilot, lambda: app._session is not None and app._session.id == "tui-busy")
            app.query_one("#prompt").value = "Hello!"
            await pilot.press("enter")
            await until(pilot, lambda: held)
            assert app.handle is not None  # its end is held back: still running

            # The sidebar, the filter and Ctrl+N are refused, and the list still shows the agent replying
            view = app.query_one("#agents", ListView)
            view.index = [item.name for item in view.children].index("tui-busy-other")
            view.action_select_cursor()
            await pilot.pause(0.2)
            assert app.agent_id == "tui-busy" and status(app) == RUNNING
            assert view.highlighted_child is not None and view.highlighted_child.name == "tui-busy"
            app.query_one("#filter", Input).value = "busy-other"
            app.query_one("#filter", Input).focus()
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert app.agent_id == "tui-busy"
            app.query_one("#filter", Input).value = ""
            await pilot.press("ctrl+n")
            await pilot.pause(0.2)
            assert not isinstance(app.screen, AskName) and status(app) == RUNNING

            held.pop()()
            await until(pilot, lambda: app.handle is None and app.query(".turn-footer"))
            await until(pilot, lambda: any(r["id"] == "tui-busy" and r["turns"] == 1 for r in app.rows))
            assert source.store.get("tui-busy-other") is None
            assert status(app) == "Agent tui-busy: 1 turn."

            # A turn the engine refuses: neither it nor an empty reply stays in the log, the text comes back
            shown = len(app.query("#log > *"))
            too_long = "word " * (app.summary["context_length"] + 100)
            app.query_one("#prompt").value = too_long
            await pilot.press("enter")
            await until(pilot, lambda: app.handle is None and "too long" in status(app))
            await pilot.pause(0.2)
            assert len(app.query("#log > *")) == shown
            assert app.query_one("#prompt", Input).value == too_long.strip()

    asyncio.run(scenario())


def test_rename_and_delete_wait_for_the_last_replys_transcript_write(source):
    gate = threading.Event()
    keep = source.keep

    def slow_keep(*args):
        gate.wait(60)  # a slow disk
        keep(*args)

    source.keep = slow_keep

    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-race")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, "Hi!")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, AskName))
            app.screen.query_one("#name").value = "tui-race-renamed"
            await pilot.press("enter")
            await pilot.pause(0.5)
            gate.set()
            await until(pilot, lambda: any(r["id"] == "tui-race-renamed" and r["turns"] == 1 for r in app.rows))
            await until(pilot, lambda: len(app.turns) == 1)
            assert source.store.get("tui-race") is None

            gate.clear()
            await send(app, pilot, "Again!")
            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await pilot.pause(0.5)
            gate.set()
            await until(pilot, lambda: len(app.turns) == 2 and app.agent_id != "tui-race-renamed")
            await until(pilot, lambda: not any(r["id"] == "tui-race-renamed" for r in app.rows))
            assert source.store.get("tui-race-renamed") is None

    asyncio.run(scenario())


# Ids an API client may choose: markup tags, a lone bracket, a live action link, a trailing backslash
ODD_IDS = ["[/]", "x[/red]y", "[b", "a[", "[@click=app.quit]x[/]", "back\\", "back\\[b]x[/b]"]


class OddSource(FrozenSource):
    """The frozen agents, and agents whose ids look like markup (the second a fork of the first)."""

    def agents(self) -> list[dict]:
        odd = [
            row_of({"id": agent_id, "model": "default", "turns": 1, "tokens": 10, "tier": "warm", "bytes": 0})
            for agent_id in ODD_IDS
        ]
        odd[1]["forked_from"] = ODD_IDS[0]
        return odd + super().agents()

    def inspect(self, agent_id: str | None) -> dict:
        row = next((row for row in self.agents() if row["id"] == agent_id), None)
        if row is not None:
            row.update(blocks=BlockCounts(hot=0, hot_live=False, warm=0, shared=0), chain=[])
        return {"pool": self.pool(), "row": row, "block_tokens": 256}


@pytest.mark.slow
def test_agent_ids_are_shown_as_text_never_as_markup():
    async def scenario():
        app = WorkbenchApp(OddSource(), initial_agent=ODD_IDS[0])
        app.turns = [TurnRecord(agent_id, "cold", "recompute", 0.3, 0) for agent_id in ODD_IDS]
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready and app.rows, timeout=30)
            entries = sidebar(app)
            assert all(any(entry.endswith(agent_id) for entry in entries) for agent_id in ODD_IDS), entries
            for agent_id in ODD_IDS:
                await open_agent(app, pilot, agent_id)
                await until(pilot, lambda agent_id=agent_id: status(app) == f"Agent {agent_id}: 0 turns.", timeout=30)

            odd = ODD_IDS[4]  # the link: shown, not followed
            await open_agent(app, pilot, odd)
            await pilot.press("f7")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen), timeout=30)
            labels = [str(label.content) for label in app.screen.query(Label)]
            assert f"Agent {odd}  10 tokens, 256 per block" in labels
            await pilot.press("escape")
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen), timeout=30)
            shares = str(app.screen.query_one("#fork-shares", Static).content)
            assert f"{ODD_IDS[1]} shares 0 of its 0 stored blocks with {ODD_IDS[0]}" in shares
            chart = str(app.screen.query_one("#ttft-chart", Static).content)
            assert all(agent_id[:15] in chart for agent_id in ODD_IDS), chart  # names are cut to fit
            await pilot.press("escape")

            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, AskName), timeout=30)
            assert str(app.screen.query_one(Label).content) == f"Rename {odd} to:"
            await pilot.press("escape")
            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, Confirm), timeout=30)
            assert str(app.screen.query_one(Label).content).startswith(f"Delete agent {odd}, ")
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, Confirm), timeout=30)
            await pilot.press("f6")  # the frozen source cannot pin: the error names the agent
            await until(pilot, lambda: any(n.startswith(f"Cannot pin {odd}:") for n in notices(app)), timeout=30)
            assert app.is_running

    asyncio.run(scenario())


@pytest.mark.slow
def test_ids_the_project_refuses_are_refused_and_a_taken_one_is_opened():
    too_long = "n" * 300

    async def scenario():
        app = WorkbenchApp(FrozenSource(), initial_agent="alice")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready and app.rows and app._session is not None, timeout=30)
            for key in ("ctrl+n", "f2", "f5"):
                await pilot.press(key)
                await until(pilot, lambda: isinstance(app.screen, AskName), timeout=30)
                app.screen.query_one("#name").value = too_long
                await pilot.press("enter")
                await until(pilot, lambda: "at most 256 characters" in status(app), timeout=30)
                assert app.agent_id == "alice" and too_long not in sidebar(app)
                app.set_status("")

            await new_agent(app, pilot, "bob")
            await until(pilot, lambda: any(n == "bob exists already: opened it." for n in notices(app)), timeout=30)
            assert app.agent_id == "bob"

    asyncio.run(scenario())


@pytest.mark.slow
def test_an_unreachable_server_is_said_while_the_tui_waits():
    async def scenario():
        app = WorkbenchApp(RemoteSource(f"http://127.0.0.1:{free_port()}"))
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: "cannot reach the server" in status(app), timeout=30)
            assert app.is_running and not app.ready

    asyncio.run(scenario())


def test_a_refused_api_key_is_said_not_fatal(server):
    async def scenario():
        for key, said in (("not-the-key", "the server refused the API key"), (None, "the server wants an API key")):
            app = WorkbenchApp(RemoteSource(server.base_url, api_key=key))
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda app=app: app.ready)
                await until(pilot, lambda app=app, said=said: said in status(app), timeout=30)
                assert app.is_running

    asyncio.run(scenario())


@pytest.mark.slow  # a server of its own, stopped halfway
def test_a_server_that_goes_away_is_said_not_fatal(default_engine, data_dir, tmp_path):
    cache_dir = tmp_path / "server-kv"
    cache_dir.mkdir()
    running = ServerProcess(data_dir, cache_dir, {"SEMANTIC_API_KEY": API_KEY})

    async def scenario():
        app = WorkbenchApp(RemoteSource(running.base_url, api_key=API_KEY), initial_agent="tui-gone")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, "Hello!")
            await until(pilot, lambda: any(r["id"] == "tui-gone" for r in app.rows))
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            running.stop()

            # The overview's refresh says it once, not at every refresh
            await pilot.press("r")
            gone = lambda: [n for n in notices(app) if "cannot reach the server" in n]  # noqa: E731
            await until(pilot, lambda: gone(), timeout=30)
            await pilot.press("r")
            await pilot.pause(1)
            assert len(gone()) == 1
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, OverviewScreen))

            for key in ("f3", "f7", None):  # the overview, the inspector, the agent list
                app.set_status("")
                if key is None:
                    app.refresh_agents()
                else:
                    await pilot.press(key)
                await until(pilot, lambda: "cannot reach the server" in status(app), timeout=30)
                assert len(app.screen_stack) == 1

            # A turn that cannot be sent: the log drops it and the message comes back
            shown = len(app.query("#log > *"))
            app.query_one("#prompt").value = "Still there?"
            await pilot.press("enter")
            await until(pilot, lambda: app.handle is None and status(app).startswith("Error:"), timeout=30)
            await pilot.pause(0.2)
            assert len(app.query("#log > *")) == shown
            assert app.query_one("#prompt", Input).value == "Still there?"
            assert app.is_running

    try:
        running.wait_ready()
        asyncio.run(scenario())
    finally:
        running.stop()
