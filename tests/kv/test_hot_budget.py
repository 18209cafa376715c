"""The hot tier's byte budget: the setting when given, else the backend's default for the loaded model."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from engine.backend import (
    CPU_HOT_BUDGET_BYTES,
    MIN_HOT_BUDGET_BYTES,
    Backend,
    current_backend,
    hot_budget_bytes,
    hot_live_agents,
)
from engine.settings import Settings
from tests.conftest import TINY_LLAMA

GIB = 1 << 30


@pytest.fixture(scope="module")
def model():
    built = llama.Model(llama.ModelArgs.from_dict(TINY_LLAMA))
    mx.eval(built.parameters())
    return built


def weights_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def test_the_setting_wins_over_any_default(model, tmp_path):
    assert hot_budget_bytes(Settings(data_dir=tmp_path, mlx_cache_budget_mb=123), model) == 123 << 20


def test_unset_on_this_backend_is_its_default(model, tmp_path):
    expected = current_backend().default_hot_budget_bytes(model)
    assert hot_budget_bytes(Settings(data_dir=tmp_path), model) == expected
    if current_backend().name == "cpu":
        assert expected == CPU_HOT_BUDGET_BYTES


@pytest.mark.parametrize(
    ("device_info", "expected"),
    [
        # CUDA reports the card's size
        ({"total_memory": 80 * GIB, "device_name": "NVIDIA H100 80GB HBM3"}, lambda w: (80 * GIB - w) // 2),
        # Metal: the working-set limit, not the machine's whole memory
        ({"memory_size": 64 * GIB, "max_recommended_working_set_size": 48 * GIB}, lambda w: (48 * GIB - w) // 2),
        # a device too small to leave much: never below the floor
        ({"total_memory": 512 << 20}, lambda w: MIN_HOT_BUDGET_BYTES),
        # a device that reports no memory size
        ({"device_name": "unknown"}, lambda w: CPU_HOT_BUDGET_BYTES),
    ],
)
def test_a_gpu_gets_half_the_memory_its_weights_leave(model, monkeypatch, device_info, expected):
    # What the device reports is the input here: the card itself is not on this machine.
    monkeypatch.setattr(mx, "device_info", lambda: device_info)
    assert Backend().default_hot_budget_bytes(model) == expected(weights_bytes(model))


def test_the_engines_hot_pool_gets_the_resolved_budget(tiny_engine):
    assert tiny_engine.memory.hot.budget_bytes == current_backend().default_hot_budget_bytes(tiny_engine.memory.model)


def test_live_agents_are_the_setting_else_the_backends(tmp_path):
    assert hot_live_agents(Settings(data_dir=tmp_path, kv_hot_live_agents=0)) == 0
    assert hot_live_agents(Settings(data_dir=tmp_path, kv_hot_live_agents=5)) == 5
    unset = Settings(data_dir=tmp_path, mlx_max_batch_size=12)
    assert hot_live_agents(unset) == current_backend().default_live_agents(unset)
    # A GPU keeps a batch's worth live; the CPU one (its blocks shared in system memory)
    assert Backend().default_live_agents(unset) == 12
    if current_backend().name == "cpu":
        assert hot_live_agents(unset) == 1


def test_the_engines_hot_pool_gets_the_resolved_live_agents(tiny_engine):
    assert tiny_engine.memory.hot.live_agents == hot_live_agents(tiny_engine.settings)
