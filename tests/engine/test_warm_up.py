"""The warm-up at load (GPU backends; forced on here): its turns run through the engine's own batch
path, and leave nothing behind that a client could see: no cache, no learned speed, the same answers."""

from __future__ import annotations

import logging

import pytest

from engine.backend import current_backend
from engine.engine import Engine
from engine.kv.stats import TierHits
from engine.settings import Settings
from tests.conftest import ask

pytestmark = pytest.mark.model


@pytest.fixture
def warm_up_at_load():
    backend = current_backend()
    before = backend.warm_up_at_load
    backend.warm_up_at_load = True
    yield
    backend.warm_up_at_load = before


def test_the_warm_up_runs_at_load_and_leaves_nothing_behind(data_dir, tmp_path, warm_up_at_load, caplog):
    settings = Settings(data_dir=data_dir, agent_cache_dir=tmp_path / "kv")
    caplog.set_level(logging.INFO, logger="engine.warm_up")
    with Engine(settings) as warmed:
        assert any("warmed up in" in record.getMessage() for record in caplog.records)
        assert not any(record.levelno >= logging.WARNING for record in caplog.records)
        overview = warmed.kv_overview()
        assert overview.warm.blocks == 0 and not overview.warm_sessions
        assert not overview.hot.sessions and overview.hot.hits == TierHits()
        assert warmed.memory.cost.prefill_s(0, 1000) is None  # it learned nothing from the warm-up
        answer = warmed.generate(ask("Name the capital of France.", max_tokens=12))
    with Engine(Settings(data_dir=data_dir, kv_memory=False, mlx_max_batch_size=1)) as plain:
        assert plain.generate(ask("Name the capital of France.", max_tokens=12)).text == answer.text
