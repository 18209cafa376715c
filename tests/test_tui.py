"""The workbench TUI driven by Textual's pilot, on the real default model."""

from __future__ import annotations

import asyncio

import pytest

from engine.settings import Settings
from workbench.tui.app import WorkbenchApp
from workbench.tui.dialogs import Confirm
from workbench.tui.inspector import InspectorScreen
from workbench.tui.source import LocalSource


async def until(pilot, condition, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await pilot.pause(0.1)


async def send(app, pilot, text: str) -> str:
    await until(pilot, lambda: app._session is not None)
    footers = len(app.query(".turn-footer"))
    app.query_one("#prompt").value = text
    await pilot.press("enter")
    await until(pilot, lambda: len(app.query(".turn-footer")) > footers and app.handle is None)
    return str(app.query(".turn-footer").last().render())


@pytest.fixture
def source(default_engine, data_dir, tmp_path):
    settings = Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv")
    return LocalSource(settings)


def test_chat_resume_and_inspector(source):
    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-agent")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            first = await send(app, pilot, "What is the capital of France?")
            assert "cold" in first and "prefilled" in first
            replies = app.query("#log .assistant")
            assert replies and replies.last().source.strip()
            second = await send(app, pilot, "And of Italy?")
            assert "hot cache" in second  # the second turn reuses the first turn's KV
            await until(pilot, lambda: any(r["id"] == "tui-agent" and r["turns"] == 2 for r in app.rows))

            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            strip = str(app.screen.query_one("#strip").render())
            assert "■" in strip
            assert len(app.screen.ttfts) == 2
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))

    asyncio.run(scenario())


def test_connect_to_a_running_server(server):
    from tests.conftest import API_KEY
    from workbench.tui.remote import RemoteSource

    async def scenario():
        app = WorkbenchApp(RemoteSource(server.base_url, api_key=API_KEY), initial_agent="tui-remote")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            assert app.summary["model_id"] and app.summary["kv_block_tokens"] > 0
            first = await send(app, pilot, "Hello there!")
            assert "prefilled" in first
            second = await send(app, pilot, "How are you?")
            assert "hot cache" in second
            await until(pilot, lambda: any(r["id"] == "tui-remote" and r["turns"] == 2 for r in app.rows))
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            assert app.screen.pool["hot"]["used_bytes"] > 0

    asyncio.run(scenario())


def test_new_rename_and_delete_agent(source):
    async def scenario():
        app = WorkbenchApp(source)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("ctrl+n")
            await until(pilot, lambda: app.screen.query("#name"))
            app.screen.query_one("#name").value = "tui-new"
            await pilot.press("enter")
            await until(pilot, lambda: app.agent_id == "tui-new")
            await send(app, pilot, "Hi!")
            await until(pilot, lambda: any(r["id"] == "tui-new" for r in app.rows))

            await pilot.press("f2")
            await until(pilot, lambda: app.screen.query("#name"))
            app.screen.query_one("#name").value = "tui-renamed"
            await pilot.press("enter")
            await until(pilot, lambda: any(r["id"] == "tui-renamed" for r in app.rows))
            assert not any(r["id"] == "tui-new" for r in app.rows)
            assert source.session("tui-renamed").turns == 1

            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await until(pilot, lambda: not any(r["id"] == "tui-renamed" for r in app.rows))
            assert source.store.get("tui-renamed") is None

    asyncio.run(scenario())
