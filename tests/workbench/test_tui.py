"""The workbench TUI driven by Textual's pilot, on the real default model; the fork tree, origin groups,
charts and memory panels it draws."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from rich.text import Text
from textual.content import Content
from textual.widgets import DataTable, Input, Label, ListView, Static

from engine.events import TurnFinished
from engine.kv.stats import StoredBlock
from engine.settings import Settings
from tests.workbench.tui_frozen import CLAUDE, CODEX, FrozenSource
from workbench.tui.agent_tree import lineage_lines, tree_lines
from workbench.tui.app import WorkbenchApp
from workbench.tui.block_map import blocks_per_cell, scaled_cells
from workbench.tui.charts import columns, hbar
from workbench.tui.dialogs import AskName, Confirm
from workbench.tui.inspector import InspectorScreen, ttft_columns
from workbench.tui.memory_panels import timeline, ttft_chart
from workbench.tui.model_screen import ModelScreen
from workbench.tui.origins import GROUP_CLAUDE_CODE, GROUP_CODEX, GROUP_SDK, WORKBENCH, grouped, origin
from workbench.tui.overview import OverviewScreen
from workbench.tui.source import LocalSource
from workbench.tui.turn_log import TurnRecord, evictions_per_turn


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

            # F3: the overview lists the agent with its blocks and charts its two turns
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            table = app.screen.query_one("#chains", DataTable)
            assert "■" in table.get_row("tui-agent")[-1].plain  # in memory, if not stored yet
            assert [turn.source for turn in app.screen.turns] == ["cold", "hot"]
            assert "resumed" in str(app.screen.query_one("#ttft-chart", Static).content)
            # Enter on the agent's row: its inspector
            table.move_cursor(row=table.get_row_index("tui-agent"))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            strip = str(app.screen.query_one("#strip").render())
            assert "■" in strip
            assert app.screen.row["id"] == "tui-agent" and len(app.screen.turns) == 2
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, OverviewScreen))

    asyncio.run(scenario())


def test_connect_to_a_running_server(server):
    from tests.conftest import API_KEY
    from workbench.tui.remote import RemoteSource

    async def scenario():
        # A wrong admin key: the server refuses to list its models, and the model screen says so
        source = RemoteSource(server.base_url, api_key=API_KEY, admin_key="not-the-admin-key")
        app = WorkbenchApp(source, initial_agent="tui-remote")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            assert app.summary["model_id"] and app.summary["kv_block_tokens"] > 0
            first = await send(app, pilot, "Hello there!")
            assert "prefilled" in first
            second = await send(app, pilot, "How are you?")
            assert "hot cache" in second
            await until(pilot, lambda: any(r["id"] == "tui-remote" and r["turns"] == 2 for r in app.rows))
            await pilot.press("f7")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            assert app.screen.pool.hot.used_bytes > 0
            await pilot.press("escape")
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            assert any(row["id"] == "tui-remote" and "chain" in row for row in app.screen.rows)
            assert app.screen.pool.warm.budget_bytes > 0  # the server's disk budget, from its /metrics
            assert "no budget" not in str(app.screen.query_one("#budgets", Static).content)
            # Another client's agent appears once the overview is read again (r, or every few seconds)
            other = httpx.post(
                f"{server.base_url}/v1/agents/tui-other-client/messages",
                json={"content": "Hi", "max_tokens": 2},
                headers={"x-api-key": API_KEY},
                timeout=300,
            )
            assert other.status_code == 200, other.text
            await pilot.press("r")
            await until(pilot, lambda: any(row["id"] == "tui-other-client" for row in app.screen.rows), timeout=30)
            assert app.screen.query_one("#chains", DataTable).get_row("tui-other-client")
            await pilot.press("escape")
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, ModelScreen))
            status = str(app.query_one("#status", Static).content)
            assert "No models to swap to" in status and "admin" in status.lower(), status

    asyncio.run(scenario())


def test_new_rename_and_delete_agent(source):
    finished = record_turns(source)

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
            # The cache moved with the name: the next turn resumes instead of reading everything again
            footer = await send(app, pilot, "And again?")
            assert finished[-1].cache.source in ("hot", "warm"), (footer, finished[-1].cache)
            assert finished[-1].usage.cached_tokens >= finished[0].usage.prompt_tokens, finished[-1].usage

            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await until(pilot, lambda: not any(r["id"] == "tui-renamed" for r in app.rows))
            assert source.store.get("tui-renamed") is None

    asyncio.run(scenario())


def test_after_a_swap_and_escape_typing_lands_in_the_message_box_and_new_agents_stay(source):
    async def scenario():
        app = WorkbenchApp(source)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            for name in ("swap-first", "swap-second"):  # two new agents, no turn yet
                await pilot.press("ctrl+n")
                await until(pilot, lambda: isinstance(app.screen, AskName))
                app.screen.query_one("#name").value = name
                await pilot.press("enter")
                await until(pilot, lambda name=name: app.agent_id == name)

            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, ModelScreen))
            choices = app.screen.query_one("#choices", ListView)
            choices.index = [item.name for item in choices.children].index(source.engine.model_id)
            choices.action_select_cursor()
            await until(pilot, lambda: not app.ready)
            await until(pilot, lambda: app.ready)
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, ModelScreen))

            await pilot.press("h", "i")
            assert app.query_one("#prompt", Input).value == "hi"
            # The agent list is read again after a swap: both are still listed, the second still chosen
            await until(pilot, lambda: {"swap-first", "swap-second"} <= set(sidebar(app)), timeout=30)
            assert app.agent_id == "swap-second"

    asyncio.run(scenario())


def record_turns(source) -> list[TurnFinished]:
    """Every finished turn the app's source reports, in order (the footer shows them rounded)."""
    finished: list[TurnFinished] = []
    send_turn = source.send

    def send_and_record(session, text, on_event, **options):
        def record(event):
            if isinstance(event, TurnFinished):
                finished.append(event)
            on_event(event)

        return send_turn(session, text, record, **options)

    source.send = send_and_record
    return finished


def sidebar(app) -> list[str]:
    """The first line of every sidebar entry: tree connectors and the agent's id."""
    return [str(item.query_one(Label).content).split("\n")[0] for item in app.query_one("#agents", ListView).children]


def notices(app) -> list[str]:
    return [notification.message for notification in app._notifications]


async def fork_selected(app, pilot, new_id: str) -> None:
    await pilot.press("f5")
    await until(pilot, lambda: isinstance(app.screen, AskName))
    app.screen.query_one("#name").value = new_id
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, AskName))


async def open_agent(app, pilot, agent_id: str) -> None:
    """Pick `agent_id` in the sidebar, as Up/Down and Enter do."""
    view = app.query_one("#agents", ListView)
    view.index = [item.name for item in view.children].index(agent_id)
    view.action_select_cursor()
    await until(pilot, lambda: app._session is not None and app._session.id == agent_id)


async def lineage(app, pilot) -> str:
    """The inspector's fork lines for the selected agent (F7, read, Escape)."""
    await pilot.press("f7")
    await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
    text = str(app.screen.query_one("#lineage", Static).content)
    await pilot.press("escape")
    await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
    return text


async def fork_and_resume(app, pilot, finished: list[TurnFinished], parent: str, fork: str) -> None:
    """Fork `parent` (selected, one turn done) as `fork` from the sidebar, and check where the fork is
    listed and that its first turn resumes from the parent's cache."""
    parent_prompt = finished[-1].usage.prompt_tokens
    await fork_selected(app, pilot, fork)
    await until(pilot, lambda: any(r["id"] == fork and r["forked_from"] == parent for r in app.rows))
    await until(pilot, lambda: app._session is not None and app._session.id == fork)
    assert app._session.turns == 1  # the parent's transcript, copied
    entries = sidebar(app)
    assert entries.index(f"└ {fork}") == entries.index(parent) + 1

    footer = await send(app, pilot, "And what is the capital of Italy?")
    assert finished[-1].usage.cached_tokens >= parent_prompt, (footer, finished[-1].cache)
    assert "cold" not in footer


def test_fork_from_the_sidebar_shares_the_parents_cache(default_engine, data_dir, tmp_path):
    # Small blocks, so that one short turn stores some and the inspector has shared blocks to count
    source = LocalSource(Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv", kv_block_tokens=16))
    finished = record_turns(source)

    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-fork-parent")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, "What is the capital of France?")
            await fork_and_resume(app, pilot, finished, "tui-fork-parent", "tui-fork-child")
            assert source.store.get("tui-fork-child").forked_from == "tui-fork-parent"

            parent_blocks = len(source.engine.agent_blocks("tui-fork-parent"))
            assert parent_blocks >= 1
            assert (await lineage(app, pilot)).startswith(f"fork of tui-fork-parent: shares {parent_blocks} of its")
            await open_agent(app, pilot, "tui-fork-parent")
            assert (await lineage(app, pilot)).split("\n") == [
                "not a fork",
                f"forks: tui-fork-child shares {parent_blocks} ({parent_blocks} of its {parent_blocks} stored "
                "blocks shared with a fork)",
            ]

            # Refused, with nothing changed: an id in use, and an agent with nothing to fork yet
            await fork_selected(app, pilot, "tui-fork-child")
            await until(pilot, lambda: any("exists already" in notice for notice in notices(app)))
            assert app.agent_id == "tui-fork-parent"
            assert source.store.get("tui-fork-child").turns == 2

            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, AskName))
            app.screen.query_one("#name").value = "tui-fork-nobody"
            await pilot.press("enter")
            await until(pilot, lambda: app._session is not None and app._session.id == "tui-fork-nobody")
            await fork_selected(app, pilot, "tui-fork-orphan")
            await until(pilot, lambda: any("no agent 'tui-fork-nobody'" in notice for notice in notices(app)))
            assert app.agent_id == "tui-fork-nobody" and source.store.get("tui-fork-orphan") is None

    asyncio.run(scenario())


def test_fork_over_connect(server):
    from tests.conftest import API_KEY
    from workbench.tui.remote import RemoteSource

    source = RemoteSource(server.base_url, api_key=API_KEY)
    finished = record_turns(source)
    # A first message of more than one block (the server's 256 tokens), so the fork has blocks to share
    notes = "Keep these notes. " + "The archive holds maps of every coast. " * 36

    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-remote-parent")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, notes + "In one word: what does the archive hold?")
            await fork_and_resume(app, pilot, finished, "tui-remote-parent", "tui-remote-child")
            parent_blocks = len(source.inspect("tui-remote-parent")["row"]["chain"])
            assert parent_blocks >= 1
            assert (await lineage(app, pilot)).startswith(f"fork of tui-remote-parent: shares {parent_blocks} of its")
            await open_agent(app, pilot, "tui-remote-parent")
            forks_line = (await lineage(app, pilot)).split("\n")[1]
            assert forks_line.startswith(f"forks: tui-remote-child shares {parent_blocks} ")

            await fork_selected(app, pilot, "tui-remote-child")
            await until(pilot, lambda: any("exists already" in notice for notice in notices(app)))
            assert app.agent_id == "tui-remote-parent"

    asyncio.run(scenario())


def agent(agent_id: str, parent: str | None = None) -> dict:
    return {"id": agent_id, "forked_from": parent}


def test_forks_are_listed_under_their_parent_in_order_of_use():
    rows = [
        agent("b1", "b"),
        agent("a"),
        agent("b"),
        agent("a2", "a"),
        agent("orphan", "deleted"),
        agent("a1", "a"),
        agent("a2x", "a2"),
    ]
    drawn = [(line.head + line.row["id"], line.tail) for line in tree_lines(rows)]
    assert drawn == [
        ("a", "│ "),
        ("├ a2", "│ │ "),
        ("│ └ a2x", "│     "),
        ("└ a1", "    "),
        ("b", "│ "),
        ("└ b1", "    "),
        ("orphan", "  "),
    ]
    # Forks whose parents name each other (an id reused after its agent was deleted) are still listed
    looped = tree_lines([agent("x", "y"), agent("y", "x"), agent("z")])
    assert sorted(line.row["id"] for line in looped) == ["x", "y", "z"]


def block_of(*agents: str) -> StoredBlock:
    """A stored block that the chains of `agents` name."""
    return StoredBlock(name="b", bytes=0, last_used=0.0, stored=True, agents=agents)


def test_inspector_lineage_counts_shared_blocks():
    rows = [agent("parent"), agent("fork", "parent"), agent("fork-2", "parent"), agent("lone", "gone")]
    chain = [block_of("parent", "fork", "fork-2"), block_of("parent", "fork"), block_of("parent")]
    assert lineage_lines({**agent("parent"), "chain": chain}, rows).split("\n") == [
        "not a fork",
        "forks: fork shares 2, fork-2 shares 1 (2 of its 3 stored blocks shared with a fork)",
    ]
    fork_chain = [block_of("parent", "fork"), block_of("fork")]
    assert lineage_lines({**agent("fork", "parent"), "chain": fork_chain}, rows).split("\n") == [
        "fork of parent: shares 1 of its 2 stored blocks with it",
        "no forks",
    ]
    assert lineage_lines({**agent("lone", "gone"), "chain": []}, rows) == "fork of gone (deleted)\nno forks"


def test_pin_and_unpin_the_selected_agent(source):
    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-pinned")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, "Hello.")
            await pilot.press("f6")
            await until(pilot, lambda: any("tui-pinned pinned" in notice for notice in notices(app)))
            assert source.engine.kv_overview().policies["tui-pinned"].pinned is True
            await until(pilot, lambda: any(row["id"] == "tui-pinned" and row["pinned"] for row in app.rows))
            labels = [str(item.query_one(Label).content) for item in app.query_one("#agents", ListView).children]
            assert any(label.startswith("tui-pinned") and "pinned" in label.split("\n")[0][10:] for label in labels)
            await pilot.press("f7")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            assert str(app.screen.query_one("#keeping", Static).content).startswith("pinned: evicted last")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))

            await pilot.press("f6")
            await until(pilot, lambda: any("tui-pinned unpinned" in notice for notice in notices(app)))
            assert "tui-pinned" not in source.engine.kv_overview().policies

    asyncio.run(scenario())


def test_the_status_line_follows_the_reply_and_counts_in_words(source):
    async def scenario():
        app = WorkbenchApp(source, initial_agent="tui-status")
        statuses: list[str] = []
        shown = app.set_status

        def record(markup, **values):
            statuses.append(Content.from_markup(markup, **values).plain)
            shown(markup, **values)

        app.set_status = record
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await send(app, pilot, "Say hello.")
            phases = [text.split(" ")[0] for text in statuses]
            # prefill, then generation, then done: the prompt's progress never stands for the reply
            assert phases.index("Prefilling") < phases.index("Generating…") < len(phases) - 1
            assert statuses[-1] == "Agent tui-status: 1 turn."

    asyncio.run(scenario())


def test_agents_are_grouped_by_origin():
    rows = [
        {"id": "agent-101500", "turns": 2, "tier": "hot"},
        {"id": "chat-20261201-101500", "turns": 0, "tier": "cold"},
        {"id": CLAUDE, "title": "Claude Code · shop: Add a cart page", "turns": 0, "tier": "hot"},
        {"id": "0e9b7c1a-4f2d-4c1e-9a3b-5d6e7f809a1b", "turns": 0, "tier": "warm"},
        {"id": CODEX, "turns": 0, "tier": "hot"},
        {"id": "support-bot", "turns": 0, "tier": "warm"},
        {"id": "acme:agent-1", "turns": 3, "tier": "cold"},
    ]
    assert [(origin(row).group, origin(row).name) for row in rows] == [
        (WORKBENCH, "agent-101500"),
        (WORKBENCH, "chat-20261201-101500"),
        (GROUP_CLAUDE_CODE, "shop: Add a cart page"),
        (GROUP_SDK, "session 0e9b7c1a…"),
        (GROUP_CODEX, "thread 0199a3f2…"),
        (GROUP_SDK, "support-bot"),  # a KV cache without a transcript: an endpoint's client
        (GROUP_SDK, "agent-1 · acme"),
    ]
    assert [group for group, _ in grouped(rows)] == [WORKBENCH, GROUP_CLAUDE_CODE, GROUP_CODEX, GROUP_SDK]


@pytest.mark.slow
def test_typing_in_the_agent_list_filters_it_by_name_or_origin():
    async def scenario():
        app = WorkbenchApp(FrozenSource(), initial_agent="alice")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.ready and app.rows, timeout=30)
            view = app.query_one("#agents", ListView)
            view.focus()
            await pilot.press("c", "o", "d", "e", "x")
            await pilot.pause(0.1)
            assert app.query_one("#filter", Input).value == "codex"
            assert [item.name for item in view.children] == [None, CODEX]  # its group's heading, then it
            await pilot.press("enter")
            await until(pilot, lambda: app.agent_id == CODEX, timeout=30)
            assert app.focused is app.query_one("#prompt", Input)
            await pilot.press("ctrl+f")
            assert app.focused is app.query_one("#filter", Input)

    asyncio.run(scenario())


def test_charts_draw_nothing_solid_without_data():
    assert hbar(0.0, 1.0, 10) == "" and hbar(1.0, 0.0, 10) == ""
    assert hbar(1.0, 2.0, 10) == "█████" and hbar(0.001, 2.0, 10) == "▏"
    assert columns([], 3) == [] and columns([0.0, 0.0], 2) == ["  ", "  "]
    assert columns([1.0, 0.5, 0.0], 2) == ["█  ", "██ "]
    assert "no turns" in ttft_chart([], [], 76).plain and "no turns" in timeline([], 0, 76)
    assert "no turns" in ttft_columns([])


def test_memory_panels_count_turns_evictions_and_blocks():
    turns = [
        TurnRecord("a", "cold", "recompute", 0.4, 2),
        TurnRecord("a", "hot", "restore", 0.1, 4),
        TurnRecord("b", "cold", "recompute", 0.3, 1),  # a swap: a new pool counts from zero
    ]
    assert evictions_per_turn(turns, 2) == [0, 2, 1]
    chart = ttft_chart(turns, [{"id": "a"}, {"id": "b"}], 76).plain.split("\n")
    assert "4.0× faster" in chart[1] and "none yet" in chart[3]
    assert Text.from_markup(timeline(turns, 2, 76)).plain.split("\n")[5].split() == ["evicted", "·", "2", "1"]
    # The common scale: the longest chain fits, a cell shows the most telling kind of its blocks
    assert blocks_per_cell(100, 40) == 3 and blocks_per_cell(0, 40) == 1
    assert scaled_cells(["warm", "shared", "hot"], 2) == "[magenta]■[/][green]■[/]"
    assert scaled_cells(["warm"], 1, pinned=True) == "[cyan]▣[/]"


@pytest.mark.slow
def test_screenshot_is_saved_where_there_is_no_downloads_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DOWNLOAD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    async def scenario():
        app = WorkbenchApp(FrozenSource())
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            app.deliver_screenshot()
            # The file is written on a thread that reports back: wait for its word before the app closes
            await until(pilot, lambda: any("screenshot" in notice for notice in notices(app)), timeout=30)
            assert list(tmp_path.glob("*.svg")), notices(app)
            assert not any("Failed" in notice for notice in notices(app)), notices(app)

    asyncio.run(scenario())


@pytest.mark.slow
def test_function_keys_switch_screens_and_escape_goes_back_to_the_conversation():
    async def scenario():
        app = WorkbenchApp(FrozenSource())
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, ModelScreen))
            assert len(app.screen_stack) == 2  # instead of the overview, not over it
            await pilot.press("escape")
            await until(pilot, lambda: len(app.screen_stack) == 1)
            await pilot.press("h", "i")
            assert app.query_one("#prompt", Input).value == "hi"

            # Enter in the overview opens an inspector over it: Escape goes back to the overview
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, OverviewScreen))

    asyncio.run(scenario())


def test_a_first_message_without_an_agent_creates_and_lists_one(default_engine, data_dir, tmp_path):
    own = tmp_path / "data"  # no agent yet: the other tests' agents live in the shared data dir
    own.mkdir()
    (own / "models").symlink_to(data_dir / "models")
    source = LocalSource(Settings(data_dir=own, agent_cache_dir=tmp_path / "kv"))

    async def scenario():
        app = WorkbenchApp(source)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            assert app.agent_id is None and app._session is None
            app.query_one("#prompt").value = "Hello!"
            await pilot.press("enter")
            await until(pilot, lambda: app.query(".turn-footer") and app.handle is None)
            created = app.agent_id
            assert created
            await until(pilot, lambda: any(r["id"] == created and r["turns"] == 1 for r in app.rows))
            await until(pilot, lambda: created in sidebar(app), timeout=30)
            await until(pilot, lambda: "1 turn." in str(app.query_one("#status", Static).content), timeout=30)

    asyncio.run(scenario())
